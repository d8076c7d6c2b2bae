"""chute's side: the job bodies its python executor runs, and the producer (chute's RedisBroker).

Runs in chute's own environment. The bodies are coroutine functions, so the
pool awaits them on its event loop; ``spawn`` items go through a chain whose
first step is a ``command`` executor running ``/bin/true``. ``true`` items run
``/bin/true`` and nothing else, as the bare spawn loops do: no body tells
when they are done, so ``wait_acked`` asks the broker.

The bodies' client has no ``socket_timeout``: redis-py's asyncio client
wraps every read and write in ``asyncio.wait_for`` while one is set, a task
and a timer each (the sync client the peers' bodies use sets it on the
socket, for nothing). The pool's ``timeout`` bounds each job instead, as
``docs/executors.md`` advises, and as Dramatiq's time limit, arq's
``job_timeout`` and RQ's job timeout do by default.
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
        _client = aioredis.Redis.from_url(os.environ["BENCH_REDIS"], socket_timeout=None)
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
            _client = aioredis.Redis.from_url(os.environ["BENCH_REDIS"], socket_timeout=None)
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
    """Until the pool has acknowledged every job sent, by XINFO GROUPS (the broker's own
    stats cost more round trips, which would slow what is measured).

    The next look comes after a third of the time the jobs left should take at the rate
    seen so far (at least 5 ms, at most 100 ms): polling every 5 ms throughout cost this
    process 2.5% of a core, taken from the two the jobs share, and the end is still seen
    within about 5 ms.
    """
    broker = await _started()
    first: tuple[float, int] | None = None
    while True:
        groups = await broker.redis.xinfo_groups(broker.prefix + TOPIC)
        left = sum((g["lag"] or 0) + g["pending"] for g in groups)
        if left == 0:
            return
        now = time.monotonic()
        if first is None:
            first = (now, left)
        done, elapsed = first[1] - left, now - first[0]
        wait = left * elapsed / done / 3 if done > 0 else 0.005
        await asyncio.sleep(min(0.1, max(0.005, wait)))
