"""Faults end to end through ``chute run``: kill -9 while items run, and a full disk.

Slow: each starts the runtime as a user would, more than once.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.watched import WATCH_INBOX, fill_inbox
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]
CHUTE = [sys.executable, "-m", "chute"]

SLEEPER = """\
import fcntl, os, sys, time
log, locks, name = sys.argv[1], sys.argv[2], os.environ["WORK_ITEM_NAME"].split("@")[0]
def say(what):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{what} {name} {os.environ['WORK_ITEM_ATTEMPT']}\\n".encode())
    os.close(fd)
lock = open(os.path.join(locks, name + ".lock"), "w")
try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by the run of this item that lives
except BlockingIOError:
    say("OVERLAP")
say("start")
time.sleep(float(sys.argv[3]))
say("end")
"""


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _wait(check: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_while_4_items_run_then_restart_at_once_never_runs_one_item_twice_at_once(
    tmp_path: Path,
) -> None:
    script, log, locks = tmp_path / "sleeper.py", tmp_path / "ran.log", tmp_path / "locks"
    script.write_text(SLEEPER)
    locks.mkdir()
    fill_inbox(tmp_path, (f"item-{n}.txt" for n in range(4)))
    config = tmp_path / "jobs.toml"
    argv = [sys.executable, str(script), str(log), str(locks), "3"]
    config.write_text(
        WATCH_INBOX
        + f"""
[pools.work]
topic = "files"
concurrency = 4
executor = {{ type = "command", argv = {argv!r} }}
""".replace("'", '"')
    )
    out = (tmp_path / "chute.out").open("ab")
    first = subprocess.Popen([*CHUTE, "run", str(config)], cwd=REPO, stdout=out, stderr=out)
    try:
        _wait(lambda: sum(line.startswith("start") for line in _lines(log)) == 4, 30,
              "the 4 items never all started")  # fmt: skip
    finally:
        first.kill()
        first.wait()
    again = subprocess.run(
        [*CHUTE, "run", str(config), "--until-idle"], cwd=REPO, stdout=out, stderr=out, timeout=90
    )
    out.close()
    lines = _lines(log)
    assert again.returncode == 0, (tmp_path / "chute.out").read_text()[-3000:]
    assert not [line for line in lines if line.startswith("OVERLAP")], lines
    ended = sorted(line.split()[1] for line in lines if line.startswith("end"))
    assert ended == [f"item-{n}.txt" for n in range(4)], lines  # each finished once: the reruns


def _no_file_may_grow() -> None:
    """The runtime's disk is full: no file it writes may grow (pipes still work)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_full_disk_pauses_the_pool_and_burns_no_attempt(tmp_path: Path) -> None:
    script, log = tmp_path / "attempt.py", tmp_path / "ran.log"
    script.write_text(
        "import os\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(os.environ['WORK_ITEM_NAME'] + ' ' + os.environ['WORK_ITEM_ATTEMPT'] + '\\n')\n"
    )
    port = free_port()
    config = tmp_path / "jobs.toml"
    config.write_text(
        f"""\
workdir = "work"
state = "memory"
broker = "memory"  # the executor's own writes are what fail here (the local broker: below)

[api]
enabled = true
port = {port}
token = "secret"

[sources.gen]
type = "generate"
topic = "jobs"
count = 3

[pools.work]
topic = "jobs"
concurrency = 2
retry = {{ attempts = 2, backoff = "10ms" }}
executor = {{ type = "command", argv = ["{sys.executable}", "{script}"] }}
"""
    )
    runtime = subprocess.Popen(
        [*CHUTE, "run", str(config), "--until-idle"], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, preexec_fn=_no_file_may_grow,
    )  # fmt: skip
    output: list[str] = []
    reader = threading.Thread(
        target=lambda: output.extend(line.decode() for line in runtime.stdout or ())
    )
    reader.start()
    try:
        _wait(lambda: any("UNHEALTHY" in line for line in output), 30, "no fault was logged")
        status = subprocess.run(
            [*CHUTE, "status", str(config), "--url", f"http://127.0.0.1:{port}",
             "--token", "secret"], cwd=REPO, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "UNHEALTHY, intake paused" in status.stdout, status.stdout + status.stderr
        assert "File too large" in status.stdout
        time.sleep(1.0)  # several retries pass: none may count as an attempt
        infinity = resource.RLIM_INFINITY
        resource.prlimit(runtime.pid, resource.RLIMIT_FSIZE, (infinity, infinity))  # space again
        assert runtime.wait(timeout=60) == 0, "".join(output)[-3000:]
    finally:
        if runtime.poll() is None:
            runtime.send_signal(signal.SIGKILL)
            runtime.wait()
        reader.join()
        if runtime.stdout is not None:
            runtime.stdout.close()
    assert sorted(_lines(log)) == [f"item-{n} 1" for n in range(3)], "".join(output)[-3000:]
    assert not any("is dead" in line for line in output)
    assert os.path.isdir(tmp_path / "work")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_full_disk_under_the_local_broker_stops_chute_with_one_line(tmp_path: Path) -> None:
    # The default broker keeps topics on disk: with no room to write, chute
    # stops with one line and exit 3 (operational failure) instead of losing work.
    config = tmp_path / "jobs.toml"
    config.write_text(
        'workdir = "work"\n[sources.gen]\ntype = "generate"\ntopic = "jobs"\ncount = 3\n'
        '[pools.work]\ntopic = "jobs"\nexecutor = { type = "command", argv = ["true"] }\n'
    )
    result = subprocess.run(
        [*CHUTE, "run", str(config), "--until-idle"], cwd=REPO, capture_output=True, text=True,
        preexec_fn=_no_file_may_grow, timeout=50,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "local broker" in result.stderr.strip().splitlines()[-1]
