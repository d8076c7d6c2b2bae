"""In-memory topic throughput against a bare asyncio.Queue handoff, in one run.

chute: one producer publishes N messages of about 100 bytes in batches; one
consumer group reads in batches and acks. Figure: messages per second from
the first publish to the last ack. Baseline: the same N payloads through a
bare ``asyncio.Queue``, one put and one get at a time.

    python bench/topic_throughput.py [--count 1000000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from chute.message import Message
from chute_plugins.brokers.memory import MemoryBroker

PAYLOAD = {"path": "inbox/video-000000.mp4", "size": 1048576, "note": "x" * 40}


async def queue_baseline(count: int) -> float:
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue(maxsize=10_000)

    async def produce() -> None:
        for _ in range(count):
            await queue.put(PAYLOAD)

    async def consume() -> None:
        for _ in range(count):
            await queue.get()

    start = time.perf_counter()
    await asyncio.gather(produce(), consume())
    return count / (time.perf_counter() - start)


async def chute_topic(count: int, batch: int) -> float:
    broker = MemoryBroker()
    await broker.start()
    await broker.declare_topic("bench", capacity=100_000)
    await broker.ensure_group("bench", "g", visibility_timeout=60)

    async def produce() -> None:
        for start in range(0, count, batch):
            n = min(batch, count - start)
            await broker.publish("bench", [Message(key="k", data=PAYLOAD) for _ in range(n)])

    async def consume() -> None:
        seen = 0
        while seen < count:
            messages = await broker.read("bench", "g", "c1", count=batch, block=1.0)
            await broker.ack("bench", "g", [m.id for m in messages])
            seen += len(messages)

    start = time.perf_counter()
    await asyncio.gather(produce(), consume())
    elapsed = time.perf_counter() - start
    stats = await broker.stats("bench")
    assert stats.group("g").acked == count and stats.length == 0, stats
    return count / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    best_q = best_c = 0.0
    for _ in range(args.rounds):  # interleaved, best of each: both see the same machine noise
        best_q = max(best_q, await queue_baseline(args.count))
        best_c = max(best_c, await chute_topic(args.count, args.batch))
    print(f"asyncio.Queue handoff      : {best_q / 1e6:6.3f} M msgs/s")
    print(f"chute memory topic (b={args.batch:<5}): {best_c / 1e6:6.3f} M msgs/s")
    print(f"ratio chute / asyncio.Queue: {best_c / best_q:6.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
