"""The in-process broker: topics as Python lists, pending deliveries as dicts.

Built for the hot path. A topic is one list of Message objects shared by all
groups (the same object is handed to every group on its first delivery, so
nothing is copied or encoded here). Consumers treat deliveries as read-only:
operators build new messages, and executors that run someone else's code on
the data hand it a private copy (``chute.message.private_copy``), so what one
consumer does with its item never reaches another group, a retry or a dead
letter. Each group keeps a cursor into that list and a
dict of pending deliveries keyed by message id, in delivery order: the oldest
pending delivery is always the dict's first entry, so finding stale
deliveries never scans. Batches share one bookkeeping record, so a read or an
ack of N messages does O(N) work in C (``dict.update``) and O(N) cheap
Python steps (``dict.pop``), and no per-message allocation.

Waiting uses plain asyncio futures rather than anyio memory streams: the
runtime is an asyncio process, and the per-message cost of a stream is several
times the whole budget here.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Sequence
from itertools import repeat

from chute.broker import GroupStats, TopicStats
from chute.errors import ClosedError, ConfigError
from chute.message import Message
from chute.meters import RateMeter
from msgspec.structs import replace

_TRIM_EVERY = 8192
"""Acks between attempts to drop acknowledged entries from a topic's head.

Trimming scans the pending deliveries, so it runs once per this many acks;
capacity is counted in unacknowledged entries, not in the log's length."""


class _Delivery:
    """Bookkeeping shared by the messages handed out in one read."""

    __slots__ = ("at", "attempt", "consumer")

    def __init__(self, consumer: str, at: float, attempt: int) -> None:
        self.consumer = consumer
        self.at = at
        self.attempt = attempt


class _Group:
    __slots__ = (
        "acked",
        "cursor",
        "due",
        "last_seen",
        "meter",
        "name",
        "parked",
        "pending",
        "visibility_timeout",
    )

    def __init__(self, name: str, cursor: int, visibility_timeout: float) -> None:
        self.name = name
        self.cursor = cursor
        self.visibility_timeout = visibility_timeout
        # id -> _Delivery, in delivery order (the oldest first).
        self.pending: dict[str, _Delivery] = {}
        # id -> (message, attempt) for nacked deliveries waiting out their delay.
        self.parked: dict[str, tuple[Message, int]] = {}
        # (due time, seq, id) for nacked deliveries waiting out their delay.
        self.due: list[tuple[float, int, str]] = []
        self.last_seen: dict[str, float] = {}
        self.acked = 0
        self.meter = RateMeter()


class _Topic:
    __slots__ = (
        "acks_since_trim",
        "base",
        "capacity",
        "dropped",
        "groups",
        "last_ms",
        "log",
        "meter",
        "name",
        "readers",
        "writers",
    )

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self.log: list[Message] = []
        self.base = 0  # absolute offset of log[0]
        self.groups: dict[str, _Group] = {}
        self.readers: list[asyncio.Future[None]] = []
        self.writers: list[asyncio.Future[None]] = []
        self.meter = RateMeter()
        self.last_ms = 0
        self.acks_since_trim = 0
        self.dropped = 0

    @property
    def end(self) -> int:
        return self.base + len(self.log)


def _offset(message_id: str) -> int:
    return int(message_id.rpartition("-")[2])


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


