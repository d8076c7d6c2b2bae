"""Entries other programs write to a topic's stream: set aside byte for byte, never fatal.

Whatever an entry holds (binary field names or values, no ``m`` field, a
huge value, JSON of the wrong shape), the broker copies it to
``<topic>:dead`` with its fields unchanged, acknowledges it, counts it, and
delivers the entries behind it. The ``redis`` source does the same through
the same function.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis
from chute.message import Message, decode_message
from chute_plugins.brokers.redis_streams import RedisBroker
from chute_plugins.sources.redis_stream import RedisStreamSource
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.redis_server import drop_prefix, shared_url, unique_prefix
from tests.sources.conftest import Collector, build, make_context, until_caught_up

pytestmark = pytest.mark.redis

HEAD = 6
"""Fields a dead entry puts first: chute-error, chute-id, chute-group (name and value)."""


def msgs(n: int, start: int = 0) -> list[Message]:
    return [Message(key=f"k{i}", data={"n": i}) for i in range(start, start + n)]


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(shared_url())
    yield client
    await client.aclose()


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[RedisBroker]:
    b = RedisBroker(redis_url)
    await b.start()
    await b.declare_topic("jobs", capacity=1000)
    await b.ensure_group("jobs", "work", visibility_timeout=0.3)
    yield b
    await b.aclose()


async def drain(b: RedisBroker) -> list[Message]:
    got: list[Message] = []
    while batch := await b.read("jobs", "work", "c", count=100, block=0.3):
        got.extend(batch)
        await b.ack("jobs", "work", [m.id for m in batch])
    return got


async def raw_entries(raw: aioredis.Redis, key: str) -> list[tuple[bytes, list[bytes]]]:
    """Entries with their fields as the flat list Redis keeps (repeated names and all)."""
    # redis-py would parse the fields into a dict, keeping one of each repeated name.
    raw.set_response_callback("XRANGE", lambda reply, **_: reply)
    reply = await raw.execute_command("XRANGE", key, "-", "+")  # type: ignore[no-untyped-call]
    return [(entry_id, list(fields)) for entry_id, fields in reply]


def redis_cli_xadd_stdin(url: str, key: str, field: str, value: bytes) -> None:
    """``printf ... | redis-cli -x XADD key '*' field``: the issue's reproduction, as a user types it."""
    subprocess.run(["redis-cli", "-u", url, "-x", "XADD", key, "*", field], input=value,
                   check=True, capture_output=True, timeout=10)  # fmt: skip


async def test_a_binary_entry_from_redis_cli_is_set_aside_and_the_rest_run(
    broker: RedisBroker, raw: aioredis.Redis
) -> None:
    key = broker.prefix + "jobs"
    await broker.publish("jobs", msgs(1))
    redis_cli_xadd_stdin(shared_url(), key, "m", b"\xff\xfe\x00\x01")
    await broker.publish("jobs", msgs(1, 1))
    got = await drain(broker)
    assert [m.data for m in got] == [{"n": 0}, {"n": 1}]
    assert broker.invalid == 1
    [(_, fields)] = await raw_entries(raw, key + ":dead")
    assert fields[HEAD:] == [b"m", b"\xff\xfe\x00\x01"]
    assert fields[4:6] == [b"chute-group", b"work"]
    assert (await raw.xpending(key, "work"))["pending"] == 0


