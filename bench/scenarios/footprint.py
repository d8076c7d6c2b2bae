"""(d) Start-up time to the first item, and idle memory (RSS) of each side.

chute's floors are on ``chute run configs/demo.toml`` (``bench/startup.py``:
process start -> the first item's line; RSS of the idle runtime), beside a
bare ``python -c pass``. Against the peers, every side the same way: one
``mark`` job is waiting in its own Redis when its workers are started;
figure: process start -> that job started; then, after a second of idle, the
RSS of all the side's processes added up (a prefork pool's children
included), with the no-op settings of (a).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench import startup
from bench._procs import BenchError, redis_server, rss_mb
from bench._table import Results, Row
from bench.peers.sides import FRAMEWORKS, driver, start
from bench.scenarios import Mode
from bench.scenarios.jobs import POOL

REPO = Path(__file__).resolve().parents[2]


def first_item(side: str) -> dict[str, float]:
    with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
        driver(side, url, "prime")
        r = redis.Redis.from_url(url, socket_timeout=None)
        begin = time.monotonic_ns()
        with start(side, url, "noop", POOL[side], Path(tmp)) as workers:
            got = r.blpop(["bench:start"], timeout=60)
            if got is None:
                workers.check()
                raise BenchError(f"{side}: no job started within 60 s of the workers' start")
            ms = (int(got[1]) - begin) / 1e6
            time.sleep(1.0)
            workers.check()
            rss = rss_mb(workers.pids)
        r.close()
    return {"first_ms": ms, "rss_mb": rss}


def demo(runs: int) -> dict[str, float]:
    """bench/startup.py's figures: chute run demo.toml, and a bare python."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "demo.toml"
        config.write_text((REPO / "configs" / "demo.toml").read_text()
                          .replace('path = ["."]', f'path = ["{REPO / "configs"}"]'))  # fmt: skip
        idle = Path(tmp) / "idle.toml"
        idle.write_text(startup.IDLE_CONFIG.format(configs=REPO / "configs"))
        os.chdir(tmp)
        try:
            firsts = [startup.time_to_first_item(config) for _ in range(runs)]
            bares = [startup.bare_python() for _ in range(runs)]
            rss = startup.idle_rss_mb(idle)
        finally:
            os.chdir(here)
    return {"first_ms": statistics.median(firsts), "python_ms": statistics.median(bares),
            "rss_mb": rss}  # fmt: skip


def run(mode: Mode, results: Results, peers: bool) -> None:
    print("  (d) start-up and idle memory", flush=True)
    startup.compile_chute()
    ours = demo(mode.starts)
    results.add(Row("d", "chute run demo.toml: start -> first item", ours["first_ms"],
                    "python -c pass", ours["python_ms"], "ms", "<= 250 ms",
                    ours["first_ms"] <= 250))  # fmt: skip
    results.add(Row("d", "chute run demo.toml: idle RSS", ours["rss_mb"], "", float("nan"),
                    "MB", "<= 40 MB", ours["rss_mb"] <= 40))  # fmt: skip
    got: dict[str, Any] = {"demo": ours}
    for side in ["chute", *(FRAMEWORKS if peers else [])]:
        runs = [first_item(side) for _ in range(mode.starts)]
        got[side] = {"first_ms": statistics.median(r["first_ms"] for r in runs),
                     "rss_mb": statistics.median(r["rss_mb"] for r in runs)}  # fmt: skip
    results.details["d"] = got
    for side in FRAMEWORKS if peers else []:
        results.add(Row("d", "Redis workers: start -> first job", got["chute"]["first_ms"], side,
                        got[side]["first_ms"], "ms"))  # fmt: skip
    for side in FRAMEWORKS if peers else []:
        results.add(Row("d", "Redis workers: idle RSS, all processes", got["chute"]["rss_mb"],
                        side, got[side]["rss_mb"], "MB"))  # fmt: skip
    if not peers:
        results.add(Row("d", "Redis workers: start -> first job", got["chute"]["first_ms"], "",
                        float("nan"), "ms"))  # fmt: skip
