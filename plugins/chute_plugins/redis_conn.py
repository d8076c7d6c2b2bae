"""What the Redis broker, store and source share: URLs, clients, riding out outages,
and setting aside entries that other programs wrote.

URL: ``redis://[user:password@]host:port/db[?prefix=chute:&node=NAME]``. ``prefix``
namespaces every key (so tests, or two deployments, can share one Redis);
``node`` names this machine in consumer names (default: the host name).
Other query parameters go to redis-py. A URL is printed only through
``RedisUrl.safe`` (``chute.urls.redact_url``): never with its password.

Errors, by what they mean for the caller (``Reconnecting.call``):

- Redis unreachable (refused, reset, timed out) or answering that it cannot
  serve right now (``LOADING``, ``READONLY`` during a failover, ``MISCONF``,
  ``OOM``, ``BUSY``, ``MASTERDOWN``, ``TRYAGAIN``...): retried with backoff,
  ``healthy`` is False and ``problem`` says why until a call succeeds.
- Redis refusing us for good (``NOAUTH``, ``WRONGPASS``, ``NOPERM``,
  ``WRONGTYPE`` on one of our keys): raised at once as ``Unavailable`` (not
  its ``BrokerUnavailable`` subclass, which callers retry), one line naming
  the URL (``chute`` exits 3).
- Anything else (``NOGROUP``, ``BUSYGROUP``, a bug): raised as it is.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from chute.errors import ClosedError, Unavailable
from chute.urls import redact_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")

DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors meaning Redis cannot be reached right now (LOADING is a ConnectionError)."""

TRANSIENT = ("LOADING", "READONLY", "MISCONF", "OOM", "BUSY", "MASTERDOWN", "TRYAGAIN",
             "NOREPLICAS", "CLUSTERDOWN", "UNBLOCKED")  # fmt: skip
"""Error replies that pass: Redis is restarting, failing over, short of memory or disk."""

FATAL = ("NOAUTH", "WRONGPASS", "NOPERM", "WRONGTYPE")
"""Error replies that do not pass by waiting: credentials, permissions, a foreign key."""


def error_code(exc: BaseException) -> str:
    """The code of a Redis error reply (``READONLY``), or ``""``.

    redis-py strips the code from the text of the errors it has a class for
    and keeps it in ``status_code``; other replies keep it as their first word.
    """
    code = getattr(exc, "status_code", None)
    if code:
        return str(code).upper()
    text = str(exc).strip()
    return text.split(None, 1)[0].upper() if text else ""


def is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, (AuthenticationError, NoPermissionError)) or (
        isinstance(exc, (ResponseError, RedisConnectionError)) and error_code(exc) in FATAL
    )


def is_transient(exc: BaseException) -> bool:
    if is_fatal(exc):
        return False
    if isinstance(exc, (*DOWN, ReadOnlyError, OutOfMemoryError)):
        return True
    return isinstance(exc, ResponseError) and error_code(exc) in TRANSIENT


MAX_BLOCK = 2.0
"""Longest single blocking command, kept under the client's socket timeout."""


@dataclass(frozen=True)
class RedisUrl:
    url: str
    client_url: str
    prefix: str
    node: str
    """``<node>:<pid>``: unique per process, and says where a consumer runs."""

    @classmethod
    def parse(cls, url: str, default_prefix: str = "chute:") -> RedisUrl:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        prefix = query.pop("prefix", default_prefix)
        node = query.pop("node", "") or socket.gethostname()
        client_url = urlunsplit(parts._replace(query=urlencode(query)))
        return cls(url=url, client_url=client_url, prefix=prefix, node=f"{node}:{os.getpid()}")

    @property
    def safe(self) -> str:
        """The URL without credentials, for messages."""
        return redact_url(self.url)

    def client(self) -> aioredis.Redis:
        # Our own retry loop (Reconnecting.call) is the only one: redis-py's
        # would hide an outage from ``healthy`` and repeat writes unseen.
        return aioredis.Redis.from_url(
            self.client_url,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=2.0,
            socket_timeout=MAX_BLOCK + 3.0,
        )


