"""The README's first command: the demo runs on the embedded defaults and finishes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_until_idle_and_a_restart_redoes_nothing(tmp_path: Path) -> None:
    for name in ("demo.toml", "demo_tasks.py"):
        shutil.copy(REPO / "configs" / name, tmp_path / name)
    cmd = [sys.executable, "-m", "chute", "run", str(tmp_path / "demo.toml"), "--until-idle"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 20 and all(line.startswith("item") for line in lines)
    assert sorted(int(line.split()[1].rstrip(":")) for line in lines) == list(range(20))
    assert (tmp_path / ".chute" / "demo" / "state.db").exists()

    # Same items again: the state store remembers them, so nothing runs twice.
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout == ""

    status = subprocess.run(
        [sys.executable, "-m", "chute", "status", str(tmp_path / "demo.toml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "pool summarize: done 20" in status.stdout


def test_configs_in_one_folder_keep_their_own_state(tmp_path: Path) -> None:
    for name in ("demo.toml", "demo_tasks.py"):
        shutil.copy(REPO / "configs" / name, tmp_path / name)
    other = tmp_path / "other.toml"
    other.write_text(
        '[sources.n]\ntype = "generate"\ntopic = "t"\ncount = 1\n'
        '[pools.other]\ntopic = "t"\n'
        'executor = { type = "python", function = "demo_tasks:summarize", path = ["."] }\n'
    )
    chute = [sys.executable, "-m", "chute"]
    for config in ("demo.toml", "other.toml"):
        run = subprocess.run([*chute, "run", str(tmp_path / config), "--until-idle"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stderr
    status = subprocess.run([*chute, "status", str(other)], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "pool other: done 1" in status.stdout
    assert "summarize" not in status.stdout
