"""The broker backends the conformance suite runs over.

Each entry is an async context manager factory yielding a started broker with
a fresh namespace. The Redis and NATS backends add themselves here.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path

import fakeredis
from chute.broker import Broker
from chute_plugins.brokers.local import LocalBroker
from chute_plugins.brokers.memory import MemoryBroker
from chute_plugins.brokers.nats_jetstream import JetStreamBroker
from chute_plugins.brokers.redis_streams import RedisBroker

from tests.nats_server import shared_nats_url
from tests.nats_server import unique_prefix as nats_prefix
from tests.redis_server import drop_prefix, shared_url, unique_prefix


@asynccontextmanager
async def memory_broker() -> AsyncIterator[Broker]:
    broker = MemoryBroker()
    await broker.start()
    try:
        yield broker
    finally:
        await broker.aclose()


@asynccontextmanager
async def local_broker(url: str = "local") -> AsyncIterator[Broker]:
    """The durable local broker on a fresh file, reopened once so the suite also runs
    over state read back from disk."""
    with tempfile.TemporaryDirectory(prefix="chute-local-") as work:
        first = LocalBroker(url, workdir=Path(work))
        await first.start()
        await first.aclose()
        broker = LocalBroker(url, workdir=Path(work))
        await broker.start()
        try:
            yield broker
        finally:
            await broker.aclose()


@asynccontextmanager
async def fakeredis_broker() -> AsyncIterator[Broker]:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    broker = RedisBroker("redis://fakeredis/0", client=client, trim_every=64)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.aclose()
        await client.aclose()


@asynccontextmanager
async def redis_broker() -> AsyncIterator[Broker]:
    """A real Redis (see tests/redis_server.py); each broker in its own key namespace."""
    url = shared_url()
    prefix = unique_prefix()
    # Trim often, so the suite's small runs exercise trimming too.
    broker = RedisBroker(f"{url}?prefix={prefix}", trim_every=64)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.aclose()
        drop_prefix(url, prefix)


@asynccontextmanager
async def nats_broker() -> AsyncIterator[Broker]:
    """A real nats-server with JetStream (tests/nats_server.py); each broker its own prefix."""
    broker = JetStreamBroker(f"{shared_nats_url()}?prefix={nats_prefix()}")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.delete_all()
        await broker.aclose()


BACKENDS: dict[str, Callable[[], AbstractAsyncContextManager[Broker]]] = {
    "memory": memory_broker,
    "local": local_broker,
    "local-power": partial(local_broker, "local?durability=power"),
    "fakeredis": fakeredis_broker,
    "redis": redis_broker,
    "nats": nats_broker,
}

REAL_REDIS = frozenset({"redis"})
"""Backends that need a redis-server (tests on them are marked ``redis``)."""
