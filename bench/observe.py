"""What watching costs: /metrics and the dashboard's data, scraped every second, against none.

Two workloads, each run in three modes that take turns within every round
(reversed every other round, so a noisy neighbour hits all alike):

- ``off``: the API disabled;
- ``api``: the API enabled, nobody asking;
- ``scraped``: the API enabled and another process fetching ``/metrics``
  and ``/v1/dashboard`` once a second, as Prometheus and an open dashboard do.

Workloads: ``memory``, items through a pool whose python executor returns at
once (the in-memory path: memory broker and state); ``spawn``, items through
a pool whose ``command`` runs ``/bin/true`` at concurrency 2. Each run lasts
about ``--seconds`` (the item count is calibrated once), so a run holds that
many scrapes. The figure is items per second from the first publish to the
last ack; the cost is 1 - scraped/off, the median of the rounds' own ratios.

First, and steadier on a shared machine: the CPU the runtime's process spends
serving one scrape of both routes while it holds a workload's statistics; at
one scrape a second, that is the share of the event loop a busy pipeline can
lose. ``--rounds 0`` prints only that.

    python bench/observe.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from chute.config import config_from_dict
from chute.engine import Runtime
from chute.message import new_message

HERE = Path(__file__).resolve().parent

BURST = """
import sys, urllib.request
base, n = sys.argv[1], int(sys.argv[2])
for _ in range(n):
    for path in ("/metrics", "/v1/dashboard"):
        urllib.request.urlopen(base + path, timeout=5).read()
"""

SCRAPER = """
import sys, time, urllib.request
base = sys.argv[1]
while True:
    for path in ("/metrics", "/v1/dashboard"):
        try:
            urllib.request.urlopen(base + path, timeout=5).read()
        except OSError:
            pass
    time.sleep(1.0)
"""


def noop(data: Any) -> Any:
    return data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(workload: str, work: str, api: bool, port: int) -> Any:
    if workload == "memory":
        executor = {"type": "python", "function": "observe:noop", "path": [str(HERE)]}
        pool = {"topic": "jobs", "concurrency": 8, "executor": executor}
        broker, state = "memory", "memory"
    else:
        pool = {"topic": "jobs", "concurrency": 2,
                "executor": {"type": "command", "argv": ["/bin/true"]}}  # fmt: skip
        broker, state = "local", "sqlite"
    doc = {
        "broker": broker, "workdir": work, "state": state, "summary_every": 0,
        "api": {"enabled": api, "port": port},
        "topics": {"jobs": {"capacity": 10_000_000}}, "pools": {"work": pool},
    }  # fmt: skip
    return config_from_dict(doc, path=f"bench-{workload}.toml", base_dir=work)


async def one_run(workload: str, mode: str, count: int) -> float:
    port = _free_port()
    with tempfile.TemporaryDirectory() as work:
        config = _config(workload, work, api=mode != "off", port=port)
        async with Runtime(config) as rt, contextlib.AsyncExitStack() as stack:
            if mode == "scraped":
                scraper = await anyio.open_process(
                    [sys.executable, "-c", SCRAPER, f"http://127.0.0.1:{port}"]
                )
                stack.push_async_callback(_stop, scraper)
            pool = rt.pools["work"]
            messages = [new_message({"n": n}, key=f"item-{n}") for n in range(count)]
            started = time.perf_counter()
            await rt.publish_many("jobs", messages)
            while pool.counters.succeeded < count:
                await pool.changed.wait()
            elapsed = time.perf_counter() - started
    return count / elapsed


async def scrape_cpu(workload: str, scrapes: int) -> tuple[float, float]:
    """(CPU seconds this process spends per scrape of both routes, the same idle), mid-workload.

    CPU time, not throughput: on a shared machine the throughput of runs
    minutes apart moves by tens of percent, while the CPU a scrape costs the
    runtime's process holds still. At one scrape a second, that CPU is the
    share of the event loop a busy pipeline loses.
    """
    port = _free_port()
    with tempfile.TemporaryDirectory() as work:
        config = _config(workload, work, api=True, port=port)
        async with Runtime(config) as rt:
            count = 2000 if workload == "memory" else 200
            messages = [new_message({"n": n}, key=f"item-{n}") for n in range(count)]
            await rt.publish_many("jobs", messages)
            await rt.wait_idle()  # the histograms and stats hold a real workload's figures
            command = [sys.executable, "-c", BURST, f"http://127.0.0.1:{port}", str(scrapes)]
            cpu, wall = time.process_time(), time.perf_counter()
            await anyio.run_process(command)
            busy, wall = time.process_time() - cpu, time.perf_counter() - wall
            cpu = time.process_time()
            await anyio.sleep(wall)  # the same time with nobody asking: the autoscalers' ticks
            idle = time.process_time() - cpu
    return busy / scrapes, idle / scrapes


async def _stop(process: Process) -> None:
    process.terminate()
    await process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", nargs="+", default=["memory", "spawn"])
    args = parser.parse_args()
    modes = ["off", "api", "scraped"]
    for workload in args.workloads:
        per, idle = anyio.run(scrape_cpu, workload, 200)
        print(
            f"{workload}: CPU of the runtime's process per scrape of /metrics + /v1/dashboard: "
            f"{per * 1000:.2f} ms (idle over the same time: {idle * 1000:.2f} ms per scrape);"
        )
        print(
            f"  at one scrape a second that is {(per - idle) * 100:.2f}% of one core, the most "
            "a busy single-loop pipeline can lose to it"
        )
        if args.rounds == 0:
            continue
        rate = anyio.run(one_run, workload, "off", 2000 if workload == "memory" else 300)
        count = max(1000, int(rate * args.seconds))
        rates: dict[str, list[float]] = {m: [] for m in modes}
        ratios: list[float] = []
        for r in range(args.rounds):
            order = modes if r % 2 == 0 else modes[::-1]
            got = {m: anyio.run(one_run, workload, m, count) for m in order}
            for m in modes:
                rates[m].append(got[m])
            ratios.append(got["scraped"] / got["off"])
        med = {m: statistics.median(v) for m, v in rates.items()}
        ratio = statistics.median(ratios)
        print(f"{workload}: {count} items per run, {args.rounds} rounds, items/s (median):")
        for m in modes:
            print(f"  {m:8s} {med[m]:10.0f}   rounds: " + ", ".join(f"{x:.0f}" for x in rates[m]))
        print("  scraped/off per round: " + ", ".join(f"{x:.3f}" for x in ratios))
        print(f"  cost of scraping /metrics and /v1/dashboard every second: "
              f"{(1 - ratio) * 100:+.1f}% (median of the rounds' ratios)")  # fmt: skip


if __name__ == "__main__":
    main()
