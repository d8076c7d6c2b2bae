"""``python -m bench`` runs: its smallest mode end to end, and a missing peer stops it.

The smoke mode's figures are meaningless (tiny counts); what is checked is that
every scenario still runs against the real programs and that the table and the
JSON keep their shape, so the entry point cannot rot while the code moves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def bench(*args: str, env: dict[str, str] | None = None,
          timeout: float = 600) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_mode_prints_the_table_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = bench("--smoke", "--no-peers", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert {row["scenario"] for row in doc["rows"]} == {"a", "b", "c", "d", "e"}
    machine = doc["machine"]
    for key in ("time", "cpu", "cores", "kernel", "python", "redis", "peers"):
        assert machine[key], key
    assert "inotifywait" in machine["peers"]
    # every row names its figure and has one; a row with a floor says whether it was met
    for row in doc["rows"]:
        assert row["what"] and row["unit"] and row["chute"] is not None, row
        assert (row["met"] is None) == (row["floor"] == ""), row
    # the printed table carries the same rows
    table = [
        line for line in done.stdout.splitlines() if line[:2] in {"a ", "b ", "c ", "d ", "e "}
    ]
    assert len(table) == len(doc["rows"])


def test_a_missing_peer_is_an_error_not_a_skip(tmp_path: Path) -> None:
    done = bench("--smoke", "--only", "a", "--json", str(tmp_path / "x.json"),
                 env={"CHUTE_BENCH_CACHE": str(tmp_path / "empty")}, timeout=60)  # fmt: skip
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        "bench: peer celery is not installed (celery[redis]==5.7.0): run `python -m bench.peers`"
    ]
    assert not (tmp_path / "x.json").exists()


def test_an_unknown_scenario_is_a_usage_error() -> None:
    done = bench("--only", "z", timeout=60)
    assert done.returncode == 2
    assert "unknown scenario 'z'" in done.stderr
