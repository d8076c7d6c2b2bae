"""Several ``chute run`` processes on one nats-server (JetStream, file storage):
sharing the work, a node killed with -9, the server restarted mid-run; the
scenarios are tests/multinode.py's, as on Redis.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chute_plugins.brokers.nats_jetstream import JetStreamBroker

from tests import multinode
from tests.multinode import Node
from tests.nats_server import NatsServer, shared_nats_url, unique_prefix

pytestmark = pytest.mark.slow

VT = 3.0
N = 400


def write_config(tmp_path: Path, url: str) -> Path:
    return multinode.write_config(tmp_path, url, track=False, vt=VT, state=False)


def publish(url: str, n: int) -> None:
    multinode.publish(JetStreamBroker(url), n, vt=VT)


def test_two_nodes_share_one_topic_and_run_each_item_once(
    tmp_path: Path, nodes: list[Node]
) -> None:
    url = f"{shared_nats_url()}?prefix={unique_prefix()}"
    config = write_config(tmp_path, url)
    publish(url, N)
    multinode.two_nodes_share_the_work(config, tmp_path / "work.log", N, nodes)


def test_a_killed_node_s_deliveries_are_taken_over_and_nothing_is_lost(
    tmp_path: Path, nodes: list[Node]
) -> None:
    url = f"{shared_nats_url()}?prefix={unique_prefix()}"
    config = write_config(tmp_path, url)
    publish(url, N)
    multinode.a_killed_node_is_taken_over(config, tmp_path / "work.log", N, VT, nodes)


@pytest.mark.parametrize("how", ["restart", "kill-9"])
def test_a_nats_server_restart_mid_run_loses_nothing(
    tmp_path: Path, nodes: list[Node], nats_server: NatsServer, how: str
) -> None:
    url = f"{nats_server.url}?prefix={unique_prefix()}"
    config = write_config(tmp_path, url)
    publish(url, N // 2)
    # Only items in flight at the outage (and their batch) may run again.
    multinode.a_server_restart_loses_nothing(
        nats_server, config, tmp_path / "work.log", N // 2, nodes,
        kill=how == "kill-9", may_run_again=4 + 8 + 8,
    )  # fmt: skip