class MemoryBroker:
    """Topics in this process's memory. Fast, and gone when the process exits."""

    def __init__(self, url: str = "memory://", *, default_capacity: int = 100_000) -> None:
        self.url = url
        self.default_capacity = default_capacity
        self.healthy = True
        self._topics: dict[str, _Topic] = {}
        self._closed = False
        self._due_seq = 0

    async def start(self) -> None:
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        for topic in self._topics.values():
            _wake(topic.readers)
            _wake(topic.writers)

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = _Topic(name, self.default_capacity)
        return topic

    async def declare_topic(self, topic: str, *, capacity: int) -> None:
        self._topic(topic).capacity = max(1, capacity)

    async def ensure_group(
        self, topic: str, group: str, *, visibility_timeout: float, start: str = "earliest"
    ) -> None:
        if start not in ("earliest", "latest"):
            raise ConfigError([f"start: expected 'earliest' or 'latest', got {start!r}"])
        t = self._topic(topic)
        existing = t.groups.get(group)
        if existing is None:
            cursor = t.base if start == "earliest" else t.end
            t.groups[group] = _Group(group, cursor, visibility_timeout)
        else:
            existing.visibility_timeout = visibility_timeout

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the memory broker is closed")

    # -- publishing -------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[str]:
        self._check_open()
        t = self._topic(topic)
        ids: list[str] = []
        start = 0
        while start < len(messages):
            room = t.capacity - self._unacked(t)
            if room <= 0:
                await self._wait(t.writers, None)
                self._check_open()
                continue
            chunk = messages[start : start + room]
            ids.extend(self._append(t, chunk))
            start += len(chunk)
        return ids

    @staticmethod
    def _unacked(t: _Topic) -> int:
        """Entries some group has not acknowledged yet: what capacity bounds.

        Not the log's length: one old delivery still pending must not block
        the topic while everything after it has been acknowledged.
        """
        end = t.end
        most = 0
        for g in t.groups.values():
            most = max(most, end - g.cursor + len(g.pending) + len(g.parked))
        return most

    def _append(self, t: _Topic, messages: Sequence[Message]) -> list[str]:
        now = time.time()
        # Ids are <ms>-<offset>: the offset is unique and increasing, so ids
        # order like Redis stream ids and an ack can find the offset again.
        ms = max(int(now * 1000), t.last_ms)
        t.last_ms = ms
        first = t.end
        prefix = f"{ms}-"
        ids = [prefix + str(i) for i in range(first, first + len(messages))]
        log = t.log
        for message, message_id in zip(messages, ids, strict=True):
            if message.id:  # already on a topic: republish a copy, never rename the original
                message = replace(message, id=message_id, attempt=1)
            else:
                message.id = message_id
                if not message.created_at:
                    message.created_at = now
            log.append(message)
        t.meter.mark(len(ids), now)
        if not t.groups and len(log) > t.capacity:
            # Nobody reads it, so nobody acknowledges: keep the newest entries.
            excess = len(log) - t.capacity
            del log[:excess]
            t.base += excess
            t.dropped += excess
        if t.readers:
            _wake(t.readers)
        return ids

    # -- reading ----------------------------------------------------------

    async def read(
        self, topic: str, group: str, consumer: str, *, count: int, block: float | None
    ) -> list[Message]:
        self._check_open()
        t = self._topic(topic)
        g = t.groups.get(group)
        if g is None:
            raise KeyError(f"no consumer group {group!r} on topic {topic!r}; call ensure_group")
        deadline = None if block is None else time.monotonic() + block
        while True:
            now = time.time()
            g.last_seen[consumer] = now
            batch = self._take(t, g, consumer, count, now)
            if batch or deadline is None:
                return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return batch
            next_due = self._next_due(g)
            if next_due is not None:
                remaining = min(remaining, max(0.0, next_due - now) + 0.001)
            await self._wait(t.readers, remaining)
            self._check_open()

    def _next_due(self, g: _Group) -> float | None:
        """Wall-clock time at which some delivery becomes due again, if any."""
        candidates = []
        if g.due:
            candidates.append(g.due[0][0])
        if g.pending:
            oldest = next(iter(g.pending.values()))
            candidates.append(oldest.at + g.visibility_timeout)
        return min(candidates) if candidates else None

    def _take(self, t: _Topic, g: _Group, consumer: str, count: int, now: float) -> list[Message]:
        batch: list[Message] = []
        if g.due or g.pending:
            batch = self._redeliver(t, g, consumer, count, now)
            count -= len(batch)
        if count <= 0:
            return batch
        start = g.cursor - t.base
        fresh = t.log[start : start + count]
        if fresh:
            g.cursor += len(fresh)
            record = _Delivery(consumer, now, 1)
            g.pending.update(zip([m.id for m in fresh], repeat(record)))
            if batch:
                batch.extend(fresh)
            else:
                batch = fresh
        return batch

    def _redeliver(
        self, t: _Topic, g: _Group, consumer: str, count: int, now: float
    ) -> list[Message]:
        """Deliveries due again: nacked ones past their delay, then stale ones."""
        out: list[Message] = []
        while g.due and g.due[0][0] <= now and len(out) < count:
            _, _, message_id = heapq.heappop(g.due)
            parked = g.parked.pop(message_id, None)
            if parked is not None:  # else acked meanwhile
                message, attempt = parked
                g.pending[message_id] = _Delivery(consumer, now, attempt + 1)
                out.append(replace(message, attempt=attempt + 1))
        if len(out) >= count or not g.pending:
            return out
        limit = now - g.visibility_timeout
        stale: list[tuple[str, int]] = []
        for message_id, delivery in g.pending.items():
            if len(out) + len(stale) >= count or delivery.at > limit:
                break
            stale.append((message_id, delivery.attempt))
        for message_id, attempt in stale:
            del g.pending[message_id]  # re-inserted last: the dict stays in delivery order
            g.pending[message_id] = _Delivery(consumer, now, attempt + 1)
            message = t.log[_offset(message_id) - t.base]
            out.append(replace(message, attempt=attempt + 1))
        return out

    # -- acknowledging ----------------------------------------------------

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        t = self._topic(topic)
        g = t.groups.get(group)
        if g is None:
            return
        pending = g.pending
        acked = 0
        for message_id in ids:
            if pending.pop(message_id, None) is not None:
                acked += 1
        if g.parked:
            for message_id in ids:
                if g.parked.pop(message_id, None) is not None:
                    acked += 1
        g.acked += acked
        g.meter.mark(acked, time.time())
        t.acks_since_trim += acked
        if t.acks_since_trim >= _TRIM_EVERY:
            self._trim(t)
        if t.writers and acked:
            _wake(t.writers)

    async def nack(self, topic: str, group: str, ids: Sequence[str], *, delay: float = 0.0) -> None:
        t = self._topic(topic)
        g = t.groups.get(group)
        if g is None:
            return
        due = time.time() + max(0.0, delay)
        for message_id in ids:
            delivery = g.pending.pop(message_id, None)
            if delivery is None:
                continue
            g.parked[message_id] = (t.log[_offset(message_id) - t.base], delivery.attempt)
            self._due_seq += 1
            heapq.heappush(g.due, (due, self._due_seq, message_id))
        if t.readers:
            _wake(t.readers)

    async def extend(self, topic: str, group: str, ids: Sequence[str]) -> None:
        g = self._topic(topic).groups.get(group)
        if g is None:
            return
        record: _Delivery | None = None
        now = time.time()
        for message_id in ids:
            delivery = g.pending.pop(message_id, None)
            if delivery is None:
                continue  # acked, or nacked and parked
            if record is None or (record.attempt, record.consumer) != (
                delivery.attempt,
                delivery.consumer,
            ):
                record = _Delivery(delivery.consumer, now, delivery.attempt)
            # Re-inserted last: the dict stays in delivery order, oldest first.
            g.pending[message_id] = record

    def _floor(self, t: _Topic) -> int:
        """The lowest offset some group still needs."""
        floor = t.end
        for g in t.groups.values():
            floor = min(floor, g.cursor)
            if g.pending:
                floor = min(floor, min(map(_offset, g.pending)))
            if g.parked:
                floor = min(floor, min(map(_offset, g.parked)))
        return floor

    def _trim(self, t: _Topic) -> None:
        """Drop the head of the log that every group has acknowledged."""
        t.acks_since_trim = 0
        floor = self._floor(t)
        drop = floor - t.base
        if drop > 0:
            del t.log[:drop]
            t.base = floor

    # -- waiting and statistics -------------------------------------------

    async def _wait(self, waiters: list[asyncio.Future[None]], limit: float | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            if limit is None:
                await waiter
            else:
                await asyncio.wait_for(waiter, limit)
        except TimeoutError:
            pass
        finally:
            if not waiter.done():
                waiter.cancel()
            if waiter in waiters:
                waiters.remove(waiter)

    async def stats(self, topic: str) -> TopicStats:
        t = self._topic(topic)
        now = time.time()
        groups = []
        for g in t.groups.values():
            oldest = 0.0
            if g.pending:
                oldest = max(0.0, now - next(iter(g.pending.values())).at)
            groups.append(
                GroupStats(
                    name=g.name,
                    consumers=len(g.last_seen),
                    lag=t.end - g.cursor,
                    pending=len(g.pending) + len(g.parked),
                    oldest_pending_age=oldest,
                    acked=g.acked,
                    ack_rate=g.meter.rate(now),
                )
            )
        return TopicStats(
            topic=t.name,
            length=self._unacked(t) if t.groups else len(t.log),
            capacity=t.capacity,
            dropped=t.dropped,
            published=t.meter.total,
            publish_rate=t.meter.rate(now),
            groups=groups,
        )

    def topic_names(self) -> list[str]:
        return list(self._topics)
