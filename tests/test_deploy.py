"""The deployment files: the systemd unit verifies, the image builds and runs the demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run installs systemd")
        pytest.skip("systemd-analyze is not installed on this machine")
    unit = (REPO / "deploy" / "chute.service").read_text()
    assert "KillMode=mixed" in unit  # executors get their SIGTERM from chute, not systemd
    # verify insists that ExecStart's program exists: point it at this install's chute.
    chute = Path(sys.executable).parent / "chute"
    copy = tmp_path / "chute.service"
    copy.write_text(unit.replace("/usr/local/bin/chute", str(chute)))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # Unknown keys and bad values are only warnings to verify: none may appear.
    assert result.stderr.strip() == "", result.stderr


def _docker_daemon() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    ping = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    return docker if ping.returncode == 0 else None


@pytest.mark.slow
def test_the_image_builds_and_runs_the_demo() -> None:
    docker = _docker_daemon()
    if docker is None:
        pytest.skip("no Docker daemon on this machine: the image was not built")
    build = subprocess.run(
        [docker, "build", "-q", "-t", "chute-test", str(REPO)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    run = subprocess.run(
        [docker, "run", "--rm", "chute-test"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert len([line for line in run.stdout.splitlines() if line.startswith("item")]) == 20
