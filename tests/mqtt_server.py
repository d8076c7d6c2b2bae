"""A real Mosquitto for tests: started on a free port, stoppable and restartable.

Under CI (``CI=true``) a missing ``mosquitto`` fails the tests that need it;
locally they are skipped with the reason (``apt-get install mosquitto
mosquitto-clients``).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require_program(name: str, package: str) -> str:
    """The program's path, or fail (CI) / skip (locally) with the reason."""
    binary = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        reason = f"{name} is not on PATH (apt-get install {package})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}: these tests must run under CI", pytrace=False)
        pytest.skip(reason)
    return binary


class MosquittoServer:
    """One mosquitto with persistence in its own folder (sessions survive a restart)."""

    def __init__(self, directory: Path | None = None, *, listener: str = "") -> None:
        """``listener``: lines added to the listener's settings (TLS, passwords)."""
        self.binary = require_program("mosquitto", "mosquitto")
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="chute-mqtt-")
        self.dir = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.listener = listener

    def start(self) -> None:
        conf = self.dir / "mosquitto.conf"
        # Started as root, mosquitto drops to its own user, which cannot write
        # our folder; as anyone else the "user" line changes nothing.
        common = (
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "max_queued_messages 100000\n"
            "log_dest none\n"
            f"user {getpass.getuser()}\n"
        )
        listener = self.listener or "allow_anonymous true\n"
        conf.write_text(f"listener {self.port} 127.0.0.1\n{listener}{common}")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto on port {self.port} did not start") from exc
                time.sleep(0.02)  # waiting for an external process: nothing to wait on

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop(kill=True)
        if self._tmp is not None:
            self._tmp.cleanup()

    def pub(self, topic: str, *payloads: str, qos: int = 1) -> None:
        """Publish with ``mosquitto_pub`` (one line of stdin per message)."""
        binary = require_program("mosquitto_pub", "mosquitto-clients")
        subprocess.run(
            [binary, "-h", "127.0.0.1", "-p", str(self.port), "-q", str(qos), "-t", topic, "-l"],
            input="".join(p + "\n" for p in payloads).encode(),
            check=True,
            timeout=60,
        )
