"""(b) Jobs that each run ``/bin/true``, at concurrency 2 and 8.

Against the bare spawn loops of ``bench/spawn.py`` (the best counts: the
physical limit), chute runs the same work, ``/bin/true`` and nothing else, two
ways: embedded (bench/spawn.py's pool on the default local broker) and as
``chute run`` on the Redis broker (its own redis-server; the job is done when
the broker has it acknowledged). They take turns round by round, in reverse
order every other round, and a row's ratio is the median of the rounds' own
ratios, chute over the best bare loop of that round.

``xargs -P C`` and GNU ``parallel -j C`` run the bare command too, and take
their turns beside them. Against the frameworks, chute runs their job:
``/bin/true`` then the shared body (one INCR), through ``chute run`` on
Redis: a pool of C whose executor is a chain of a ``command`` step and a
``python`` step; Celery, Dramatiq, arq and RQ run C jobs at once. Figure:
jobs per second from the first job sent to the last one done.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import spawn as loops
from bench._procs import BenchError, cpu_seconds, redis_server
from bench._table import Results, Row
from bench.peers import tool
from bench.peers.sides import FRAMEWORKS, describe, driver, start
from bench.scenarios import Mode

EMBEDDED, RUN = "chute", "chute run"
"""The two ways chute runs bare /bin/true jobs (EMBEDDED is bench/spawn.py's name)."""


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


TOOLS = ("xargs -P", "parallel -j")
"""The command-line peers: they run ``/bin/true`` alone, as the bare loops do."""


def tool_line(name: str, concurrency: int) -> list[str]:
    if name == "xargs -P":
        return [tool("xargs"), "-P", str(concurrency), "-n", "1", "/bin/true"]
    return [tool("parallel"), "--will-cite", "-j", str(concurrency), "/bin/true"]


def in_turns(count: int, concurrency: int, rounds: int, peers: bool) -> dict[str, list[float]]:
    """Rates per round of every bare loop, the embedded pool, a running ``chute run`` and
    (with ``peers``) ``xargs -P`` and GNU ``parallel``."""
    with (
        redis_server() as url,
        tempfile.TemporaryDirectory() as tmp,
        start("chute", url, "true", concurrency, Path(tmp)) as workers,
    ):
        driver("chute", url, "drain", 1, "true", timeout=120)  # started and connected

        def through_chute_run() -> float:
            return count / float(driver("chute", url, "drain", count, "true")["seconds"])  # type: ignore[arg-type]

        turns: dict[str, Callable[[], float]] = {
            name: (lambda loop=loop: asyncio.run(loop(count, concurrency)))
            for name, loop in loops.LOOPS.items()
        }
        turns[RUN] = through_chute_run
        for name in TOOLS if peers else ():
            argv = tool_line(name, concurrency)
            turns[name] = lambda argv=argv: float(command_line(argv, count)["rate"])
        rates: dict[str, list[float]] = {name: [] for name in turns}
        for n in range(rounds):
            for name, turn in list(turns.items())[:: 1 if n % 2 == 0 else -1]:
                rates[name].append(turn())
        workers.check()
    return rates


def median_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median of the rounds' own ratios, ours over theirs, in rounds they took turns."""
    return statistics.median(o / t for o, t in zip(ours, theirs, strict=True))


def versus_bare(rates: dict[str, list[float]], ours: str) -> tuple[str, float, float, float]:
    """(the best bare loop's name, its median, ``ours``'s median, the median of the rounds'
    ratios of ``ours`` over the best bare loop of the round)."""
    bare = [name for name in rates if name not in (EMBEDDED, RUN, *TOOLS)]
    best = max(bare, key=lambda name: statistics.median(rates[name]))
    best_of_round = [max(each) for each in zip(*(rates[name] for name in bare), strict=True)]
    return (
        best,
        statistics.median(rates[best]),
        statistics.median(rates[ours]),
        median_ratio(rates[ours], best_of_round),
    )


def run(mode: Mode, results: Results, peers: bool) -> None:
    details: dict[str, Any] = {}
    for c in mode.concurrency:
        print(f"  (b) concurrency {c}", flush=True)
        rates = in_turns(mode.spawns, c, mode.rounds, peers)
        got = {"chute": framework("chute", mode.spawns, c)}
        for side in FRAMEWORKS if peers else ():
            t0 = time.perf_counter()
            got[side] = framework(side, mode.spawns, c)
            print(f"  (b) {side}: {time.perf_counter() - t0:.1f} s", flush=True)
        details[str(c)] = {"rounds": rates, **got}
        what = f"{mode.spawns:,} x /bin/true, concurrency {c}"
        for ours, how in [(EMBEDDED, "embedded (local broker)"),
                          (RUN, "chute run (Redis)")]:  # fmt: skip
            best_name, best, median, paired = versus_bare(rates, ours)
            row = results.add(Row("b", f"{what}, {how}", median, f"bare loop ({best_name})",
                                  best, "jobs/s", ">= 0.95x best bare loop",
                                  note=f"median of {mode.rounds} rounds' ratios",
                                  paired=paired))  # fmt: skip
            row.met = row.ratio >= 0.95
        if peers:  # the same work: /bin/true alone, in turns
            fastest = max(TOOLS, key=lambda name: statistics.median(rates[name]))
            for name in TOOLS:
                row = results.add(Row("b", f"{what}, chute run (Redis)",
                                      statistics.median(rates[RUN]), name,
                                      statistics.median(rates[name]), "jobs/s",
                                      note=f"median of {mode.rounds} rounds' ratios",
                                      paired=median_ratio(rates[RUN], rates[name])))  # fmt: skip
                if name == fastest:
                    row.floor, row.met = ">= 1x fastest peer", row.ratio >= 1
        # Against the frameworks, their job: /bin/true, then the shared body.
        with_incr = f"{mode.spawns:,} x (/bin/true then INCR), concurrency {c}, chute run (Redis)"
        ours_rate = got["chute"]["rate"]
        if not peers:
            results.add(Row("b", with_incr, ours_rate, "", float("nan"), "jobs/s"))
            continue
        fastest = max(FRAMEWORKS, key=lambda side: got[side]["rate"])
        for side in FRAMEWORKS:
            row = results.add(Row("b", with_incr, ours_rate, side, got[side]["rate"], "jobs/s",
                                  note=got[side]["workers"]))  # fmt: skip
            if side == fastest:
                row.floor, row.met = ">= 1x fastest peer", row.ratio >= 1
    results.details["b"] = details
