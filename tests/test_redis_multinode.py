"""Several ``chute run`` processes on one Redis: sharing, a node killed, Redis restarted.

The scenarios are tests/multinode.py's; here they run on Redis, and the item
counts that the Redis state store keeps are checked too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from chute_plugins.brokers.redis_streams import RedisBroker

from tests import multinode
from tests.multinode import Node, write_config
from tests.redis_server import RedisServer, shared_url, unique_prefix

pytestmark = [pytest.mark.slow, pytest.mark.redis]

VT = 3.0  # the topic's visibility timeout
N = 600


def publish(url: str, n: int) -> None:
    multinode.publish(RedisBroker(url), n, vt=VT)


def assert_counted_done(url: str, prefix: str, n: int) -> None:
    client = redis.Redis.from_url(url)
    try:
        counts = client.hgetall(f"{prefix}counts:work")
        assert {k: v for k, v in counts.items() if v != b"0"} == {b"done": str(n).encode()}
    finally:
        client.close()


def test_two_nodes_share_one_topic_and_run_each_item_once(
    tmp_path: Path, nodes: list[Node]
) -> None:
    prefix = unique_prefix()
    url = f"{shared_url()}?prefix={prefix}"
    config = write_config(tmp_path, url, track=True, vt=VT)
    publish(url, N)
    multinode.two_nodes_share_the_work(config, tmp_path / "work.log", N, nodes)
    assert_counted_done(shared_url(), prefix, N)


def test_a_killed_node_s_deliveries_are_taken_over_and_nothing_is_lost(
    tmp_path: Path, nodes: list[Node]
) -> None:
    # track = false: with the state store on, the killed node's item leases
    # (the pool's item timeout + 60 s) would hold its items back past the
    # visibility timeout; this test is about the broker's redelivery.
    url = f"{shared_url()}?prefix={unique_prefix()}"
    config = write_config(tmp_path, url, track=False, vt=VT)
    publish(url, N)
    multinode.a_killed_node_is_taken_over(config, tmp_path / "work.log", N, VT, nodes)


@pytest.mark.parametrize("how", ["restart", "kill-9"])
def test_a_redis_restart_mid_run_loses_no_acknowledged_work(
    tmp_path: Path, nodes: list[Node], redis_server: RedisServer, how: str
) -> None:
    prefix = unique_prefix()
    url = f"{redis_server.url}?prefix={prefix}"
    config = write_config(tmp_path, url, track=True, vt=VT)
    publish(url, N // 2)
    # Only items in flight at the outage may run again (at-least-once).
    multinode.a_server_restart_loses_nothing(
        redis_server, config, tmp_path / "work.log", N // 2, nodes,
        kill=how == "kill-9", may_run_again=4 + 8,
    )  # fmt: skip
    assert_counted_done(redis_server.url, prefix, N // 2)
