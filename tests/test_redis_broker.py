"""What the Redis broker does beyond the shared conformance suite: outages, trimming,
foreign writers, several nodes on one Redis."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from chute.errors import BrokerUnavailable, ChuteError
from chute.message import Message
from chute_plugins.brokers import redis_retries as retries
from chute_plugins.brokers.redis_streams import RedisBroker
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.redis


def msgs(n: int, start: int = 0) -> list[Message]:
    return [Message(key=f"k{i}", data={"n": i}) for i in range(start, start + n)]


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[RedisBroker]:
    b = RedisBroker(redis_url, trim_every=50)
    await b.start()
    yield b
    await b.aclose()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url.partition("?")[0])
    yield client
    await client.aclose()


async def drain(b: RedisBroker, group: str, consumer: str, block: float = 0.5) -> list[Message]:
    got: list[Message] = []
    while batch := await b.read("t", group, consumer, count=100, block=block):
        got.extend(batch)
        await b.ack("t", group, [m.id for m in batch])
    return got


async def test_trimming_bounds_the_stream_but_keeps_what_a_group_needs(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    await broker.declare_topic("t", capacity=1000)
    await broker.ensure_group("t", "fast", visibility_timeout=30)
    await broker.ensure_group("t", "slow", visibility_timeout=30)
    key = broker.prefix + "t"
    await broker.publish("t", msgs(10))
    slow = await broker.read("t", "slow", "c", count=1, block=None)  # held, never acked
    for start in range(10, 1000, 10):
        await broker.publish("t", msgs(10, start))
        await drain(broker, "fast", "c", block=0.0)
    await drain(broker, "fast", "c", block=0.0)
    # The slow group needs everything from its pending entry on: nothing is trimmed.
    assert await raw.xlen(key) == 1000
    rest = await drain(broker, "slow", "c", block=0.0)
    assert len(rest) == 999
    await broker.ack("t", "slow", [slow[0].id])
    for start in range(1000, 1100, 10):  # more acks on both groups trigger a trim
        await broker.publish("t", msgs(10, start))
        await drain(broker, "fast", "c", block=0.0)
        await drain(broker, "slow", "c", block=0.0)
    assert await raw.xlen(key) < 300, "acknowledged entries were never trimmed"


async def test_entries_deleted_under_a_pending_delivery_are_reported(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    await broker.declare_topic("t", capacity=100)
    await broker.ensure_group("t", "g", visibility_timeout=0.2)
    ids = await broker.publish("t", msgs(3))
    await broker.read("t", "g", "gone", count=10, block=None)
    await raw.xdel(broker.prefix + "t", ids[1])
    again = await broker.read("t", "g", "alive", count=10, block=2.0)
    assert sorted(m.id for m in again) == [ids[0], ids[2]]
    assert broker.lost_entries == 1
    await broker.ack("t", "g", [m.id for m in again])
    assert (await broker.stats("t")).group("g").pending == 0


async def test_foreign_entries_are_dead_lettered_and_the_rest_delivered(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    await broker.declare_topic("t", capacity=100)
    await broker.ensure_group("t", "g", visibility_timeout=0.2)
    key = broker.prefix + "t"
    await broker.publish("t", msgs(1))
    await raw.xadd(key, {"temperature": "21.5"})
    await raw.xadd(key, {"m": "{not json"})
    await broker.publish("t", msgs(1, 1))
    got = await drain(broker, "g", "c", block=0.5)
    assert [m.data for m in got] == [{"n": 0}, {"n": 1}]
    assert broker.invalid == 2
    dead = await raw.xrange(key + ":dead")
    assert [entry[b"chute-group"] for _, entry in dead] == [b"g", b"g"]
    assert [entry.get(b"temperature", entry.get(b"m")) for _, entry in dead] == [
        b"21.5",
        b"{not json",
    ]
    assert (await broker.stats("t")).group("g").pending == 0


async def test_nack_longer_than_the_visibility_timeout_waits_for_its_delay(
    broker: RedisBroker,
) -> None:
    await broker.declare_topic("t", capacity=100)
    await broker.ensure_group("t", "g", visibility_timeout=0.2)
    [message_id] = await broker.publish("t", msgs(1))
    await broker.read("t", "g", "c", count=1, block=None)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await broker.nack("t", "g", [message_id], delay=1.0)
    assert await broker.read("t", "g", "c", count=1, block=0.6) == []
    [again] = await broker.read("t", "g", "c", count=1, block=3.0)
    assert loop.time() - start >= 0.95
    assert (again.id, again.attempt) == (message_id, 2)


async def test_consumers_are_named_by_node_and_process(redis_url: str, raw: aioredis.Redis) -> None:
    b = RedisBroker(redis_url + "&node=edge-7")
    await b.start()
    try:
        await b.declare_topic("t", capacity=100)
        await b.ensure_group("t", "g", visibility_timeout=30)
        await b.publish("t", msgs(1))
        await b.read("t", "g", "worker", count=1, block=None)
        consumers = await raw.xinfo_consumers(b.prefix + "t", "g")
        assert [c["name"] for c in consumers] == [f"worker@edge-7:{os.getpid()}".encode()]
    finally:
        await b.aclose()


async def test_a_full_topic_waits_for_acks_made_by_another_node(redis_url: str) -> None:
    producer, consumer = RedisBroker(redis_url), RedisBroker(redis_url)
    await producer.start()
    await consumer.start()
    try:
        for b in (producer, consumer):
            await b.declare_topic("t", capacity=10)
            await b.ensure_group("t", "g", visibility_timeout=30)
        await producer.publish("t", msgs(10))
        blocked = asyncio.create_task(producer.publish("t", msgs(5, 10)))
        await asyncio.sleep(0.3)
        assert not blocked.done(), "a full topic must make the publisher wait"
        got = await consumer.read("t", "g", "c", count=10, block=None)
        await consumer.ack("t", "g", [m.id for m in got])
        await asyncio.wait_for(blocked, 5.0)
        rest = await consumer.read("t", "g", "c", count=10, block=1.0)
        assert [m.data["n"] for m in rest] == list(range(10, 15))
    finally:
        await producer.aclose()
        await consumer.aclose()


async def test_start_fails_clearly_when_redis_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        b = RedisBroker(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5)
        with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}"):
            await b.start()
        await b.aclose()


@pytest.mark.parametrize("kill", [False, True], ids=["restart", "kill-9"])
async def test_redis_outage_loses_nothing_and_the_broker_recovers(
    redis_server: RedisServer, kill: bool
) -> None:
    url = f"{redis_server.url}?prefix={unique_prefix()}"
    b = RedisBroker(url)
    await b.start()
    try:
        await b.declare_topic("t", capacity=1000)
        await b.ensure_group("t", "g", visibility_timeout=0.5)
        await b.publish("t", msgs(100))
        first = await b.read("t", "g", "c", count=40, block=None)
        await b.ack("t", "g", [m.id for m in first])
        held = await b.read("t", "g", "c", count=10, block=None)  # in flight at the crash

        redis_server.stop(kill=kill)
        assert await b.read("t", "g", "c", count=10, block=0.3) == []
        assert b.healthy is False
        publishing = asyncio.create_task(b.publish("t", msgs(20, 100)))
        await asyncio.sleep(0.3)
        assert not publishing.done()
        redis_server.start()
        await asyncio.wait_for(publishing, 10)
        assert b.healthy is True

        rest = await drain(b, "g", "c2", block=1.0)
        seen = {m.data["n"] for m in first} | {m.data["n"] for m in rest}
        assert seen == set(range(120))
        assert not {m.data["n"] for m in first} & {m.data["n"] for m in rest}, "acked came back"
        assert {m.data["n"] for m in held} <= {m.data["n"] for m in rest}
        assert (await b.stats("t")).group("g").pending == 0
    finally:
        await b.aclose()


async def test_a_read_while_redis_is_down_returns_at_its_deadline(
    redis_server: RedisServer,
) -> None:
    b = RedisBroker(f"{redis_server.url}?prefix={unique_prefix()}")
    await b.start()
    try:
        await b.declare_topic("t", capacity=100)
        await b.ensure_group("t", "g", visibility_timeout=0.2)
        await b.read("t", "g", "c", count=1, block=None)
        redis_server.stop(kill=True)
        await asyncio.sleep(0.1)  # the look for stale deliveries is due: it must not hang either
        for block in (0.3, None):
            assert await asyncio.wait_for(b.read("t", "g", "c", count=1, block=block), 5) == []
        assert not b.healthy
    finally:
        await b.aclose()


async def test_consumers_of_processes_long_gone_are_forgotten(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    broker.forget_consumers_after = 0.1
    await broker.declare_topic("t", capacity=1000)
    await broker.ensure_group("t", "g", visibility_timeout=30)
    await broker.publish("t", msgs(2))
    done = await broker.read("t", "g", "gone-empty", count=1, block=None)
    await broker.ack("t", "g", [m.id for m in done])
    await broker.read("t", "g", "gone-holding", count=1, block=None)  # never acked
    await asyncio.sleep(0.2)
    for start in range(0, 60, 10):  # enough acks (trim_every=50) for a trim
        await broker.publish("t", msgs(10, start))
        await drain(broker, "g", "live", block=0.0)
    names = {c["name"].split(b"@")[0] for c in await raw.xinfo_consumers(broker.prefix + "t", "g")}
    assert names == {b"gone-holding", b"live"}, "deleting gone-holding would lose its delivery"


async def test_a_topic_whose_key_is_not_a_stream_is_a_clear_error(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    await raw.set(broker.prefix + "t", "someone else's string")
    with pytest.raises(ChuteError, match="other than a stream"):
        await broker.ensure_group("t", "g", visibility_timeout=30)


async def test_a_read_of_nothing_reads_nothing(broker: RedisBroker) -> None:
    await broker.declare_topic("t", capacity=100)
    await broker.ensure_group("t", "g", visibility_timeout=30)
    await broker.publish("t", msgs(3))
    assert await broker.read("t", "g", "c", count=0, block=None) == []
    assert len(await broker.read("t", "g", "c", count=10, block=None)) == 3


async def test_a_stream_lost_with_its_group_is_recreated_without_losing_new_messages(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    await broker.declare_topic("t", capacity=100)
    await broker.ensure_group("t", "g", visibility_timeout=30)
    await broker.publish("t", msgs(2))
    await raw.delete(broker.prefix + "t")  # as a Redis restarted without persistence
    ids = await broker.publish("t", msgs(3, 2))
    got = await broker.read("t", "g", "c", count=10, block=1.0)
    assert [m.id for m in got] == ids


async def test_an_uncounted_give_back_run_again_after_a_lost_reply_counts_nothing(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis ran the give-back, then the connection dropped before its reply came:
    # the broker sends it again, and the delivery must still come back as attempt 2.
    real = retries.pipelined
    lost: list[bytes] = []

    async def reply_lost_once(redis: aioredis.Redis, packed: bytes, replies: int) -> list[object]:
        result = await real(redis, packed, replies)
        if b"RETRYCOUNT" in packed and not lost:
            lost.append(packed)
            raise RedisConnectionError("Connection closed by server.")
        return result

    monkeypatch.setattr(retries, "pipelined", reply_lost_once)
    await broker.declare_topic("t", capacity=100)
    await broker.ensure_group("t", "g", visibility_timeout=30)
    await broker.publish("t", msgs(1))
    [first] = await broker.read("t", "g", "c", count=1, block=None)
    await broker.nack("t", "g", [first.id])
    [second] = await broker.read("t", "g", "c", count=1, block=3.0)
    await broker.nack("t", "g", [second.id], counted=False)
    [again] = await broker.read("t", "g", "c", count=1, block=3.0)
    assert lost, "the reply was never lost: the test did not run what it names"
    assert (second.attempt, again.attempt) == (2, 2)
