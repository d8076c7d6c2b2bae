"""Shared parts of the watch benchmarks: a writer process, inotifywait, executor hooks, the runtime.

Times are ``CLOCK_MONOTONIC`` nanoseconds, one clock for every process on the
machine, so a close in the writer process and an event in this one compare.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from chute.config import config_from_dict
from chute.engine import Runtime

from bench._procs import percentile

WRITER = r"""
import os, sys, time
folder, count, gap, size, chunks = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
piece = b"x" * (size // chunks)
out = []
for i in range(count):
    name = f"{i:05}.bin"
    # Written in chunks with a pause, so a watcher that does not wait for the close
    # would see (and could emit) a partial file.
    f = open(os.path.join(folder, name), "wb")
    for _ in range(chunks):
        f.write(piece)
        f.flush()
        if gap:
            time.sleep(0.0005)
    # Stamped just before the close: a clock read after it can come late, when the
    # writer is preempted by the very watchers it wakes (the latency came out negative).
    closed = time.monotonic_ns()
    f.close()
    out.append(f"{name} {closed}")
    if gap:
        time.sleep(gap)
sys.stdout.write("\n".join(out) + "\n")
"""


RENAMER = r"""
import os, sys, time
staging, folder = sys.argv[1], sys.argv[2]
names = sorted(os.listdir(staging))
for name in names:
    os.rename(os.path.join(staging, name), os.path.join(folder, name))
sys.stdout.write(f"{time.monotonic_ns()}\n")
"""


def stage(staging: Path, count: int, size: int) -> None:
    staging.mkdir(exist_ok=True)
    for i in range(count):
        (staging / f"{i:05}.bin").write_bytes(b"x" * size)


def move_in(staging: Path, folder: Path) -> int:
    """Rename every staged file into ``folder`` from another process; return when it finished."""
    done = subprocess.run(
        [sys.executable, "-c", RENAMER, str(staging), str(folder)],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    return int(done.stdout.strip())


def run_writer(folder: Path, count: int, gap: float, size: int, chunks: int) -> dict[str, int]:
    """Write ``count`` files; return each file's close time."""
    args = [str(folder), str(count), str(gap), str(size), str(chunks)]
    done = subprocess.run(
        [sys.executable, "-c", WRITER, *args], capture_output=True, check=True, text=True
    )
    closes: dict[str, int] = {}
    for line in done.stdout.splitlines():
        name, at = line.rsplit(" ", 1)
        closes[name] = int(at)
    return closes


class InotifyWait:
    """``inotifywait -m -e close_write,moved_to`` on a folder; records when each line arrives."""

    def __init__(self, folder: Path) -> None:
        exe = shutil.which("inotifywait")
        if exe is None:
            sys.exit("inotifywait is missing: apt-get install -y inotify-tools")
        self.seen: dict[str, int] = {}
        self._ready = threading.Event()
        self._proc = subprocess.Popen(
            [exe, "-m", "-q", "-e", "close_write,moved_to", "--format", "%f", str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        # inotifywait prints "Watches established." on stderr (-q hides it), so wait
        # for a probe file's event instead.
        probe = folder / ".probe"
        while not self._ready.is_set():
            probe.write_bytes(b"p")
            self._ready.wait(0.05)
        probe.unlink()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            at = time.monotonic_ns()
            name = line.decode().rstrip("\n")
            if name == ".probe":
                self._ready.set()
                continue
            self.seen.setdefault(name, at)

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait()
        self._thread.join(timeout=5)


def install_hook(name: str, fn: Callable[[Any], Any]) -> str:
    """Make ``fn`` importable as ``<name>:run`` for a python executor; return that spec."""
    module = types.ModuleType(name)
    module.run = fn  # type: ignore[attr-defined]
    sys.modules[name] = module
    return f"{name}:run"


def watch_runtime(folder: Path, record: Callable[[Any], Any], *, hook: str, concurrency: int,
                  workdir: str = "work") -> Runtime:  # fmt: skip
    """The whole runtime on ``folder``: a ``watch`` source, the memory broker, a pool whose
    python executor calls ``record`` with each item."""
    doc = {
        "broker": "memory",
        "workdir": str(folder.parent / workdir),
        "sources": {"inbox": {"type": "watch", "topic": "files", "path": str(folder),
                              "rescan": 0}},
        "pools": {"work": {"topic": "files", "concurrency": concurrency, "track": False,
                           "executor": {"type": "python", "function": install_hook(hook, record)}}},
    }  # fmt: skip
    return Runtime(config_from_dict(doc, path="bench.toml", base_dir=str(folder.parent)))


async def write_into_runtime(
    folder: Path, record: Callable[[Any], Any], *, hook: str, count: int, gap: float, size: int,
    chunks: int, settle: float,
) -> tuple[dict[str, int], dict[str, int]]:  # fmt: skip
    """The writer drops ``count`` files into a running ``watch_runtime`` (4 workers), inotifywait
    watching the same folder; ``settle`` s later, each file's close time and inotifywait's."""
    runtime = watch_runtime(folder, record, hook=hook, concurrency=4)
    inotifywait = InotifyWait(folder)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            await runtime.sources["inbox"][0].ready.wait()
            closes = await anyio.to_thread.run_sync(run_writer, folder, count, gap, size, chunks)
            await anyio.sleep(settle)  # let the last events arrive before reading the figures
            runtime.stop()
    finally:
        inotifywait.stop()
    return closes, inotifywait.seen


def latencies(closes: dict[str, int], seen: dict[str, int]) -> list[float]:
    """Milliseconds from close to seen, for the files seen."""
    return [(seen[n] - closes[n]) / 1e6 for n in closes if n in seen]


def line(label: str, values: list[float], expected: int) -> str:
    return (
        f"  {label:<32} p50 {percentile(values, 50):7.2f} ms   p99 {percentile(values, 99):7.2f} ms"
        f"   max {max(values, default=float('nan')):7.2f} ms   ({len(values)}/{expected} seen)"
    )
