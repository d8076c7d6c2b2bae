"""Stopping is bounded by the grace period, whatever a dependency does (through ``chute run``).

The reproductions from issue 16: a result publish blocked on a full topic,
and Redis frozen by SIGSTOP, each kept ``chute run`` alive long after
SIGTERM. Now every shielded section gives up at the grace period (what did
not finish stays pending: at-least-once holds), a second signal stops at
once, and the exit code says which signal stopped the run (130 SIGINT, 143
SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer, unique_prefix

REPO = Path(__file__).resolve().parent.parent
GRACE = 1.0

STARTED = """\
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
os.write(fd, (os.environ["WORK_ITEM_NAME"] + "\\n").encode())
os.close(fd)
time.sleep(float(sys.argv[2]))
"""


class ChuteRun:
    """``chute run CONFIG`` as a user starts it, in a process of its own."""

    def __init__(self, config: Path) -> None:
        self.output = config.parent / "chute.out"
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chute", "run", str(config)], stdout=out,
                stderr=subprocess.STDOUT, cwd=config.parent, env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip

    def wait_for_line(self, log: Path, timeout: float = 30) -> None:
        # The executor is another process writing a file: nothing to wait on but the file.
        deadline = time.monotonic() + timeout
        while not (log.exists() and log.read_text()):
            assert self.proc.poll() is None, self.output.read_text()
            assert time.monotonic() < deadline, "no item started"
            time.sleep(0.05)

    def stop(self, signum: int, within: float) -> tuple[int, float]:
        """Send ``signum``; the exit code and how long the process took to exit."""
        sent = time.monotonic()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {within:g}s after {signal.Signals(signum).name}:\n"
                        f"{self.output.read_text()[-3000:]}")  # fmt: skip
        return code, time.monotonic() - sent

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def runs() -> Iterator[list[ChuteRun]]:
    started: list[ChuteRun] = []
    yield started
    for run in started:
        run.kill()


def _argv(tmp_path: Path, sleep: float) -> str:
    script = tmp_path / "started.py"
    script.write_text(STARTED)
    argv = [sys.executable, str(script), str(tmp_path / "started.log"), str(sleep)]
    return "[" + ", ".join(f'"{a}"' for a in argv) + "]"


def full_topic_config(tmp_path: Path) -> Path:
    """Pool a's result publish waits on a full topic that pool b drains slowly."""
    config = tmp_path / "full.toml"
    config.write_text(f"""\
broker = "memory"
state = "sqlite"
workdir = "work"
shutdown_grace = "{GRACE:g}s"
log_level = "warning"

[topics.mid]
capacity = 2

[sources.gen]
type = "generate"
topic = "in"
count = 20

[pools.a]
topic = "in"
output = "mid"
executor = {{ type = "command", argv = ["true"] }}

[pools.b]
topic = "mid"
concurrency = 1
executor = {{ type = "command", argv = {_argv(tmp_path, 30)} }}
""")
    return config


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_publish_blocked_on_a_full_topic_does_not_hold_the_stop(
    tmp_path: Path, runs: list[ChuteRun], signum: int, expected: int
) -> None:
    run = ChuteRun(full_topic_config(tmp_path))
    runs.append(run)
    run.wait_for_line(tmp_path / "started.log")
    time.sleep(0.5)  # pool a fills "mid" and waits to publish its next result
    code, _ = run.stop(signum, within=GRACE + 5)
    assert code == expected, run.output.read_text()


def test_a_second_signal_stops_at_once(tmp_path: Path, runs: list[ChuteRun]) -> None:
    config = full_topic_config(tmp_path)
    config.write_text(config.read_text().replace(f'shutdown_grace = "{GRACE:g}s"',
                                                 'shutdown_grace = "60s"'))  # fmt: skip
    run = ChuteRun(config)
    runs.append(run)
    run.wait_for_line(tmp_path / "started.log")
    run.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # draining: b's item has 60 s to finish
    assert run.proc.poll() is None, "the first signal did not drain"
    code, _ = run.stop(signal.SIGTERM, within=5)
    assert code == 143, run.output.read_text()


@pytest.mark.slow
@pytest.mark.redis
def test_redis_frozen_by_sigstop_does_not_hold_the_stop(
    tmp_path: Path, runs: list[ChuteRun], redis_server: RedisServer
) -> None:
    url = f"{redis_server.url}?prefix={unique_prefix()}"
    config = tmp_path / "frozen.toml"
    config.write_text(f"""\
broker = "{url}"
state = "{url}"
shutdown_grace = "{GRACE:g}s"
log_level = "warning"

[sources.gen]
type = "generate"
topic = "jobs"
count = 20

[pools.work]
topic = "jobs"
concurrency = 2
executor = {{ type = "command", argv = {_argv(tmp_path, 0.5)} }}
""")
    run = ChuteRun(config)
    runs.append(run)
    run.wait_for_line(tmp_path / "started.log")
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(1.0)  # items finish meanwhile: their outcomes wait on Redis
        code, _ = run.stop(signal.SIGTERM, within=GRACE + 5)
        assert code == 143, run.output.read_text()
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
