"""MQTT in, kill -9 in the middle: every message published becomes exactly one item.

1,000 messages go to Mosquitto: 500 while chute is stopped (its persistent
session keeps them), 500 while it runs, and chute is SIGKILLed once while
they arrive. The chute broker is a test-owned Redis (durable: the MQTT
source acks a message only after that broker accepted it). A final
``chute run --until-idle`` must leave all 1,000 keys done in the state store.
"""

from __future__ import annotations

import collections
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mqtt_server import MosquittoServer
from tests.redis_server import RedisServer

COUNT = 1000
POOL = "work"

EXECUTOR = """\
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.write(fd, (sys.argv[2] + "\\n").encode())
os.close(fd)
"""


def _config(tmp_path: Path, mqtt: MosquittoServer, redis: RedisServer) -> Path:
    script = tmp_path / "executor.py"
    script.write_text(EXECUTOR)
    argv = [sys.executable, str(script), str(tmp_path / "ran.log"), "{id}"]
    config = tmp_path / "edge.toml"
    config.write_text(
        f"""\
broker = "{redis.url}"
state = "sqlite"
workdir = "work"

[sources.sensors]
type = "mqtt"
topic = "readings"
port = {mqtt.port}
topics = ["sensors/#"]
key_field = "id"
client_id = "chute-crash-test"
quiet = "2s"

# Deliveries the killed run held come back after this (the default is 5 minutes).
[topics.readings]
visibility_timeout = "3s"

[pools.{POOL}]
topic = "readings"
concurrency = 4
executor = {{ type = "command", argv = [{", ".join(f'"{a}"' for a in argv)}] }}
"""
    )
    return config


def _wait_for(output: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while text not in output.read_text():
        assert proc.poll() is None, output.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in: {output.read_text()[-3000:]}"
        time.sleep(0.05)  # another process's log: nothing to wait on


def _statuses(db_path: Path) -> dict[str, str]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key, status FROM items WHERE pool = ?", (POOL,)).fetchall()
        return {bytes(k).decode() if isinstance(k, bytes) else k: s for k, s in rows}
    finally:
        db.close()


def _payloads(start: int, stop: int) -> list[str]:
    return [f'{{"id": "m{i:04d}", "n": {i}}}' for i in range(start, stop)]


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.timeout(300)
def test_kill_9_while_messages_arrive_loses_none_and_duplicates_no_item(
    tmp_path: Path, mosquitto: MosquittoServer, redis_server: RedisServer
) -> None:
    config = _config(tmp_path, mosquitto, redis_server)
    cmd = [sys.executable, "-m", "chute", "run", str(config)]
    repo = Path(__file__).resolve().parents[2]
    output = tmp_path / "chute.out"
    output.touch()
    with output.open("ab") as out:
        # First run: the session and its subscription exist from now on.
        proc = subprocess.Popen(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT)
        _wait_for(output, "subscribed to", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) in (0, 143)  # 143 once SIGTERM has its own exit code
        mosquitto.pub("sensors/a", *_payloads(0, COUNT // 2))  # while chute is stopped

        proc = subprocess.Popen(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT)
        for start in range(COUNT // 2, COUNT, 50):  # while it runs, and dies
            mosquitto.pub("sensors/b", *_payloads(start, start + 50))
            if start == COUNT // 2 + 200:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        final = subprocess.run(
            [*cmd, "--until-idle"], cwd=repo, stdout=out, stderr=subprocess.STDOUT, timeout=240
        )
    assert final.returncode == 0, output.read_text()[-5000:]

    statuses = _statuses(tmp_path / "work" / "state.db")
    expected = {f"m{i:04d}" for i in range(COUNT)}
    assert set(statuses) == expected, f"missing: {sorted(expected - set(statuses))[:10]}"
    assert set(statuses.values()) == {"done"}
    runs = collections.Counter((tmp_path / "ran.log").read_text().split())
    assert set(runs) == expected
    twice = sum(1 for n in runs.values() if n > 1)
    print(
        f"\n{COUNT} messages, {len(statuses)} items done; {twice} ran twice (in flight at the kill)"
    )
