"""Start-up and idle footprint of `chute run configs/demo.toml`.

Figures: milliseconds from process start to the first item processed (the
demo's report pool prints a line per item), and the resident memory of the
idle runtime. Baseline in the same run: a bare `python -c pass` start, the
floor no Python program gets under. chute's bytecode is compiled first, as
installing a package compiles it (``compile_chute``).

    python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IDLE_CONFIG = """
[sources.numbers]
type = "generate"
topic = "jobs"
count = 0
rate = 2
[pools.summarize]
topic = "jobs"
output = "summaries"
concurrency = 4
executor = {{ type = "python", function = "demo_tasks:summarize", path = ["{configs}"] }}
[pools.report]
topic = "summaries"
track = false
executor = {{ type = "python", function = "demo_tasks:report", path = ["{configs}"] }}
"""


def compile_chute() -> None:
    """Write chute's bytecode, as ``pip install`` does for each package it installs (the
    peers' included). An editable install writes it at its first import, unless
    ``PYTHONDONTWRITEBYTECODE`` is set (this machine sets it): then every start would
    compile chute from source (some 45 ms here), which no installed chute does."""
    for folder in ("runtime", "plugins"):
        compileall.compile_dir(REPO / folder, quiet=1)


def chute_cmd() -> list[str]:
    exe = shutil.which("chute", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "chute"]


def time_to_first_item(config: Path) -> float:
    # A fresh state each run: the demo's items are done after the first one.
    shutil.rmtree(config.parent / ".chute", ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*chute_cmd(), "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.terminate()
    proc.wait(timeout=30)
    assert line.startswith("item"), line
    return elapsed * 1000


def bare_python() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return (time.perf_counter() - start) * 1000


def idle_rss_mb(config: Path) -> float:
    proc = subprocess.Popen(
        [*chute_cmd(), "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for _ in range(6):  # a few items through: every code path imported and warm
        proc.stdout.readline()
    with open(f"/proc/{proc.pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    proc.terminate()
    proc.wait(timeout=30)
    return rss_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    compile_chute()
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo.toml"
        demo.write_text(
            (REPO / "configs" / "demo.toml")
            .read_text()
            .replace('path = ["."]', f'path = ["{REPO / "configs"}"]')
        )
        idle = Path(tmp) / "idle.toml"
        idle.write_text(IDLE_CONFIG.format(configs=REPO / "configs"))
        os.chdir(tmp)
        firsts = [time_to_first_item(demo) for _ in range(args.runs)]
        bares = [bare_python() for _ in range(args.runs)]
        rss = idle_rss_mb(idle)
    print(f"chute run demo.toml, start -> first item: median {statistics.median(firsts):6.0f} ms")
    print(f"bare `python -c pass`                      : median {statistics.median(bares):6.0f} ms")
    print(f"idle runtime RSS                           : {rss:6.1f} MB")


if __name__ == "__main__":
    main()
