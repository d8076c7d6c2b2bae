"""Ack only after the outputs accepted: a crash in between duplicates, never loses."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import anyio
import pytest
from chute.message import Message
from chute_plugins.brokers.memory import MemoryBroker

from .helpers import drain, keys, make, publish, take, watch


class Crash(Exception):
    """Stands for the process dying at this point."""


class CrashingBroker(MemoryBroker):
    """Raises Crash on the first call of one kind, optionally only for one topic."""

    def __init__(self, when: str, topic: str = "") -> None:
        super().__init__()
        self.when, self.topic = when, topic

    def _maybe_crash(self, call: str, topic: str) -> None:
        if self.when == call and self.topic in ("", topic):
            self.when = ""
            raise Crash(f"crash in {call} {topic}")

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[str]:
        self._maybe_crash("publish", topic)
        return await super().publish(topic, messages)

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        self._maybe_crash("ack", topic)
        await super().ack(topic, group, ids)


ROWS = [(f"u{i}", {"n": i}) for i in range(10)]
COPY = {"type": "copy", "input": "in", "outputs": ["a", "b"], "batch": 4}


@pytest.mark.parametrize(
    ("when", "topic", "dupes_a", "dupes_b"),
    [
        ("publish", "b", 4, 0),  # a took the first batch, b did not: only a sees it twice
        ("ack", "in", 4, 4),  # both took it, the ack was lost: both see it twice
    ],
)
async def test_crash_between_publish_and_ack_duplicates_never_loses(
    when: str, topic: str, dupes_a: int, dupes_b: int
) -> None:
    broker = CrashingBroker("", "")
    await broker.start()
    await watch(broker, "a", "b")
    # No visibility timeout to wait out: a restarted operator gets the batch at once.
    first = await make(broker, "fanout", COPY, visibility=0.0)
    await publish(broker, "in", ROWS)
    broker.when, broker.topic = when, topic
    with pytest.raises(Crash):
        await drain(first)
    assert (await broker.stats("in")).group("fanout").pending == 4  # the batch is still owed

    restarted = await make(broker, "fanout", COPY, visibility=0.0)
    await drain(restarted)
    want = Counter(k for k, _ in ROWS)
    for out, dupes in (("a", dupes_a), ("b", dupes_b)):
        got = Counter(keys(await take(broker, out)))
        assert set(got) == set(want), f"{out} lost messages"
        assert sum(got.values()) == len(ROWS) + dupes
    assert (await broker.stats("in")).backlog("fanout") == 0
    await broker.aclose()


async def test_run_is_cancelled_mid_stream_and_a_restart_finishes(broker: MemoryBroker) -> None:
    """A shutdown at any point leaves each message either forwarded or still pending."""
    await watch(broker, "a", "b")
    rows = [(f"u{i}", {"n": i}) for i in range(1000)]
    op = await make(broker, "fanout", {**COPY, "batch": 64}, visibility=0.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(op.run)
        await publish(broker, "in", rows[:500])
        got_a = await take(broker, "a", wait=5.0)  # some (maybe all) forwarded so far
        tg.cancel_scope.cancel()
    await publish(broker, "in", rows[500:])
    restarted = await make(broker, "fanout", {**COPY, "batch": 64}, visibility=0.0)
    await drain(restarted)
    got_a += await take(broker, "a")
    got_b = await take(broker, "b")
    for got in (got_a, got_b):
        assert set(keys(got)) == {k for k, _ in rows}
    assert (await broker.stats("in")).backlog("fanout") == 0


async def test_a_full_output_holds_the_input_unacked(broker: MemoryBroker) -> None:
    """Back-pressure: the operator waits for room rather than dropping or acking early."""
    await broker.declare_topic("a", capacity=5)
    await watch(broker, "a")
    op = await make(broker, "fanout", {"type": "copy", "input": "in", "outputs": ["a"]})
    await publish(broker, "in", ROWS)
    async with anyio.create_task_group() as tg:
        tg.start_soon(op.run)
        first = await take(broker, "a", wait=5.0)
        assert 0 < len(first) <= 5
        assert (await broker.stats("in")).group("fanout").pending == 10  # nothing acked yet
        rest: list[Message] = []
        while len(first) + len(rest) < 10:
            rest += await take(broker, "a", wait=5.0)
        tg.cancel_scope.cancel()
    assert keys(first + rest) == [k for k, _ in ROWS]


async def test_stop_finishes_the_batch_in_hand_and_returns(broker: MemoryBroker) -> None:
    await watch(broker, "a", "b")
    op = await make(broker, "fanout", COPY)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(op.run, stop)
        await publish(broker, "in", ROWS)
        got = await take(broker, "a", wait=5.0)
        while len(got) < len(ROWS):
            got += await take(broker, "a", wait=5.0)
        stop.set()  # run returns by itself: the task group exits without a cancel
    assert op.stats().received == len(ROWS)
    assert (await broker.stats("in")).backlog("fanout") == 0
