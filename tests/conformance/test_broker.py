"""One suite over every broker backend: a backend is done when this passes."""

from __future__ import annotations

import asyncio
import re
import time

import anyio
import pytest
from chute.broker import Broker, Browsable
from chute.message import Message

VT = 0.3  # visibility timeout used where redelivery is under test


def msgs(n: int, start: int = 0) -> list[Message]:
    return [Message(key=f"k{i}", data={"n": i}) for i in range(start, start + n)]


def stream_id(message_id: str) -> tuple[int, int]:
    assert re.fullmatch(r"\d+-\d+", message_id), message_id
    ms, seq = message_id.split("-")
    return int(ms), int(seq)


async def setup(broker: Broker, *groups: str, capacity: int = 1000, vt: float = 30.0) -> None:
    await broker.declare_topic("t", capacity=capacity)
    for g in groups:
        await broker.ensure_group("t", g, visibility_timeout=vt)


async def test_ids_are_stream_form_and_increasing(broker: Broker) -> None:
    await setup(broker, "g")
    ids = await broker.publish("t", msgs(5))
    ids += await broker.publish("t", msgs(5, 5))
    keys = [stream_id(i) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == 10
    got = await broker.read("t", "g", "c", count=100, block=None)
    assert [m.id for m in got] == ids
    assert [m.data for m in got] == [{"n": i} for i in range(10)]
    assert all(m.attempt == 1 for m in got)


async def test_every_group_gets_every_message(broker: Broker) -> None:
    await setup(broker, "a", "b")
    ids = await broker.publish("t", msgs(20))
    for group in ("a", "b"):
        got = await broker.read("t", group, "c", count=100, block=None)
        assert [m.id for m in got] == ids


async def test_consumers_in_a_group_share_without_duplicates(broker: Broker) -> None:
    await setup(broker, "g")
    ids = await broker.publish("t", msgs(30))
    first = await broker.read("t", "g", "c1", count=10, block=None)
    second = await broker.read("t", "g", "c2", count=100, block=None)
    assert len(first) == 10 and len(second) == 20
    assert {m.id for m in first} | {m.id for m in second} == set(ids)
    assert not {m.id for m in first} & {m.id for m in second}


async def test_read_blocks_until_a_publish(broker: Broker) -> None:
    await setup(broker, "g")

    async def later() -> None:
        await asyncio.sleep(0.05)
        await broker.publish("t", msgs(1))

    task = asyncio.create_task(later())
    got = await broker.read("t", "g", "c", count=10, block=5.0)
    await task
    assert [m.data for m in got] == [{"n": 0}]


async def test_read_times_out_empty(broker: Broker) -> None:
    await setup(broker, "g")
    start = time.monotonic()
    assert await broker.read("t", "g", "c", count=10, block=0.1) == []
    assert time.monotonic() - start >= 0.09


async def test_a_new_group_starts_at_the_earliest_retained_message_by_default(
    broker: Broker,
) -> None:
    # Published before any reader existed (``chute publish`` then ``chute run``).
    await broker.declare_topic("t", capacity=100)
    before = await broker.publish("t", msgs(3))
    await broker.ensure_group("t", "late", visibility_timeout=30)
    after = await broker.publish("t", msgs(2, 3))
    got = await broker.read("t", "late", "c", count=10, block=None)
    assert [m.id for m in got] == before + after


async def test_a_new_group_may_start_at_the_latest(broker: Broker) -> None:
    await setup(broker, "early")
    await broker.publish("t", msgs(3))
    await broker.ensure_group("t", "late", visibility_timeout=30, start="latest")
    ids = await broker.publish("t", msgs(2, 3))
    got = await broker.read("t", "late", "c", count=10, block=None)
    assert [m.id for m in got] == ids


async def test_an_existing_group_keeps_its_place(broker: Broker) -> None:
    await setup(broker, "g")
    await broker.publish("t", msgs(3))
    got = await broker.read("t", "g", "c", count=10, block=None)
    await broker.ack("t", "g", [m.id for m in got])
    await broker.ensure_group("t", "g", visibility_timeout=30)  # a restart declares it again
    assert await broker.read("t", "g", "c", count=10, block=None) == []


async def test_a_retry_waiting_out_its_delay_is_pending_but_not_stalled(broker: Broker) -> None:
    # The shard operator takes a shard out when its oldest pending delivery is
    # older than ``stall``: a retry waiting out its delay must not look stuck.
    await setup(broker, "g", vt=300)
    [message_id] = await broker.publish("t", msgs(1))
    await broker.read("t", "g", "c", count=10, block=None)
    await broker.nack("t", "g", [message_id], delay=2.0)
    stats = (await broker.stats("t")).group("g")
    assert stats.pending == 1
    assert stats.oldest_pending_age < 1.0, stats
    assert await broker.read("t", "g", "c", count=10, block=0.5) == []
    [again] = await broker.read("t", "g", "c", count=10, block=5.0)
    assert (again.id, again.attempt) == (message_id, 2)
    await asyncio.sleep(0.2)
    stats = (await broker.stats("t")).group("g")
    assert stats.pending == 1 and 0.1 <= stats.oldest_pending_age < 1.5, stats
    await broker.ack("t", "g", [again.id])
    assert (await broker.stats("t")).group("g").pending == 0


async def test_a_delay_longer_than_the_visibility_timeout_is_kept(broker: Broker) -> None:
    await setup(broker, "g", vt=VT)
    [message_id] = await broker.publish("t", msgs(1))
    await broker.read("t", "g", "c", count=10, block=None)
    start = time.monotonic()
    await broker.nack("t", "g", [message_id], delay=VT * 4)
    # Not taken back as a stale delivery once the visibility timeout has passed.
    assert await broker.read("t", "g", "other", count=10, block=VT * 2) == []
    [again] = await broker.read("t", "g", "other", count=10, block=VT * 8)
    assert time.monotonic() - start >= VT * 4 - 0.05
    assert (again.id, again.attempt) == (message_id, 2)
    assert await broker.read("t", "g", "other", count=10, block=None) == []


async def test_a_retry_acked_while_it_waits_is_not_delivered(broker: Broker) -> None:
    await setup(broker, "g", vt=VT)
    ids = await broker.publish("t", msgs(2))
    await broker.read("t", "g", "c", count=10, block=None)
    await broker.nack("t", "g", ids, delay=0.2)
    await broker.ack("t", "g", ids[:1])
    got = await broker.read("t", "g", "c", count=10, block=2.0)
    assert [m.id for m in got] == ids[1:]


async def test_acked_messages_are_not_redelivered(broker: Broker) -> None:
    await setup(broker, "g", vt=VT)
    await broker.publish("t", msgs(5))
    got = await broker.read("t", "g", "c1", count=10, block=None)
    await broker.ack("t", "g", [m.id for m in got])
    await asyncio.sleep(VT + 0.1)
    assert await broker.read("t", "g", "c2", count=10, block=0.2) == []
    stats = await broker.stats("t")
    assert stats.group("g").pending == 0 and stats.group("g").acked == 5


async def test_stale_delivery_goes_to_another_consumer(broker: Broker) -> None:
    await setup(broker, "g", vt=VT)
    ids = await broker.publish("t", msgs(3))
    first = await broker.read("t", "g", "vanished", count=10, block=None)
    assert [m.attempt for m in first] == [1, 1, 1]
    assert await broker.read("t", "g", "alive", count=10, block=None) == []
    again = await broker.read("t", "g", "alive", count=10, block=VT * 4)
    assert sorted(m.id for m in again) == sorted(ids)
    assert all(m.attempt == 2 for m in again)
    assert [m.data for m in sorted(again, key=lambda m: stream_id(m.id))] == [
        {"n": i} for i in range(3)
    ]


async def test_extended_deliveries_are_not_redelivered_while_they_run(broker: Broker) -> None:
    await setup(broker, "g", vt=VT)
    ids = await broker.publish("t", msgs(2))
    running = await broker.read("t", "g", "worker", count=10, block=None)
    assert [m.id for m in running] == ids
    await broker.ack("t", "g", [ids[1]])
    deadline = time.monotonic() + VT * 4
    while time.monotonic() < deadline:  # the heartbeat of a long item, at a third of VT
        await broker.extend("t", "g", [m.id for m in running])  # ids[1] is acked: ignored
        assert await broker.read("t", "g", "other", count=10, block=VT / 3) == []
    # The heartbeat stops (the worker died): the delivery comes back, one attempt later.
    [again] = await broker.read("t", "g", "other", count=10, block=VT * 4)
    assert (again.id, again.attempt) == (ids[0], 2)
    assert (await broker.stats("t")).group("g").pending == 1
    await broker.extend("t", "g", ["0-1"])  # never delivered: ignored


async def test_a_topic_no_group_reads_keeps_its_last_capacity_entries(broker: Broker) -> None:
    # Dead letters, or an output read from outside: nobody acknowledges, so
    # capacity is a retention limit there, never back-pressure (a pool must not
    # stall on its dead letters) nor unbounded growth.
    await setup(broker, capacity=16)
    for start in range(0, 200, 10):
        with anyio.fail_after(5):
            await broker.publish("t", msgs(10, start))
    stats = await broker.stats("t")
    assert 16 <= stats.length <= 16 + 16 // 8 + 10  # one publish's worth of slack
    assert stats.dropped == 200 - stats.length


async def test_nack_redelivers_after_the_delay(broker: Broker) -> None:
    await setup(broker, "g")
    [message_id] = await broker.publish("t", msgs(1))
    [m] = await broker.read("t", "g", "c", count=10, block=None)
    start = time.monotonic()
    await broker.nack("t", "g", [m.id], delay=0.3)
    assert await broker.read("t", "g", "c", count=10, block=None) == []
    [again] = await broker.read("t", "g", "c", count=10, block=3.0)
    assert time.monotonic() - start >= 0.25
    assert again.id == message_id and again.attempt == 2 and again.data == {"n": 0}
    await broker.ack("t", "g", [again.id])
    assert (await broker.stats("t")).group("g").pending == 0


async def test_nack_without_delay_is_due_at_once(broker: Broker) -> None:
    await setup(broker, "g")
    await broker.publish("t", msgs(2))
    got = await broker.read("t", "g", "c", count=10, block=None)
    await broker.nack("t", "g", [got[0].id])
    again = await broker.read("t", "g", "c", count=10, block=2.0)
    assert [(m.id, m.attempt) for m in again] == [(got[0].id, 2)]


async def test_an_uncounted_nack_comes_back_with_the_same_attempt(broker: Broker) -> None:
    # A pool gives a delivery back uncounted when it did not work on it (a stop,
    # a key running elsewhere); a counted nack (a failure) still counts.
    await setup(broker, "g")
    [message_id] = await broker.publish("t", msgs(1))
    [m] = await broker.read("t", "g", "c", count=10, block=None)
    await broker.nack("t", "g", [m.id], counted=False)
    [again] = await broker.read("t", "g", "c", count=10, block=2.0)
    assert (again.id, again.attempt) == (message_id, 1)
    await broker.nack("t", "g", [again.id])
    [third] = await broker.read("t", "g", "c", count=10, block=2.0)
    await broker.nack("t", "g", [third.id], counted=False)
    [fourth] = await broker.read("t", "g", "c", count=10, block=2.0)
    assert (third.attempt, fourth.attempt) == (2, 2)
    await broker.ack("t", "g", [fourth.id])
    assert (await broker.stats("t")).group("g").pending == 0


async def test_full_topic_applies_back_pressure(broker: Broker) -> None:
    await setup(broker, "g", capacity=10)
    await broker.publish("t", msgs(10))
    blocked = asyncio.create_task(broker.publish("t", msgs(5, 10)))
    await asyncio.sleep(0.2)
    assert not blocked.done(), "a full topic must make the publisher wait"
    got = await broker.read("t", "g", "c", count=10, block=None)
    await broker.ack("t", "g", [m.id for m in got])
    await asyncio.wait_for(blocked, 5.0)
    rest = await broker.read("t", "g", "c", count=10, block=1.0)
    assert [m.data["n"] for m in rest] == list(range(10, 15))


async def test_unacked_entries_survive_trimming(broker: Broker) -> None:
    await setup(broker, "g", capacity=20, vt=VT)
    await broker.publish("t", msgs(10))
    got = await broker.read("t", "g", "c", count=10, block=None)
    keep = got[0]
    await broker.ack("t", "g", [m.id for m in got[1:]])
    # Push enough through that a trimming backend would want to drop the head.
    for start in range(10, 100, 10):
        unread = set(await broker.publish("t", msgs(10, start)))
        while unread:  # on a slow machine ``keep`` may come back in between: leave it be
            more = await broker.read("t", "g", "c", count=10, block=1.0)
            assert more, f"{len(unread)} published entries were never delivered"
            unread -= {m.id for m in more}
            await broker.ack("t", "g", [m.id for m in more if m.id != keep.id])
    again = await broker.read("t", "g", "c2", count=10, block=VT * 4)
    assert [(m.id, m.data) for m in again] == [(keep.id, keep.data)]


async def test_stats_report_lag_pending_and_age(broker: Broker) -> None:
    await setup(broker, "g")
    await broker.publish("t", msgs(10))
    got = await broker.read("t", "g", "c", count=4, block=None)
    await broker.ack("t", "g", [got[0].id])
    await asyncio.sleep(0.1)
    stats = await broker.stats("t")
    g = stats.group("g")
    assert (g.lag, g.pending, g.acked) == (6, 3, 1)
    assert g.oldest_pending_age >= 0.05
    assert stats.length >= 9 and stats.published == 10
    assert stats.backlog("g") == 9


async def test_ack_of_unknown_ids_is_ignored(broker: Broker) -> None:
    await setup(broker, "g")
    await broker.publish("t", msgs(1))
    await broker.ack("t", "g", ["1-1", "999999999999-5"])
    got = await broker.read("t", "g", "c", count=10, block=None)
    assert len(got) == 1


@pytest.mark.parametrize("batch", [1, 7, 500])
async def test_concurrent_producer_and_consumers_lose_nothing(broker: Broker, batch: int) -> None:
    await setup(broker, "g", capacity=200)
    total = 3000
    seen: list[int] = []

    async def produce() -> None:
        for start in range(0, total, batch):
            await broker.publish("t", msgs(min(batch, total - start), start))

    async def consume(name: str) -> None:
        while len(seen) < total:
            got = await broker.read("t", "g", name, count=64, block=0.2)
            seen.extend(m.data["n"] for m in got)
            await broker.ack("t", "g", [m.id for m in got])

    await asyncio.wait_for(asyncio.gather(produce(), consume("c1"), consume("c2")), timeout=60)
    assert sorted(seen) == list(range(total))


# -- browsing (the API's /v1/items) ------------------------------------------------


async def test_browsing_lists_the_newest_messages_the_topic_holds_without_delivering_them(
    broker: Broker,
) -> None:
    assert isinstance(broker, Browsable)
    await setup(broker, "g")
    ids = await broker.publish("t", msgs(5))
    held = await broker.browse("t", limit=100)
    assert [(m.id, m.key, m.data) for m in held] == [
        (i, f"k{n}", {"n": n}) for n, i in enumerate(ids)
    ]
    assert [m.id for m in await broker.browse("t", limit=2)] == ids[-2:]
    # Browsing took nothing from the group: it still gets every message.
    got = await broker.read("t", "g", "c", count=100, block=None)
    assert [m.id for m in got] == ids
    await broker.ack("t", "g", ids[:3])
    assert [m.id for m in await broker.browse("t", limit=100)] == ids[3:]
    assert [m.id for m in await broker.browse("t", limit=1)] == ids[4:]
    await broker.ack("t", "g", ids[3:])
    assert await broker.browse("t", limit=100) == []
    assert await broker.browse("never declared", limit=100) == []


async def test_browsing_a_topic_no_group_reads_lists_what_it_retains(broker: Broker) -> None:
    assert isinstance(broker, Browsable)
    await setup(broker, capacity=3)
    ids = await broker.publish("t", msgs(5))
    held = await broker.browse("t", limit=100)
    # The newest ones, as many as the stats count (retention may lag a publish behind).
    assert 3 <= len(held) == (await broker.stats("t")).length
    assert [(m.id, m.data) for m in held] == [(i, {"n": n}) for n, i in enumerate(ids)][
        -len(held) :
    ]
