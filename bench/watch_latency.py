"""Watch latency: a file closed in the folder -> emitted -> executor started, beside inotifywait.

A writer process drops ``--count`` files ``--gap`` apart, each written in
chunks with pauses (so a partial file is visible before the close). In the
same run, ``inotifywait -m -e close_write`` watches the same folder: that is
the floor (the kernel's event, read by a C program). Two phases:

1. source: the ``watch`` source alone; figure: close -> emitted.
2. engine: the whole runtime (memory broker, a pool with a python executor);
   figure: close -> executor started.

Each phase prints inotifywait's figures from the same files and the ratio.
The floor from issue 3: p50 <= 10 ms and p99 <= 30 ms, with no partial file
ever emitted (every emitted size equals the file's final size).

    python bench/watch_latency.py [--count 200] [--gap 0.02] [--size 65536]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _watchbench import InotifyWait, latencies, line, run_writer, write_into_runtime
from chute.context import PluginContext
from chute.message import Message
from chute_plugins.brokers.memory import MemoryBroker
from chute_plugins.sources.watch import WatchOptions, WatchSource

from bench._procs import percentile

FLOOR_P50_MS, FLOOR_P99_MS = 10.0, 30.0


def verdict(values: list[float], partial: int, expected: int) -> str:
    ok = (
        len(values) == expected
        and percentile(values, 50) <= FLOOR_P50_MS
        and percentile(values, 99) <= FLOOR_P99_MS
        and partial == 0
    )
    return "PASS" if ok else "FAIL"


async def phase_source(folder: Path, args: argparse.Namespace) -> tuple[list[float], int]:
    seen: dict[str, int] = {}
    sizes: dict[str, int] = {}

    async def emit(batch: Sequence[Message]) -> list[str]:
        now = time.monotonic_ns()
        for m in batch:
            seen.setdefault(m.data["name"], now)
            sizes[m.data["name"]] = m.data["size"]
        return [""] * len(batch)

    ctx = PluginContext(
        name="bench", topic="files", base_dir=folder.parent, workdir=folder.parent / "work",
        node="bench", broker=MemoryBroker(),
    )  # fmt: skip
    source = WatchSource(WatchOptions(path=str(folder), rescan=0), ctx)
    inotifywait = InotifyWait(folder)
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.run, emit)
        await source.ready.wait()
        closes = await anyio.to_thread.run_sync(
            run_writer, folder, args.count, args.gap, args.size, args.chunks
        )
        await anyio.sleep(0.5)  # let the last events arrive before reading the figures
        tg.cancel_scope.cancel()
    inotifywait.stop()
    await source.aclose()
    ours = latencies(closes, seen)
    partial = sum(1 for size in sizes.values() if size != args.size // args.chunks * args.chunks)
    report("close -> emitted", ours, latencies(closes, inotifywait.seen), partial, args.count)
    return ours, partial


async def phase_engine(folder: Path, args: argparse.Namespace) -> tuple[list[float], int]:
    started: dict[str, int] = {}
    sizes: dict[str, int] = {}

    def record(data: Any) -> None:
        started.setdefault(data["name"], time.monotonic_ns())
        sizes[data["name"]] = data["size"]

    closes, floor = await write_into_runtime(
        folder, record, hook="chute_bench_hook", count=args.count, gap=args.gap, size=args.size,
        chunks=args.chunks, settle=0.5,
    )  # fmt: skip
    ours = latencies(closes, started)
    partial = sum(1 for size in sizes.values() if size != args.size // args.chunks * args.chunks)
    report("close -> executor started", ours, latencies(closes, floor), partial,
           args.count)  # fmt: skip
    return ours, partial


def report(label: str, ours: list[float], floor: list[float], partial: int, count: int) -> None:
    print(line(f"chute {label}", ours, count))
    print(line("inotifywait (same files)", floor, count))
    ratio50 = percentile(ours, 50) / max(percentile(floor, 50), 1e-9)
    ratio99 = percentile(ours, 99) / max(percentile(floor, 99), 1e-9)
    print(
        f"  ratio to inotifywait: p50 x{ratio50:.1f}, p99 x{ratio99:.1f}; partial files: {partial}"
    )
    print(
        f"  floor p50 <= {FLOOR_P50_MS:g} ms, p99 <= {FLOOR_P99_MS:g} ms, no partial file: "
        f"{verdict(ours, partial, count)}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between files")
    parser.add_argument("--size", type=int, default=65536, help="bytes per file")
    parser.add_argument("--chunks", type=int, default=8, help="writes per file")
    args = parser.parse_args()
    print(f"watch latency: {args.count} files of {args.size} bytes, {args.gap * 1000:g} ms apart")
    with tempfile.TemporaryDirectory() as tmp:
        print("phase 1: the watch source alone")
        (Path(tmp) / "a").mkdir()
        await phase_source(Path(tmp) / "a", args)
        print("phase 2: the whole runtime")
        (Path(tmp) / "b").mkdir()
        await phase_engine(Path(tmp) / "b", args)


if __name__ == "__main__":
    anyio.run(main)
