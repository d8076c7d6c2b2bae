"""The command line as a user drives it: real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent


def chute(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chute", *args],
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )  # type: ignore[call-overload]


def write_config(tmp_path: Path, port: int, *, sleep: float = 0.0, grace: str = "10s") -> Path:
    path = tmp_path / "chute.toml"
    path.write_text(
        f"""
shutdown_grace = "{grace}"
[api]
enabled = true
port = {port}
[topics.jobs]
[pools.work]
topic = "jobs"
concurrency = 2
track = false
executor = {{ type = "python", function = "tests.helpers.tasks:record", path = ["{REPO}"], thread = true }}
"""
    )
    return path


def start(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chute", "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=config.parent,
    )


def test_publish_through_the_api_and_stop_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "ran.log"
    config = write_config(tmp_path, port)
    proc = start(config)
    try:
        wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}"
        one = chute(
            "publish",
            "--config",
            str(config),
            "--url",
            url,
            "jobs",
            json.dumps({"n": 1, "log": str(log)}),
        )
        assert one.returncode == 0, one.stderr
        lines = "\n".join(
            json.dumps({"data": {"n": n, "log": str(log)}, "key": f"k{n}"}) for n in (2, 3)
        )
        many = chute("publish", "--config", str(config), "--url", url, "jobs", input=lines)
        assert many.returncode == 0, many.stderr
        assert len(many.stdout.split()) == 2
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            not log.exists() or len(log.read_text().split()) < 3
        ):
            time.sleep(0.05)
        assert sorted(log.read_text().split()) == ["1", "2", "3"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err  # stopped by SIGTERM, after a clean drain
    assert "draining" in err


def test_sigterm_lets_running_items_finish(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "ran.log"
    config = write_config(tmp_path, port)
    proc = start(config)
    try:
        wait_for_port(port, proc)
        body = "\n".join(json.dumps({"n": n, "log": str(log), "sleep": 1.0}) for n in (1, 2))
        published = chute("publish", "--config", str(config), "jobs", input=body)
        assert published.returncode == 0, published.stderr
        time.sleep(0.4)  # both items are running now (concurrency 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert sorted(log.read_text().split()) == ["1", "2"]


def test_publish_without_a_runtime_says_what_to_do(tmp_path: Path) -> None:
    result = chute("publish", "--url", f"http://127.0.0.1:{free_port()}", "jobs", '{"n": 1}')
    assert result.returncode == 3
    assert "is `chute run` running with its API enabled?" in result.stderr
    assert "Traceback" not in result.stderr


def test_publish_rejects_malformed_json(tmp_path: Path) -> None:
    result = chute("publish", "jobs", "{not json")
    assert result.returncode == 2
    assert "cannot read the messages" in result.stderr


@pytest.mark.skipif(not hasattr(os, "getpgid"), reason="POSIX only")
def test_publish_to_an_unknown_topic_is_refused(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    proc = start(config)
    try:
        wait_for_port(port, proc)
        result = chute("publish", "--config", str(config), "nope", '{"n": 1}')
        assert result.returncode == 1
        assert "unknown topic 'nope'" in result.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_status_shows_what_a_topic_nobody_reads_has_dropped(tmp_path: Path) -> None:
    # The dead letters of a pool: no group reads them, so their capacity is a
    # retention limit; chute status says how many were dropped unread.
    port = free_port()
    config = tmp_path / "chute.toml"
    config.write_text(f"""
[api]
enabled = true
port = {port}
[topics.jobs]
[topics."work.dead"]
capacity = 5
[pools.work]
topic = "jobs"
track = false
executor = {{ type = "python", function = "tests.helpers.tasks:rejects", path = ["{REPO}"] }}
""")
    proc = start(config)
    try:
        wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}"
        lines = "\n".join(json.dumps({"data": {"n": n}, "key": f"k{n}"}) for n in range(20))
        published = chute("publish", "--config", str(config), "jobs", input=lines)
        assert published.returncode == 0, published.stderr
        deadline = time.monotonic() + 20
        while True:
            shown = chute("status", str(config), "--url", url)
            assert shown.returncode == 0, shown.stderr
            if "dead 20" in shown.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # another process settles the items: poll its API
        assert "live topic work.dead: no consumer group; holds 5 of 5, dropped 15" in (
            shown.stdout
        ), shown.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_version_and_python_dash_m() -> None:
    from importlib.metadata import version

    result = chute("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"chute, version {version('chute')}"
    assert "Usage: chute" in chute("--help").stdout  # python -m chute names itself chute


def test_a_config_error_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('shutdown_grace = "soon"\n[pools.p]\ntopic = "t"\n')
    result = chute("run", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{path}: shutdown_grace:") for line in lines), lines
    assert any(line.startswith(f"{path}: [pools.p] executor:") for line in lines), lines
