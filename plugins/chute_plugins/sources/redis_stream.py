"""Consume a Redis stream that any client writes (``redis-cli XADD ...``).

The source reads the stream with its own consumer group and publishes each
entry to its topic; an entry is acknowledged on the stream only after the
publish was accepted, so a crash in between reads it again (at-least-once).
Its consumer in the group is named after the node (``node`` in the config,
else the host name), the same across restarts: on start it first re-reads its
own unacknowledged entries, and entries that another consumer of the group
left pending for ``claim_after`` (a node that died) are taken over. Consumers
idle for ``forget_after`` with nothing pending are removed from the group.

Each entry becomes a message with ``data`` = the entry's fields as a dict of
strings, or, with ``data_field``, that field's JSON; ``key`` = the
``key_field`` value, else the entry id; headers ``redis-stream`` and
``redis-id``. An entry that cannot be read (not UTF-8, bad JSON, missing
field) is logged, counted, copied to ``dead_stream`` with the reason and its
fields byte for byte (``redis_conn.dead_letter_command``, shared with the
broker), and acknowledged: it never blocks the entries behind it.

```toml
[sources.orders]
type = "redis"
topic = "orders"
url = "redis://127.0.0.1:6379/0"
stream = "shop:orders"
data_field = "json"
```
"""

from __future__ import annotations

import logging
import re
from functools import partial
from typing import Any, ClassVar

import anyio
import msgspec
from chute.config import Duration, Strict
from chute.context import PluginContext
from chute.errors import ConfigError, Unavailable
from chute.message import Message
from chute.source import Emit
from chute.store import ItemStatus
from redis.exceptions import ResponseError

from ..brokers import redis_upkeep as upkeep
from ..redis_conn import (
    MAX_BLOCK,
    Reconnecting,
    RedisUrl,
    as_str,
    dead_letter_command,
    field_pairs,
    pipelined,
    raw_reply,
)

log = logging.getLogger("chute.sources.redis")

_STREAM_ID = re.compile(r"\d+(-\d+)?")
_STARTS = {"earliest": "0", "latest": "$"}


class RedisStreamOptions(Strict):
    stream: str
    """The stream's key, exactly as its writers name it."""
    url: str = "redis://127.0.0.1:6379/0"
    """The Redis server holding the stream."""
    group: str = ""
    """Consumer group on the stream; defaults to ``chute-<source name>``."""
    start: str = "earliest"
    """Where a new group starts: ``earliest`` (or ``0``) takes the entries already there,
    ``latest`` (or ``$``) only new ones; or a stream id."""
    batch: int = 100
    """Most entries read at once."""
    key_field: str = ""
    """Field whose value becomes the item key; default the entry id."""
    data_field: str = ""
    """Field holding the item's data as JSON; default all fields as strings."""
    claim_after: Duration = Duration(60.0)
    """Take over entries another consumer of the group left unacknowledged this long."""
    dead_stream: str = ""
    """Where unreadable entries go; defaults to ``<stream>:dead``."""
    forget_after: Duration = Duration(3600.0)
    """Remove consumers of the group that are idle this long and hold nothing."""


