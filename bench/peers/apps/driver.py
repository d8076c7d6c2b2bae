"""The producer side of a peer, run in the peer's environment: ``driver.py APP COMMAND ...``.

APP is a module beside this file with ``send(kind, total)`` (one job per
call, as the framework's users write it) and ``send_many(kind, total, n)`` or
None. Commands print one JSON line:

- ``enqueue N single|batch``: N noop jobs, no worker running -> ``{"rate": jobs/s}``
- ``drain N KIND``: with workers running, N jobs sent (batched where the
  framework offers it) -> ``{"seconds": first send to last job done}``; KIND
  ``true`` (chute only) is done when the broker has every job acknowledged
- ``latency SAMPLES GAP_MIN GAP_MAX SEED``: after each random idle gap one
  ``mark`` job -> ``{"ms": [enqueue -> start, ...]}``
- ``prime``: one ``mark`` job, left for a worker that is not started yet
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import random
import sys
import time

import redis

COUNT, DONE, START = "bench:count", "bench:done", "bench:start"
BATCH = 500


async def main(app_name: str, command: str, args: list[str]) -> dict[str, object]:
    app = importlib.import_module(app_name)
    r = redis.Redis.from_url(os.environ["BENCH_REDIS"], socket_timeout=None)
    if command == "enqueue":
        n, mode = int(args[0]), args[1]
        begin = time.perf_counter()
        if mode == "batch":
            for first in range(0, n, BATCH):
                await app.send_many("noop", 10**9, min(BATCH, n - first))
        else:
            for _ in range(n):
                await app.send("noop", 10**9)
        return {"rate": n / (time.perf_counter() - begin)}
    if command == "drain":
        n, kind = int(args[0]), args[1]
        r.delete(COUNT, DONE)
        begin = time.perf_counter()
        if app.send_many is not None:
            for first in range(0, n, BATCH):
                await app.send_many(kind, n, min(BATCH, n - first))
        else:
            for _ in range(n):
                await app.send(kind, n)
        sent = time.perf_counter()
        if kind == "true":  # no body to say it is done: only chute's app can tell
            await asyncio.wait_for(app.wait_acked(), 600)
        elif r.blpop([DONE], timeout=600) is None:
            raise SystemExit(f"{app_name}: {n} {kind} jobs not done in 600 s")
        end = time.perf_counter()
        return {"seconds": end - begin, "send_seconds": sent - begin}
    if command == "latency":
        samples, low, high, seed = int(args[0]), float(args[1]), float(args[2]), int(args[3])
        rng = random.Random(seed)
        r.delete(START)
        waits = []
        for _ in range(samples):
            await asyncio.sleep(rng.uniform(low, high))
            begin = time.monotonic_ns()
            await app.send("mark", 0)
            got = r.blpop([START], timeout=60)
            if got is None:
                raise SystemExit(f"{app_name}: a mark job did not start within 60 s")
            waits.append((int(got[1]) - begin) / 1e6)
        return {"ms": waits}
    if command == "prime":
        r.delete(START)
        await app.send("mark", 0)
        return {}
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    result = asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
    print(json.dumps(result), flush=True)
