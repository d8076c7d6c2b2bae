"""chute's side: the job bodies its python executor runs, and the producer (chute's RedisBroker).

Runs in chute's own environment. The bodies are coroutine functions, so the
pool awaits them on its event loop; ``spawn`` items go through a chain whose
first step is a ``command`` executor running ``/bin/true``. ``true`` items run
``/bin/true`` and nothing else, as the bare spawn loops do: no body tells
when they are done, so ``wait_acked`` asks the broker.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import Any

import redis.asyncio as aioredis
from chute.message import Message
from chute_plugins.brokers.redis_streams import RedisBroker

COUNT, DONE, START = "bench:count", "bench:done", "bench:start"
TOPIC = "jobs"
_client: aioredis.Redis | None = None


async def run(data: dict[str, Any]) -> None:
    global _client
    if _client is None:
        _client = aioredis.Redis.from_url(os.environ["BENCH_REDIS"])
    if data["kind"] == "mark":
        await _client.rpush(START, time.monotonic_ns())
    elif await _client.incr(COUNT) == data["total"]:
        await _client.rpush(DONE, 1)


_counted: collections.Counter[int] = collections.Counter()


async def count(data: dict[str, Any]) -> None:
    """The no-op job without its INCR, to tell the engine's cost from the body's: it counts
    in this process, and only the last job of a drain touches Redis."""
    global _client
    total = data["total"]
    _counted[total] += 1
    if _counted[total] == total:
        del _counted[total]
        if _client is None:
            _client = aioredis.Redis.from_url(os.environ["BENCH_REDIS"])
        await _client.rpush(DONE, 1)


_broker: RedisBroker | None = None


async def _started() -> RedisBroker:
    global _broker
    if _broker is None:
        _broker = RedisBroker(os.environ["BENCH_REDIS"], default_capacity=1_000_000)
        await _broker.start()
        # The pool's group, made ahead as a deployment would: a group made later starts at
        # the end of the stream and would not see jobs sent before its node started.
        await _broker.ensure_group(TOPIC, "work", visibility_timeout=300.0)
    return _broker


async def send(kind: str, total: int) -> None:
    broker = await _started()
    await broker.publish(TOPIC, [Message(data={"kind": kind, "total": total})])


async def send_many(kind: str, total: int, n: int) -> None:
    broker = await _started()
    await broker.publish(TOPIC, [Message(data={"kind": kind, "total": total}) for _ in range(n)])


async def wait_acked() -> None:
    """Until the pool has acknowledged every job sent: XINFO GROUPS every 5 ms (the
    broker's own stats cost more round trips, which would slow what is measured)."""
    broker = await _started()
    while True:
        groups = await broker.redis.xinfo_groups(broker.prefix + TOPIC)
        if all(g["lag"] == 0 and g["pending"] == 0 for g in groups):
            return
        await asyncio.sleep(0.005)
