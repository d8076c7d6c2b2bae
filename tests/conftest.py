"""Fixtures shared across the suite. The servers: see tests/servers.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mqtt_server import MosquittoServer
from tests.multinode import Node
from tests.nats_server import NatsServer
from tests.redis_server import RedisServer, drop_prefix, shared_url, unique_prefix


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests parametrised over the real Redis backend get the ``redis`` marker."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        if "redis" in (callspec.params.get("broker"), callspec.params.get("backend")):
            item.add_marker(pytest.mark.redis)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server that the test may stop, kill and restart."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The shared Redis with a fresh key prefix: ``redis://...?prefix=...``."""
    url = shared_url()
    prefix = unique_prefix()
    yield f"{url}?prefix={prefix}"
    drop_prefix(url, prefix)


@pytest.fixture
def mosquitto() -> Iterator[MosquittoServer]:
    """A private Mosquitto (persistent sessions) that the test may stop and restart."""
    with MosquittoServer() as server:
        yield server


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A private nats-server (JetStream) that the test may stop, kill and restart."""
    with NatsServer() as server:
        yield server


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """``chute run`` processes a test starts (tests/multinode.py): killed at its end."""
    started: list[Node] = []
    yield started
    for node in started:
        node.kill()
