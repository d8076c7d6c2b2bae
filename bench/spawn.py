"""Spawn throughput: 2,000 items through a pool whose ``command`` runs ``/bin/true``.

Beside it, in the same run and at the same concurrency, bare spawn loops that
do nothing but start ``/bin/true`` and reap it (no broker, no item file, no
state, no pipes): ``asyncio.create_subprocess_exec``, ``subprocess.run`` from
a thread pool, and ``Popen`` and ``os.posix_spawn`` on the loop, awaited
through a pidfd. The ratio is chute over the best of them.

chute's figure is end to end on the default config: the items are published
to the durable local broker (SQLite, under the working folder), each one gets
its 0600 ``WORK_ITEM_FILE`` and private folder, its outcome is recorded in the
SQLite state store, and it is acknowledged; from the first publish to the
last ack.

Each figure is the median of ``--rounds`` rounds. Within a round the loops
take turns (in reverse order every other round), so a noisy neighbour on a
shared machine hits all of them alike; the ratio is the median of the
rounds' own ratios, chute over the best bare loop in the same round, which
a slow minute cannot move the way it moves the two medians apart (the
ratio of the medians, and every round's ratio, are printed beside it). Beside
them: the CPU per item of the parent and of its children, and how long the
bare posix_spawn loop is suspended in each call (until the child has called
exec), which is where a loop spends most of its time when the machine is
busy.

Executors die with the runtime (``_warden.py``) at no cost per item, so
chute's figure includes it; for comparison, the bare posix_spawn loop with a
helper exec'd in front of each child to set ``PR_SET_PDEATHSIG`` (setpriv),
the way a posix_spawn path could have done it.

And what a kill -9 may rerun at that rate: the items running (at most the
concurrency; they die with the runtime) plus the items finished and not yet
committed, which wait up to one flush window (``outcomes.FLUSH_EVERY``) for a
group commit: the most outcomes a commit pass carried is that second part.

    python bench/spawn.py [--count 2000] [--concurrency 2 8] [--rounds 7]
    python bench/spawn.py --loop-time   # where the event loop's time and CPU per item go
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import selectors
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
from chute import outcomes as outcomes_module
from chute.config import config_from_dict
from chute.engine import Runtime
from chute.message import new_message
from chute_plugins.brokers import _local_db
from chute_plugins.executors import _folders
from chute_plugins.executors._spawn import PosixSpawn
from chute_plugins.stores import sqlite

TRUE = "/bin/true"


async def _bounded(count: int, concurrency: int, one: Callable[[], Awaitable[None]]) -> float:
    started = time.perf_counter()
    left = iter(range(count))

    async def worker() -> None:
        for _ in left:
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


async def bare_asyncio(count: int, concurrency: int) -> float:
    async def one() -> None:
        proc = await asyncio.create_subprocess_exec(TRUE)
        await proc.wait()

    return await _bounded(count, concurrency, one)


async def bare_threads(count: int, concurrency: int) -> float:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(concurrency) as pool:

        async def one() -> None:
            await loop.run_in_executor(pool, subprocess.run, [TRUE])

        return await _bounded(count, concurrency, one)


async def bare_pidfd(count: int, concurrency: int) -> float:
    async def one() -> None:
        proc = subprocess.Popen([TRUE])  # noqa: ASYNC220 - the spawn path under test
        fd = os.pidfd_open(proc.pid)
        try:
            await anyio.wait_readable(fd)
        finally:
            os.close(fd)
        proc.wait()

    return await _bounded(count, concurrency, one)


SUSPENDED: list[tuple[float, float]] = []
"""Per run of the bare posix_spawn loop: seconds per spawn inside the call,
where the event loop is suspended until the child has called exec, and the
share of the run's time that makes."""


