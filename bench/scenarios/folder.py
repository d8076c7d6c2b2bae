"""(c) A file dropped in a folder -> executor started, p50 and p99.

One writer process drops the files (each written in chunks, then closed);
three watchers see the same files in the same run: chute's whole runtime
(``watch`` source, memory broker, a pool with a python executor that records
when it starts), ``inotifywait -m -e close_write,moved_to`` (the kernel's
event read by a C program: the floor) and ``watchfiles.watch()`` with its
defaults, in a process of its own. For watchfiles the figure is the first
change set after the close that names the file.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from bench._procs import percentile
from bench._table import Results, Row
from bench._watchbench import latencies, write_into_runtime
from bench.peers import APPS
from bench.scenarios import Mode

GAP, SIZE, CHUNKS = 0.02, 65536, 8


class WatchfilesPeer:
    """``watchfiles.watch`` in its own process; every (name, time) it reports."""

    def __init__(self, folder: Path) -> None:
        self.seen: dict[str, list[int]] = {}
        self._ready = threading.Event()
        self._proc = subprocess.Popen(
            [sys.executable, str(APPS / "watchfiles_watch.py"), str(folder)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        probe = folder / ".probe"
        deadline = time.monotonic() + 30
        while not self._ready.is_set():  # watch() says nothing when it is ready: probe it
            probe.write_bytes(b"p")
            self._ready.wait(0.1)
            if time.monotonic() > deadline:
                raise RuntimeError("watchfiles did not report a probe file within 30 s")
        probe.unlink()
        time.sleep(2.0)  # the probe's deletion reported and out of the way

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            name, at = line.rsplit(" ", 1)
            if name == ".probe":
                self._ready.set()
                continue
            self.seen.setdefault(name, []).append(int(at))

    def after(self, closes: dict[str, int]) -> dict[str, int]:
        """Per file, the first report at or after its close."""
        out = {}
        for name, closed in closes.items():
            later = [t for t in self.seen.get(name, []) if t >= closed]
            if later:
                out[name] = min(later)
        return out

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait()
        self._thread.join(timeout=5)


async def measure(folder: Path, count: int) -> dict[str, list[float]]:
    started: dict[str, int] = {}

    def record(data: Any) -> None:
        started.setdefault(data["name"], time.monotonic_ns())

    watchfiles = await anyio.to_thread.run_sync(WatchfilesPeer, folder)
    try:
        # watchfiles' own debounce may hold the last ones back: 2.5 s to settle
        closes, inotifywait = await write_into_runtime(
            folder, record, hook="chute_folder_hook", count=count, gap=GAP, size=SIZE,
            chunks=CHUNKS, settle=2.5,
        )  # fmt: skip
    finally:
        watchfiles.stop()
    return {
        "chute": latencies(closes, started),
        "inotifywait": latencies(closes, inotifywait),
        "watchfiles": latencies(closes, watchfiles.after(closes)),
    }


def run(mode: Mode, results: Results, peers: bool) -> None:
    print(f"  (c) {mode.files} files, {GAP * 1000:g} ms apart", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "inbox"
        folder.mkdir()
        got = anyio.run(measure, folder, mode.files)
    results.details["c"] = got
    for name, values in got.items():
        if len(values) != mode.files:
            print(f"  (c) {name} saw {len(values)} of {mode.files} files")
    p50 = {k: percentile(v, 50) for k, v in got.items()}
    p99 = {k: percentile(v, 99) for k, v in got.items()}
    what = "file closed -> executor started"
    row = results.add(Row("c", f"{what}, p50", p50["chute"], "inotifywait", p50["inotifywait"],
                          "ms", "within 1 ms of inotifywait"))  # fmt: skip
    row.met = p50["chute"] - p50["inotifywait"] <= 1.0
    results.add(Row("c", f"{what}, p99", p99["chute"], "inotifywait", p99["inotifywait"], "ms"))
    if peers:
        row = results.add(Row("c", f"{what}, p50", p50["chute"], "watchfiles defaults",
                              p50["watchfiles"], "ms", "<= 0.01x watchfiles"))  # fmt: skip
        row.met = row.ratio <= 0.01
        results.add(Row("c", f"{what}, p99", p99["chute"], "watchfiles defaults",
                        p99["watchfiles"], "ms"))  # fmt: skip
