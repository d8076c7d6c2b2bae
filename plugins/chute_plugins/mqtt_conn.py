"""What the MQTT source and sink share: connection options and building a client.

The client is aiomqtt (asyncio on top of paho-mqtt 2, the Eclipse client):
it gives the asyncio socket loop, QoS 1 flows and TLS without hand-written
protocol code.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import aiomqtt
from chute.config import Strict
from chute.context import PluginContext
from chute.errors import ConfigError


class MqttConnection(Strict):
    """Where the MQTT broker is and how to log in."""

    host: str = "127.0.0.1"
    """The MQTT broker's host name or address."""
    port: int = 1883
    """Its port (8883 is the usual one for TLS)."""
    username: str = ""
    """Log in with this user name (none: anonymous)."""
    password: str = ""
    """The user's password (prefer ``password_env``)."""
    password_env: str = ""
    """Read the password from this environment variable instead (keeps it out of the file)."""
    tls: bool = False
    """Connect over TLS, checking the broker's certificate against the system's CAs."""
    ca_file: str = ""
    """Trust this CA bundle (PEM) instead of the system's; implies ``tls``."""
    cert_file: str = ""
    """Client certificate (PEM) for brokers that require one; with ``key_file``."""
    key_file: str = ""
    """The client certificate's private key (PEM)."""
    client_id: str = ""
    """The MQTT client id; a stable default is made from the host and the table's name."""
    keepalive: int = 30
    """Seconds between pings while nothing else is sent (a dead link is noticed after 1.5x)."""


def connection_problems(o: MqttConnection) -> list[str]:
    problems = []
    if not 0 < o.port < 65536:
        problems.append(f"port: must be between 1 and 65535, got {o.port}")
    if bool(o.cert_file) != bool(o.key_file):
        problems.append("cert_file: give both cert_file and key_file, or neither")
    if o.password and o.password_env:
        problems.append("password_env: give either password or password_env, not both")
    if o.keepalive < 1:
        problems.append(f"keepalive: must be at least 1 second, got {o.keepalive}")
    return problems


def check_connection(o: MqttConnection) -> None:
    problems = connection_problems(o)
    if problems:
        raise ConfigError(problems)


def _tls_context(o: MqttConnection, ctx: PluginContext) -> ssl.SSLContext | None:
    if not (o.tls or o.ca_file or o.cert_file):
        return None
    context = ssl.create_default_context(cafile=str(ctx.resolve(o.ca_file)) if o.ca_file else None)
    if o.cert_file:
        context.load_cert_chain(str(ctx.resolve(o.cert_file)), str(ctx.resolve(o.key_file)))
    return context


def make_client(
    o: MqttConnection, ctx: PluginContext, *, client_id: str, persistent: bool
) -> aiomqtt.Client:
    """A client (not yet connected). ``persistent``: keep the session while away."""
    password = os.environ.get(o.password_env, "") if o.password_env else o.password
    kwargs: dict[str, Any] = {}
    if persistent:
        kwargs["clean_session"] = False
    client = aiomqtt.Client(
        o.host,
        o.port,
        identifier=client_id,
        username=o.username or None,
        password=password or None,
        tls_context=_tls_context(o, ctx),
        keepalive=o.keepalive,
        protocol=aiomqtt.ProtocolVersion.V311,
        timeout=10.0,
        **kwargs,
    )
    # Batches keep many QoS 1 publishes in flight; that is no cause for a warning.
    client.pending_calls_threshold = 1 << 20
    return client


def where(o: MqttConnection) -> str:
    return f"mqtt://{o.host}:{o.port}"
