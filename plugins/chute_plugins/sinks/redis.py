"""XADD each message to a Redis stream that an outside consumer reads.

The mirror of the ``redis`` source: any Redis client (``XREAD``,
``XREADGROUP``) takes the results from there. Each entry has the fields
``data`` (the message's data as JSON), ``key`` and ``chute-id`` (the message
id, so a reader can drop a redelivered duplicate). A batch is one round trip;
``send`` returns once Redis answered, so an acknowledged message is in the
stream. With ``maxlen``, the stream is trimmed approximately to that length.

```toml
[sinks.out]
type = "redis"
topic = "results"
url = "redis://127.0.0.1:6379/0"
stream = "shop:results"
```
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

import msgspec
from chute.config import Strict
from chute.context import PluginContext
from chute.errors import ConfigError
from chute.message import Message
from chute.sink import Outcome, Refused
from redis.exceptions import ResponseError

from ..redis_conn import RedisUrl, pack, pipelined

log = logging.getLogger("chute.sinks.redis")

_encoder = msgspec.json.Encoder()


class RedisSinkOptions(Strict):
    stream: str
    """The stream's key, exactly as its readers name it."""
    url: str = "redis://127.0.0.1:6379/0"
    """The Redis to write to (``?prefix=`` is prepended to the stream's key)."""
    maxlen: int = 0
    """Trim the stream to about this many entries (0: never trim)."""


class RedisSink:
    Options: ClassVar[type[Strict]] = RedisSinkOptions

    def __init__(self, options: RedisSinkOptions, ctx: PluginContext) -> None:
        if options.maxlen < 0:
            raise ConfigError([f"maxlen: cannot be negative, got {options.maxlen}"])
        if not options.url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError([f"url: expected a redis:// URL, got {options.url!r}"])
        self.options = options
        self._url = RedisUrl.parse(options.url, default_prefix="")
        self._redis = self._url.client()

    async def send(self, messages: Sequence[Message]) -> Sequence[Outcome]:
        o = self.options
        key = self._url.prefix + o.stream
        trim: tuple[str | int, ...] = ("MAXLEN", "~", o.maxlen) if o.maxlen else ()
        fields = [
            ("data", _encoder.encode(m.data), "key", m.key, "chute-id", m.id) for m in messages
        ]
        packed = b"".join(pack("XADD", key, *trim, "*", *f) for f in fields)
        try:
            await pipelined(self._redis, packed, len(messages))
        except ResponseError as exc:  # WRONGTYPE, OOM...: Redis refused; try again later
            return [Refused(f"XADD {o.stream}: {exc}")] * len(messages)
        return [None] * len(messages)

    async def aclose(self) -> None:
        await self._redis.aclose()
