"""End-to-end throughput and latency over a real Redis, against a hand-written redis-py loop.

chute: one node (an embedded ``Runtime``) with the redis broker; the
benchmark publishes N messages of about 100 bytes in batches of 500; a pool
reads them in batches of 500, runs a python no-op executor on each, and acks.
Figure: messages per second from the first publish to the last ack.

Baseline, in the same run and the same process: a hand-written redis-py loop
doing what chute does on the wire, with nothing else: pipelined XADD in
batches of 500, and a consumer doing XREADGROUP COUNT 500 + XACK.

Latency: the enqueue -> start time of one item on an idle pool (publish to
the executor's first line), median of many, beside the same hop for the
hand-written loop (XADD to a blocked XREADGROUP returning).

    python bench/redis_throughput.py [--count 200000] [--url redis://127.0.0.1:6379/0]

Without ``--url`` it starts a private redis-server (no persistence) on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chute.config import config_from_dict
from chute.engine import Runtime
from chute.message import Message, encode_message
from chute_plugins.brokers.redis_streams import RedisBroker
from topic_throughput import PAYLOAD, drain, through

from bench._procs import BenchError, redis_server

BATCH = 500

started: list[float] = []
"""Start times recorded by the executor in the latency run."""


def noop(data: Any) -> None:
    return None


def mark_start(data: Any) -> None:
    started.append(time.perf_counter())


# -- the hand-written baseline -------------------------------------------------


async def baseline_throughput(url: str, count: int) -> float:
    r = aioredis.Redis.from_url(url)
    key = f"bench-{uuid.uuid4().hex[:8]}"
    await r.xgroup_create(key, "g", "$", mkstream=True)
    payload = encode_message(Message(key="k", data=PAYLOAD, created_at=time.time()))

    async def produce() -> None:
        for start in range(0, count, BATCH):
            pipe = r.pipeline(transaction=False)
            for _ in range(min(BATCH, count - start)):
                pipe.xadd(key, {"m": payload})
            await pipe.execute()

    async def consume() -> None:
        seen = 0
        while seen < count:
            reply = await r.xreadgroup("g", "c", {key: ">"}, count=BATCH, block=1000)
            for _, entries in reply.items() if isinstance(reply, dict) else reply:
                ids = [entry_id for entry_id, _ in entries]
                await r.xack(key, "g", *ids)
                seen += len(ids)

    begin = time.perf_counter()
    await asyncio.gather(produce(), consume())
    elapsed = time.perf_counter() - begin
    await r.delete(key)
    await r.aclose()
    return count / elapsed


async def baseline_latency(url: str, samples: int) -> float:
    r = aioredis.Redis.from_url(url)
    reader = aioredis.Redis.from_url(url)
    key = f"bench-{uuid.uuid4().hex[:8]}"
    await r.xgroup_create(key, "g", "$", mkstream=True)
    payload = encode_message(Message(key="k", data=PAYLOAD))
    waits = []
    for _ in range(samples):
        read = asyncio.create_task(reader.xreadgroup("g", "c", {key: ">"}, count=1, block=5000))
        await asyncio.sleep(0.002)  # the reader is blocked in Redis, as an idle consumer is
        begin = time.perf_counter()
        await r.xadd(key, {"m": payload})
        await read
        waits.append(time.perf_counter() - begin)
        await r.xack(key, "g", *[i for _, entries in _streams(read.result()) for i, _ in entries])
    await r.delete(key)
    await r.aclose()
    await reader.aclose()
    return statistics.median(waits)


def _streams(reply: Any) -> Any:
    return reply.items() if isinstance(reply, dict) else reply


# -- chute --------------------------------------------------------------------


async def broker_throughput(url: str, count: int) -> float:
    """The broker API alone, as the pool uses it: publish, read 500, run the no-op, ack."""
    broker = RedisBroker(f"{url}?prefix=bench-{uuid.uuid4().hex[:8]}:")
    return await through(broker, count, BATCH, noop)


def runtime(url: str, function: str, concurrency: int) -> Runtime:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    doc = {
        "broker": f"{url}?prefix={prefix}",
        "log_level": "warning",
        "topics": {"jobs": {"capacity": 100_000}},
        "pools": {
            "work": {
                "topic": "jobs",
                "concurrency": concurrency,
                "batch": BATCH,
                "track": False,
                "executor": {
                    "type": "python",
                    "function": function,
                    "path": [str(Path(__file__).parent)],
                },
            }
        },
    }
    return Runtime(config_from_dict(doc, base_dir=tempfile.gettempdir()))


async def chute_throughput(url: str, count: int) -> float:
    async with runtime(url, "redis_throughput:noop", BATCH) as rt:
        return await drain(rt, count, BATCH)


async def chute_latency(url: str, samples: int) -> float:
    waits = []
    async with runtime(url, "redis_throughput:mark_start", 4) as rt:
        # The executor imported this file as a module of its own (not __main__).
        marks: list[float] = importlib.import_module("redis_throughput").started
        pool = rt.pools["work"]
        for n in range(samples):
            await asyncio.sleep(0.002)  # idle: the pool is blocked in its read
            done = pool.counters.succeeded
            begin = time.perf_counter()
            await rt.publish("jobs", PAYLOAD, key=f"one-{n}")
            while pool.counters.succeeded == done:
                await pool.changed.wait()
            waits.append(marks[-1] - begin)
    return statistics.median(waits)


# -- running ------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--url", default="")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(redis_server())
        best_b = best_a = best_c = 0.0
        for _ in range(args.rounds):  # interleaved, best of each: all see the same noise
            best_b = max(best_b, await baseline_throughput(url, args.count))
            best_a = max(best_a, await broker_throughput(url, args.count))
            best_c = max(best_c, await chute_throughput(url, args.count))
        lat_b = await baseline_latency(url, args.samples)
        lat_c = await chute_latency(url, args.samples)
    print(
        f"redis {url}, {args.count} messages of ~100 B, batches of {BATCH}, best of {args.rounds}"
    )
    print(f"hand-written redis-py loop                  : {best_b / 1e3:8.1f} k msgs/s")
    print(f"chute broker API (publish, read, no-op, ack): {best_a / 1e3:8.1f} k msgs/s"
          f"  {best_a / best_b:5.2f}x")  # fmt: skip
    print(f"chute engine, pool + python no-op executor : {best_c / 1e3:8.1f} k msgs/s"
          f"  {best_c / best_b:5.2f}x   (floor 1.00x)")  # fmt: skip
    print(f"enqueue -> start, idle (median of {args.samples}):")
    print(f"  hand-written XADD -> XREADGROUP: {lat_b * 1e3:6.3f} ms")
    print(f"  chute publish -> executor start: {lat_c * 1e3:6.3f} ms   (floor 2 ms)")
    print(f"  ratio chute / hand-written     : {lat_c / lat_b:6.2f}x")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BenchError as exc:  # redis-server missing or not starting: one line
        sys.exit(f"{exc}; or pass --url")
