"""The job bodies every Python peer runs, the same for all (imported inside each peer's venv).

``noop``: one Redis INCR; the job that brings the count to ``total`` also
pushes to ``bench:done``, so the driver waits on BLPOP instead of polling.
``spawn``: runs ``/bin/true``, then the same. ``mark``: pushes the
CLOCK_MONOTONIC time it started (one clock for every process on the machine).
"""

from __future__ import annotations

import os
import subprocess
import time

import redis

COUNT, DONE, START = "bench:count", "bench:done", "bench:start"
_client: redis.Redis | None = None


def client() -> redis.Redis:
    # Made on first use, so each forked worker process has its own connection.
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_REDIS"])
    return _client


def noop(total: int) -> None:
    if client().incr(COUNT) == total:
        client().rpush(DONE, 1)


def spawn(total: int) -> None:
    subprocess.run(["/bin/true"], check=True)
    noop(total)


def mark(total: int) -> None:
    client().rpush(START, time.monotonic_ns())
