"""Faults of the runtime's own (a full disk, no descriptors, a program missing during a
deploy) are not the items' failures: the pool pauses and retries without counting attempts."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from chute.config import config_from_dict
from chute.engine import Runtime
from chute.errors import ExecutorUnavailable, ItemFailed
from chute.store import ItemStatus
from chute_plugins.executors import _spawn

from .helpers import executor, item

PY = sys.executable


def _script(tmp_path: Path, body: str, name: str = "tool.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def _children(program: str) -> list[int]:
    """Our child processes (zombies too) running ``program``."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    comm, _, rest = f.read().partition(" (")[2].rpartition(")")
                if comm == program and int(rest.split()[1]) == me:
                    found.append(int(name))
            except OSError:
                continue
    return found


async def test_a_child_whose_pidfd_cannot_be_opened_is_killed_and_reaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = executor(tmp_path, argv=["sleep", "30"])

    def out_of_descriptors(pid: int, flags: int = 0) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "pidfd_open", out_of_descriptors)
    try:
        with pytest.raises(ExecutorUnavailable, match="Too many open files"), anyio.fail_after(10):
            await ex.run(item({}))
        assert _children("sleep") == [], "the child was left running (or unreaped)"
    finally:
        monkeypatch.undo()
        await ex.aclose()


@pytest.mark.parametrize("spawner", [_spawn.PosixSpawn, _spawn.PopenSpawn])
async def test_a_spawn_refused_for_lack_of_processes_is_the_runtimes_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawner: type
) -> None:
    def no_processes_left(self: Any, launch: Any) -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    if spawner is _spawn.PopenSpawn:
        monkeypatch.setattr(_spawn, "_LIBC", None)
    monkeypatch.setattr(spawner, "spawn", no_processes_left)
    ex = executor(tmp_path, argv=["true"])
    try:
        with pytest.raises(ExecutorUnavailable, match="Resource temporarily unavailable"):
            await ex.run(item({}))
    finally:
        await ex.aclose()


async def test_a_result_file_larger_than_max_result_fails_the_item(tmp_path: Path) -> None:
    big = _script(tmp_path, "import os; open(os.environ['WORK_RESULT_FILE'], 'w').write('[' + '1,' * 600 + '1]')\n")  # fmt: skip
    ex = executor(tmp_path, argv=[PY, big], max_result="1KiB")
    try:
        with pytest.raises(ItemFailed, match="larger than max_result"):
            await ex.run(item({}))
    finally:
        await ex.aclose()


async def test_a_folder_full_of_files_is_removed_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    litter = _script(tmp_path, """
        import os
        base = os.path.dirname(os.environ["WORK_ITEM_FILE"])
        for n in range(200):
            open(os.path.join(base, f"junk-{n}"), "w").close()
        os.mkdir(os.path.join(os.environ["WORK_OUTPUT_DIR"], "sub"))
    """)  # fmt: skip
    where: list[threading.Thread] = []
    real = shutil.rmtree

    def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
        where.append(threading.current_thread())
        real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    ex = executor(tmp_path, argv=[PY, litter])
    try:
        for n in range(3):  # the second and third replace the first's outputs
            await ex.run(item({}, "same-name"))
            assert not list((tmp_path / "work" / "run").glob("*/item-*/junk-0")) or n == 2
    finally:
        removed_while_running = list(where)
        await ex.aclose()
    assert removed_while_running, "nothing was removed: the test proves nothing"
    assert all(t is not threading.main_thread() for t in removed_while_running)
    left = list((tmp_path / "work" / "run").glob("*/item-*"))
    assert not [p for p in left if (p / "junk-0").exists()]


def _pool_config(tmp_path: Path, argv: list[str]) -> Any:
    return config_from_dict(
        {
            "workdir": str(tmp_path / "work"),
            "broker": "memory",
            "state": "memory",
            "topics": {"jobs": {}},
            "pools": {
                "work": {
                    "topic": "jobs",
                    "concurrency": 2,
                    "retry": {"attempts": 2, "backoff": "10ms"},
                    "executor": {"type": "command", "argv": argv},
                }
            },
        },
        path="test.toml",
        base_dir=str(tmp_path),
    )


ATTEMPTS = """
import os
with open({log!r}, "a") as f:
    f.write(os.environ["WORK_ITEM_NAME"] + " " + os.environ["WORK_ITEM_ATTEMPT"] + "\\n")
"""


async def _until(check: Any, seconds: float = 20.0) -> None:
    with anyio.fail_after(seconds):
        while not check():  # noqa: ASYNC110 - the pool's counters announce nothing
            await anyio.sleep(0.02)


async def test_a_full_disk_pauses_the_pool_without_burning_attempts(tmp_path: Path) -> None:
    """RLIMIT_FSIZE stands for a full disk: item.json cannot be written."""
    log = tmp_path / "ran.log"
    tool = _script(tmp_path, ATTEMPTS.format(log=str(log)))
    big = "x" * (2 << 20)  # above the limit below, so its item file cannot be written
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    async with Runtime(_pool_config(tmp_path, [PY, tool])) as rt:
        pool = rt.pools["work"]
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
        try:
            for n in range(3):
                await rt.publish("jobs", {"blob": big}, key=f"big-{n}")
            await _until(lambda: pool.counters.faults >= 6)
            assert not pool.counters.healthy
            assert "File too large" in pool.counters.fault
            assert (pool.counters.failed, pool.counters.dead) == (0, 0)
            status = msgspec.to_builtins(await rt.status())
            [live] = [p for p in status["pools"] if p["name"] == "work"]
            assert live["healthy"] is False and "File too large" in live["fault"]
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        with anyio.fail_after(60):
            outcomes = [await rt.wait_for("work", f"big-{n}") for n in range(3)]
        assert pool.counters.healthy
    assert [o.status for o in outcomes] == [ItemStatus.DONE] * 3
    assert sorted(log.read_text().splitlines()) == ["big-0 1", "big-1 1", "big-2 1"]


async def test_a_program_missing_during_a_deploy_is_waited_for(tmp_path: Path) -> None:
    log = tmp_path / "ran.log"
    body = "#!" + PY + "\n" + ATTEMPTS.format(log=str(log))
    tool = _script(tmp_path, body, "tool")
    os.chmod(tool, 0o755)
    async with Runtime(_pool_config(tmp_path, [tool])) as rt:
        pool = rt.pools["work"]
        os.unlink(tool)  # the deploy removes the old version...
        await rt.publish("jobs", {}, key="during-deploy")
        await _until(lambda: pool.counters.faults >= 2)
        assert not pool.counters.healthy and (pool.counters.failed, pool.counters.dead) == (0, 0)
        _script(tmp_path, body, "tool")  # ...and installs the new one
        os.chmod(tool, 0o755)
        with anyio.fail_after(60):
            outcome = await rt.wait_for("work", "during-deploy")
    assert outcome.status == ItemStatus.DONE
    assert log.read_text() == "during-deploy 1\n"


async def test_a_program_named_by_the_item_that_is_missing_is_the_items_failure(
    tmp_path: Path,
) -> None:
    ex = executor(tmp_path, argv=["{tool}"])
    try:
        with pytest.raises(ItemFailed, match="cannot start"):
            await ex.run(item({"tool": str(tmp_path / "no-such-tool")}))
    finally:
        await ex.aclose()