async def bare_posix_spawn(count: int, concurrency: int, argv: tuple[str, ...] = (TRUE,)) -> float:
    env = dict(os.environ)
    inside = 0.0

    async def one() -> None:
        nonlocal inside
        before = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env)  # noqa: ASYNC221 - the spawn path under test
        inside += time.perf_counter() - before
        fd = os.pidfd_open(pid)
        try:
            await anyio.wait_readable(fd)
        finally:
            os.close(fd)
        os.waitpid(pid, 0)  # noqa: ASYNC222 - exited already: reaping does not wait

    rate = await _bounded(count, concurrency, one)
    SUSPENDED.append((inside / count, inside * rate / count))
    return rate


BROKER: dict[str, str] = {}
"""``--broker memory``: the same run on the memory broker (the default config has none)."""

SETPRIV = ("/usr/bin/setpriv", "--pdeathsig", "KILL", TRUE)
"""What an executor dying with its parent would cost through a helper exec'd in
front of it (util-linux's setpriv sets PR_SET_PDEATHSIG, then execs the program)."""


MEASURING: dict[str, Any] = {"on": False, "cpu": 0.0}
""""on" while a run is timed (for chute, from the first publish to the last ack), for
``--loop-time``: the runtime's start and stop are not time per item; "cpu", the event
loop's CPU seconds in the timed parts since it was last zeroed."""


def _measure(on: bool) -> None:
    """Start or stop the timed part of a run (on the event loop's thread)."""
    now = time.thread_time()
    MEASURING["cpu"] += -now if on else now
    MEASURING["on"] = on


PASSES: list[int] = []
"""Outcomes per commit pass of the chute runs (what a kill -9 before it reruns)."""


async def chute(count: int, concurrency: int) -> float:
    with tempfile.TemporaryDirectory() as work:
        config = config_from_dict(
            {
                **BROKER,
                "workdir": work,
                "topics": {"jobs": {}},
                "pools": {
                    "spawn": {
                        "topic": "jobs",
                        "concurrency": concurrency,
                        "executor": {"type": "command", "argv": [TRUE]},
                    }
                },
            },
            path="bench-spawn.toml",
            base_dir=work,
        )
        async with Runtime(config) as rt:
            messages = [new_message({"n": n}, key=f"item-{n}") for n in range(count)]
            pool = rt.pools["spawn"]
            outcomes = pool.outcomes
            flush = outcomes.flush

            async def counted() -> None:
                if outcomes.acks:
                    PASSES.append(len(outcomes.acks))
                await flush()

            outcomes.flush = counted  # type: ignore[method-assign]
            started = time.perf_counter()
            _measure(True)
            await rt.publish_many("jobs", messages)
            while True:
                # Taken before counting, as wait_idle does: the last batch of
                # acks cannot then slip in between the count and the wait.
                next_acks = pool.changed
                stats = await rt.broker.stats("jobs")
                if sum(g.acked for g in stats.groups) >= count:
                    break
                await next_acks.wait()
            elapsed = time.perf_counter() - started
            _measure(False)
            await rt.wait_idle()  # its 40 ms of confirming quiet is not spawn time
            done = pool.counters.succeeded
        if done != count:
            raise SystemExit(f"only {done} of {count} items succeeded")
        return count / elapsed


def _ticks() -> tuple[int, int, int]:
    """(ticks stolen by the hypervisor, ticks idle or waiting on I/O, all ticks) of every
    CPU since boot; zeros off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(t) for t in f.readline().split()[1:]]
    except OSError:
        return 0, 0, 0
    return ticks[7], ticks[3] + ticks[4], sum(ticks)


def _cpu(who: int) -> float:
    """CPU seconds used by this process (RUSAGE_SELF) or its reaped children (RUSAGE_CHILDREN)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def _with_cpu(run: Callable[[int, int], Awaitable[float]], count: int,
                    c: int) -> tuple[float, float, float, float]:  # fmt: skip
    """(items/s, CPU microseconds per item of the parent, and of the children, and the
    share of the machine's CPU time busy meanwhile: with idle CPUs, the loop is the limit)."""
    parent, children = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    _, idle, ticks = _ticks()
    rate = await run(count, c)
    _, idle_now, ticks_now = _ticks()
    per_item = 1e6 / count
    return (
        rate,
        (_cpu(resource.RUSAGE_SELF) - parent) * per_item,
        (_cpu(resource.RUSAGE_CHILDREN) - children) * per_item,
        1 - (idle_now - idle) / max(1, ticks_now - ticks),
    )


