"""What keeps the runtime's API safe from web pages and from its own clients.

A page in a browser can POST to ``http://127.0.0.1:PORT`` without a CORS
preflight when the content type is "simple" (``text/plain``, forms), and DNS
rebinding lets it read answers by pointing a name it controls at 127.0.0.1.
So: mutating routes always need a bearer token (created in the working folder
when none is configured, mode 0600, and read from there by the CLI); a
loopback bind answers only requests whose ``Host`` is a loopback name; a
foreign ``Origin`` is refused; mutating routes take only JSON or NDJSON.

Clients that hold connections open without finishing a request are closed
after ``HEADER_TIMEOUT``; at most ``MAX_CONNECTIONS`` are open at once, and a
new one evicts the oldest idle one.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

TOKEN_FILE = "api.token"
"""In the working folder: the token chute made because the config has none."""

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BODY_TYPES = frozenset({"application/json", "application/x-ndjson"})
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
"""Never need a token: probes, and the dashboard page (it sends the token itself)."""

HEADER_TIMEOUT = 10.0
"""Seconds a connection may take to send a complete request head (and to idle between)."""
BODY_TIMEOUT = 30.0
"""Seconds a request may take to send its body."""
MAX_CONNECTIONS = 64
MAX_BODY = 16 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """``localhost``, ``*.localhost``, 127.0.0.0/8 and ::1 (brackets allowed)."""
    host = host.strip().lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ensure_token(workdir: Path) -> str:
    """A fresh random token in ``workdir/api.token``, readable by this user only."""
    workdir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path = workdir / TOKEN_FILE
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an umask never widens it, an old file never keeps its mode
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return token


def read_token(workdir: Path) -> str | None:
    try:
        return (workdir / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def _refuse(status: int, why: str) -> web.Response:
    return web.json_response({"error": why}, status=status)


def _host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without its port (IPv6 literals keep their brackets)."""
    return urlsplit(f"//{host_header}").hostname or ""


def guard(*, token: str, loopback: bool, reads_need_token: bool) -> Any:
    """The middleware: Host, Origin, token and content type, checked before any handler."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if loopback and host and not is_loopback(_host_name(host)):
            return _refuse(421, f"this API answers only loopback names, not Host {host!r}")
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return _refuse(403, f"cross-origin requests are refused (Origin {origin!r})")
        mutating = request.method in MUTATING
        if (mutating or reads_need_token) and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return _refuse(
                    401,
                    "missing or wrong bearer token (chute writes one to api.token in its working folder)",
                )
        if mutating and request.content_type not in BODY_TYPES:
            return _refuse(415, "send Content-Type: application/json or application/x-ndjson")
        return await handler(request)

    return middleware


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes | web.Response:
    """The body, or the response refusing it: too large (413) or too slow (408)."""
    if request.content_length is not None and request.content_length > limit:
        return _refuse(413, f"the body is over {limit} bytes; send smaller batches")
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _refuse(413, f"the body is over {limit} bytes; send smaller batches")
    except TimeoutError:
        return _refuse(408, f"the body took longer than {BODY_TIMEOUT:g}s to arrive")


class _Refused(asyncio.Protocol):
    """A connection over the limit with none to evict: closed at once, so its descriptor comes back."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _idle(handler: Any) -> bool:
    """Open but not handling a request: waiting for (the rest of) a request head.

    aiohttp keeps this in private slots; without them nothing counts as idle
    and the limit only refuses.
    """
    return getattr(handler, "_current_request", 1) is None


async def listen(runner: web.AppRunner, host: str, port: int) -> asyncio.Server:
    """Listen with a connection limit (aiohttp's sites have none).

    At the limit a new connection evicts the oldest idle one, so a flood of
    connections that never send a request cannot lock real clients out. The
    small backlog bounds how many sockets one accept burst opens (asyncio
    accepts up to ``backlog`` per loop pass), so a low descriptor limit holds.
    """
    server = runner.server
    assert server is not None

    def protocol() -> asyncio.Protocol:
        live = [c for c in server.connections if not getattr(c, "_force_close", False)]
        if len(live) >= MAX_CONNECTIONS:
            oldest_idle = next((c for c in live if _idle(c)), None)
            if oldest_idle is None:
                return _Refused()
            oldest_idle.force_close()
        return server()

    loop = asyncio.get_running_loop()
    return await loop.create_server(protocol, host, port, reuse_address=True, backlog=16)