async def test_a_restarted_broker_is_not_stopped_by_a_foreign_entry_it_held(
    redis_url: str, raw: aioredis.Redis
) -> None:
    first = RedisBroker(redis_url)
    await first.start()
    await first.declare_topic("jobs", capacity=100)
    await first.ensure_group("jobs", "work", visibility_timeout=0.2)
    key = first.prefix + "jobs"
    await raw.xadd(key, {b"\x80name": b"\xc3\x28", b"m": b"[1, 2]"})
    await first.publish("jobs", msgs(3))
    await first.aclose()  # never read: the second run meets the entry first
    second = RedisBroker(redis_url)
    await second.start()
    try:
        await second.declare_topic("jobs", capacity=100)
        await second.ensure_group("jobs", "work", visibility_timeout=0.2)
        got = await asyncio.wait_for(drain(second), 10)
        assert [m.data for m in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
        [(_, fields)] = await raw_entries(raw, key + ":dead")
        assert fields[HEAD:] == [b"\x80name", b"\xc3\x28", b"m", b"[1, 2]"]
    finally:
        await second.aclose()


@pytest.mark.parametrize(
    "fields",
    [
        {b"m": b"x" * (8 << 20)},  # huge
        {b"m": b'{"data": 1, "attempt": "three"}'},  # a wrong type inside
        {b"m": b'"just a string"'},
        {b"other": b"1", b"m": b"{}"},  # m not first: not ours
        {b"": b""},
    ],
    ids=["huge", "wrong-type", "not-an-object", "m-not-first", "empty-name"],
)
async def test_entries_of_every_odd_shape_are_set_aside(
    broker: RedisBroker, raw: aioredis.Redis, fields: dict[bytes, bytes]
) -> None:
    key = broker.prefix + "jobs"
    await raw.xadd(key, fields)  # type: ignore[arg-type]
    await broker.publish("jobs", msgs(1))
    got = await drain(broker)
    assert [m.data for m in got] == [{"n": 0}]
    [(_, dead)] = await raw_entries(raw, key + ":dead")
    assert dead[HEAD:] == [b for pair in fields.items() for b in pair]
    assert broker.invalid == 1


def _ours(fields: list[tuple[bytes, bytes]]) -> bool:
    """Whether the broker may take an entry as a message (the first field is ``m``, valid)."""
    if not fields or fields[0][0] != b"m":
        return False
    try:
        decode_message(fields[0][1])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return True


field_maps = st.lists(
    st.tuples(st.binary(max_size=24) | st.sampled_from([b"m", b"key", b"data"]),
              st.binary(max_size=64) | st.sampled_from([b"{}", b"null", b'{"id": 5}',
                                                        b'{"attempt": -1}', b"\xff"])),
    min_size=1,
    max_size=4,
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=st.lists(field_maps, min_size=1, max_size=5))
def test_any_field_maps_on_a_live_topic_are_delivered_or_set_aside_never_lost(
    entries: list[list[tuple[bytes, bytes]]],
) -> None:
    asyncio.run(_throw_at_live_topic(entries))


async def _throw_at_live_topic(entries: list[list[tuple[bytes, bytes]]]) -> None:
    url, prefix = shared_url(), unique_prefix()
    raw = aioredis.Redis.from_url(url)
    broker = RedisBroker(f"{url}?prefix={prefix}")
    await broker.start()
    try:
        await broker.declare_topic("jobs", capacity=1000)
        await broker.ensure_group("jobs", "work", visibility_timeout=5)
        key = prefix + "jobs"
        good = await broker.publish("jobs", msgs(1))
        foreign = []
        for fields in entries:
            flat = [b for pair in fields for b in pair]
            foreign.append(await raw.execute_command("XADD", key, "*", *flat))  # type: ignore[no-untyped-call]
            good += await broker.publish("jobs", msgs(1, len(good)))
        got = await drain(broker)
        delivered = {m.id for m in got}
        assert set(good) <= delivered, "a good message behind a foreign entry was not delivered"
        dead = {fields[3]: fields[HEAD:] for _, fields in await raw_entries(raw, key + ":dead")}
        for entry_id, fields in zip(foreign, entries, strict=True):
            if _ours(fields):
                assert entry_id.decode() in delivered
            else:
                assert dead[entry_id] == [b for pair in fields for b in pair], "bytes changed"
        assert broker.invalid == len(dead)
        assert (await raw.xpending(key, "work"))["pending"] == 0
    finally:
        await broker.aclose()
        await raw.aclose()
        drop_prefix(url, prefix)


async def test_the_redis_source_sets_aside_binary_field_names_byte_for_byte(
    raw: aioredis.Redis, tmp_path: Path
) -> None:
    prefix = unique_prefix()
    stream = prefix + "orders"
    try:
        await raw.xadd(stream, {b"\xff\xfename": b"\x00\x01", b"order": b"o-1"})
        await raw.xadd(stream, {b"order": b"o-2"})
        src = build(RedisStreamSource, {"url": shared_url(), "stream": stream},
                    make_context(tmp_path))  # fmt: skip
        out = Collector()
        await until_caught_up(src, out)
        assert [m.data for m in out.messages] == [{"order": "o-2"}]
        [(_, fields)] = await raw_entries(raw, stream + ":dead")
        assert fields[:2] == [b"chute-error", b"not UTF-8"]
        assert fields[4:] == [b"\xff\xfename", b"\x00\x01", b"order", b"o-1"]
        assert src.invalid == 1
    finally:
        drop_prefix(shared_url(), prefix)
