"""The JetStream broker outside the conformance suite: what a user sees when NATS is away."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.servers import free_port


def test_an_unreachable_nats_server_is_one_line_and_exit_3(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    port = free_port()  # nothing listens there
    url = f"nats://127.0.0.1:{port}?connect_timeout=1"
    config.write_text(
        f'broker = "{url}"\n[topics.jobs]\n'
        '[sinks.out]\ntype = "file"\ntopic = "jobs"\npath = "out.ndjson"\n'
    )
    done = subprocess.run([sys.executable, "-m", "chute", "run", str(config)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 3, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("chute:")]
    assert lines == [f"chute: cannot reach nats at nats://127.0.0.1:{port}"]
    assert "Traceback" not in done.stderr
