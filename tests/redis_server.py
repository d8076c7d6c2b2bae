"""A real redis-server for tests: started on a free port, stoppable and restartable.

``CHUTE_REDIS_URL`` points the shared server at an existing Redis instead.
Under CI (``CI=true``) a missing ``redis-server`` fails the tests that need
it; locally they are skipped with the reason.
"""

from __future__ import annotations

import os
import uuid

import redis

from tests.servers import ServerProcess, shared_server


class RedisServer(ServerProcess):
    """One redis-server process with append-only persistence (fsync on every write)."""

    program = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--daemonize", "no", "--loglevel", "warning",
        ]  # fmt: skip

    def answers(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.BusyLoadingError):
            return False


def shared_url() -> str:
    """A Redis for tests that do not stop it: CHUTE_REDIS_URL, or one server per session."""
    return os.environ.get("CHUTE_REDIS_URL") or shared_server(RedisServer).url


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
