"""RQ 3.0: ``rq worker-pool`` with ``SimpleWorker``, as RQ's performance notes advise for
jobs of a few milliseconds; results are not kept (``result_ttl=0``)."""

from __future__ import annotations

import os

import jobs
from redis import Redis
from rq import Queue

queue = Queue("default", connection=Redis.from_url(os.environ["BENCH_REDIS"]))
FUNCTIONS = {"noop": jobs.noop, "spawn": jobs.spawn, "mark": jobs.mark}


async def send(kind: str, total: int) -> None:
    queue.enqueue(FUNCTIONS[kind], total, result_ttl=0)


async def send_many(kind: str, total: int, n: int) -> None:
    fn = FUNCTIONS[kind]
    queue.enqueue_many([Queue.prepare_data(fn, (total,), result_ttl=0) for _ in range(n)])
