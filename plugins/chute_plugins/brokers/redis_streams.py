"""Topics on Redis Streams, so several chute nodes can share the work.

A topic is a stream (``<prefix><topic>``), a consumer group is a Redis
consumer group, and a consumer is named ``<consumer>@<node>:<pid>`` so the
group shows which process holds what. The semantics are those of
``plugins/brokers/memory.py`` (one conformance suite runs over both); how each
maps onto Redis 7.0:

- **publish**: pipelined ``XADD`` (ids are Redis's own) of one field holding
  the message as msgspec JSON. Capacity counts unacknowledged entries (per
  group: lag + pending, from ``XINFO GROUPS``). A publisher spends a local
  credit measured from Redis (at most an eighth of the capacity) and
  measures again when it runs out, so nodes publishing at once may overshoot
  by that much each. While the topic is full it waits for a wakeup from this
  node's acks, and re-measures on a short backoff (5 ms doubling to 250 ms)
  for acks made by other nodes: those are only visible in Redis, and a push
  channel for this rare state would cost every node a pub/sub connection.
- **read**: first deliveries that are due again (``XAUTOCLAIM`` of entries
  idle past the visibility timeout; their delivery counts, which
  ``XAUTOCLAIM`` does not return, come from one pipelined ``XPENDING`` per
  claimed id), then new ones (``XREADGROUP COUNT BLOCK``). Stale deliveries
  are looked for at most every ``min(visibility_timeout / 4, 1 s)``, so a
  blocking read wakes up that often; the cursor persists, so a long pending
  list is scanned over several reads rather than all at once.
- **nack** with a delay: the due time goes to a sorted set per group, apart
  from the entry's idle time, so a retry waiting out its delay never looks
  like a stuck delivery (``redis_retries.py``).
- **groups**: a new group starts at the start of the retained stream
  (``start="earliest"``, Redis id ``0``) or at its end (``"latest"``, ``$``).
  Back-pressure counts only the groups this process declared (a publisher
  that declared none counts them all): a group left behind by a renamed or
  removed pool is warned about once, with how long it has been idle, and
  ``chute groups prune`` deletes it. Trimming still keeps what it needs, so
  nothing is lost before it is pruned.
- **trim**: Redis 7.0 has no ``XTRIM ... ACKED``, so every few thousand acks
  the stream is trimmed (``MINID ~``) below the lowest id some group still
  needs: its oldest pending id, or the one after its last delivered id.
  Entries removed anyway (by another client) under a pending delivery are
  logged and counted (``lost_entries``), never fatal.
- **foreign entries** (written by another client, not decodable, whatever
  bytes they hold): copied to ``<prefix><topic>:dead`` with the reason and
  their fields byte for byte (``redis_conn.dead_letter_command``, shared with
  the ``redis`` source), acknowledged, counted (``invalid``).
- **lost connection or a Redis restart**: every command is retried with
  backoff (50 ms doubling to 2 s) until it succeeds (a read gives up at its
  own deadline); ``healthy`` is False and ``problem`` says why meanwhile
  (also for replies that pass: ``LOADING``, ``READONLY``, ``MISCONF``,
  ``OOM``...). ``NOAUTH``, ``WRONGPASS`` or a topic key that is not a stream
  raise ``Unavailable`` at once (never retried). Publishing and acking are idempotent enough for that (a publish
  whose reply was lost may append its batch twice: at-least-once), and a
  read whose reply was lost leaves its entries pending, to be redelivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import msgspec
import redis.asyncio as aioredis
from chute.broker import GroupStats, TopicStats
from chute.errors import BrokerUnavailable, ClosedError, ConfigError, Unavailable
from chute.message import Message, decode_message, encode_message
from chute.meters import RateMeter
from msgspec.structs import replace
from redis.exceptions import ResponseError

from ..redis_conn import (
    MAX_BLOCK,
    Reconnecting,
    RedisUrl,
    dead_letter_command,
    pack,
    pipelined,
    raw_reply,
    xadd_many,
)
from ..redis_conn import as_str as _str
from . import redis_retries as retries
from . import redis_upkeep as upkeep

log = logging.getLogger("chute.brokers.redis")

FIELD = b"m"
"""The one stream field holding a message (msgspec JSON)."""

_PIPELINE = 1000
"""Commands per pipeline round trip when publishing."""

_TRIM_EVERY = 8192
"""Acks between trims (each trim costs two round trips)."""

_RAW = ("XREADGROUP", "XAUTOCLAIM", "XPENDING", "XCLAIM")
"""Replies parsed here rather than by redis-py's callbacks (the hot path)."""

