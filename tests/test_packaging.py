"""The wheel as a user installs it: only chute's own names, usable from any folder."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _readme_embedding_example() -> str:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    [example] = [b for b in blocks if "from chute import" in b]
    return example


@pytest.mark.slow
def test_the_wheel_adds_only_chute_names_and_embeds_beside_a_users_plugins(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    [wheel] = dist.glob("chute-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())  # fmt: skip
    before = set(p.name for p in site.iterdir())
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    # The wheel's own names (its RECORD), apart from the dependencies it pulled in.
    record = next(site.glob("chute-*.dist-info")) / "RECORD"
    top = {line.split("/", 1)[0].split(",", 1)[0] for line in record.read_text().splitlines()}
    top -= {"..", ""}
    assert all(name.startswith("chute") for name in top), top
    assert {"chute", "chute_plugins"} <= top
    assert not {"runtime", "plugins"} & (set(p.name for p in site.iterdir()) - before)

    # A user's project with its own `plugins` package and `runtime.py`.
    app = tmp_path / "app"
    (app / "plugins").mkdir(parents=True)
    (app / "plugins" / "__init__.py").write_text(
        "raise ImportError('not chute: the app plugins')\n"
    )
    (app / "runtime.py").write_text("raise ImportError('not chute: the app runtime')\n")
    (app / "configs").mkdir()
    for name in ("demo.toml", "demo_tasks.py"):
        shutil.copy(REPO / "configs" / name, app / "configs" / name)
    (app / "embed.py").write_text(_readme_embedding_example())
    run = subprocess.run(
        [str(python), "embed.py"], cwd=app, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "done" in run.stdout.lower() and "sentence" in run.stdout, run.stdout

    version = subprocess.run(
        [str(env_dir / "bin" / "chute"), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("chute, version ")
