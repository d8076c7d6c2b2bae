"""How many items a kill -9 makes run twice: the exact bound, measured.

Outcomes are committed in passes (``pool.py``: a group commit that waits up to
20 ms for the outcomes of other running items), so a kill -9 reruns the items
running at that moment (killed with it, ``_warden.py``) plus the items that
had finished but whose pass had not committed yet. This test kills the
runtime three times while 600 short items run at concurrency 4, and checks
every item that ran twice against those two sets, as seen at its kill (the
executor logs its start and its end; the state file says what was committed).
"""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.watched import WATCH_INBOX, done_names, fill_inbox

FILES = 600
KILLS = 3
CONCURRENCY = 4

EXECUTOR = """\
import os, sys, time
def say(what):
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{what} {sys.argv[2]}\\n".encode())  # one write: lines never interleave
    os.close(fd)
say("start")
time.sleep(0.01)
say("end")
"""


def _runs(log: Path) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """How many times each item started, and ended."""
    started: collections.Counter[str] = collections.Counter()
    ended: collections.Counter[str] = collections.Counter()
    for line in log.read_text().splitlines() if log.exists() else []:
        what, name = line.split(" ", 1)
        (started if what == "start" else ended)[name] += 1
    return started, ended


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_kill_9_reruns_only_the_running_items_and_those_finished_in_the_commit_window(
    tmp_path: Path,
) -> None:
    script, log = tmp_path / "executor.py", tmp_path / "ran.log"
    script.write_text(EXECUTOR)
    fill_inbox(tmp_path, (f"file-{n:04d}.txt" for n in range(FILES)))
    argv = [sys.executable, str(script), str(log), "{name}"]
    config = tmp_path / "window.toml"
    config.write_text(
        WATCH_INBOX
        + f"""
[pools.work]
topic = "files"
concurrency = {CONCURRENCY}
executor = {{ type = "command", argv = [{", ".join(f'"{a}"' for a in argv)}] }}
"""
    )
    cmd = [sys.executable, "-m", "chute", "run", str(config)]
    repo = Path(__file__).resolve().parents[1]
    db = tmp_path / "work" / "state.db"
    exposed: list[tuple[set[str], set[str]]] = []  # per kill: running, finished uncommitted
    with (tmp_path / "chute.out").open("ab") as out:
        for _ in range(KILLS):
            # What ran before this start: an item killed by an earlier kill and not
            # rerun yet is not running now.
            started_before, ended_before = _runs(log)
            proc = subprocess.Popen(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT)
            before = sum(ended_before.values())
            deadline = time.monotonic() + 60
            while sum(_runs(log)[1].values()) < before + 60:  # well into the run
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            time.sleep(0.3)  # the warden has killed the running executors by now
            started, ended = _runs(log)
            done = done_names(db)
            running = {
                n for n in started
                if started[n] - started_before.get(n, 0) > ended[n] - ended_before.get(n, 0)
            }  # fmt: skip
            uncommitted = {n for n in ended if n not in done} - running
            exposed.append((running, uncommitted))
        final = subprocess.run([*cmd, "--until-idle"], cwd=repo, stdout=out,
                               stderr=subprocess.STDOUT, timeout=240)  # fmt: skip
    assert final.returncode == 0, (tmp_path / "chute.out").read_text()[-3000:]
    started, ended = _runs(log)
    assert set(started) == {f"file-{n:04d}.txt" for n in range(FILES)}
    twice = {name for name, n in started.items() if n > 1}
    seen: set[str] = set()
    for k, (running, uncommitted) in enumerate(exposed):
        again = (twice & (running | uncommitted)) - seen
        seen |= again
        print(
            f"kill {k + 1}: {len(running)} running, {len(uncommitted)} finished and not yet "
            f"committed; {len(again)} ran again"
        )
        assert len(running) <= CONCURRENCY
    assert twice <= seen, f"ran twice though committed before a kill: {sorted(twice - seen)}"