POSIX_SPAWN = "os.posix_spawn + pidfd on the loop"
LOOPS: dict[str, Callable[[int, int], Awaitable[float]]] = {
    "asyncio.create_subprocess_exec": bare_asyncio,
    "subprocess.run in threads": bare_threads,
    "Popen + pidfd on the loop": bare_pidfd,
    POSIX_SPAWN: bare_posix_spawn,
    "chute": chute,
}


async def main(count: int, concurrencies: list[int], rounds: int) -> None:
    await bare_asyncio(50, 2)  # warm up imports and the child watcher
    stolen, _, ticks = _ticks()
    print(f"spawn throughput, {count} runs of {TRUE}, median of {rounds} rounds (items/s)")
    for c in concurrencies:
        SUSPENDED.clear()
        PASSES.clear()
        runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in LOOPS}
        for n in range(rounds):
            for name, loop in list(LOOPS.items())[:: 1 if n % 2 == 0 else -1]:
                runs[name].append(await _with_cpu(loop, count, c))
        rate, cpu, kids, busy = (
            {name: statistics.median(r[i] for r in rs) for name, rs in runs.items()}
            for i in range(4)
        )
        ours = rate.pop("chute")
        best_name, best = max(rate.items(), key=lambda kv: kv[1])
        ratios = [
            chute[0] / bare[0] for chute, bare in zip(runs["chute"], runs[best_name], strict=True)
        ]
        paired = statistics.median(ratios)
        for name, r in rate.items():
            print(f"  concurrency {c}: bare {name:<32} {r:8.0f}/s")
        print(
            f"  concurrency {c}: chute command pool (end to end)  {ours:8.0f}/s"
            f"   ratio {paired:.2f}x the best bare loop ({best_name}),"
            f" median of the rounds' ratios (ratio of the medians {ours / best:.2f}x)"
        )
        print(
            f"  concurrency {c}: the rounds' ratios: {' '.join(f'{r:.2f}' for r in sorted(ratios))}"
        )
        print(
            f"  concurrency {c}: parent CPU per item: chute {cpu['chute']:.0f} us, "
            f"the best bare loop {cpu[best_name]:.0f} us; the children's: "
            f"{kids['chute']:.0f} us and {kids[best_name]:.0f} us; the CPUs busy: "
            f"{busy['chute']:.0%} and {busy[best_name]:.0%}"
        )
        suspended = statistics.median(per_spawn for per_spawn, _ in SUSPENDED)
        share = statistics.median(share for _, share in SUSPENDED)
        print(
            f"  concurrency {c}: the bare posix_spawn loop is suspended in the call for "
            f"{suspended * 1e6:.0f} us a spawn ({share:.0%} of its time)"
        )
        if os.access(SETPRIV[0], os.X_OK):
            SUSPENDED.clear()
            helper = await bare_posix_spawn(count, c, SETPRIV)
            print(
                f"  concurrency {c}: for comparison, a PR_SET_PDEATHSIG helper exec'd in front "
                f"of each child (setpriv): {helper:.0f}/s beside /bin/true alone "
                f"{rate[POSIX_SPAWN]:.0f}/s"
            )
        window = outcomes_module.FLUSH_EVERY
        print(
            f"  concurrency {c}: a kill -9 reruns at most {c} running items plus those "
            f"finished within one {window * 1000:.0f} ms commit window: at {ours:.0f}/s about "
            f"{ours * window:.0f}; the largest commit pass carried {max(PASSES)} "
            f"(mean {statistics.mean(PASSES):.1f})"
        )
    stolen_now, _, ticks_now = _ticks()
    if ticks_now > ticks:  # a virtual machine's CPUs can be taken away while it runs
        share = (stolen_now - stolen) / (ticks_now - ticks)
        print(f"hypervisor steal during the run: {share:.0%} of CPU time")


