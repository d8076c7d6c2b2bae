"""Several ``chute run`` processes on one Redis: sharing, a node killed, Redis restarted.

Each node runs ``tests.helpers.redis_tasks:work``, which logs the start and
the end of every item to one file, so the test sees who ran what, and when.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from chute.message import Message
from chute_plugins.brokers.redis_streams import RedisBroker

from tests.redis_server import RedisServer, shared_url, unique_prefix

pytestmark = [pytest.mark.slow, pytest.mark.redis]

REPO = Path(__file__).resolve().parent.parent
VT = 3.0  # the topic's visibility timeout
N = 600


def write_config(tmp_path: Path, url: str, *, track: bool) -> Path:
    path = tmp_path / "chute.toml"
    path.write_text(f"""
broker = "{url}"
state = "{url}"
shutdown_grace = "5s"
log_level = "warning"
[topics.jobs]
visibility_timeout = "{VT}s"
[pools.work]
topic = "jobs"
concurrency = 4
batch = 8
track = {str(track).lower()}
executor = {{ type = "python", function = "tests.helpers.redis_tasks:work", path = ["{REPO}"] }}
""")
    return path


def publish(url: str, n: int, sleep: float = 0.05) -> None:
    async def go() -> None:
        broker = RedisBroker(url)
        await broker.start()
        try:
            await broker.declare_topic("jobs", capacity=100_000)
            # The pools' group exists before the work arrives: a new group starts at the end.
            await broker.ensure_group("jobs", "work", visibility_timeout=VT)
            for start in range(0, n, 100):
                await broker.publish("jobs", [Message(key=f"item-{i}", data={"n": i, "sleep": sleep})
                                              for i in range(start, min(n, start + 100))])  # fmt: skip
        finally:
            await broker.aclose()

    asyncio.run(go())


class Node:
    def __init__(self, name: str, config: Path, log: Path) -> None:
        self.name = name
        env = {**os.environ, "CHUTE_TEST_NODE": name, "CHUTE_TEST_LOG": str(log),
               "PYTHONPATH": str(REPO)}  # fmt: skip
        self.output = config.parent / f"{name}.out"
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chute", "run", str(config), "--until-idle"],
                stdout=out, stderr=subprocess.STDOUT, cwd=config.parent, env=env,
            )  # fmt: skip

    def wait(self, timeout: float = 90) -> int:
        code = self.proc.wait(timeout)
        assert code == 0, f"{self.name} exited {code}:\n{self.output.read_text()[-3000:]}"
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def events(log: Path) -> list[tuple[str, str, str, float]]:
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        event, node, key, t = line.split()
        rows.append((event, node, key, float(t)))
    return rows


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    # The nodes are other processes writing a file: there is no event to wait on.
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def done_count(log: Path) -> int:
    return sum(1 for e in events(log) if e[0] == "done")


def running_on(log: Path, node: str) -> set[str]:
    """Items the node has started and not finished, as its log says so far."""
    rows = events(log)
    started = {key for event, name, key, _ in rows if event == "start" and name == node}
    return started - {key for event, name, key, _ in rows if event == "done" and name == node}


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()


def test_two_nodes_share_one_topic_and_run_each_item_once(
    tmp_path: Path, nodes: list[Node]
) -> None:
    prefix = unique_prefix()
    url = f"{shared_url()}?prefix={prefix}"
    config = write_config(tmp_path, url, track=True)
    log = tmp_path / "work.log"
    publish(url, N)
    nodes += [Node("a", config, log), Node("b", config, log)]
    for node in nodes:
        node.wait()
    done = Counter(key for event, _, key, _ in events(log) if event == "done")
    assert set(done) == {f"item-{i}" for i in range(N)}, "items were lost"
    assert max(done.values()) == 1, "an item ran twice"
    share = Counter(node for event, node, _, _ in events(log) if event == "done")
    assert min(share["a"], share["b"]) >= N // 5, f"not a real share: {share}"
    client = redis.Redis.from_url(shared_url())
    try:
        counts = client.hgetall(f"{prefix}counts:work")
        assert {k: v for k, v in counts.items() if v != b"0"} == {b"done": str(N).encode()}
    finally:
        client.close()


def test_a_killed_node_s_deliveries_are_taken_over_and_nothing_is_lost(
    tmp_path: Path, nodes: list[Node]
) -> None:
    # track = false: with the state store on, the killed node's item leases
    # (the pool's item timeout + 60 s) would hold its items back past the
    # visibility timeout; this test is about the broker's redelivery.
    url = f"{shared_url()}?prefix={unique_prefix()}"
    config = write_config(tmp_path, url, track=False)
    log = tmp_path / "work.log"
    publish(url, N)
    victim, survivor = Node("victim", config, log), Node("survivor", config, log)
    nodes += [victim, survivor]
    # Killed with items in flight (each takes 50 ms): a moment between items,
    # or before its first, would leave nothing to take over.
    wait_until(
        lambda: done_count(log) >= N // 4 and bool(running_on(log, "victim")),
        60,
        "a quarter of the work is done and the victim is running items",
    )
    victim.kill()
    killed_at = time.time()
    survivor.wait()

    rows = events(log)
    done = {key for event, _, key, _ in rows if event == "done"}
    assert done == {f"item-{i}" for i in range(N)}, f"lost: {N - len(done)} items"
    started = {key for event, node, key, _ in rows if event == "start" and node == "victim"}
    finished = {key for event, node, key, _ in rows if event == "done" and node == "victim"}
    interrupted = started - finished
    assert interrupted, "the victim was killed between items: nothing was in flight"
    for key in interrupted:
        retaken = min(t for event, node, k, t in rows
                      if event == "start" and node == "survivor" and k == key)  # fmt: skip
        assert retaken - killed_at <= VT + 5, f"{key} taken over {retaken - killed_at:.1f}s late"


@pytest.mark.parametrize("how", ["restart", "kill-9"])
def test_a_redis_restart_mid_run_loses_no_acknowledged_work(
    tmp_path: Path, nodes: list[Node], redis_server: RedisServer, how: str
) -> None:
    prefix = unique_prefix()
    url = f"{redis_server.url}?prefix={prefix}"
    config = write_config(tmp_path, url, track=True)
    log = tmp_path / "work.log"
    publish(url, N // 2)
    node = Node("only", config, log)
    nodes.append(node)
    wait_until(lambda: done_count(log) >= N // 8, 60, "some work is done")
    redis_server.stop(kill=how == "kill-9")
    time.sleep(1.0)  # Redis stays away for a second
    redis_server.start()
    back_at = time.time()
    node.wait()

    rows = events(log)
    after = [t for event, _, _, t in rows if event == "done" and t > back_at]
    assert after and min(after) - back_at <= 10, "the node did not resume within 10 s"
    done = Counter(key for event, _, key, _ in rows if event == "done")
    assert set(done) == {f"item-{i}" for i in range(N // 2)}, "items were lost"
    # Only items in flight at the outage may run again (at-least-once).
    assert sum(n - 1 for n in done.values()) <= 4 + 8
    client = redis.Redis.from_url(redis_server.url)
    try:
        counts = client.hgetall(f"{prefix}counts:work")
        assert {k: v for k, v in counts.items() if v != b"0"} == {b"done": str(N // 2).encode()}
    finally:
        client.close()
