"""What a pool's ``timeout`` costs an item: the engine's CPU per no-op item with and without it.

An embedded runtime on the memory broker, a pool of 16 workers running a
python no-op coroutine, ``--count`` items published in batches of 1,000;
figure: the process's CPU seconds from the first publish to idle, per item.
Four configurations in the same run, taking turns:

- no ``timeout``;
- ``timeout = 600`` as chute runs it (``time_limit.py``: one timer for the
  pool, and each worker's items in a cancel scope it keeps until a limit
  cuts it);
- the same with a cancel scope of its own for each item, as the pool ran it
  before;
- each item in an ``anyio.fail_after`` of its own (the baseline: what one
  writes with anyio, and how the pool ran it before that).

With ``--redis``, the same through the Redis broker (a redis-server of its
own), each item's body one INCR with redis-py's asyncio client made without
a ``socket_timeout``, as ``docs/executors.md`` advises: a job of scenario
(a), run in one process.

    python bench/item_timeout.py [--count 40000] [--rounds 3] [--redis]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import redis
import redis.asyncio as aioredis
from chute.config import config_from_dict
from chute.engine import Runtime
from chute.message import Message
from chute.time_limit import Lane

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._procs import redis_server

T = TypeVar("T")


async def noop(data: Any) -> None:
    return None


_client: aioredis.Redis | None = None


async def incr(data: Any) -> None:
    global _client
    if _client is None:
        _client = aioredis.Redis.from_url(os.environ["ITEM_TIMEOUT_REDIS"], socket_timeout=None)
    await _client.incr("item_timeout:count")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


LANE_RUN = Lane.run


@contextlib.contextmanager
def _instead(run: Callable[[Lane, Awaitable[Any]], Awaitable[Any]]) -> Iterator[None]:
    """Items run through ``run`` instead of ``Lane.run``."""
    Lane.run = run  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        Lane.run = LANE_RUN  # type: ignore[method-assign]


async def _scope_each(lane: Lane, work: Awaitable[T]) -> T:
    with anyio.CancelScope():
        return await LANE_RUN(lane, work)


async def _fail_after_each(lane: Lane, work: Awaitable[T]) -> T:
    with anyio.fail_after(lane._limit.seconds):
        return await work


async def cpu_per_item(count: int, limit: float | None, workdir: Path, redis_url: str) -> float:
    """CPU seconds per item; through ``redis_url`` with an INCR body when it is set."""
    pool: dict[str, Any] = {
        "topic": "jobs",
        "concurrency": 16,
        "track": False,
        "executor": {"type": "python", "function": f"item_timeout:{'incr' if redis_url else 'noop'}",
                     "path": [str(Path(__file__).parent)]},
    }  # fmt: skip
    if limit is not None:
        pool["timeout"] = limit
    if redis_url:
        with redis.Redis.from_url(redis_url) as client:
            client.flushdb()
    doc = {"broker": redis_url or "memory", "workdir": str(workdir), "log_level": "warning",
           "topics": {"jobs": {"capacity": count}}, "pools": {"work": pool}}  # fmt: skip
    async with Runtime(config_from_dict(doc, base_dir=str(workdir))) as rt:
        started = _cpu()
        for _ in range(0, count, 1000):
            await rt.broker.publish("jobs", [Message(data={}) for _ in range(1000)])
        await rt.wait_idle()
        return (_cpu() - started) / count


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis", action="store_true",
                        help="through the Redis broker, each item one INCR")  # fmt: skip
    args = parser.parse_args()
    with redis_server() if args.redis else contextlib.nullcontext("") as url:
        os.environ["ITEM_TIMEOUT_REDIS"] = url
        await compare(args.count, args.rounds, url)


async def compare(count: int, rounds: int, redis_url: str) -> None:
    ways: dict[str, tuple[float | None, Callable[[Lane, Awaitable[Any]], Awaitable[Any]]]] = {
        "no timeout": (None, LANE_RUN),
        "timeout, a lane per worker": (600, LANE_RUN),
        "timeout, a scope per item": (600, _scope_each),
        "timeout, fail_after per item": (600, _fail_after_each),
    }
    runs: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for name, (limit, run) in ways.items():
                with _instead(run):
                    runs[name].append(await cpu_per_item(count, limit, Path(tmp), redis_url))
    what = ("CPU per item, Redis broker, body one INCR" if redis_url
            else "engine CPU per no-op item, memory broker")  # fmt: skip
    print(f"{what}, 16 workers, {count} items, median of {rounds}:")
    bare = statistics.median(runs["no timeout"])
    for name, figures in runs.items():
        median = statistics.median(figures)
        print(
            f"  {name:30s}: {median * 1e6:5.1f} us   (the timeout's share {(median - bare) * 1e6:4.1f} us)"
        )


if __name__ == "__main__":
    anyio.run(main)
