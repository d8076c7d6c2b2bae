"""Crash safety: kill -9 the runtime at random moments, then finish with --until-idle.

2,000 files in a watched folder, a pool of 4 running a command that appends
its item's name to a log. The runtime is SIGKILLed 5 times at random moments;
a final ``chute run --until-idle`` must leave every file done, and only items
in flight at a kill (started, outcome not yet recorded) may have run more
than once.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.watched import WATCH_INBOX, done_names, fill_inbox

FILES = 2000
KILLS = 5
CONCURRENCY = 4
POOL = "work"

EXECUTOR = """\
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.write(fd, (sys.argv[2] + "\\n").encode())  # one write: lines never interleave
os.close(fd)
time.sleep(random.uniform(0.005, 0.02))
"""


def _logged(log: Path) -> set[str]:
    return set(log.read_text().splitlines()) if log.exists() else set()


def _config(tmp_path: Path, script: Path, log: Path) -> Path:
    argv = [sys.executable, str(script), str(log), "{name}"]
    config = tmp_path / "chaos.toml"
    config.write_text(
        'broker = "memory"\nstate = "sqlite"\n'
        + WATCH_INBOX
        + f"""
[pools.{POOL}]
topic = "files"
concurrency = {CONCURRENCY}
executor = {{ type = "command", argv = [{", ".join(f'"{a}"' for a in argv)}] }}
"""
    )
    return config


@pytest.mark.slow
@pytest.mark.timeout(400)  # the suite's 120 s default is shorter than the final run's 300 s
def test_kill_9_five_times_then_until_idle_finishes_everything(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHUTE_CHAOS_SEED", random.randrange(2**32)))
    print(f"\ncrash-safety seed: {seed} (rerun with CHUTE_CHAOS_SEED={seed})")
    rng = random.Random(seed)

    script = tmp_path / "executor.py"
    script.write_text(EXECUTOR)
    log = tmp_path / "ran.log"
    names = fill_inbox(tmp_path, (f"file-{n:04d}.txt" for n in range(FILES)))
    config = _config(tmp_path, script, log)
    cmd = [sys.executable, "-m", "chute", "run", str(config)]
    repo = Path(__file__).resolve().parents[1]
    output = tmp_path / "chute.out"

    in_flight: set[str] = set()
    started = time.monotonic()
    with output.open("ab") as out:
        for k in range(KILLS):
            proc = subprocess.Popen(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT)
            delay = rng.uniform(0.3, 2.0)
            time.sleep(delay)
            assert proc.poll() is None, f"the runtime exited by itself: {output.read_text()}"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            time.sleep(0.3)  # executors orphaned by the kill finish (and log) on their own
            # In flight at this kill: started, and no outcome recorded.
            unsettled = _logged(log) - done_names(tmp_path / "work" / "state.db", POOL)
            in_flight |= unsettled
            print(f"kill {k + 1} after {delay:.2f}s: {len(unsettled)} in flight")
        final = subprocess.run(
            [*cmd, "--until-idle"], cwd=repo, stdout=out, stderr=subprocess.STDOUT, timeout=300
        )
    elapsed = time.monotonic() - started
    assert final.returncode == 0, output.read_text()[-5000:]
    time.sleep(0.1)  # an executor orphaned by the last kill may still be writing

    lines = log.read_text().splitlines()
    expected = set(names)
    torn = [line for line in lines if line not in expected]
    assert not torn, f"torn or unexpected lines: {torn[:10]}"
    runs = collections.Counter(lines)
    missing = expected - runs.keys()
    assert not missing, f"{len(missing)} files never ran, e.g. {sorted(missing)[:5]}"

    db = sqlite3.connect(f"file:{tmp_path / 'work' / 'state.db'}?mode=ro", uri=True)
    try:
        statuses = dict(
            db.execute(
                "SELECT status, count(*) FROM items WHERE pool = ? GROUP BY status", (POOL,)
            ).fetchall()
        )
    finally:
        db.close()
    assert statuses == {"done": FILES}, statuses

    twice = {name: n for name, n in runs.items() if n > 1}
    print(
        f"{len(lines)} runs for {FILES} files in {elapsed:.1f}s; {len(in_flight)} were in "
        f"flight at a kill; {len(twice)} ran more than once: {sorted(twice.items())}"
    )
    assert twice.keys() <= in_flight, sorted(twice.keys() - in_flight)
    assert max(runs.values()) <= KILLS + 1, twice