class Reconnecting:
    """Runs Redis operations until they succeed; ``healthy`` is False meanwhile.

    ``op`` must build its whole request each time it is called: redis-py
    empties a pipeline once it has run, even when it failed, so passing
    ``pipe.execute`` would retry an empty pipeline (and write nothing).
    """

    def __init__(
        self,
        what: str,
        url: RedisUrl,
        log: logging.Logger,
        error: type[Unavailable] = Unavailable,
    ) -> None:
        self.what = what
        self.url = url
        self.log = log
        self.error = error
        self.healthy = True
        self.problem = ""
        """Why the last call is being retried (empty while healthy)."""
        self._retrying = 0  # calls in their retry loop now
        self._quiet = False
        self.ping: Callable[[], Awaitable[Any]] = _no_ping
        """What ``connect`` sends (set by the owner of the client)."""
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"the {self.what} is closed")

    async def connect(self, limit: float, role: str) -> None:
        """PING until Redis answers; after ``limit`` seconds raise one line naming ``role``.

        Quiet meanwhile: the one line is the message (``chute`` exits 3 on it).
        """
        self.closed = False
        self._quiet = True
        try:
            async with asyncio.timeout(limit):  # also cuts a connect attempt short
                await self.call(self.ping)
        except TimeoutError:
            raise self.error(f"cannot reach redis at {self.url.safe} ({role})") from None
        finally:
            self._quiet = False

    async def call(self, op: Callable[[], Awaitable[T]], *, deadline: float | None = None) -> T:
        """Retry ``op`` with backoff (50 ms doubling to 2 s) while Redis is away.

        With a ``deadline`` (monotonic), give up then by raising TimeoutError.
        ``healthy`` turns True again only when no call is being retried: during
        an ``OOM`` reads succeed while writes wait, and the writes decide.
        """
        backoff = 0.05
        failures = 0
        retrying = False
        try:
            while True:
                self.check_open()
                try:
                    result = await op()
                except (*DOWN, ResponseError) as exc:
                    if is_fatal(exc):
                        # Not ``self.error`` (BrokerUnavailable, which callers
                        # retry): waiting does not change a refusal.
                        raise Unavailable(f"{self.what}: redis at {self.url.safe} refuses us: "
                                         f"{_one_line(exc)}") from None  # fmt: skip
                    if not is_transient(exc):
                        raise
                    failures += 1
                    if failures == 1 and isinstance(exc, DOWN):
                        # Most likely a pooled connection that a restarted Redis
                        # closed: the pool drops it, and a fresh one may just work.
                        continue
                    if not retrying:
                        retrying = True
                        self._retrying += 1
                    problem = _describe(exc)
                    if (self.healthy or problem != self.problem) and not self._quiet:
                        self.log.warning("%s: redis at %s %s; retrying", self.what,
                                         self.url.safe, problem)  # fmt: skip
                    self.healthy = False
                    self.problem = problem
                    wait = backoff
                    if deadline is not None:
                        wait = min(wait, deadline - time.monotonic())
                        if wait <= 0:
                            raise TimeoutError from exc
                    await asyncio.sleep(wait)
                    backoff = min(backoff * 2, 2.0)
                    continue
                if retrying:
                    retrying = False
                    self._retrying -= 1
                if not self.healthy and not self._retrying:
                    self.log.warning("%s: redis at %s reachable again", self.what, self.url.safe)
                    self.healthy = True
                    self.problem = ""
                return result
        finally:
            if retrying:
                self._retrying -= 1


async def _no_ping() -> None:
    raise ClosedError("no client to ping")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    code = error_code(exc)
    return text if not code or text.upper().startswith(code) else f"{code} {text}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ResponseError) or error_code(exc) in TRANSIENT:
        return f"answers {_one_line(exc)}"
    return f"unreachable ({_one_line(exc)})"


def pack(*args: bytes | str | int) -> bytes:
    """One command in the Redis protocol (RESP)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


async def pipelined(redis: aioredis.Redis, packed: bytes, replies: int) -> list[Any]:
    """Send commands packed by the caller in one round trip; read their replies.

    The same bytes a redis-py pipeline sends, without its per-command
    bookkeeping and its timer per reply, which cost several times as much CPU
    (publishers and consumers share one event loop). Error replies raise.
    """
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(packed)
        async with asyncio.timeout(MAX_BLOCK + 3.0):  # one time limit for the batch
            return [await conn.read_response(timeout=math.inf) for _ in range(replies)]
    except BaseException:
        # Replies may be left unread: the connection cannot be reused.
        await conn.disconnect(nowait=True)
        raise
    finally:
        await pool.release(conn)


async def xadd_many(
    redis: aioredis.Redis, key: str, field: bytes, payloads: list[bytes]
) -> list[bytes]:
    """XADD each payload (as ``field``) in one round trip; return the new ids."""
    head = pack("XADD", key, "*", field).partition(b"\r\n")[2]  # its count says 4: 5 follow
    packed = b"".join(b"*5\r\n%s$%d\r\n%s\r\n" % (head, len(p), p) for p in payloads)
    return await pipelined(redis, packed, len(payloads))


def raw_reply(response: Any, **options: Any) -> Any:
    """A response callback that keeps Redis's reply as it is (parsed where it is used)."""
    return response


def as_str(raw: bytes | str) -> str:
    """Ids, names and counters: ASCII by Redis's own making. Never entry fields."""
    return raw.decode() if isinstance(raw, bytes) else raw


def field_pairs(fields: Any) -> list[tuple[bytes, bytes]]:
    """An entry's fields as (name, value) pairs, whatever the reply's shape (RESP2 or 3)."""
    if not fields:
        return []
    if isinstance(fields, dict):
        items: Any = fields.items()
    elif isinstance(fields[0], tuple):  # pairs already
        items = fields
    else:
        items = zip(fields[::2], fields[1::2], strict=True)
    return [(_raw(k), _raw(v)) for k, v in items]


def _raw(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return (
        value.encode("utf-8", "surrogateescape") if isinstance(value, str) else str(value).encode()
    )


def dead_letter_command(dead_stream: str, entry_id: str, fields: Any, reason: str,
                        **meta: str) -> bytes:  # fmt: skip
    """The ``XADD`` (packed) that sets an unreadable entry aside, its bytes unchanged.

    The dead entry starts with ``chute-error`` (the reason), ``chute-id`` (the
    entry's id) and ``chute-<name>`` for each of ``meta``, then holds the
    entry's own fields exactly as they were, whatever bytes they hold: a
    stream entry may repeat a field name, so nothing of the original is
    renamed or dropped. The one way the broker and the ``redis`` source set
    entries aside.
    """
    head: list[bytes | str] = ["chute-error", reason, "chute-id", entry_id]
    for name, value in meta.items():
        head += [f"chute-{name}", value]
    flat = [b for pair in field_pairs(fields) for b in pair]
    return pack("XADD", dead_stream, "*", *head, *flat)
