"""The local broker across restarts, its file, its lock and its options."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chute.errors import BrokerUnavailable, ConfigError, InvalidMessage
from chute.message import Message
from chute_plugins.brokers.local import LocalBroker

REPO = Path(__file__).resolve().parent.parent


def msgs(n: int, start: int = 0) -> list[Message]:
    return [Message(key=f"k{i}", data={"n": i}) for i in range(start, start + n)]


async def opened(work: Path, url: str = "local") -> LocalBroker:
    broker = LocalBroker(url, workdir=work)
    await broker.start()
    await broker.declare_topic("t", capacity=1000)
    await broker.ensure_group("t", "g", visibility_timeout=30)
    return broker


async def test_queued_pending_and_retried_deliveries_come_back_after_a_restart(
    tmp_path: Path,
) -> None:
    first = await opened(tmp_path)
    ids = await first.publish("t", msgs(6))
    got = await first.read("t", "g", "c", count=3, block=None)  # 0..2 delivered
    await first.ack("t", "g", [got[0].id])
    await first.nack("t", "g", [got[1].id], delay=0.5)  # retry due later, attempt 1 so far
    await first.aclose()  # as SIGINT leaves it; kill -9 is tested end to end

    again = await opened(tmp_path)
    try:
        stats = (await again.stats("t")).group("g")
        assert (stats.lag, stats.pending) == (3, 2)
        back = await again.read("t", "g", "c2", count=10, block=None)
        # The one in flight first (due at once, second delivery), then the never delivered.
        assert [(m.id, m.attempt) for m in back] == [(ids[2], 2), *((i, 1) for i in ids[3:])]
        assert [m.data for m in back] == [{"n": n} for n in (2, 3, 4, 5)]
        retried = await again.read("t", "g", "c2", count=10, block=2.0)
        assert [(m.id, m.attempt) for m in retried] == [(ids[1], 2)]
        await again.ack("t", "g", [m.id for m in back + retried])
        more = await again.publish("t", msgs(1, 6))
        assert more[0].split("-")[1] == "6", "sequence numbers go on from the last run"
    finally:
        await again.aclose()
    third = await opened(tmp_path)
    try:
        assert (await third.read("t", "g", "c", count=10, block=None))[0].id == more[0]
    finally:
        await third.aclose()


async def test_a_second_broker_on_the_same_file_is_refused_with_the_first_ones_pid(
    tmp_path: Path,
) -> None:
    first = await opened(tmp_path)
    try:
        with pytest.raises(BrokerUnavailable, match=r"in use by another chute process \(pid \d+\)"):
            await LocalBroker("local", workdir=tmp_path).start()
    finally:
        await first.aclose()
    await (await opened(tmp_path)).aclose()  # free again once the first one closed


async def test_a_topic_without_groups_keeps_its_newest_capacity_messages(tmp_path: Path) -> None:
    broker = LocalBroker("local", workdir=tmp_path)
    await broker.start()
    await broker.declare_topic("dead", capacity=5)
    ids = await broker.publish("dead", msgs(8))
    await broker.aclose()
    broker = LocalBroker("local", workdir=tmp_path)
    await broker.start()
    try:
        await broker.ensure_group("dead", "inspect", visibility_timeout=30)
        got = await broker.read("dead", "inspect", "c", count=10, block=None)
        assert [m.id for m in got] == ids[3:]
    finally:
        await broker.aclose()


async def test_extend_keeps_a_running_delivery_from_going_stale(tmp_path: Path) -> None:
    broker = LocalBroker("local", workdir=tmp_path)
    await broker.start()
    try:
        await broker.ensure_group("t", "g", visibility_timeout=0.3)
        await broker.publish("t", msgs(2))
        got = await broker.read("t", "g", "worker", count=10, block=None)
        for _ in range(4):
            await asyncio.sleep(0.15)
            await broker.extend("t", "g", [got[0].id])
        again = await broker.read("t", "g", "other", count=10, block=None)
        assert [m.id for m in again] == [got[1].id], "only the delivery not extended went stale"
    finally:
        await broker.aclose()


async def test_durability_power_syncs_each_commit_and_publishers_share_the_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    counts = {}
    for level in ("process", "power"):
        broker = LocalBroker(f"local://{level}.db?durability={level}", workdir=tmp_path)
        await broker.start()
        assert broker.path == tmp_path / f"{level}.db"
        await broker.declare_topic("t", capacity=1000)
        synced.clear()
        await asyncio.gather(*(broker.publish("t", msgs(1, n)) for n in range(8)))
        counts[level] = len(synced)
        await broker.aclose()
    assert counts["process"] == 0
    assert 1 <= counts["power"] < 8, counts  # eight publishes arriving together share syncs
    with pytest.raises(ConfigError, match="durability 'fast' is not one of process, power"):
        LocalBroker("local?durability=fast", workdir=tmp_path)


def _chute(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chute", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)  # fmt: skip


POOL = f"""
[pools.work]
topic = "jobs"
output = "done"
executor = {{ type = "python", function = "tests.helpers.tasks:double", path = ["{REPO}"] }}
[topics.done]
"""


def test_check_validates_the_local_url_and_warns_about_memory_topics_that_cannot_refill(
    tmp_path: Path,
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('broker = "local?durability=fast&x=1"\n[topics.jobs]\n' + POOL)
    bad = _chute("check", str(config), cwd=tmp_path)
    assert bad.returncode == 2
    assert "c.toml: broker: durability 'fast' is not one of process, power" in bad.stderr
    assert "c.toml: broker: unknown option 'x'" in bad.stderr

    config.write_text('broker = "local?durability=power"\n[topics.jobs]\n' + POOL)
    good = _chute("check", str(config), cwd=tmp_path)
    assert good.returncode == 0 and "warning" not in good.stderr, good.stderr

    config.write_text('broker = "memory"\n[topics.jobs]\n[api]\nenabled = true\n' + POOL)
    memory = _chute("check", str(config), cwd=tmp_path)
    assert memory.returncode == 0
    assert "c.toml: broker: memory topic 'done' is fed by pool work's output" in memory.stderr
    assert all(line.startswith("warning: ") for line in memory.stderr.splitlines())
    assert "published through the API into memory topics" in memory.stderr


def test_publish_into_the_file_when_no_runtime_runs_then_run_processes_it(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[topics.jobs]\n" + POOL.replace('output = "done"\n', ""))
    published = _chute("publish", "--config", str(config), "jobs", '{"n": 21}', "--key", "x",
                       cwd=tmp_path)  # fmt: skip
    assert published.returncode == 0, published.stderr
    assert (tmp_path / ".chute" / "c" / "broker.db").is_file()
    ran = _chute("run", str(config), "--until-idle", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    status = _chute("status", str(config), cwd=tmp_path)
    assert "pool work: done 1" in status.stdout, status.stdout


def test_a_second_runtime_on_the_same_workdir_stops_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[topics.jobs]\n" + POOL.replace('output = "done"\n', ""))
    first = subprocess.Popen([sys.executable, "-m", "chute", "run", str(config)], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / ".chute" / "c" / "broker.db").exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)  # waiting for another process: nothing to wait on
        time.sleep(0.3)
        second = _chute("run", str(config), cwd=tmp_path)
    finally:
        first.terminate()
        first.communicate(timeout=30)
    assert second.returncode != 0
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another chute process" in lines[0], second.stderr
    assert lines[0].startswith("chute: ")


async def test_a_group_no_run_reads_any_more_does_not_hold_publishers_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = LocalBroker("local", workdir=tmp_path)
    await first.start()
    await first.declare_topic("t", capacity=5)
    await first.ensure_group("t", "renamed-pool", visibility_timeout=30)
    await first.publish("t", msgs(5))
    await first.aclose()
    broker = LocalBroker("local", workdir=tmp_path)
    await broker.start()
    try:
        await broker.declare_topic("t", capacity=5)
        await broker.ensure_group("t", "g", visibility_timeout=30, start="latest")
        ids = await asyncio.wait_for(broker.publish("t", msgs(5, 5)), 5)
        got = await broker.read("t", "g", "c", count=10, block=None)
        assert [m.id for m in got] == ids
        await broker.ack("t", "g", ids)
        stats = await broker.stats("t")
        assert [g.name for g in stats.groups] == ["g"], "--until-idle would wait for it"
    finally:
        await broker.aclose()
    assert "consumer group renamed-pool was created by an earlier run" in caplog.text


async def test_a_message_that_cannot_be_stored_is_refused_and_leaves_no_trace(
    tmp_path: Path,
) -> None:
    broker = await opened(tmp_path)
    try:
        with pytest.raises(InvalidMessage, match="not JSON-like data"):
            await broker.publish("t", [Message(data={"n": 1}), Message(data=object())])
        ids = await broker.publish("t", msgs(1))
        got = await broker.read("t", "g", "c", count=10, block=None)
        assert [m.id for m in got] == ids
    finally:
        await broker.aclose()


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.glob("broker.db*")}


async def test_the_broker_files_are_private(tmp_path: Path) -> None:
    # They hold every queued item's data, as the state store's files hold its keys.
    old = os.umask(0o022)
    try:
        broker = await opened(tmp_path)
        await broker.declare_topic("t", capacity=10)
        await broker.publish("t", [Message(key="k", data={"secret": 1})])
        modes = _modes(tmp_path)
        await broker.aclose()
    finally:
        os.umask(old)
    assert set(modes) >= {"broker.db", "broker.db-wal", "broker.db-shm", "broker.db.lock"}
    assert modes == dict.fromkeys(modes, 0o600)
