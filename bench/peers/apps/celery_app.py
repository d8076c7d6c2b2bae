"""Celery 5.7 on its Redis broker, set up for throughput as its "Optimizing" guide says.

Results are not stored (``task_ignore_result``), prefetching is raised for
short tasks (``worker_prefetch_multiplier``), rate limits are off; the
worker runs with ``--without-gossip --without-mingle --without-heartbeat``.
"""

from __future__ import annotations

import os

import jobs
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS"])
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=64,
    worker_disable_rate_limits=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

TASKS = {
    "noop": app.task(name="noop")(jobs.noop),
    "spawn": app.task(name="spawn")(jobs.spawn),
    "mark": app.task(name="mark")(jobs.mark),
}


async def send(kind: str, total: int) -> None:
    TASKS[kind].delay(total)


send_many = None
"""Celery has no bulk publish (a group still sends one message per task)."""
