"""(e) The figures the single-purpose scripts of bench/ print, folded into the table.

Each script runs as it does by hand (``python bench/NAME.py``, in a process
of its own), with smaller counts in ``--quick``; its output is kept in the
JSON and its figures parsed into rows. A script whose output no longer
parses is an error: the entry point and the scripts cannot drift apart.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench._procs import BenchError
from bench._table import Results, Row
from bench.scenarios import Mode

HERE = Path(__file__).resolve().parents[1]
NUMBER = r"([0-9.,]+)"


def _find(pattern: str, text: str, script: str) -> list[float]:
    found = re.search(pattern, text)
    if found is None:
        raise BenchError(f"bench/{script}.py printed no line matching {pattern!r}")
    return [float(g.replace(",", "")) for g in found.groups()]


def topic(out: str) -> list[Row]:
    name = "topic_throughput"
    (q,) = _find(rf"asyncio.Queue handoff\s*:\s*{NUMBER} M", out, name)
    (m,) = _find(rf"memory broker\s*:\s*{NUMBER} M", out, name)
    row = Row("e", "memory topic, publish -> read -> ack", m * 1e6, "asyncio.Queue", q * 1e6,
              "msgs/s", ">= 0.75x")  # fmt: skip
    row.met = row.ratio >= 0.75
    rows = [row]
    for durability, sync in (("process", "NORMAL"), ("power", "FULL")):
        (bare,) = _find(rf"bare SQLite loop \({sync}\s*\)\s*:\s*{NUMBER} M", out, name)
        (ours,) = _find(rf"local broker \(durability={durability}\s*\):\s*{NUMBER} M", out, name)
        row = Row("e", f"local (durable) topic, durability={durability}", ours * 1e6,
                  f"bare SQLite loop ({sync})", bare * 1e6, "msgs/s", ">= 0.5x")  # fmt: skip
        row.met = row.ratio >= 0.5
        rows.append(row)
        ours, bare = _find(
            rf"local broker durability={durability}\s*:\s*{NUMBER} msgs/s\s*bare loop, one commit "
            rf"per message \({sync}\):\s*{NUMBER} msgs/s", out, name,
        )  # fmt: skip
        rows.append(Row("e", f"local topic, 8 single publishers, durability={durability}", ours,
                        f"a commit per message ({sync})", bare, "msgs/s"))  # fmt: skip
    return rows


def operators(out: str) -> list[Row]:
    (bare,) = _find(rf"bare memory topic \(publish->read->ack\):\s*{NUMBER} M", out, "operators")
    rows = []
    for label in ("copy to 2 outputs", "split on a predicate", "shard by key over 4"):
        (v,) = _find(rf"{label}\s*:\s*{NUMBER} M", out, "operators")
        row = Row("e", f"operator: {label}", v * 1e6, "bare memory topic", bare * 1e6, "msgs/s",
                  ">= 0.5x")  # fmt: skip
        row.met = row.ratio >= 0.5
        rows.append(row)
    return rows


def redis_throughput(out: str) -> list[Row]:
    name = "redis_throughput"
    (base,) = _find(rf"hand-written redis-py loop\s*:\s*{NUMBER} k", out, name)
    (engine,) = _find(rf"chute engine, pool \+ python no-op executor :\s*{NUMBER} k", out, name)
    (lat_b,) = _find(rf"hand-written XADD -> XREADGROUP:\s*{NUMBER} ms", out, name)
    (lat_c,) = _find(rf"chute publish -> executor start:\s*{NUMBER} ms", out, name)
    row = Row("e", "Redis end to end, batches of 500, in-process no-op", engine * 1e3,
              "redis-py loop", base * 1e3, "msgs/s", ">= 1x")  # fmt: skip
    row.met = row.ratio >= 1
    lat = Row("e", "Redis publish -> executor start (embedded)", lat_c, "XADD -> XREADGROUP",
              lat_b, "ms", "<= 2 ms", lat_c <= 2)  # fmt: skip
    return [row, lat]


def item_timeout(out: str) -> list[Row]:
    (ours,) = _find(rf"timeout, a lane per worker\s*:\s*{NUMBER} us", out, "item_timeout")
    (each,) = _find(rf"timeout, fail_after per item\s*:\s*{NUMBER} us", out, "item_timeout")
    return [Row("e", "engine CPU per no-op item with a pool timeout", ours,
                "anyio.fail_after per item", each, "us")]  # fmt: skip


def burst(out: str) -> list[Row]:
    (ours,) = _find(rf"chute processed: \d+/\d+ in\s*{NUMBER} s", out, "burst")
    after = out[out.index("chute processed:") :]
    (kernel,) = _find(rf"inotifywait \(same files\): \d+/\d+ events in\s*{NUMBER} s", after,
                      "burst")  # fmt: skip
    ok = "missed 0, twice 0" in out.split("chute processed:", 1)[1].splitlines()[0]
    return [Row("e", "burst of files dropped at once -> all processed", ours * 1e3, "inotifywait",
                kernel * 1e3, "ms", "none missed, none twice", ok)]  # fmt: skip


def autoscale(out: str) -> list[Row]:
    rows = []
    p95s = re.findall(r"floor: autoscaled p95 (\d+) ms <= 2 x fixed-16 p95 \+ S = (\d+) ms", out)
    works = re.findall(rf"floor: autoscaled worker-s {NUMBER} <= 60% of fixed-16 {NUMBER}", out)
    if not p95s or len(p95s) != len(works):
        raise BenchError("bench/autoscale.py printed no floor lines")
    for profile, (p95, bound), (ws, fixed) in zip(("step", "burst"), p95s, works, strict=False):
        row = Row("e", f"autoscaled pool, {profile}: p95 wait", float(p95), "2 x fixed-16 p95 + S",
                  float(bound), "ms", "<= 1x")  # fmt: skip
        row.met = row.ratio <= 1
        rows.append(row)
        row = Row("e", f"autoscaled pool, {profile}: worker-seconds", float(ws), "fixed 16",
                  float(fixed), "s", "<= 0.6x")  # fmt: skip
        row.met = row.ratio <= 0.6
        rows.append(row)
    return rows


SCRIPTS: dict[str, tuple[dict[str, list[str]], Callable[[str], list[Row]]]] = {
    "topic_throughput": ({"full": [], "quick": ["--count", "100000", "--rounds", "1",
                                                "--singles", "5000"],
                          "smoke": ["--count", "5000", "--rounds", "1", "--singles", "500"]},
                         topic),
    "operators": ({"full": [], "quick": ["--count", "100000", "--rounds", "1"],
                   "smoke": ["--count", "5000", "--rounds", "1"]}, operators),
    "redis_throughput": ({"full": [], "quick": ["--count", "10000", "--rounds", "1",
                                                "--samples", "30"],
                          "smoke": ["--count", "1000", "--rounds", "1", "--samples", "5"]},
                         redis_throughput),
    "item_timeout": ({"full": [], "quick": ["--count", "10000", "--rounds", "1"],
                      "smoke": ["--count", "1000", "--rounds", "1"]}, item_timeout),
    "burst": ({"full": [], "quick": ["--count", "1000"], "smoke": ["--count", "100"]}, burst),
    "autoscale": ({"full": ["--profiles", "step,burst"],
                   "quick": ["--profiles", "step,burst", "--service", "0.005"],
                   "smoke": ["--profiles", "step", "--service", "0.002"]}, autoscale),
}  # fmt: skip


def run(mode: Mode, results: Results, peers: bool) -> None:
    outputs = {}
    for script, (args, parse) in SCRIPTS.items():
        print(f"  (e) bench/{script}.py {' '.join(args[mode.name])}", flush=True)
        done = subprocess.run([sys.executable, str(HERE / f"{script}.py"), *args[mode.name]],
                              capture_output=True, text=True, cwd=HERE.parent)  # fmt: skip
        # autoscale.py exits 1 when a floor fails: the row says so; no output at all is an error
        if done.returncode not in (0, 1) or not done.stdout:
            tail = " | ".join(done.stderr.strip().splitlines()[-2:])
            raise BenchError(f"bench/{script}.py exited with {done.returncode}: {tail}")
        outputs[script] = done.stdout
        for row in parse(done.stdout):
            results.add(row)
    results.details["e"] = outputs
