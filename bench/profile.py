"""Where a chute worker's time goes in scenario (a) or (b): py-spy on ``chute run``.

Starts chute's workers as ``python -m bench`` does (own redis-server, the same
config), attaches ``py-spy record`` to the worker for the drain, and prints
the functions with the most samples, on their own and with what they call.

    python -m bench.profile noop [--count 20000]
    python -m bench.profile count [--count 20000]   (no-op jobs without the INCR: the engine alone)
    python -m bench.profile spawn [--count 2000] [--concurrency 8]

Needs py-spy (``pip install -e '.[bench]'``) and ptrace rights over the worker.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._procs import BenchError, cpu_seconds, redis_server
from bench.peers.sides import driver, start


def report(raw: Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" if " (" in f else f for f in stack.split(";")]  # fmt: skip
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"{total} samples")
    print("own time:")
    for frame, n in own.most_common(top):
        print(f"  {n / total:6.1%}  {frame}")
    print("with callees:")
    for frame, n in inclusive.most_common(top):
        print(f"  {n / total:6.1%}  {frame}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["noop", "count", "spawn"])
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("bench: py-spy is missing: pip install -e '.[bench]'", file=sys.stderr)
        return 3
    count = args.count or (2000 if args.kind == "spawn" else 20_000)
    concurrency = args.concurrency or (8 if args.kind == "spawn" else 16)
    jobs = "spawn" if args.kind == "spawn" else "noop"  # what the driver sends
    try:
        with redis_server() as url, tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "profile.txt"
            with start("chute", url, args.kind, concurrency, Path(tmp)) as workers:
                driver("chute", url, "drain", 1, jobs, timeout=120)
                spying = subprocess.Popen(
                    [spy, "record", "--format", "raw", "--rate", "250", "--nonblocking",
                     "-o", str(raw), "--pid", str(workers.pids[0])],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                before = cpu_seconds(workers.pids)
                done = driver("chute", url, "drain", count, jobs)
                cpu_us = (cpu_seconds(workers.pids) - before) / count * 1e6
                spying.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spying.wait(timeout=30)
            seconds = float(done["seconds"])  # type: ignore[arg-type]
            print(f"{count} {args.kind} jobs in {seconds:.2f} s ({count / seconds:.0f}/s), "
                  f"worker CPU {cpu_us:.1f} us per job")  # fmt: skip
            if not raw.exists():
                raise BenchError("py-spy wrote no profile (ptrace not allowed?)")
            report(raw, args.top)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