STARTS = {"earliest": "0", "latest": "$"}
"""Where a new consumer group starts: the retained stream's start, or its end."""

_SLOW_PUBLISH = 5.0
"""Seconds a publisher waits on a full topic before it says so in the log."""


class _Group:
    __slots__ = ("acked", "cursor", "due", "interval", "meter", "name", "next_check",
                 "next_renew", "vt")  # fmt: skip

    def __init__(self, name: str, vt: float, stream_key: str) -> None:
        self.name = name
        self.due = retries.due_key(stream_key, name)
        self.vt = vt
        self.interval = min(max(vt / 4, 0.005), 1.0)
        self.next_check = 0.0  # wall-clock time of the next look for stale deliveries
        self.next_renew = 0.0  # wall-clock time of the next renewal of waiting retries
        self.cursor = b"0-0"
        self.acked = 0
        self.meter = RateMeter()


class _Topic:
    __slots__ = (
        "acks_since_trim",
        "capacity",
        "credit",
        "dropped",
        "groups",
        "key",
        "meter",
        "name",
        "unacked",
        "warned",
        "writers",
    )

    def __init__(self, name: str, key: str, capacity: int) -> None:
        self.name = name
        self.key = key
        self.capacity = capacity
        self.credit = 0
        self.groups: dict[str, _Group] = {}
        self.writers: list[asyncio.Future[None]] = []
        self.meter = RateMeter()
        self.acks_since_trim = 0
        self.unacked: dict[str, int] = {}  # counted group -> unacked, as last measured
        self.warned: set[str] = set()  # undeclared groups already warned about
        self.dropped = 0


