"""(a) No-op jobs through Redis: enqueue rate, drain rate with workers started, worker CPU per
job, and enqueue -> start latency on an idle worker after random idle gaps.

Every side runs on a redis-server of its own, started for it. The enqueue
rate is measured with no worker running (one job per call, as each
framework's users write it, and batched where the framework offers it); the
database is then emptied, the workers started and warmed with one job, and
the drain timed from the first job sent (batched where offered) to the last
job done. Worker CPU is that of the workers' process trees over the drain;
Redis CPU, the server's own (``INFO cpu``) over the same drain: what the
side's protocol costs a Redis that several nodes share.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench._procs import cpu_seconds, percentile, redis_server
from bench._table import Results, Row
from bench.peers.sides import CORES, FRAMEWORKS, describe, driver, start
from bench.scenarios import Mode

BATCHED = ("chute", "rq")
"""Sides with a batch enqueue (chute's publish of a list, RQ's enqueue_many)."""
POOL = {"chute": 16, "chute x2": 16, "celery": CORES, "dramatiq": 8, "arq": 10, "rq": CORES}


def measure(side: str, mode: Mode) -> dict[str, Any]:
    out: dict[str, Any] = {"workers": describe(side, "noop", POOL[side])}
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
        if side != "chute x2":
            out["enqueue"] = driver(side, url, "enqueue", mode.enqueue, "single")["rate"]
            if side in BATCHED:
                out["enqueue_batch"] = driver(side, url, "enqueue", mode.enqueue, "batch")["rate"]
            with redis.Redis.from_url(url) as r:
                r.flushdb()  # the server is this side's own
        with start(side, url, "noop", POOL[side], Path(tmp)) as workers:
            driver(side, url, "drain", 1, "noop", timeout=120)  # started and connected
            before, server_before = cpu_seconds(workers.pids), _server_cpu(url)
            drained = driver(side, url, "drain", mode.jobs, "noop")
            out["cpu_us"] = (cpu_seconds(workers.pids) - before) / mode.jobs * 1e6
            out["redis_cpu_us"] = (_server_cpu(url) - server_before) / mode.jobs * 1e6
            out["drain"] = mode.jobs / float(drained["seconds"])  # type: ignore[arg-type]
            if side != "chute x2":
                ms = driver(side, url, "latency", mode.samples, *mode.gaps, 1)["ms"]
                out["latency_ms"] = ms
            workers.check()
    return out


def _server_cpu(url: str) -> float:
    with redis.Redis.from_url(url) as r:
        cpu = r.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def _best(peers: dict[str, dict[str, Any]], key: str, low: bool = False) -> str:
    pick = min if low else max
    return pick(peers, key=lambda p: peers[p][key])


def run(mode: Mode, results: Results, peers: bool) -> None:
    sides = ["chute", "chute x2", *(FRAMEWORKS if peers else [])]
    got = {}
    for side in sides:
        t0 = time.perf_counter()
        got[side] = measure(side, mode)
        print(
            f"  (a) {side} ({describe(side, 'noop', POOL[side])}): "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    results.details["a"] = got
    ours, two = got["chute"], got["chute x2"]
    for figures in got.values():
        if "latency_ms" in figures:
            figures["p50_ms"] = statistics.median(figures["latency_ms"])
            figures["p99_ms"] = percentile(figures["latency_ms"], 99)
    others = {p: got[p] for p in FRAMEWORKS if p in got}
    n = f"{mode.jobs:,}"
    if not others:
        for what, key, unit in [("enqueue, one job per call", "enqueue", "jobs/s"),
                                ("enqueue, batched", "enqueue_batch", "jobs/s"),
                                (f"drain {n} no-op jobs, 1 node", "drain", "jobs/s"),
                                (f"drain {n} no-op jobs, 2 nodes", None, "jobs/s"),
                                ("worker CPU per job", "cpu_us", "us"),
                                ("Redis CPU per job", "redis_cpu_us", "us"),
                                ("enqueue -> start, median", "p50_ms", "ms"),
                                ("enqueue -> start, p99", "p99_ms", "ms")]:  # fmt: skip
            value = two["drain"] if key is None else ours[key]
            results.add(Row("a", what, value, "", float("nan"), unit))
        return

    def each_peer(what: str, key: str, unit: str, best: str = "", floor: str = "",
                  bound: float = 0.0) -> None:  # fmt: skip
        """A row per peer; on ``best``'s, the floor: at least ``bound`` for rates ("jobs/s"),
        at most ``bound`` for the rest."""
        for p in others:
            row = Row("a", what, ours[key], p, others[p][key], unit,
                      note=others[p]["workers"] if key == "drain" else "")  # fmt: skip
            if p == best:
                row.floor = floor
                row.met = row.ratio >= bound if unit == "jobs/s" else row.ratio <= bound
            results.add(row)

    each_peer("enqueue, one job per call", "enqueue", "jobs/s")
    results.add(Row("a", "enqueue, batched (others have no batch call)", ours["enqueue_batch"],
                    "rq", others["rq"]["enqueue_batch"], "jobs/s"))  # fmt: skip
    fastest = _best(others, "drain")
    each_peer(f"drain {n} no-op jobs, 1 node", "drain", "jobs/s", fastest,
              ">= 3x fastest peer", 3)  # fmt: skip
    row = results.add(Row("a", f"drain {n} no-op jobs, 2 chute nodes", two["drain"], fastest,
                          others[fastest]["drain"], "jobs/s", ">= 5x fastest peer"))  # fmt: skip
    row.met = row.ratio >= 5
    each_peer("worker CPU per no-op job", "cpu_us", "us", _best(others, "cpu_us", low=True),
              "<= 0.3x leanest peer", 0.3)  # fmt: skip
    each_peer("Redis server CPU per no-op job", "redis_cpu_us", "us")
    each_peer("enqueue -> start, median", "p50_ms", "ms", _best(others, "p50_ms", low=True),
              "<= 0.5x fastest peer", 0.5)  # fmt: skip
    each_peer("enqueue -> start, p99", "p99_ms", "ms")
