"""Burst: 10,000 files dropped at once; every one processed exactly once, and how fast.

``--count`` files of 1 KiB are written to a staging folder on the same file
system, then another process renames them all into the watched folder as fast
as it can (about 0.1 s for 10,000: "at once"; writing them in place would
measure the writer). ``inotifywait -m -e close_write,moved_to`` watches the
same folder in the same run (the floor: the kernel's events, read by a C program). Two phases:

1. source: the ``watch`` source alone; all emitted, none missed, none twice.
2. engine: the whole runtime (memory broker, a pool of 8 with a python
   executor that records each item); all processed, none missed, none twice;
   time from the first file to the last executor call.
3. start scan: the same number of files already in the folder when the
   runtime starts; time from start to the last executor call, beside a bare
   ``os.scandir`` + ``stat`` of the folder.

A burst this size can overflow the kernel's event queue
(``fs.inotify.max_queued_events``, 16384 by default); the source then rescans,
so the counts stay exact. Overflows and rescans are printed.

    python bench/burst.py [--count 10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _watchbench import InotifyWait, move_in, stage, watch_runtime
from chute.context import PluginContext
from chute.message import Message
from chute_plugins.brokers.memory import MemoryBroker
from chute_plugins.sources.watch import WatchOptions, WatchSource


class Tally:
    """Counts names; ``wait(n)`` returns once n distinct names were seen (an event, no poll)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.last = 0
        self._more = anyio.Event()

    def add(self, names: list[str]) -> None:
        self.counts.update(names)
        self.last = time.monotonic_ns()
        self._more.set()

    async def wait(self, n: int) -> None:
        while len(self.counts) < n:
            await self._more.wait()
            self._more = anyio.Event()


def report(label: str, tally: Tally, start: int, floor: InotifyWait, count: int,
           write_ns: int, stats: Any) -> None:  # fmt: skip
    missed = count - len(tally.counts)
    twice = sum(1 for c in tally.counts.values() if c > 1)
    ours = (tally.last - start) / 1e9
    kernel = (max(floor.seen.values(), default=start) - start) / 1e9
    ok = "PASS" if missed == 0 and twice == 0 else "FAIL"
    print(f"  chute {label}: {len(tally.counts)}/{count} in {ours:.2f} s "
          f"({count / ours:,.0f} files/s); missed {missed}, twice {twice}: {ok}")  # fmt: skip
    print(f"  inotifywait (same files): {len(floor.seen)}/{count} events in {kernel:.2f} s; "
          f"renames alone {write_ns / 1e9:.2f} s")  # fmt: skip
    print(f"  ratio to inotifywait: x{ours / max(kernel, 1e-9):.2f}; "
          f"overflows {stats.overflows}, rescans {stats.rescans}")  # fmt: skip


async def drop_files(folder: Path, count: int) -> tuple[int, int]:
    staging = folder.parent / f"{folder.name}-staging"
    await anyio.to_thread.run_sync(stage, staging, count, 1024)
    start = time.monotonic_ns()
    finished = await anyio.to_thread.run_sync(move_in, staging, folder)
    return start, finished - start


async def phase_source(folder: Path, count: int) -> None:
    tally = Tally()

    async def emit(batch: Sequence[Message]) -> list[str]:
        tally.add([m.data["name"] for m in batch])
        return [""] * len(batch)

    ctx = PluginContext(
        name="bench", topic="files", base_dir=folder.parent, workdir=folder.parent / "work",
        node="bench", broker=MemoryBroker(),
    )  # fmt: skip
    source = WatchSource(WatchOptions(path=str(folder), rescan=0), ctx)
    floor = InotifyWait(folder)
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.run, emit)
        await source.ready.wait()
        start, write_ns = await drop_files(folder, count)
        with anyio.fail_after(120):
            await tally.wait(count)
        await anyio.sleep(1.0)  # anything emitted twice would show up by now
        tg.cancel_scope.cancel()
    floor.stop()
    report("emitted", tally, start, floor, count, write_ns, source.stats)


async def phase_engine(folder: Path, count: int) -> None:
    tally = Tally()

    def record(data: Any) -> None:
        tally.add([data["name"]])

    runtime = watch_runtime(folder, record, hook="chute_burst_hook", concurrency=8)
    floor = InotifyWait(folder)
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        source = runtime.sources["inbox"][0]
        await source.ready.wait()
        start, write_ns = await drop_files(folder, count)
        with anyio.fail_after(120):
            await tally.wait(count)
        await anyio.sleep(1.0)
        runtime.stop()
    floor.stop()
    report("processed", tally, start, floor, count, write_ns, source.stats)


def bare_listing(folder: Path) -> float:
    start = time.perf_counter()
    with os.scandir(folder) as entries:
        for entry in entries:
            entry.stat()
    return time.perf_counter() - start


async def phase_start_scan(folder: Path, count: int) -> None:
    tally = Tally()

    def record(data: Any) -> None:
        tally.add([data["name"]])

    await anyio.to_thread.run_sync(stage, folder, count, 1024)
    bare = await anyio.to_thread.run_sync(bare_listing, folder)
    start = time.monotonic_ns()
    runtime = watch_runtime(
        folder, record, hook="chute_scan_hook", concurrency=8, workdir="work-scan"
    )
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        with anyio.fail_after(120):
            await tally.wait(count)
        runtime.stop()
    ours = (tally.last - start) / 1e9
    missed = count - len(tally.counts)
    twice = sum(1 for c in tally.counts.values() if c > 1)
    ok = "PASS" if missed == 0 and twice == 0 else "FAIL"
    print(f"  chute start scan -> processed: {len(tally.counts)}/{count} in {ours:.2f} s "
          f"({count / ours:,.0f} files/s); missed {missed}, twice {twice}: {ok}")  # fmt: skip
    print(f"  bare scandir + stat of the folder: {bare:.3f} s; ratio x{ours / bare:.1f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    args = parser.parse_args()
    print(f"burst: {args.count} files of 1 KiB dropped at once")
    with tempfile.TemporaryDirectory() as tmp:
        print("phase 1: the watch source alone")
        (Path(tmp) / "a").mkdir()
        await phase_source(Path(tmp) / "a", args.count)
        print("phase 2: the whole runtime")
        (Path(tmp) / "b").mkdir()
        await phase_engine(Path(tmp) / "b", args.count)
        print("phase 3: files already there at start")
        await phase_start_scan(Path(tmp) / "c", args.count)


if __name__ == "__main__":
    anyio.run(main)