class RedisBroker:
    """Topics on Redis Streams: ``redis://host:port/db[?prefix=chute:&node=NAME]``."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        default_capacity: int = 100_000,
        trim_every: int = _TRIM_EVERY,
        connect_timeout: float = 10.0,
        client: aioredis.Redis | None = None,
    ) -> None:
        self._url = RedisUrl.parse(url)
        self.prefix = self._url.prefix
        self.node = self._url.node
        self.url = url
        self.default_capacity = default_capacity
        self.trim_every = trim_every
        self.forget_consumers_after = 3600.0
        """Seconds a consumer with nothing pending may stay silent before it is deleted."""
        self.connect_timeout = connect_timeout
        self._conn = Reconnecting("redis broker", self._url, log, BrokerUnavailable)
        self.lost_entries = 0
        """Pending deliveries whose entry was deleted from the stream by someone else."""
        self.invalid = 0
        """Entries that could not be decoded as messages (moved to ``<topic>:dead``)."""
        self._given_client = client
        self._redis: aioredis.Redis | None = client
        self._topics: dict[str, _Topic] = {}

    @property
    def healthy(self) -> bool:
        """False while Redis cannot be reached (every call is being retried)."""
        return self._conn.healthy

    @healthy.setter
    def healthy(self, value: bool) -> None:
        self._conn.healthy = value

    @property
    def problem(self) -> str:
        """Why Redis calls are being retried right now (empty while healthy)."""
        return self._conn.problem

    # -- connection -------------------------------------------------------

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise ClosedError("the redis broker is not started")
        return self._redis

    async def start(self) -> None:
        self._conn.closed = False
        if self._redis is None:
            self._redis = self._url.client()
        for command in _RAW:
            self._redis.set_response_callback(command, raw_reply)
        self._conn.ping = self.redis.ping
        await self._conn.connect(self.connect_timeout, "the broker")

    async def aclose(self) -> None:
        self._conn.closed = True
        for topic in self._topics.values():
            _wake(topic.writers)
        if self._redis is not None and self._given_client is None:
            await self._redis.aclose()
            self._redis = None

    def _check_open(self) -> None:
        self._conn.check_open()

    async def _cmd(self, *args: Any) -> Any:
        return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]

    # -- topics and groups ------------------------------------------------

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = _Topic(name, self.prefix + name, self.default_capacity)
        return topic

    def _group(self, topic: str, group: str) -> tuple[_Topic, _Group]:
        t = self._topic(topic)
        g = t.groups.get(group)
        if g is None:
            raise KeyError(f"no consumer group {group!r} on topic {topic!r}; call ensure_group")
        return t, g

    async def declare_topic(self, topic: str, *, capacity: int) -> None:
        t = self._topic(topic)
        t.capacity = max(1, capacity)
        t.credit = 0

    async def ensure_group(
        self, topic: str, group: str, *, visibility_timeout: float, start: str = "earliest"
    ) -> None:
        if start not in STARTS:
            raise ConfigError([f"start: expected 'earliest' or 'latest', got {start!r}"])
        t = self._topic(topic)
        await self._conn.call(partial(self._create_group, t.key, group, STARTS[start]))
        existing = t.groups.get(group)
        if existing is None:
            t.groups[group] = _Group(group, visibility_timeout, t.key)
        else:
            existing.vt = visibility_timeout
            existing.interval = min(max(visibility_timeout / 4, 0.005), 1.0)
        t.credit = 0  # the groups that count changed: measure again

    async def _create_group(self, key: str, group: str, start: str) -> None:
        try:
            await self.redis.xgroup_create(key, group, start, mkstream=True)
        except ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise Unavailable(f"redis key {key!r} holds something other than a stream; "
                                        "use another topic name or key prefix") from None  # fmt: skip
            if "BUSYGROUP" not in str(exc):
                raise

    async def _recover_group(self, t: _Topic, g: _Group, exc: ResponseError) -> None:
        """The group vanished (Redis restarted without persistence, or someone deleted it).

        Recreated at the stream's start, not its end: what the stream holds now
        was published since, and redelivering beats losing it. Any other error
        than NOGROUP is raised again: the callers pass every ``ResponseError``.
        """
        if "NOGROUP" not in str(exc):
            raise exc
        log.warning("consumer group %s on %s is gone (%s); recreating it", g.name, t.key, exc)
        await self._conn.call(partial(self._create_group, t.key, g.name, "0"))

    # -- publishing -------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[str]:
        self._check_open()
        t = self._topic(topic)
        ids: list[str] = []
        start = 0
        backoff = 0.005
        waiting_since: float | None = None
        while start < len(messages):
            if t.credit <= 0:
                t.credit = await self._conn.call(lambda: self._room(t))
                if t.credit <= 0:
                    now = time.monotonic()
                    if waiting_since is None:
                        waiting_since = now
                    elif now - waiting_since >= _SLOW_PUBLISH:
                        _log_full(t, now - waiting_since)
                        waiting_since = now + 1e9  # once per publish call
                    await _wait(t.writers, backoff)
                    backoff = min(backoff * 2, 0.25)
                    self._check_open()
                    continue
            backoff = 0.005
            chunk = messages[start : start + min(t.credit, _PIPELINE)]
            ids.extend(await self._conn.call(partial(self._xadd, t, chunk)))
            t.credit -= len(chunk)
            start += len(chunk)
        return ids

    async def _room(self, t: _Topic) -> int:
        """Capacity minus unacknowledged entries, capped so nodes re-measure often.

        Only the groups declared here count (all of them for a process that
        declared none, such as ``chute publish``).
        """
        counts = await upkeep.unacked(self.redis, t.key)
        if not counts:  # no group reads it: capacity is a retention limit (broker.py)
            t.dropped += int(await self._cmd("XTRIM", t.key, "MAXLEN", t.capacity))
        declared = {n: c for n, c in counts.items() if n in t.groups} if t.groups else counts
        t.unacked = declared
        await self._warn_undeclared(t, counts)
        return min(t.capacity - max(declared.values(), default=0), max(1, t.capacity // 8))

    async def _warn_undeclared(self, t: _Topic, counts: dict[str, int]) -> None:
        """Once per group: say that a group this process does not declare is left aside."""
        others = set(counts) - set(t.groups) - t.warned if t.groups else set()
        if not others:
            return
        t.warned |= others
        for name, idle in (await upkeep.group_idle(self.redis, t.key, sorted(others))).items():
            log.warning("topic %s: consumer group %s is not declared here (idle %s, %d "
                        "unacknowledged): it does not hold back publishers, but keeps its "
                        "entries from being trimmed; `chute groups prune` removes it",
                        t.name, name, _ago(idle), counts[name])  # fmt: skip

    async def _xadd(self, t: _Topic, messages: Sequence[Message]) -> list[str]:
        now = time.time()
        payloads = []
        for message in messages:
            if message.id or message.attempt != 1:  # republished: a fresh copy
                message = replace(message, id="", attempt=1)
            elif not message.created_at:
                message.created_at = now
            payloads.append(encode_message(message))
        ids = [_str(i) for i in await xadd_many(self.redis, t.key, FIELD, payloads)]
        for message, message_id in zip(messages, ids, strict=True):
            if not message.id:
                message.id = message_id
        t.meter.mark(len(ids), now)
        return ids

    # -- reading ----------------------------------------------------------

    async def read(
        self, topic: str, group: str, consumer: str, *, count: int, block: float | None
    ) -> list[Message]:
        self._check_open()
        t, g = self._group(topic, group)
        if count <= 0:  # COUNT 0 would mean "no limit" to Redis
            return []
        name = f"{consumer}@{self.node}"
        deadline = None if block is None else time.monotonic() + block
        while True:
            batch: list[Message] = []
            if time.time() >= g.next_check:
                # While Redis is down a read gives up at its deadline (or after
                # one backoff, without one) so the caller's loop keeps control.
                give_up = deadline if deadline is not None else time.monotonic() + 0.05
                try:
                    batch = await self._maintain(t, g, name, count, give_up)
                except TimeoutError:
                    return []
            want = count - len(batch)
            if want > 0:
                wait_ms = 0
                if deadline is not None and not batch:
                    until = min(deadline - time.monotonic(), g.next_check - time.time(), MAX_BLOCK)
                    # Redis checks block timeouts about every 100 ms (hz 10): a
                    # 1 ms block can last that long, so what is left is not blocked on.
                    wait_ms = int(until * 1000) if until >= 0.001 else 0
                batch.extend(await self._read_new(t, g, name, want, wait_ms, deadline))
            if batch or deadline is None or time.monotonic() >= deadline:
                return batch

    async def _read_new(
        self, t: _Topic, g: _Group, name: str, count: int, wait_ms: int, deadline: float | None
    ) -> list[Message]:
        args: list[Any] = ["XREADGROUP", "GROUP", g.name, name, "COUNT", count]
        if wait_ms > 0:
            args += ["BLOCK", wait_ms]
        args += ["STREAMS", t.key, ">"]
        give_up = deadline if deadline is not None else time.monotonic() + 0.05
        while True:
            try:
                reply = await self._conn.call(partial(self._cmd, *args), deadline=give_up)
            except TimeoutError:
                return []
            except ResponseError as exc:
                await self._recover_group(t, g, exc)
                continue
            break
        if not reply:
            return []
        streams = reply.values() if isinstance(reply, dict) else [s[1] for s in reply]
        out: list[Message] = []
        for entries in streams:
            out.extend(await self._decode(t, g, entries, None))
        return out

    async def _decode(
        self, t: _Topic, g: _Group, entries: list[Any], attempts: dict[str, int] | None
    ) -> list[Message]:
        out: list[Message] = []
        bad: list[tuple[str, Any, str]] = []
        for raw_id, fields in entries:
            message_id = _str(raw_id)
            try:
                if not fields or fields[0] != FIELD:
                    raise msgspec.DecodeError(f"no {FIELD.decode()!r} field")
                message = decode_message(fields[1])
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
                bad.append((message_id, fields, f"not a chute message: {exc}"))
                continue
            message.id = message_id
            message.attempt = attempts.get(message_id, 1) if attempts is not None else 1
            out.append(message)
        if bad:
            await self._dead_letter(t, g, bad)
        return out

    async def _dead_letter(self, t: _Topic, g: _Group, bad: list[tuple[str, Any, str]]) -> None:
        """Entries written by something other than chute: set aside, never delivered."""
        dead = t.key + ":dead"
        packed = b"".join(dead_letter_command(dead, message_id, fields, reason, group=g.name)
                          for message_id, fields, reason in bad)  # fmt: skip
        packed += pack("XACK", t.key, g.name, *[b[0] for b in bad])
        # Built once, sent whole on each try: the bytes are the request.
        await self._conn.call(partial(pipelined, self.redis, packed, len(bad) + 1))
        self.invalid += len(bad)
        for message_id, _, reason in bad:
            log.error("entry %s on %s: %s: moved to %s", message_id, t.key, reason[:200], dead)

    # -- redelivery -------------------------------------------------------

    async def _maintain(
        self, t: _Topic, g: _Group, name: str, count: int, deadline: float
    ) -> list[Message]:
        """Renew waiting retries, take due ones, then claim deliveries idle past the timeout.

        Raises TimeoutError when Redis stays away past ``deadline`` (monotonic).
        """
        now = time.time()
        try:
            if now >= g.next_renew:
                renew = partial(retries.renew, self.redis, t.key, g.name, self.node)
                await self._conn.call(renew, deadline=deadline)
                g.next_renew = now + max(g.vt / 3, 0.005)
            take = partial(retries.take_due, self.redis, t.key, g.name, name, count, now)
            claimed, next_due = await self._conn.call(take, deadline=deadline)
        except ResponseError as exc:
            await self._recover_group(t, g, exc)
            return []
        deleted: list[Any] = []
        min_idle = int(g.vt * 1000)
        cursor = g.cursor
        for _ in range(4):
            if len(claimed) >= count:
                break
            want = count - len(claimed)
            args = ("XAUTOCLAIM", t.key, g.name, name, min_idle, cursor, "COUNT", want)
            try:
                reply = await self._conn.call(partial(self._cmd, *args), deadline=deadline)
            except ResponseError as exc:
                await self._recover_group(t, g, exc)
                return []
            cursor = reply[0]
            claimed.extend(e for e in reply[1] if e)
            if len(reply) > 2:
                deleted.extend(reply[2])
            if len(claimed) >= count or cursor in (b"0-0", "0-0"):
                break
        g.cursor = cursor
        full = len(claimed) >= count or cursor not in (b"0-0", "0-0")
        g.next_check = now if full else now + g.interval
        if next_due is not None:
            g.next_check = min(g.next_check, next_due)
        if deleted:
            self.lost_entries += len(deleted)
            log.error("%d pending deliveries on %s (group %s) lost their entry (deleted by "
                      "someone else): %s", len(deleted), t.key, g.name,
                      ", ".join(_str(d) for d in deleted[:10]))  # fmt: skip
        if not claimed:
            return []
        # Should this time out, the claimed entries come back after another
        # visibility timeout, one attempt later.
        ids = [e[0] for e in claimed]
        attempts = await self._conn.call(partial(self._attempts, t, g, ids), deadline=deadline)
        return await self._decode(t, g, claimed, attempts)

    async def _attempts(self, t: _Topic, g: _Group, ids: list[Any]) -> dict[str, int]:
        """Delivery counts of claimed entries: XAUTOCLAIM increments but does not return them."""
        # Claimed as stale while waiting out a delay (every node was away): not due twice.
        packed = retries.counts_request(t.key, g.name, ids) + pack("ZREM", g.due, *ids)
        return retries.delivery_counts((await pipelined(self.redis, packed, len(ids) + 1))[:-1])

    # -- acknowledging ----------------------------------------------------

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        t = self._topic(topic)
        g = t.groups.get(group)
        if g is None or not ids:
            return
        acked = 0
        for start in range(0, len(ids), 10_000):
            chunk = ids[start : start + 10_000]
            acked += int(await self._conn.call(partial(self.redis.xack, t.key, group, *chunk)))
        g.acked += acked
        g.meter.mark(acked, time.time())
        t.acks_since_trim += acked
        if t.acks_since_trim >= self.trim_every:
            t.acks_since_trim = 0
            await self._conn.call(lambda: self._trim(t))
        if acked and t.writers:
            _wake(t.writers)

    async def nack(self, topic: str, group: str, ids: Sequence[str], *, delay: float = 0.0,
                   counted: bool = True) -> None:  # fmt: skip
        t = self._topic(topic)
        g = t.groups.get(group)
        if g is None or not ids:
            return
        counts = None
        if not counted:
            counts = await self._conn.call(
                partial(retries.read_counts, self.redis, t.key, g.name, ids)
            )
        due = time.time() + max(0.0, delay)
        park = partial(retries.park, self.redis, t.key, g.name, self.node, ids, due, counts)
        await self._conn.call(park)
        g.next_check = min(g.next_check, due)

    async def extend(self, topic: str, group: str, ids: Sequence[str]) -> None:
        # XCLAIM with min-idle 0 resets the idle time (JUSTID: no delivery is
        # counted); Redis skips ids that are no longer pending.
        g = self._topic(topic).groups.get(group)
        if g is not None and ids:
            args = ("XCLAIM", self._topic(topic).key, g.name, self.node, 0, *ids, "JUSTID")
            await self._conn.call(partial(self._cmd, *args))

    async def _trim(self, t: _Topic) -> None:
        await upkeep.trim(self.redis, t.key)
        for g in t.groups.values():
            await upkeep.forget_consumers(self.redis, t.key, g.name, self.forget_consumers_after)

    # -- groups left behind (``chute groups``) ----------------------------

    async def group_names(self, topic: str) -> dict[str, float | None]:
        """Every consumer group on the topic in Redis, with seconds since it was last used."""
        key = self._topic(topic).key

        async def run() -> dict[str, float | None]:
            names = list(await upkeep.unacked(self.redis, key))
            return await upkeep.group_idle(self.redis, key, names)

        return await self._conn.call(run)

    async def delete_group(self, topic: str, group: str) -> None:
        """Remove a consumer group and its delayed retries (``chute groups prune``)."""
        t = self._topic(topic)

        async def run() -> None:
            await self._cmd("XGROUP", "DESTROY", t.key, group)
            await self._cmd("DEL", retries.due_key(t.key, group))

        await self._conn.call(run)
        t.groups.pop(group, None)

    async def browse(self, topic: str, *, limit: int) -> list[Message]:
        key = self._topic(topic).key

        async def entries() -> list[Any]:
            floor = await upkeep.needed_floor(self.redis, key)
            oldest = "-" if floor is None else f"{floor[0]}-{floor[1]}"
            return list(await self.redis.xrevrange(key, "+", oldest, count=limit) or [])

        out: list[Message] = []
        for raw_id, fields in reversed(await self._conn.call(entries)):
            try:  # another program's entry is not an item (a read dead-letters it)
                message = decode_message(fields[FIELD])
            except (KeyError, msgspec.DecodeError, msgspec.ValidationError, TypeError):
                continue
            message.id = _str(raw_id)
            out.append(message)
        return out

    # -- statistics -------------------------------------------------------

    async def stats(self, topic: str) -> TopicStats:
        t = self._topic(topic)
        return await self._conn.call(lambda: self._stats(t))

    async def _stats(self, t: _Topic) -> TopicStats:
        added, groups = await upkeep.snapshot(self.redis, t.key, partial(retries.due_key, t.key))
        await self._warn_undeclared(t, {g.name: g.lag + g.pending for g in groups})
        now = time.time()
        out = []
        for snap in groups:
            local = t.groups.get(snap.name)
            out.append(
                GroupStats(
                    name=snap.name,
                    consumers=snap.consumers,
                    lag=snap.lag,
                    pending=snap.pending,
                    oldest_pending_age=snap.oldest_pending_age,
                    acked=local.acked if local else 0,
                    ack_rate=local.meter.rate(now) if local else 0.0,
                )
            )
        length = max((g.lag + g.pending for g in out), default=0)
        return TopicStats(
            topic=t.name,
            length=length if out else int(await self.redis.xlen(t.key)),
            capacity=t.capacity,
            dropped=t.dropped,
            published=added,
            publish_rate=t.meter.rate(now),
            groups=out,
        )

    def topic_names(self) -> list[str]:
        return list(self._topics)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never used"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _log_full(t: _Topic, waited: float) -> None:
    holders = ", ".join(f"{n} {c}" for n, c in sorted(t.unacked.items())) or "none"
    log.warning("publishing to %s has waited %.0f s: the topic is full (capacity %d; "
                "unacknowledged per group: %s)", t.name, waited, t.capacity, holders)  # fmt: skip


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


async def _wait(waiters: list[asyncio.Future[None]], limit: float) -> None:
    """Until woken by a local ack, or ``limit`` seconds (acks on other nodes)."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await asyncio.wait_for(waiter, limit)
    except TimeoutError:
        pass
    finally:
        if waiter in waiters:
            waiters.remove(waiter)
