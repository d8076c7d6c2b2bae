"""(b) Jobs that each run ``/bin/true``, at concurrency 2 and 8.

chute runs as ``chute run`` on the Redis broker (its own redis-server): a
pool of C whose executor is a chain, a ``command`` step running /bin/true
then the shared job body (one INCR). Beside it, in the same run: the bare
spawn loops of ``bench/spawn.py`` (the best counts: the physical limit),
Celery, Dramatiq, arq and RQ with C jobs at once, ``xargs -P C`` and GNU
``parallel -j C``. Figure: jobs per second from the first job sent to the
last one done.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import spawn as loops
from bench._procs import BenchError, cpu_seconds, redis_server
from bench._table import Results, Row
from bench.peers import tool
from bench.peers.sides import FRAMEWORKS, describe, driver, start
from bench.scenarios import Mode


def framework(side: str, count: int, concurrency: int) -> dict[str, Any]:
    with (
        redis_server() as url,
        tempfile.TemporaryDirectory() as tmp,
        start(side, url, "spawn", concurrency, Path(tmp)) as workers,
    ):
        driver(side, url, "drain", 1, "spawn", timeout=120)
        before = cpu_seconds(workers.pids)
        done = driver(side, url, "drain", count, "spawn")
        cpu = (cpu_seconds(workers.pids) - before) / count * 1e6
        workers.check()
    return {"rate": count / float(done["seconds"]), "cpu_us": cpu,
            "workers": describe(side, "spawn", concurrency)}  # fmt: skip


def command_line(argv: list[str], count: int) -> dict[str, Any]:
    lines = "".join(f"{n}\n" for n in range(count))
    begin = time.perf_counter()
    done = subprocess.run(argv, input=lines, text=True, capture_output=True)
    elapsed = time.perf_counter() - begin
    if done.returncode != 0:
        raise BenchError(f"{argv[0]} exited with {done.returncode}: {done.stderr.strip()[:200]}")
    return {"rate": count / elapsed}


def bare(count: int, concurrency: int, rounds: int) -> tuple[str, float, dict[str, float]]:
    """bench/spawn.py's loops, its embedded chute (memory broker) among them: (the best bare
    loop's name, its rate, every median)."""
    medians = {}
    for name, loop in loops.LOOPS.items():
        medians[name] = statistics.median(
            asyncio.run(loop(count, concurrency)) for _ in range(rounds)
        )
    best = max((k for k in medians if k != "chute"), key=lambda k: medians[k])
    return best, medians[best], medians


def run(mode: Mode, results: Results, peers: bool) -> None:
    details: dict[str, Any] = {}
    for c in mode.concurrency:
        print(f"  (b) concurrency {c}", flush=True)
        best_name, best, all_bare = bare(mode.spawns, c, mode.rounds)
        got = {"chute": framework("chute", mode.spawns, c)}
        if peers:
            for side in FRAMEWORKS:
                t0 = time.perf_counter()
                got[side] = framework(side, mode.spawns, c)
                print(f"  (b) {side}: {time.perf_counter() - t0:.1f} s", flush=True)
            got["xargs -P"] = command_line([tool("xargs"), "-P", str(c), "-n", "1", "/bin/true"],
                                           mode.spawns)  # fmt: skip
            got["parallel -j"] = command_line(
                [tool("parallel"), "--will-cite", "-j", str(c), "/bin/true"], mode.spawns
            )
        details[str(c)] = {"bare": all_bare, **got}
        ours = got["chute"]["rate"]
        what = f"{mode.spawns:,} x /bin/true, concurrency {c}"
        embedded = Row("b", f"{what}, embedded (memory broker)", all_bare["chute"],
                       f"bare loop ({best_name})", best, "jobs/s", ">= 0.95x best bare loop")  # fmt: skip
        embedded.met = embedded.ratio >= 0.95
        results.add(embedded)
        row = results.add(Row("b", f"{what}, chute run (Redis)", ours, f"bare loop ({best_name})",
                              best, "jobs/s", ">= 0.95x best bare loop"))  # fmt: skip
        row.met = row.ratio >= 0.95
        others = {k: v["rate"] for k, v in got.items() if k != "chute"}
        if others:
            fastest = max(others, key=lambda k: others[k])
            for name, rate in others.items():
                row = results.add(Row("b", f"{what}, chute run (Redis)", ours, name, rate, "jobs/s",
                                      note=got[name].get("workers", "")))  # fmt: skip
                if name == fastest:
                    row.floor, row.met = ">= 1x fastest peer", row.ratio >= 1
    results.details["b"] = details
