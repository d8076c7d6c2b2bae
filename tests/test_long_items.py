"""An item that runs longer than its topic's visibility timeout runs once.

While an item runs, the pool extends its delivery and its lease (the
heartbeat), so neither the broker's redelivery nor a store claim starts it a
second time beside the first run. The reproduction from issue 16: a
visibility timeout of 1 s, two items, each appending its name to a log and
sleeping 2.5 s: the log must hold 2 lines, not 4.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest
import redis
from chute import Runtime, load_config
from chute.message import Message

from tests.helpers.configs import python_pool
from tests.redis_server import RedisServer, unique_prefix

REPO = Path(__file__).resolve().parent.parent

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


@pytest.mark.slow
def test_through_chute_run_a_long_item_runs_once(tmp_path: Path) -> None:
    # The fault suite's long-item case, as a user runs it: memory broker, SQLite state.
    config = long_item_config(tmp_path, concurrency=2)
    done = subprocess.run([sys.executable, "-m", "chute", "run", str(config), "--until-idle"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert runs(tmp_path) == {"item-0": 1, "item-1": 1}
    assert "stale lease" not in done.stderr and "lost its lease" not in done.stderr


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
    config = python_pool(tmp_path, f"tracker_{track}", concurrency=4, thread=True,
                         settings='broker = "memory"\nstate = "memory"\nlog_level = "warning"',
                         pool=f"track = {str(track).lower()}")  # fmt: skip
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


FLAKY_ONCE = """\
import anyio
seen: set[int] = set()
succeeded: list[int] = []


async def work(item):
    await anyio.sleep(0.2)
    if item["seq"] not in seen:
        seen.add(item["seq"])
        raise RuntimeError("first try fails")
    succeeded.append(item["seq"])
"""


async def test_messages_held_behind_their_key_keep_their_attempts(tmp_path: Path) -> None:
    # Each message may fail once (two attempts). Waiting behind another message
    # with the same key is not an attempt: redelivered every 5 s, the fourth
    # message reached its first run as attempt 4 and died on that one failure.
    config = python_pool(tmp_path, "flaky_once", concurrency=4,
                         settings='broker = "memory"\nlog_level = "error"',
                         pool='track = false\nretry = { attempts = 2, backoff = "10ms" }')  # fmt: skip
    (tmp_path / "flaky_once.py").write_text(FLAKY_ONCE)
    async with Runtime(load_config(config)) as rt:
        await rt.publish_many("jobs", [Message(key="same", data={"seq": n}) for n in range(4)])
        with anyio.fail_after(60):
            await rt.wait_idle()
        counters = rt.pools["work"].counters
        assert (counters.succeeded, counters.dead) == (4, 0)
        assert sys.modules["flaky_once"].succeeded == [0, 1, 2, 3]
        rt.stop()


async def test_a_message_held_behind_a_long_one_is_not_redelivered(tmp_path: Path) -> None:
    # The first runs 2.5 visibility timeouts; the second waits in the pool all
    # that time, its delivery kept alive, and then runs once.
    config = python_pool(tmp_path, "held_tracker", concurrency=2, thread=True,
                         settings='broker = "memory"\nlog_level = "warning"',
                         topic='visibility_timeout = "400ms"', pool="track = false")  # fmt: skip
    (tmp_path / "held_tracker.py").write_text(TRACKER.replace("time.sleep(0.3)", "time.sleep(1.0)"))
    async with Runtime(load_config(config)) as rt:
        await rt.publish_many("jobs", [Message(key="same", data={"key": "same"}) for _ in range(2)])
        with anyio.fail_after(30):
            await rt.wait_idle()
        counters = rt.pools["work"].counters
        assert (counters.succeeded, counters.failed) == (2, 0)
        assert sys.modules["held_tracker"].overlaps == []
        stats = await rt.broker.stats("jobs")
        assert [g.acked for g in stats.groups] == [2]
        rt.stop()


RECORDER = """\
import os, time
def work(item):
    with open(os.environ["RAN_LOG"], "a") as f:
        f.write(f"{item['seq']}\\n")
    time.sleep(0.3)
"""


async def test_a_stop_gives_held_messages_back_and_a_restart_runs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = tmp_path / "ran.log"
    monkeypatch.setenv("RAN_LOG", str(ran))
    (tmp_path / "recorder.py").write_text(RECORDER)
    config = python_pool(tmp_path, "recorder", concurrency=2, thread=True, pool="track = false",
                         settings='workdir = "work"\nlog_level = "warning"')  # fmt: skip
    async with Runtime(load_config(config)) as rt:  # the default, durable local broker
        await rt.publish_many("jobs", [Message(key="same", data={"seq": n}) for n in range(3)])
        with anyio.fail_after(10):
            while not ran.exists():  # noqa: ASYNC110 - a file written in a thread: no event
                await anyio.sleep(0.01)
        rt.stop()  # 0 runs; 1 and 2 wait behind it in the pool
    assert ran.read_text().split() == ["0"]
    async with Runtime(load_config(config)) as rt:
        with anyio.fail_after(30):
            await rt.wait_idle()
        rt.stop()
    assert ran.read_text().split() == ["0", "1", "2"]


def _publish_jobs(url: str, n: int) -> None:
    async def go() -> None:
        from chute_plugins.brokers.redis_streams import RedisBroker

        broker = RedisBroker(url)
        await broker.start()
        try:
            await broker.declare_topic("jobs", capacity=1000)
            # The pool's group exists before the work arrives: a new group starts at the end.
            await broker.ensure_group("jobs", "work", visibility_timeout=1.0)
            await broker.publish("jobs", [Message(key=f"item-{i}", data={}) for i in range(n)])
        finally:
            await broker.aclose()

    anyio.run(go)


def _chute_run(config: Path, name: str) -> subprocess.Popen[bytes]:
    out = (config.parent / f"{name}.out").open("wb")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Each process is a node of its own (the default node name holds the pid).
    args = [sys.executable, "-m", "chute", "run", str(config), "--until-idle"]
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=config.parent,
                            env=env)  # fmt: skip
    out.close()
    return proc


@pytest.mark.slow
@pytest.mark.redis
def test_on_redis_two_nodes_run_a_long_item_once_and_a_starting_node_fences_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = f"{redis_server.url}?prefix={unique_prefix()}"
    prefix = url.rpartition("prefix=")[2]
    config = long_item_config(tmp_path, broker=url, state=url, source=False, concurrency=2)
    _publish_jobs(url, 2)
    first = _chute_run(config, "a")
    procs = [first]
    try:
        log = tmp_path / "ran.log"
        deadline = time.monotonic() + 30
        # Another process writes the log: there is no event to wait on.
        while sum(runs(tmp_path).values()) < 2:
            assert time.monotonic() < deadline and first.poll() is None, "node a ran nothing"
            time.sleep(0.05)
        # Node b starts (and runs recover()) while node a runs both items.
        procs.append(_chute_run(config, "b"))
        for proc in procs:
            assert proc.wait(60) == 0, (tmp_path / "a.out").read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert runs(tmp_path) == {"item-0": 1, "item-1": 1}, log.read_text()
    client = redis.Redis(port=redis_server.port)
    try:
        counts = client.hgetall(f"{prefix}counts:work")
    finally:
        client.close()
    # Node a's outcomes were recorded: b's start-up did not fence its live leases.
    assert {k: v for k, v in counts.items() if v != b"0"} == {b"done": b"2"}
