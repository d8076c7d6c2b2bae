"""A real Mosquitto for tests: started on a free port, stoppable and restartable.

Under CI (``CI=true``) a missing ``mosquitto`` fails the tests that need it;
locally they are skipped with the reason (``apt-get install mosquitto
mosquitto-clients``).
"""

from __future__ import annotations

import getpass
import socket
import subprocess
from pathlib import Path

from tests.servers import ServerProcess, require_program


class MosquittoServer(ServerProcess):
    """One mosquitto with persistence in its own folder (sessions survive a restart)."""

    program = "mosquitto"

    def __init__(self, directory: Path | None = None, *, listener: str = "") -> None:
        """``listener``: lines added to the listener's settings (TLS, passwords)."""
        super().__init__(directory)
        self.listener = listener

    def command(self) -> list[str]:
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
        return [self.binary, "-c", str(conf)]

    def answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def pub(self, topic: str, *payloads: str, qos: int = 1) -> None:
        """Publish with ``mosquitto_pub`` (one line of stdin per message)."""
        binary = require_program("mosquitto_pub", "mosquitto-clients")
        subprocess.run(
            [binary, "-h", "127.0.0.1", "-p", str(self.port), "-q", str(qos), "-t", topic, "-l"],
            input="".join(p + "\n" for p in payloads).encode(),
            check=True,
            timeout=60,
        )
