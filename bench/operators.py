"""Operator throughput against the bare memory topic, in one run.

Baseline (bare): one producer publishes N messages in batches to a topic; one
consumer group reads in batches and acks (publish -> read -> ack), as in
``bench/topic_throughput.py``. Each operator run has the same producer, and
the operator as the consumer: read a batch, route it, publish to the outputs,
then ack the input. Figure: messages per second from the first publish to
the operator's last ack. The outputs' readers are not timed (a later
stage would read them at the bare topic's cost): between chunks of 100,000
messages, outside the timed region, a sink empties them so they do not grow
to millions of entries.

- copy  : every message to 2 outputs
- split : ``data.channel == 'email'`` to one topic, the rest to a default
- shard : by message key (unique per message) over 4 shard topics

Also printed: one predicate evaluation through the compiled fast path against
``jmespath.search`` over the same message, the cost the fast path saves.

    python bench/operators.py [--count 1000000] [--batch 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import timeit
from typing import Any

import jmespath
from chute.config import CopyOperator, OperatorConfig, Route, ShardOperator, SplitOperator
from chute.expressions import compile_expression, message_view
from chute.message import Message
from chute.operators import build_operator
from chute_plugins.brokers.memory import MemoryBroker

PAYLOADS = [
    {"path": "inbox/video-000000.mp4", "size": 1048576, "channel": "email", "note": "x" * 30},
    {"path": "inbox/video-000001.mp4", "size": 1048576, "channel": "sms", "note": "x" * 30},
]
PREDICATE = "data.channel == 'email'"

OPERATORS: dict[str, OperatorConfig] = {
    "copy": CopyOperator(input="in", outputs=["a", "b"], batch=1000),
    "split": SplitOperator(
        input="in", routes=[Route(when=PREDICATE, output="email")], default="other", batch=1000
    ),
    "shard": ShardOperator(input="in", shards=4, prefix="shard", batch=1000),
}


CHUNK = 100_000
"""Messages per timed chunk; outputs are drained between chunks, outside the timing."""


async def _produce(broker: MemoryBroker, start: int, end: int, batch: int) -> None:
    for first in range(start, end, batch):
        last = min(first + batch, end)
        await broker.publish(
            "in", [Message(key=f"photo-{i}", data=PAYLOADS[i & 1]) for i in range(first, last)]
        )


async def _timed_chunks(
    broker: MemoryBroker, count: int, batch: int, consume: Any, outputs: list[str]
) -> float:
    """Seconds spent producing and consuming ``count`` messages, chunk by chunk.

    Between chunks (untimed) a sink empties the outputs: a topic nobody reads
    would otherwise grow to millions of entries, and the bench would measure
    fresh memory pages rather than the operator.
    """
    for topic in outputs:
        await broker.ensure_group(topic, "sink", visibility_timeout=60)
    elapsed = 0.0
    for start in range(0, count, CHUNK):
        end = min(start + CHUNK, count)
        t0 = time.perf_counter()
        await asyncio.gather(_produce(broker, start, end, batch), consume(end))
        elapsed += time.perf_counter() - t0
        for topic in outputs:
            while got := await broker.read(topic, "sink", "s", count=100_000, block=None):
                await broker.ack(topic, "sink", [m.id for m in got])
    return elapsed


async def bare(count: int, batch: int) -> float:
    broker = MemoryBroker()
    await broker.start()
    await broker.declare_topic("in", capacity=100_000)
    await broker.ensure_group("in", "g", visibility_timeout=60)
    seen = 0

    async def consume(upto: int) -> None:
        nonlocal seen
        while seen < upto:
            messages = await broker.read("in", "g", "c1", count=batch, block=1.0)
            await broker.ack("in", "g", [m.id for m in messages])
            seen += len(messages)

    elapsed = await _timed_chunks(broker, count, batch, consume, [])
    assert (await broker.stats("in")).backlog("g") == 0
    return count / elapsed


async def operator(kind: str, count: int, batch: int) -> float:
    broker = MemoryBroker()
    await broker.start()
    await broker.declare_topic("in", capacity=100_000)
    op = build_operator(kind, OPERATORS[kind], broker, node="bench")
    await op.prepare()

    async def consume(upto: int) -> None:
        # Operator.run is this loop, without the stop condition.
        while op.stats().received < upto:
            await op.pump("in", block=1.0)

    elapsed = await _timed_chunks(broker, count, batch, consume, op.outputs)
    stats = op.stats()
    per_message = {"copy": 2, "split": 1, "shard": 1}[kind]
    assert stats.received == count and stats.published == per_message * count, stats
    assert (await broker.stats("in")).backlog(kind) == 0
    await broker.aclose()
    return count / elapsed


def predicate_cost() -> tuple[float, float]:
    """Nanoseconds per evaluation: compiled fast path, and jmespath over the message view."""
    message = Message(id="1-0", key="photo-1", data=PAYLOADS[0])
    fast = compile_expression(PREDICATE).test
    slow = jmespath.compile(PREDICATE)

    def reference(m: Message) -> Any:
        return slow.search(message_view(m))

    n = 200_000
    t_fast = min(timeit.repeat(lambda: fast(message), number=n, repeat=3)) / n
    t_slow = min(timeit.repeat(lambda: reference(message), number=n, repeat=3)) / n
    return t_fast * 1e9, t_slow * 1e9


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best: dict[str, float] = dict.fromkeys(["bare", *OPERATORS], 0.0)
    for _ in range(args.rounds):  # interleaved, best of each: all see the same machine noise
        best["bare"] = max(best["bare"], await bare(args.count, args.batch))
        for kind in OPERATORS:
            gc.collect()
            best[kind] = max(best[kind], await operator(kind, args.count, args.batch))
    print(f"{args.count:,} messages, batch {args.batch}, best of {args.rounds}")
    print(f"bare memory topic (publish->read->ack): {best['bare'] / 1e6:6.3f} M msgs/s")
    for kind, label in [
        ("copy", "copy to 2 outputs"),
        ("split", "split on a predicate"),
        ("shard", "shard by key over 4"),
    ]:
        ratio = best[kind] / best["bare"]
        verdict = "ok" if ratio >= 0.5 else "BELOW the 0.5x floor"
        print(f"{label:<39}: {best[kind] / 1e6:6.3f} M msgs/s  {ratio:5.2f}x bare  {verdict}")
    fast_ns, slow_ns = predicate_cost()
    print(
        f"predicate {PREDICATE!r}: compiled {fast_ns:5.0f} ns, "
        f"jmespath {slow_ns:5.0f} ns per message ({slow_ns / fast_ns:4.1f}x)"
    )


if __name__ == "__main__":
    asyncio.run(main())
