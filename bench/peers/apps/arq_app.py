"""arq 0.28: asyncio workers polling every 10 ms (``poll_delay``; the default 0.5 s would put up
to half a second between enqueue and start), results not kept
(``keep_result=0``), ``max_jobs`` 10 (the default) unless the bench sets ``BENCH_MAX_JOBS``."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings

COUNT, DONE, START = "bench:count", "bench:done", "bench:start"
SETTINGS = RedisSettings.from_dsn(os.environ["BENCH_REDIS"])


async def noop(ctx: dict[str, Any], total: int) -> None:
    if await ctx["redis"].incr(COUNT) == total:
        await ctx["redis"].rpush(DONE, 1)


async def spawn(ctx: dict[str, Any], total: int) -> None:
    proc = await asyncio.create_subprocess_exec("/bin/true")
    await proc.wait()
    await noop(ctx, total)


async def mark(ctx: dict[str, Any], total: int) -> None:
    await ctx["redis"].rpush(START, time.monotonic_ns())


class WorkerSettings:
    functions = [noop, spawn, mark]
    redis_settings = SETTINGS
    keep_result = 0
    poll_delay = 0.01
    max_jobs = int(os.environ.get("BENCH_MAX_JOBS", "10"))


_pool: Any = None


async def send(kind: str, total: int) -> None:
    global _pool
    if _pool is None:
        _pool = await create_pool(SETTINGS)
    await _pool.enqueue_job(kind, total)


send_many = None
"""arq enqueues one job per call."""
