"""What the Redis broker, store and source share: URLs, clients, and riding out outages.

URL: ``redis://[user:password@]host:port/db[?prefix=chute:&node=NAME]``. ``prefix``
namespaces every key (so tests, or two deployments, can share one Redis);
``node`` names this machine in consumer names (default: the host name).
Other query parameters go to redis-py.
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
from chute.errors import ClosedError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")

DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors meaning Redis cannot be reached right now (LOADING is a ConnectionError)."""

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
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname or ''}:{parts.port or 6379}{parts.path}"

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
    """Runs Redis operations until they succeed; ``healthy`` is False meanwhile."""

    def __init__(self, what: str, url: RedisUrl, log: logging.Logger) -> None:
        self.what = what
        self.url = url
        self.log = log
        self.healthy = True
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise ClosedError(f"the {self.what} is closed")

    async def call(self, op: Callable[[], Awaitable[T]], *, deadline: float | None = None) -> T:
        """Retry ``op`` with backoff (50 ms doubling to 2 s) while Redis is away.

        With a ``deadline`` (monotonic), give up then by raising TimeoutError.
        """
        backoff = 0.05
        failures = 0
        while True:
            self.check_open()
            try:
                result = await op()
            except DOWN as exc:
                failures += 1
                if failures == 1:
                    # Most likely a pooled connection that a restarted Redis
                    # closed: the pool drops it, and a fresh one may just work.
                    continue
                if self.healthy:
                    self.log.warning("%s: redis at %s unreachable (%s); retrying", self.what,
                                     self.url.safe, exc)  # fmt: skip
                self.healthy = False
                wait = backoff
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise TimeoutError from exc
                await asyncio.sleep(wait)
                backoff = min(backoff * 2, 2.0)
                continue
            if not self.healthy:
                self.log.warning("%s: redis at %s reachable again", self.what, self.url.safe)
                self.healthy = True
            return result


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
    return raw.decode() if isinstance(raw, bytes) else raw
