"""A real redis-server for tests: started on a free port, stoppable and restartable.

``CHUTE_REDIS_URL`` points the shared server at an existing Redis instead.
Under CI (``CI=true``) a missing ``redis-server`` fails the tests that need
it; locally they are skipped with the reason.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def require_redis_server() -> str:
    """The redis-server binary, or fail (CI) / skip (locally) with the reason."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not on PATH (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}: the Redis tests must run under CI", pytrace=False)
        pytest.skip(reason)
    return binary


class RedisServer:
    """One redis-server process with append-only persistence (fsync on every write)."""

    def __init__(self, directory: Path | None = None, port: int | None = None) -> None:
        self.binary = require_redis_server()
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="chute-redis-")
        self.dir = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        self.port = port or _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError) as exc:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server on port {self.port} did not start"
                        ) from exc
                    time.sleep(0.02)  # waiting for an external process: nothing to wait on
        finally:
            client.close()

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


_shared: RedisServer | None = None


def shared_url() -> str:
    """A Redis for tests that do not stop it: CHUTE_REDIS_URL, or one server per session."""
    global _shared
    url = os.environ.get("CHUTE_REDIS_URL")
    if url:
        return url
    if _shared is None:
        server = RedisServer()
        server.start()
        atexit.register(server.close)
        _shared = server
    return _shared.url


def unique_prefix() -> str:
    """A key namespace so tests sharing one Redis never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:12]}:"


def drop_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
