"""A real nats-server with JetStream (file storage) for tests: free port, restartable.

Under CI (``CI=true``) a missing ``nats-server`` fails the tests that need it;
locally they are skipped with the reason (``apt-get install nats-server``).
"""

from __future__ import annotations

import socket
import uuid

from tests.servers import ServerProcess, shared_server


class NatsServer(ServerProcess):
    program = "nats-server"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                "-sd", str(self.dir / "jetstream")]  # fmt: skip

    def answers(self) -> bool:
        """A NATS server greets every client with its INFO line."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                return s.recv(4).startswith(b"INFO")
        except OSError:
            return False


def shared_nats_url() -> str:
    """One nats-server per test session for tests that do not stop it."""
    return shared_server(NatsServer).url


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
