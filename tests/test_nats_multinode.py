"""Several ``chute run`` processes on one nats-server (JetStream, file storage):
sharing the work, a node killed with -9, the server restarted mid-run.

The nodes run ``tests.helpers.redis_tasks:work`` (it logs the start and end of
every item to one file), exactly as the Redis multi-node tests do.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from chute.message import Message
from chute_plugins.brokers.nats_jetstream import JetStreamBroker

from tests.nats_server import NatsServer, shared_nats_url, unique_prefix
from tests.test_redis_multinode import REPO, Node, done_count, events, running_on, wait_until

pytestmark = pytest.mark.slow

VT = 3.0
N = 400


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "chute.toml"
    path.write_text(f"""
broker = "{url}"
shutdown_grace = "5s"
log_level = "warning"
[topics.jobs]
visibility_timeout = "{VT}s"
[pools.work]
topic = "jobs"
concurrency = 4
batch = 8
track = false
executor = {{ type = "python", function = "tests.helpers.redis_tasks:work", path = ["{REPO}"] }}
""")
    return path


def publish(url: str, n: int, sleep: float = 0.05) -> None:
    async def go() -> None:
        broker = JetStreamBroker(url)
        await broker.start()
        try:
            await broker.declare_topic("jobs", capacity=100_000)
            await broker.ensure_group("jobs", "work", visibility_timeout=VT)
            for start in range(0, n, 100):
                await broker.publish("jobs", [Message(key=f"item-{i}", data={"n": i, "sleep": sleep})
                                              for i in range(start, min(n, start + 100))])  # fmt: skip
        finally:
            await broker.aclose()

    asyncio.run(go())


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_two_nodes_share_one_topic_and_run_each_item_once(
    tmp_path: Path, nodes: list[Node]
) -> None:
    url = f"{shared_nats_url()}?prefix={unique_prefix()}"
    config = write_config(tmp_path, url)
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


def test_a_killed_node_s_deliveries_are_taken_over_and_nothing_is_lost(
    tmp_path: Path, nodes: list[Node]
) -> None:
    url = f"{shared_nats_url()}?prefix={unique_prefix()}"
    config = write_config(tmp_path, url)
    log = tmp_path / "work.log"
    publish(url, N)
    victim, survivor = Node("victim", config, log), Node("survivor", config, log)
    nodes += [victim, survivor]
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
def test_a_nats_server_restart_mid_run_loses_nothing(
    tmp_path: Path, nodes: list[Node], nats_server: NatsServer, how: str
) -> None:
    url = f"{nats_server.url}?prefix={unique_prefix()}"
    config = write_config(tmp_path, url)
    log = tmp_path / "work.log"
    publish(url, N // 2)
    node = Node("only", config, log)
    nodes.append(node)
    wait_until(lambda: done_count(log) >= N // 8, 60, "some work is done")
    nats_server.stop(kill=how == "kill-9")
    time.sleep(1.0)  # the server stays away for a second
    nats_server.start()
    back_at = time.time()
    node.wait()

    rows = events(log)
    after = [t for event, _, _, t in rows if event == "done" and t > back_at]
    assert after and min(after) - back_at <= 10, "the node did not resume within 10 s"
    done = Counter(key for event, _, key, _ in rows if event == "done")
    assert set(done) == {f"item-{i}" for i in range(N // 2)}, "items were lost"
    # Only items in flight at the outage (and their batch) may run again.
    assert sum(n - 1 for n in done.values()) <= 4 + 8 + 8
