"""Configs the pool tests write: one pool ``work`` on topic ``jobs``, its executor a python function."""

from __future__ import annotations

from pathlib import Path


def python_pool(tmp_path: Path, module: str, *, concurrency: int, settings: str = "",
                topic: str = "", pool: str = "", thread: bool = False) -> Path:  # fmt: skip
    """``tmp_path/<module>.toml``, whose pool runs ``<module>:work`` (a module in ``tmp_path``).

    ``settings``, ``topic`` and ``pool`` are TOML lines for the top, the topic's table and
    the pool's table.
    """
    config = tmp_path / f"{module}.toml"
    in_thread = ", thread = true" if thread else ""
    config.write_text(f"""\
{settings}
[topics.jobs]
{topic}
[pools.work]
topic = "jobs"
concurrency = {concurrency}
{pool}
executor = {{ type = "python", function = "{module}:work", path = ["{tmp_path}"]{in_thread} }}
""")  # fmt: skip
    return config
