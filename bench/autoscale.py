"""Autoscaled pool against fixed pools, under Poisson load that follows a profile.

Every profile is run once against three pools fed the same arrivals and the
same service times, side by side in one event loop (so they share the
machine's noise): (a) autoscaled in [1, 16], (b) fixed at 16, the baseline,
(c) fixed at the profile's mean need. For each: p50/p95 queue wait,
worker-seconds (the integral of the concurrency limit: the capacity held,
what a cluster would bill), scale changes; then a text chart of the
autoscaled pool's concurrency and backlog over time, and the floors.

Time is compressed: service times are tens of milliseconds, and every
duration (profile phases, tick, cooldown, drain horizon, half-life) is a
multiple of the mean service time S, so one run behaves like a run with
S = 2 s that is 50 times longer ("scaled minutes" below).

    python bench/autoscale.py                     # in-process executor (anyio.sleep), all profiles
    python bench/autoscale.py --executor subprocess --profiles step,burst
    python bench/autoscale.py --service 0.04 --seed 3
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chute.autoscale import Scaler
from chute.config import Duration, PoolConfig, ScaleConfig
from chute.executor import WorkItem
from chute.message import Message
from chute.outcomes import Final
from chute.pool import WorkerPool
from chute_plugins.brokers.memory import MemoryBroker

from bench._procs import percentile

Phase = tuple[float, float, float]
"""(length in S, load at the start, load at the end) with load = λ·S, in busy workers."""

PROFILES: dict[str, list[Phase]] = {
    "step": [(100, 2, 2), (200, 8, 8), (100, 2, 2)],
    "burst": [(60, 2, 2), (5, 80, 80), (145, 2, 2), (5, 80, 80), (145, 2, 2)],
    "ramp": [(150, 0.5, 12), (150, 12, 0.5)],
    "idle": [(80, 6, 6), (120, 0, 0), (80, 6, 6)],
    "steady": [(500, 6, 6)],
    "cold": [(60, 1.5, 1.5)],
}
FLOOR_PROFILES = ("step", "burst")
COLD_TICKS = 10
"""Ticks at the start of the cold profile in which the pool must not overshoot its need."""
TICK_IN_S = {"cold": 3.0}
"""The tick, in S, where it is not one S: the cold profile is the issue's (a 1 s tick, S = 0.3 s)."""
SETTLE = 100.0
"""S units after which the steady profile counts as settled."""
REAL_S = 2.0
"""The service time the compressed run stands for, for "scaled minutes"."""


@dataclass
class Run:
    name: str
    config: ScaleConfig
    group: str
    pool: WorkerPool | None = None
    running: int = 0
    done: int = 0
    waits: list[float] = field(default_factory=list)
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    """(t, concurrency, running, backlog) every 100 ms."""
    most_running: int = 0
    last_finish: float = 0.0


def arrivals(profile: list[Phase], s_mean: float, rng: random.Random) -> list[float]:
    """Poisson arrival times (seconds from start) whose rate follows the profile.

    A piecewise-linear rate is sampled by thinning: propose at the phase's top
    rate, keep each with probability rate(t) / top.
    """
    out: list[float] = []
    start = 0.0
    for length_s, load_a, load_b in profile:
        length = length_s * s_mean
        top = max(load_a, load_b) / s_mean
        t = start
        while top > 0:
            t += rng.expovariate(top)
            if t >= start + length:
                break
            frac = (t - start) / length
            rate = (load_a + (load_b - load_a) * frac) / s_mean
            if rng.random() * top < rate:
                out.append(t)
        start += length
    return out


def mean_need(profile: list[Phase]) -> int:
    total = sum(length for length, _, _ in profile)
    work = sum(length * (a + b) / 2 for length, a, b in profile)
    return max(1, math.ceil(work / total))


def in_process(seconds: float) -> Awaitable[None]:
    return anyio.sleep(seconds)


