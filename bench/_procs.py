"""Processes the bench starts and stops: a private redis-server, peer workers, their CPU and RSS."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import redis

TICK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """An operational failure of the bench (a missing program, a worker that died): one line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int) -> None:
    """Until something accepts connections on 127.0.0.1:``port`` (a server just started), or 5 s."""
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.025)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server (no persistence) on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is missing: apt-get install -y redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:  # a fresh server answers PING within milliseconds; nothing to wait on
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"redis-server did not start on port {port}") from None
                time.sleep(0.02)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    for word in out.stdout.split():
        if word.startswith("v="):
            return word[2:]
    return out.stdout.strip()


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(roots: Sequence[int]) -> list[int]:
    kids = _children()
    out, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cpu_seconds(roots: Sequence[int]) -> float:
    """CPU of the process trees, with their reaped children (a reaped child's time moves to
    its parent's cutime/cstime, a live one counts itself: nothing is counted twice)."""
    total = 0
    for pid in tree(roots):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(f) for f in fields[11:15])
    return total / TICK


def rss_mb(roots: Sequence[int]) -> float:
    total_kb = 0
    for pid in tree(roots):
        try:
            with open(f"/proc/{pid}/status") as f:
                total_kb += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total_kb / 1024


class Workers:
    """Worker processes of one peer, each in its own process group, stopped by SIGTERM then
    SIGKILL; their output goes to a log file that a failure quotes."""

    def __init__(self, name: str, commands: Sequence[Sequence[str]], env: dict[str, str],
                 cwd: Path) -> None:  # fmt: skip
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
        self.procs: list[subprocess.Popen[bytes]] = []
        with open(self.log, "wb") as out:
            for argv in commands:
                proc = subprocess.Popen(
                    list(argv), env={**os.environ, **env}, cwd=cwd, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
                self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
                raise BenchError(f"{self.name} worker exited with {p.returncode}: "
                                 + " | ".join(tail))  # fmt: skip

    def stop(self) -> None:
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                # Stopping is not measured; a worker that takes its time (RQ's pool waits
                # out its BLPOP) is killed rather than waited for.
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            # whatever the group left behind (prefork children) goes too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        self.log.unlink(missing_ok=True)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
