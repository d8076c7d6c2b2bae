"""Executors die with the runtime that started them (``_warden.py``)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgspec
import pytest
from chute.config import dec_hook
from chute.context import PluginContext
from chute.executor import WorkItem
from chute.message import Message
from chute_plugins.brokers.memory import MemoryBroker
from chute_plugins.executors._folders import safe_name
from chute_plugins.executors.command import CommandExecutor, CommandOptions

PY = sys.executable


def _executor(workdir: Path, argv: list[str]) -> CommandExecutor:
    ctx = PluginContext(
        name="work", topic="in", base_dir=workdir.parent, workdir=workdir,
        node="test", broker=MemoryBroker(),
    )  # fmt: skip
    return CommandExecutor(msgspec.convert({"argv": argv}, CommandOptions, dec_hook=dec_hook), ctx)


def _item(name: str, data: dict[str, str] | None = None) -> WorkItem:
    message = Message(id="1-0", key=name, data=data or {}, attempt=1)
    return WorkItem(name=name, data=data or {}, attempt=1, message=message, pool="work")


def _dies_within(pid: int, seconds: float) -> bool:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], seconds)[0])
    finally:
        os.close(pidfd)


def _wait_for(path: Path, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text().endswith("\n"):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return path.read_text()


RUNTIME = """
import asyncio, os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from tests.executors.test_lifetime import _executor, _item

async def main():
    ex = _executor(Path({workdir!r}), ["/bin/sh", "-c", "echo $$ > {pidfile}.tmp; mv {pidfile}.tmp {pidfile}-$0; exec sleep $0", "{{secs}}"])
    if {kill_warden}:  # someone kills the warden: the next child finds a new one
        await ex.run(_item("quick", {{"secs": "0"}}))
        os.kill(ex._warden.pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
    await ex.run(_item("long", {{"secs": "30"}}))

asyncio.run(main())
"""


@pytest.mark.parametrize("kill_warden", [False, True], ids=["", "after-the-warden-was-killed"])
def test_a_killed_runtimes_executors_die_with_it(tmp_path: Path, kill_warden: bool) -> None:
    """kill -9 of the process that started an executor kills the executor's group."""
    pidfile = tmp_path / "child.pid"
    code = RUNTIME.format(
        tests=str(Path(__file__).resolve().parents[2]), workdir=str(tmp_path / "work"),
        pidfile=str(pidfile), kill_warden=kill_warden,
    )  # fmt: skip
    runtime = subprocess.Popen([PY, "-c", textwrap.dedent(code)])
    try:
        child = int(_wait_for(pidfile.with_name("child.pid-30"), 30))
    finally:
        runtime.kill()
        runtime.wait()
    assert _dies_within(child, 5.0), "the executor outlived the runtime that started it"


async def test_a_restarted_runtime_kills_its_predecessors_executors_first(tmp_path: Path) -> None:
    """A process still running in an item folder of ours (its runtime died, and so did
    that runtime's warden) is killed, with its group, before our first item runs."""
    workdir = tmp_path / "work"
    folder = workdir / "run" / safe_name("work") / "item-old"
    orphan, group = _orphan(folder)
    log = tmp_path / "ran"
    ex = _executor(workdir, ["/bin/sh", "-c", f"echo ran >> {log}"])
    try:
        await ex.run(_item("new"))
        gone = orphan.poll() is not None or _dies_within(orphan.pid, 0.0)
        alive = [pid for pid in group if _alive(pid)]
    finally:
        await ex.aclose()
        orphan.kill()
        orphan.wait()
        for pid in group:
            _kill(pid)
    assert gone, "the predecessor's executor was still running when our item had run"
    assert not alive, f"its process group survived: {alive}"
    assert log.read_text() == "ran\n"
    assert not folder.exists(), "the dead runtime's item folder (its item data) was left"


def _orphan(folder: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """A dead runtime's executor in ``folder``, with a child in its group: it and its group."""
    folder.mkdir(parents=True)
    env = {**os.environ, "WORK_ITEM_FILE": str(folder / "item.json")}
    orphan = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 30 & exec sleep 30"], env=env, process_group=0
    )
    grandchild_seen = time.monotonic() + 5
    while len(_group(orphan.pid)) < 2 and time.monotonic() < grandchild_seen:
        time.sleep(0.01)
    return orphan, _group(orphan.pid)


def _group(pgid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getpgid(int(name)) == pgid:
                    found.append(int(name))
            except OSError:
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