async def subprocess_sleep(seconds: float) -> None:
    # argv list, no shell; the spawn cost becomes part of the measured service time
    async with await anyio.open_process(
        ["sleep", f"{seconds:.4f}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as process:
        if await process.wait() != 0:
            raise RuntimeError(f"sleep exited with {process.returncode}")


class BenchExecutor:
    """Takes the service time the load generator drew; records the queue wait."""

    Options: ClassVar[type[msgspec.Struct]] = msgspec.Struct

    def __init__(self, run: Run, execute: Callable[[float], Awaitable[None]], t0: float) -> None:
        self.bench = run
        self.execute = execute
        self.t0 = t0

    async def run(self, item: WorkItem) -> Any:
        bench = self.bench
        bench.waits.append(anyio.current_time() - item.data["t"])
        bench.running += 1
        bench.most_running = max(bench.most_running, bench.running)
        try:
            await self.execute(item.data["s"])
        finally:
            bench.running -= 1
            bench.last_finish = anyio.current_time() - self.t0
        return None

    async def aclose(self) -> None:
        pass


async def drive(
    runs: list[Run],
    items: list[tuple[float, float]],
    execute: Callable[[float], Awaitable[None]],
    lead: float = 0.2,
) -> None:
    """The real worker pools, one consumer group each on one memory topic: same arrivals.

    Arrivals begin ``lead`` seconds after the pools start.
    """
    broker = MemoryBroker()
    await broker.start()
    await broker.declare_topic("load", capacity=1_000_000)
    t0 = anyio.current_time() + lead
    all_done = anyio.Event()

    async def on_final(pool: WorkerPool, finals: list[Final]) -> None:
        run = next(r for r in runs if r.group == pool.group)
        run.done += len(finals)
        if all(r.done == len(items) for r in runs):
            all_done.set()

    for run in runs:
        cfg = PoolConfig(topic="load", executor={"type": "bench"}, scale=run.config, track=False)
        run.pool = WorkerPool(
            run.group,
            cfg,
            broker=broker,
            executor=BenchExecutor(run, execute, t0),
            store=None,
            node="bench",
            on_final=on_final,
        )
        await run.pool.prepare(visibility_timeout=600)

    async def feed() -> None:
        i = 0
        while i < len(items):
            delay = t0 + items[i][0] - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)  # the load generator's schedule
            now = anyio.current_time()
            batch = []
            while i < len(items) and t0 + items[i][0] <= now:  # a burst: everything due
                batch.append(Message(key=str(i), data={"t": now, "s": items[i][1]}))
                i += 1
            await broker.publish("load", batch)

    async def sample() -> None:
        while True:  # a 100 ms sampler, by definition periodic
            stats = await broker.stats("load")
            now = anyio.current_time() - t0
            for run in runs:
                assert run.pool is not None
                sample = (now, run.pool.concurrency, run.running, stats.backlog(run.group))
                run.samples.append(sample)
            await anyio.sleep(0.1)

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        for run in runs:
            assert run.pool is not None
            tg.start_soon(run.pool.run, stop, 5.0)
        tg.start_soon(sample)
        await anyio.wait_all_tasks_blocked()  # every pool has taken its baseline
        tg.start_soon(feed)
        if items:
            await all_done.wait()
        stop.set()
        tg.cancel_scope.cancel()
    await broker.aclose()


def chart(run: Run, s_mean: float, width: int = 16, rows: int = 40) -> str:
    """Time down the page: concurrency as '#' (out of 16), running as '+', backlog on a log scale."""
    if not run.samples:
        return ""
    end = run.samples[-1][0]
    step = end / rows
    lines = [
        f"{'t (s)':>6} {'conc':>4}  {'concurrency (# limit, + running)':<{width + 2}}  backlog"
    ]
    for i in range(rows):
        window = [s for s in run.samples if i * step <= s[0] < (i + 1) * step]
        if not window:
            continue
        conc = max(s[1] for s in window)
        running = max(s[2] for s in window)
        backlog = max(s[3] for s in window)
        bar = "".join(
            "+" if k < running else "#" if k < conc else " " for k in range(max(width, conc))
        )
        log_bar = "." * (0 if backlog <= 0 else 1 + int(math.log2(backlog)))
        lines.append(f"{i * step:6.1f} {conc:4d}  |{bar}|  {backlog:5d} {log_bar}")
    return "\n".join(lines)


async def run_profile(
    name: str,
    s_mean: float,
    execute: Callable[[float], Awaitable[None]],
    seed: int,
    utilization: float,
) -> dict[str, Run]:
    profile = PROFILES[name]
    rng = random.Random(seed)
    sigma = 0.5  # lognormal service times: a realistic right tail, true mean s_mean
    mu = math.log(s_mean) - sigma**2 / 2
    times = arrivals(profile, s_mean, rng)
    items = [(t, rng.lognormvariate(mu, sigma)) for t in times]
    auto = ScaleConfig(
        min=1,
        max=16,
        utilization=utilization,
        cooldown=Duration(25 * s_mean),
        drain_within=Duration(10 * s_mean),
        half_life=Duration(10 * s_mean),
        interval=Duration(TICK_IN_S.get(name, 1.0) * s_mean),
    )
    fixed_mean = mean_need(profile)
    configs = {
        "autoscaled 1..16": auto,
        "fixed 16": msgspec.structs.replace(auto, min=16, max=16),
        f"fixed {fixed_mean} (mean need)": msgspec.structs.replace(
            auto, min=fixed_mean, max=fixed_mean
        ),
    }
    runs = {
        label: Run(label, cfg, group=f"pool{i}") for i, (label, cfg) in enumerate(configs.items())
    }
    # The cold profile's load arrives as the pools start, as a source's does.
    await drive(list(runs.values()), items, execute, lead=0.0 if name == "cold" else 0.2)
    return runs


def report(name: str, runs: dict[str, Run], s_mean: float) -> list[tuple[str, bool]]:
    profile = PROFILES[name]
    length = sum(p[0] for p in profile) * s_mean
    print(f"\n=== profile {name}: {length:.1f} s, S = {s_mean * 1000:.0f} ms mean ===")
    print(f"{'pool':<22} {'items':>6} {'p50 wait':>9} {'p95 wait':>9} "
          f"{'worker-s':>9} {'busy-s':>7} {'changes':>7} {'max running':>11}")  # fmt: skip
    figures = {}
    for label, run in runs.items():
        end = max(length, run.last_finish)
        assert run.pool is not None
        stats = run.pool.scaler.stats(time.monotonic())
        # worker-seconds over the profile (or until this pool drained, if later)
        worker_s = sum(
            (b[0] - a[0]) * a[1] for a, b in itertools.pairwise(run.samples)
            if a[0] < end
        )  # fmt: skip
        p50, p95 = percentile(run.waits, 50), percentile(run.waits, 95)
        figures[label] = (p95, worker_s, stats.scale_changes)
        print(f"{label:<22} {len(run.waits):6d} {p50 * 1000:7.0f}ms {p95 * 1000:7.0f}ms "
              f"{worker_s:9.1f} {stats.busy_seconds:7.1f} {stats.scale_changes:7d} "
              f"{run.most_running:6d}/{run.config.max}")  # fmt: skip
    auto = runs["autoscaled 1..16"]
    print(chart(auto, s_mean))
    checks: list[tuple[str, bool]] = []
    for run in runs.values():
        checks.append(
            (f"{name}: {run.name}: never more running than max", run.most_running <= run.config.max)
        )
    a_p95, a_ws, _ = figures["autoscaled 1..16"]
    f_p95, f_ws, _ = figures["fixed 16"]
    if name in FLOOR_PROFILES:
        bound = 2 * f_p95 + s_mean
        print(f"floor: autoscaled p95 {a_p95 * 1000:.0f} ms <= 2 x fixed-16 p95 + S = {bound * 1000:.0f} ms"
              f"  (ratio {a_p95 / bound:.2f})")  # fmt: skip
        print(f"floor: autoscaled worker-s {a_ws:.1f} <= 60% of fixed-16 {f_ws:.1f}"
              f"  (ratio {a_ws / f_ws:.2f})")  # fmt: skip
        checks.append((f"{name}: p95 wait", a_p95 <= bound))
        checks.append((f"{name}: worker-seconds", a_ws <= 0.6 * f_ws))
    if name == "cold":
        # A steady load from the first second: the first ticks see a few
        # arrivals over a short window, which once read as thousands per second.
        load = profile[0][1]
        need = math.ceil(load / auto.config.utilization - 1e-9)
        early = [s[1] for s in auto.samples if s[0] <= COLD_TICKS * auto.config.interval]
        peak = max(early, default=0)
        print(f"cold start: highest concurrency in the first {COLD_TICKS} ticks {peak} "
              f"(the load's need ceil({load:g} / {auto.config.utilization:g}) = {need}; "
              f"max {auto.config.max})")  # fmt: skip
        checks.append((f"cold: first {COLD_TICKS} ticks stay within need + 1", peak <= need + 1))
    if name == "steady":
        settle = SETTLE * s_mean
        sizes = [s[1] for s in auto.samples if settle <= s[0] <= length]
        changes = sum(1 for a, b in itertools.pairwise(sizes) if a != b)
        wall_min = (length - settle) / 60
        scaled_min = wall_min * REAL_S / s_mean
        print(f"steady after settling: {changes} changes over {length - settle:.1f} s "
              f"= {changes / scaled_min:.2f} per scaled minute (S = {REAL_S:.0f} s), "
              f"{changes / wall_min:.1f} per wall-clock minute")  # fmt: skip
        checks.append(("steady: <= 2 changes per scaled minute", changes <= 2 * scaled_min))
    return checks


def hot_path_cost(n: int = 500_000) -> None:
    """What the pool pays per item for statistics: started + finished, against two no-op calls."""
    scaler = Scaler("hot", ScaleConfig(min=1, max=16))

    def noop(*_: object) -> None:
        pass

    best_s = best_b = math.inf
    for _ in range(3):
        t = time.perf_counter()
        for i in range(n):
            scaler.started(i * 1e-4)
            scaler.finished(1e-4, i * 1e-4 + 1e-4)
        best_s = min(best_s, time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n):
            noop(i * 1e-4)
            noop(1e-4, i * 1e-4 + 1e-4)
        best_b = min(best_b, time.perf_counter() - t)
    print(f"statistics per item (started + finished): {best_s / n * 1e9:5.0f} ns; "
          f"baseline two no-op calls: {best_b / n * 1e9:5.0f} ns; ratio {best_s / best_b:.1f}x")  # fmt: skip


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", choices=["inprocess", "subprocess"], default="inprocess")
    parser.add_argument("--profiles", default="")
    parser.add_argument("--service", type=float, default=0.0, help="mean service time, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--utilization", type=float, default=0.9)
    args = parser.parse_args()
    spawn = args.executor == "subprocess"
    # this machine spawns a few hundred processes a second: keep three pools well under it
    s_mean = args.service or (0.2 if spawn else 0.04)
    names = args.profiles.split(",") if args.profiles else (
        ["step", "burst"] if spawn else list(PROFILES)
    )  # fmt: skip
    execute = subprocess_sleep if spawn else in_process
    print(f"executor: {args.executor}; S = {s_mean * 1000:.0f} ms; profiles: {', '.join(names)}")
    hot_path_cost()
    started = time.perf_counter()
    checks: list[tuple[str, bool]] = []
    for name in names:
        runs = await run_profile(name, s_mean, execute, args.seed, args.utilization)
        checks += report(name, runs, s_mean)
    print(f"\nfloors ({time.perf_counter() - started:.0f} s):")
    for label, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {label}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
