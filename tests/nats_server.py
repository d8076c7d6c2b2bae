"""A real nats-server with JetStream (file storage) for tests: free port, restartable.

Under CI (``CI=true``) a missing ``nats-server`` fails the tests that need it;
locally they are skipped with the reason (``apt-get install nats-server``).
"""

from __future__ import annotations

import atexit
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.mqtt_server import free_port, require_program


class NatsServer:
    def __init__(self, directory: Path | None = None) -> None:
        self.binary = require_program("nats-server", "nats-server")
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="chute-nats-")
        self.dir = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.dir / "jetstream")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server on port {self.port} did not start") from exc
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


_shared: NatsServer | None = None


def shared_nats_url() -> str:
    """One nats-server per test session for tests that do not stop it."""
    global _shared
    if _shared is None:
        server = NatsServer()
        server.start()
        atexit.register(server.close)
        _shared = server
    return _shared.url


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
