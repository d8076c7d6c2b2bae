"""An item that runs longer than its topic's visibility timeout runs once.

While an item runs, the pool extends its delivery and its lease (the
heartbeat), so neither the broker's redelivery nor a store claim starts it a
second time beside the first run. The reproduction from issue 16: a
visibility timeout of 1 s, two items, each appending its name to a log and
sleeping 2.5 s: the log must hold 2 lines, not 4.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest
from chute import Runtime, load_config
from chute.message import Message

SLEEPER = """\
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
os.write(fd, (os.environ["WORK_ITEM_NAME"] + "\\n").encode())  # one write: no interleaving
os.close(fd)
time.sleep(float(sys.argv[2]))
"""


def long_item_config(tmp_path: Path, *, broker: str = "memory", state: str = "sqlite",
                     source: bool = True, sleep: float = 2.5, concurrency: int = 1) -> Path:  # fmt: skip
    """The issue's reproduction: items that run 2.5 times the visibility timeout."""
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    argv = [sys.executable, str(script), str(tmp_path / "ran.log"), str(sleep)]
    generate = '[sources.gen]\ntype = "generate"\ntopic = "jobs"\ncount = 2\n' if source else ""
    config = tmp_path / "long.toml"
    config.write_text(f"""\
broker = "{broker}"
state = "{state}"
workdir = "work"
log_level = "warning"

[topics.jobs]
visibility_timeout = "1s"

{generate}
[pools.work]
topic = "jobs"
concurrency = {concurrency}
executor = {{ type = "command", argv = [{", ".join(repr(a).replace("'", '"') for a in argv)}] }}
""")
    return config


def runs(tmp_path: Path) -> Counter[str]:
    log = tmp_path / "ran.log"
    return Counter(log.read_text().splitlines() if log.exists() else [])


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_an_item_longer_than_the_visibility_timeout_runs_once(
    tmp_path: Path, concurrency: int
) -> None:
    config = long_item_config(tmp_path, concurrency=concurrency)
    with anyio.fail_after(60):
        await Runtime(load_config(config), until_idle=True).run()
    assert runs(tmp_path) == {"item-0": 1, "item-1": 1}


TRACKER = """\
import time
running: set[str] = set()
overlaps: list[str] = []


def work(item):
    if item["key"] in running:
        overlaps.append(item["key"])
    running.add(item["key"])
    try:
        time.sleep(0.3)
    finally:
        running.discard(item["key"])
    return item
"""


@pytest.mark.parametrize("track", [True, False])
async def test_two_messages_with_one_key_in_one_batch_never_run_side_by_side(
    tmp_path: Path, track: bool
) -> None:
    config = tmp_path / "dup.toml"
    config.write_text(f"""\
broker = "memory"
state = "memory"
log_level = "warning"
[topics.jobs]
[pools.work]
topic = "jobs"
concurrency = 4
track = {str(track).lower()}
executor = {{ type = "python", function = "tracker_{track}:work", path = ["{tmp_path}"], thread = true }}
""")  # fmt: skip
    (tmp_path / f"tracker_{track}.py").write_text(TRACKER)
    async with Runtime(load_config(config)) as rt:
        # One publish: the pool fetches both copies of "same" in one batch.
        await rt.publish_many("jobs", [Message(key="same", data={"key": "same"}),
                                       Message(key="same", data={"key": "same"}),
                                       Message(key="other", data={"key": "other"})])  # fmt: skip
        with anyio.fail_after(30):
            await rt.wait_for("work", "other")
            await rt.wait_for("work", "same")
            await rt.wait_idle()
        tracker = sys.modules[f"tracker_{track}"]
        assert tracker.overlaps == []
        rt.stop()