class RedisStreamSource:
    Options: ClassVar[type[Strict]] = RedisStreamOptions

    def __init__(self, options: RedisStreamOptions, ctx: PluginContext) -> None:
        if options.batch < 1:
            raise ConfigError([f"batch: must be at least 1, got {options.batch}"])
        start = _STARTS.get(options.start, options.start)
        if start not in ("0", "$") and not _STREAM_ID.fullmatch(start):
            raise ConfigError(
                [f"start: expected 'earliest', 'latest' or a stream id, got {options.start!r}"]
            )
        self.start = start
        self.options = options
        self.group = options.group or f"chute-{ctx.name}"
        # Stable across restarts, so a restarted node re-reads its own pending entries.
        self.consumer = ctx.stable_node or ctx.node
        self.dead_stream = options.dead_stream or f"{options.stream}:dead"
        self._url = RedisUrl.parse(options.url, default_prefix="")
        self._conn = Reconnecting(f"redis source {ctx.name}", self._url, log, Unavailable)
        self._redis = self._url.client()
        for command in ("XREADGROUP", "XAUTOCLAIM"):  # parsed here: one shape on RESP2 and 3
            self._redis.set_response_callback(command, raw_reply)
        self._caught_up = anyio.Event()
        self.emitted = 0
        self.invalid = 0
        self._decode_json = msgspec.json.Decoder()

    @property
    def healthy(self) -> bool:
        return self._conn.healthy

    async def caught_up(self) -> None:
        """Once the stream held nothing more for this group (for ``--until-idle``)."""
        await self._caught_up.wait()

    async def _cmd(self, *args: Any) -> Any:
        return await self._redis.execute_command(*args)  # type: ignore[no-untyped-call]

    async def _create_group(self) -> None:
        try:
            await self._cmd("XGROUP", "CREATE", self.options.stream, self.group,
                            self.start, "MKSTREAM")  # fmt: skip
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, emit: Emit) -> None:
        o = self.options
        await self._conn.call(self._create_group)
        # Our own entries left unacknowledged by an earlier run, then new ones.
        while await self._pass(emit, "0", block_ms=0):
            pass
        claim_every = max(0.05, min(float(o.claim_after) / 4, 5.0))
        next_claim = anyio.current_time()
        next_forget = anyio.current_time()
        while True:
            if anyio.current_time() >= next_claim:
                while await self._claim_stale(emit):
                    pass
                next_claim = anyio.current_time() + claim_every
            if anyio.current_time() >= next_forget:
                await self._conn.call(partial(upkeep.forget_consumers, self._redis, o.stream,
                                              self.group, float(o.forget_after)))  # fmt: skip
                next_forget = anyio.current_time() + max(1.0, float(o.forget_after) / 4)
            wait = min(MAX_BLOCK, max(0.001, next_claim - anyio.current_time()))
            got = await self._pass(emit, ">", block_ms=int(wait * 1000))
            if not got and not self._caught_up.is_set():
                self._caught_up.set()

    async def _pass(self, emit: Emit, start: str, *, block_ms: int) -> int:
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer,
                           "COUNT", self.options.batch]  # fmt: skip
        if block_ms:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", self.options.stream, start]
        reply = await self._conn.call(partial(self._read, args))
        entries = _entries(reply)
        if entries:
            await self._forward(emit, entries)
        return len(entries)

    async def _read(self, args: list[Any]) -> Any:
        try:
            return await self._cmd(*args)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("group %s on %s is gone; recreating it", self.group, self.options.stream)
            await self._create_group()
            return None

    async def _claim_stale(self, emit: Emit) -> int:
        o = self.options
        args = ("XAUTOCLAIM", o.stream, self.group, self.consumer,
                int(float(o.claim_after) * 1000), "0-0", "COUNT", o.batch)  # fmt: skip
        try:
            reply = await self._conn.call(partial(self._cmd, *args))
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return 0  # recreated by the next read
        entries = [e for e in reply[1] if e]
        if entries:
            await self._forward(emit, entries)
        return len(entries)

    async def _forward(self, emit: Emit, entries: list[Any]) -> None:
        messages: list[Message] = []
        ids: list[str] = []
        bad: list[tuple[str, list[Any], str]] = []
        for raw_id, raw_fields in entries:
            entry_id = as_str(raw_id)
            ids.append(entry_id)
            if raw_fields is None:  # deleted under our pending delivery
                continue
            fields = field_pairs(raw_fields)
            try:
                messages.append(self._message(entry_id, fields))
            except (UnicodeDecodeError, msgspec.DecodeError, KeyError) as exc:
                bad.append((entry_id, fields, _reason(exc)))
        if bad:
            await self._dead_letter(bad)
        if messages:
            await emit(messages)  # waits while the topic is full
            self.emitted += len(messages)
        # Only now: a crash before this line reads the entries again.
        await self._conn.call(partial(self._cmd, "XACK", self.options.stream, self.group, *ids))

    def _message(self, entry_id: str, fields: list[Any]) -> Message:
        o = self.options
        text = {as_str(k): as_str(v) for k, v in fields}
        data: Any = text
        if o.data_field:
            data = self._decode_json.decode(text[o.data_field])
        key = text[o.key_field] if o.key_field else entry_id
        return Message(key=key, data=data,
                       headers={"redis-stream": o.stream, "redis-id": entry_id})  # fmt: skip

    async def _dead_letter(self, bad: list[tuple[str, list[Any], str]]) -> None:
        packed = b"".join(dead_letter_command(self.dead_stream, entry_id, fields, reason)
                          for entry_id, fields, reason in bad)  # fmt: skip
        # Built once, sent whole on each try: the bytes are the request.
        await self._conn.call(partial(pipelined, self._redis, packed, len(bad)))
        self.invalid += len(bad)
        for entry_id, _, reason in bad:
            log.error("entry %s on %s cannot be read (%s): copied to %s", entry_id,
                      self.options.stream, reason, self.dead_stream)  # fmt: skip

    async def item_finished(self, key: str, status: ItemStatus) -> None:
        return None

    async def aclose(self) -> None:
        self._conn.closed = True
        await self._redis.aclose()


def _entries(reply: Any) -> list[Any]:
    if not reply:
        return []
    if isinstance(reply, dict):
        return [e for entries in reply.values() for e in entries]
    return [e for _, entries in reply for e in entries]


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no field {exc.args[0]!r}"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    return f"bad JSON: {exc}"
