"""Dramatiq 2.2 on its Redis broker; the worker runs ``--processes 2 --threads 8`` (its defaults)."""

from __future__ import annotations

import os

import dramatiq
import jobs
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=os.environ["BENCH_REDIS"]))

ACTORS = {
    name: dramatiq.actor(fn, actor_name=name, max_retries=0)
    for name, fn in [("noop", jobs.noop), ("spawn", jobs.spawn), ("mark", jobs.mark)]
}


async def send(kind: str, total: int) -> None:
    ACTORS[kind].send(total)


send_many = None
"""Dramatiq enqueues one message per call (a group sends them one by one)."""
