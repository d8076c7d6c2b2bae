"""What every real server the tests start shares: a free port, a missing program
that fails under CI (``CI=true``) and is skipped locally, a process started in
its own session and waited on until it answers, then stopped or restarted.

``tests/redis_server.py``, ``tests/nats_server.py`` and ``tests/mqtt_server.py``
say only how to start theirs and how to tell that it answers.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_program(name: str, package: str) -> str:
    """The program's path, or fail (CI) / skip (locally) with the reason."""
    binary = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        reason = f"{name} is not on PATH (apt-get install {package})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}: these tests must run under CI", pytrace=False)
        pytest.skip(reason)
    return binary


def wait_for_port(port: int, proc: subprocess.Popen[Any], what: str = "the API") -> None:
    """Until ``proc`` accepts connections on ``port``; fails at once if it exits."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)  # waiting for an external process: nothing to wait on
    raise AssertionError(f"{what} never came up")


class ServerProcess:
    """One server process with its data in its own folder (kept across restarts)."""

    program = ""
    """The executable's name, also the apt package that holds it."""

    def __init__(self, directory: Path | None = None, port: int | None = None) -> None:
        self.binary = require_program(self.program, self.program)
        self._tmp = (
            None if directory else tempfile.TemporaryDirectory(prefix=f"chute-{self.program}-")
        )
        self.dir = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        """Whether the server serves yet (false, never an error, while it starts)."""
        raise NotImplementedError

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.program} on port {self.port} did not start")
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

    def __enter__(self) -> Self:
        """Started; killed and its folder removed at the end of the block."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


S = TypeVar("S", bound=ServerProcess)
_shared: dict[type[ServerProcess], ServerProcess] = {}


def shared_server(kind: type[S]) -> S:
    """One server of ``kind`` per test session, for the tests that never stop it."""
    server = _shared.get(kind)
    if server is None:
        server = kind()
        server.start()
        atexit.register(server.close)
        _shared[kind] = server
    assert isinstance(server, kind)
    return server
