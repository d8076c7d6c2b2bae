"""merge: several inputs into one output; a busy input never starves a quiet one."""

from __future__ import annotations

import anyio
from chute.message import Message
from chute_plugins.brokers.memory import MemoryBroker

from .helpers import make, publish, take, watch

MERGE = {"type": "merge", "inputs": ["busy", "quiet"], "output": "all", "batch": 50}


async def _collect(broker: MemoryBroker, n: int) -> list[Message]:
    got: list[Message] = []
    while len(got) < n:
        got += await take(broker, "all", wait=5.0)
    return got


async def test_a_quiet_input_is_served_within_one_busy_batch(broker: MemoryBroker) -> None:
    op = await make(broker, "join", MERGE)
    await watch(broker, "all")
    await publish(broker, "busy", [(f"b{i}", {"i": i}) for i in range(2000)])
    await publish(broker, "quiet", [(f"q{i}", {"i": i}) for i in range(5)])
    async with anyio.create_task_group() as tg:
        tg.start_soon(op.run)
        got = await _collect(broker, 2005)
        # More arrives on the quiet input while the busy one still has a backlog.
        await publish(broker, "busy", [(f"b{i}", {"i": i}) for i in range(2000, 4000)])
        await publish(broker, "quiet", [(f"q{i}", {"i": i}) for i in range(5, 10)])
        got += await _collect(broker, 2005)
        tg.cancel_scope.cancel()
    order = [m.key for m in got]
    busy = [k for k in order if k.startswith("b")]
    quiet = [k for k in order if k.startswith("q")]
    assert busy == [f"b{i}" for i in range(4000)]  # order kept per input
    assert quiet == [f"q{i}" for i in range(10)]
    # Each quiet batch waits for at most one busy batch (50) ahead of it.
    assert order.index("q4") <= 50 + 5
    assert order.index("q9") - 2005 <= 50 + 5
    assert op.stats().received == 4010


async def test_merge_acks_each_input(broker: MemoryBroker) -> None:
    op = await make(broker, "join", MERGE)
    await watch(broker, "all")
    await publish(broker, "busy", [("b", 1)])
    await publish(broker, "quiet", [("q", 2)])
    async with anyio.create_task_group() as tg:
        tg.start_soon(op.run)
        got = await _collect(broker, 2)
        tg.cancel_scope.cancel()
    assert sorted(m.key for m in got) == ["b", "q"]
    for topic in ("busy", "quiet"):
        assert (await broker.stats(topic)).backlog("join") == 0