CPU_PARTS: list[tuple[Any, str, str]] = [
    (PosixSpawn, "spawn", "spawn call"),
    (PosixSpawn, "reap", "reap"),
    (_folders.Folders, "take", "item file"),
    (sqlite, "_claim_tokens", "state claims"),
    (sqlite, "_finish_rows", "state finishes"),
    (_local_db.Journal, "_pass", "broker journal"),
]
"""Parts of chute's per-item work on the loop, calls that never await, whose CPU
``--loop-time`` reports. The state store's BEGIN and COMMIT around its claims and
finishes count in "the rest"; the broker journal's pass includes its commit."""


@contextlib.contextmanager
def _loop_clock() -> Iterator[dict[str, float]]:
    """Seconds the event loop's thread spends waiting in epoll and inside the spawn call
    (the executor's, or the bare loop's ``os.posix_spawn``), and its CPU seconds in each of
    ``CPU_PARTS``, while the block runs; spawns in the executor's threads are not the loop's."""
    spent = {"epoll": 0.0, "spawn": 0.0, **{f"cpu {what}": 0.0 for _, _, what in CPU_PARTS}}
    loop_thread = threading.get_ident()

    def timed(fn: Callable[..., Any], what: str, clock: Callable[[], float]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            before = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                if MEASURING["on"] and threading.get_ident() == loop_thread:
                    spent[what] += clock() - before

        return run

    patched = [(selectors.EpollSelector, "select", "epoll", time.perf_counter),
               (PosixSpawn, "spawn", "spawn", time.perf_counter),
               (os, "posix_spawn", "spawn", time.perf_counter),
               *((owner, name, f"cpu {what}", time.thread_time)
                 for owner, name, what in CPU_PARTS)]  # fmt: skip
    originals = [getattr(owner, name) for owner, name, _, _ in patched]
    # The spawn call is timed twice (wall and CPU): the CPU timer goes inside the wall one.
    for owner, name, what, clock in reversed(patched):
        setattr(owner, name, timed(getattr(owner, name), what, clock))
    try:
        yield spent
    finally:
        for (owner, name, _, _), fn in zip(patched, originals, strict=True):
            setattr(owner, name, fn)


async def loop_time(count: int, concurrency: int) -> None:
    """Where the event loop's time per item goes, for chute and the bare posix_spawn loop;
    and for chute, the loop's CPU per item and the parts of it in ``CPU_PARTS``."""

    async def bare(count: int, concurrency: int) -> float:
        _measure(True)
        try:
            return await bare_posix_spawn(count, concurrency)
        finally:
            _measure(False)

    for name, run in [("chute", chute), ("bare posix_spawn loop", bare)] * 2:
        with _loop_clock() as spent:
            MEASURING["cpu"] = 0.0
            wall = count / await run(count, concurrency)  # the timed part's seconds
            cpu = MEASURING["cpu"]
        per = {k: v / count * 1e6 for k, v in spent.items()}
        print(f"  concurrency {concurrency}: {name:<22} {wall / count * 1e6:4.0f} us of loop time "
              f"per item: {per['epoll']:4.0f} waiting in epoll, {per['spawn']:4.0f} in the spawn "
              f"call, {(wall / count * 1e6) - per['epoll'] - per['spawn']:4.0f} the rest")  # fmt: skip
        parts = {what: per[f"cpu {what}"] for _, _, what in CPU_PARTS} if name == "chute" else {}
        listed = "".join(f"{what} {us:.1f}, " for what, us in parts.items())
        print(f"  concurrency {concurrency}: {'':<22} the loop's CPU per item: "
              f"{cpu / count * 1e6:.0f} us; "
              f"{listed}the rest {cpu / count * 1e6 - sum(parts.values()):.0f}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--broker", default="", help="e.g. memory (default: the default)")
    parser.add_argument("--loop-time", action="store_true",
                        help="instead: where the event loop's time and CPU per item go")  # fmt: skip
    args = parser.parse_args()
    if args.broker:
        BROKER["broker"] = args.broker
    if args.loop_time:
        for c in args.concurrency:
            asyncio.run(loop_time(args.count, c))
    else:
        asyncio.run(main(args.count, args.concurrency, args.rounds))
