"""kill -9 on a three-stage pipeline on the default (local) broker.

A watched folder of 2,000 files feeds pool s1, whose results feed s2, whose
results feed s3. The runtime is SIGKILLed 5 times at random moments; a final
``chute run --until-idle`` must leave every file run by every stage. An item
may run more than once only if it was in flight at a kill (started in some
stage, outcome not recorded there yet): the results queued between stages
survive the kills, so nothing else is repeated.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.durable_tasks import ran
from tests.helpers.watched import WATCH_INBOX, done_names, fill_inbox

FILES = 2000
KILLS = 5
STAGES = ("s1", "s2", "s3")
REPO = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path) -> Path:
    pools = []
    for n, stage in enumerate(STAGES):
        output = f'output = "t{n + 1}"\n' if n + 1 < len(STAGES) else ""
        topic = "files" if n == 0 else f"t{n}"
        pools.append(f"""
[pools.{stage}]
topic = "{topic}"
{output}concurrency = 4
executor = {{ type = "python", function = "tests.helpers.durable_tasks:{stage}", path = ["{REPO}"] }}
""")  # fmt: skip
    config = tmp_path / "chaos.toml"
    config.write_text(WATCH_INBOX + "".join(pools))
    return config


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_kill_9_five_times_on_three_stages_then_every_item_passed_every_stage(
    tmp_path: Path,
) -> None:
    seed = int(os.environ.get("CHUTE_CHAOS_SEED", random.randrange(2**32)))
    print(f"\ncrash-pipeline seed: {seed} (rerun with CHUTE_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    names = fill_inbox(tmp_path, (f"file-{n:04d}.txt" for n in range(FILES)))
    config = _config(tmp_path)
    log = tmp_path / "ran.log"
    state = tmp_path / "work" / "state.db"
    cmd = [sys.executable, "-m", "chute", "run", str(config)]
    env = {**os.environ, "CHUTE_TEST_LOG": str(log)}
    output = tmp_path / "chute.out"

    in_flight: set[str] = set()
    with output.open("ab") as out:
        for k in range(KILLS):
            proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)  # fmt: skip
            delay = rng.uniform(0.5, 2.5)
            time.sleep(delay)
            assert proc.poll() is None, f"the runtime exited by itself: {output.read_text()}"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            unsettled = {s: set(ran(log, s)) - done_names(state, s) for s in STAGES}
            for names_in_flight in unsettled.values():
                in_flight |= names_in_flight
            counts = {s: len(done_names(state, s)) for s in STAGES}
            print(f"kill {k + 1} after {delay:.2f}s: done {counts}, in flight "
                  f"{ {s: len(v) for s, v in unsettled.items()} }")  # fmt: skip
        final = subprocess.run([*cmd, "--until-idle"], cwd=tmp_path, env=env, stdout=out,
                               stderr=subprocess.STDOUT, timeout=300)  # fmt: skip
    assert final.returncode == 0, output.read_text()[-5000:]

    expected = set(names)
    for stage in STAGES:
        runs = collections.Counter(ran(log, stage))
        missing = expected - runs.keys()
        assert not missing, f"{stage}: {len(missing)} never ran, e.g. {sorted(missing)[:5]}"
        assert runs.keys() == expected, sorted(runs.keys() - expected)[:5]
        assert done_names(state, stage) == expected
        twice = {name for name, n in runs.items() if n > 1}
        print(f"{stage}: {sum(runs.values())} runs for {FILES} items; {len(twice)} ran more "
              f"than once; {len(in_flight)} were in flight in some stage at a kill")  # fmt: skip
        assert twice <= in_flight, (
            f"{stage}: ran twice, never in flight: {sorted(twice - in_flight)}"
        )
        assert max(runs.values()) <= KILLS + 1
