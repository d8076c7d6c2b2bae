"""A connection Redis drops in the middle of a pipelined request: the retry sends it all again.

redis-py empties a pipeline once it has run, even when it failed, so a retry
of ``pipe.execute`` sends nothing and returns ``[]``: writes vanish silently.
Each test here has Redis ``CLIENT KILL`` the connection carrying one
pipelined call site's request (``tests/helpers/redis_proxy.py``) and checks
that what the request was to do was done.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from chute.message import Message
from chute.store import Finish, ItemStatus
from chute_plugins.brokers.redis_streams import RedisBroker
from chute_plugins.sources.redis_stream import RedisStreamSource
from chute_plugins.stores.redis import RedisStore

from tests.helpers.redis_proxy import KillingProxy
from tests.redis_server import drop_prefix, shared_url, unique_prefix
from tests.sources.conftest import Collector, build, make_context, until_caught_up

pytestmark = pytest.mark.redis

VT = 0.4


def msgs(n: int, start: int = 0) -> list[Message]:
    return [Message(key=f"k{i}", data={"n": i}) for i in range(start, start + n)]


@pytest.fixture
async def proxy() -> AsyncIterator[KillingProxy]:
    port = urlsplit(shared_url()).port or 6379
    async with KillingProxy(port) as p:
        yield p


@pytest.fixture
def prefix() -> Iterator[str]:
    p = unique_prefix()
    yield p
    drop_prefix(shared_url(), p)


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(shared_url())
    yield client
    await client.aclose()


@pytest.fixture
async def broker(proxy: KillingProxy, prefix: str) -> AsyncIterator[RedisBroker]:
    b = RedisBroker(f"{proxy.url()}?prefix={prefix}")
    await b.start()
    await b.declare_topic("t", capacity=1000)
    await b.ensure_group("t", "g", visibility_timeout=VT)
    yield b
    await b.aclose()


async def test_a_foreign_entry_set_aside_while_redis_drops_the_connection_reaches_dead(
    broker: RedisBroker, proxy: KillingProxy, raw: aioredis.Redis
) -> None:
    key = broker.prefix + "t"
    await raw.xadd(key, {"temperature": "21.5"})
    await broker.publish("t", msgs(1))
    proxy.arm(b"chute-error")
    got = await broker.read("t", "g", "c", count=10, block=1.0)
    assert proxy.kills == 1
    assert [m.data for m in got] == [{"n": 0}]
    dead = await raw.xrange(key + ":dead")
    assert [f[b"temperature"] for _, f in dead] == [b"21.5"], "the foreign entry was lost"
    assert (await raw.xpending(key, "g"))["pending"] == 1  # only the good one, still held


async def test_a_delayed_retry_stays_delayed_when_its_renewal_is_cut(
    broker: RedisBroker, proxy: KillingProxy
) -> None:
    [message_id] = await broker.publish("t", msgs(1))
    await broker.read("t", "g", "c", count=1, block=None)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await broker.nack("t", "g", [message_id], delay=VT * 5)
    proxy.arm(b"JUSTID")  # the renewal that keeps it from looking stale
    assert await broker.read("t", "g", "c", count=1, block=VT * 3) == [], "the retry fired early"
    assert proxy.kills == 1
    [again] = await broker.read("t", "g", "c", count=1, block=VT * 6)
    assert loop.time() - start >= VT * 5 - 0.05
    assert (again.id, again.attempt) == (message_id, 2)


async def test_a_nack_cut_mid_request_is_still_recorded(
    broker: RedisBroker, proxy: KillingProxy
) -> None:
    [message_id] = await broker.publish("t", msgs(1))
    await broker.read("t", "g", "c", count=1, block=None)
    proxy.arm(b"ZADD")
    await broker.nack("t", "g", [message_id], delay=VT * 3)
    assert proxy.kills == 1
    assert await broker.read("t", "g", "c", count=1, block=VT * 2) == []
    [again] = await broker.read("t", "g", "c", count=1, block=VT * 4)
    assert (again.id, again.attempt) == (message_id, 2)


@pytest.mark.parametrize("trigger", [b"ZREM", b"XPENDING"])
async def test_taking_a_due_retry_cut_mid_request_delivers_it(
    broker: RedisBroker, proxy: KillingProxy, trigger: bytes
) -> None:
    [message_id] = await broker.publish("t", msgs(1))
    await broker.read("t", "g", "c", count=1, block=None)
    await broker.nack("t", "g", [message_id], delay=0.1)
    await asyncio.sleep(0.15)
    proxy.arm(trigger)
    [again] = await broker.read("t", "g", "c", count=1, block=VT * 4)
    assert proxy.kills == 1
    assert (again.id, again.attempt) == (message_id, 2)


async def test_stats_cut_mid_request_are_complete(broker: RedisBroker, proxy: KillingProxy) -> None:
    await broker.publish("t", msgs(5))
    await broker.read("t", "g", "c", count=2, block=None)
    proxy.arm(b"XPENDING")
    g = (await broker.stats("t")).group("g")
    assert proxy.kills == 1
    assert (g.lag, g.pending) == (3, 2)


async def test_the_redis_source_sets_aside_an_unreadable_entry_despite_a_cut(
    proxy: KillingProxy, prefix: str, raw: aioredis.Redis, tmp_path: Path
) -> None:
    stream = prefix + "orders"
    await raw.xadd(stream, {"order": "o-1", "json": "{broken"})
    await raw.xadd(stream, {"order": "o-2", "json": '{"total": 3}'})
    src = build(RedisStreamSource, {"url": proxy.url(), "stream": stream, "data_field": "json"},
                make_context(tmp_path))  # fmt: skip
    out = Collector()
    proxy.arm(b"chute-error")
    await until_caught_up(src, out)
    assert proxy.kills == 1
    assert [m.data for m in out.messages] == [{"total": 3}]
    dead = await raw.xrange(stream + ":dead")
    assert [(f[b"order"], f[b"json"]) for _, f in dead] == [(b"o-1", b"{broken")], "entry lost"


@pytest.mark.parametrize("trigger", [b"EVALSHA", b"HGETALL"])
async def test_the_store_s_pipelines_survive_a_cut(
    proxy: KillingProxy, prefix: str, tmp_path: Path, trigger: bytes
) -> None:
    store = RedisStore(f"{proxy.url()}?prefix={prefix}", tmp_path)
    await store.open()
    try:
        proxy.arm(trigger)
        claims = await store.claim_many("p", ["a", "b"], owner="n1", lease=30)
        assert [c.granted for c in claims] == [True, True]
        await store.finish_many("p", [Finish("a", ItemStatus.DONE, claims[0].token),
                                      Finish("b", ItemStatus.DONE, claims[1].token)])  # fmt: skip
        assert set((await store.get("p", ["a", "b"])).keys()) == {"a", "b"}
        assert proxy.kills == 1
        assert await store.counts() == {"p": {"done": 2}}
    finally:
        await store.aclose()
