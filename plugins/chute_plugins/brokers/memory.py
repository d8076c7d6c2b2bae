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
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from itertools import count, repeat
from typing import Protocol, TypeVar

from chute.broker import GroupStats, TopicStats
from chute.errors import ClosedError, ConfigError
from chute.message import Message
from chute.meters import RateMeter
from msgspec.structs import replace

TRIM_EVERY = 8192
"""Acks between attempts to drop acknowledged entries from a topic's head.

Trimming scans the pending deliveries, so it runs once per this many acks;
capacity is counted in unacknowledged entries, not in the log's length."""

# The bookkeeping below (deliveries, groups, redelivery, waiting, statistics)
# is shared with the durable local broker, which keeps the same state in
# memory and journals each change.

_due_order = count()
"""Breaks ties between deliveries due at the same time, in the order they were parked."""


class Delivery:
    """Bookkeeping shared by the messages handed out in one read."""

    __slots__ = ("at", "attempt", "consumer")

    def __init__(self, consumer: str, at: float, attempt: int) -> None:
        self.consumer = consumer
        self.at = at
        self.attempt = attempt


class Group:
    __slots__ = (
        "acked",
        "active",
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
        # id -> Delivery, in delivery order (the oldest first).
        self.pending: dict[str, Delivery] = {}
        # id -> (offset, attempt) for nacked deliveries waiting out their delay.
        self.parked: dict[str, tuple[int, int]] = {}
        # (due time, tie-breaker, id) for parked deliveries.
        self.due: list[tuple[float, int, str]] = []
        self.last_seen: dict[str, float] = {}
        self.acked = 0
        self.meter = RateMeter()
        self.active = True
        """False for a group the local broker read back from its file until ensure_group
        names it again: a group the config no longer reads must not block publishers."""


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
        self.groups: dict[str, Group] = {}
        self.readers: list[asyncio.Future[None]] = []
        self.writers: list[asyncio.Future[None]] = []
        self.meter = RateMeter()
        self.last_ms = 0
        self.acks_since_trim = 0
        self.dropped = 0

    @property
    def end(self) -> int:
        return self.base + len(self.log)


def seq_of(message_id: str) -> int:
    """The offset in its topic of the message with this id (``<ms>-<offset>``)."""
    return int(message_id.rpartition("-")[2])


def check_start(start: str) -> None:
    if start not in ("earliest", "latest"):
        raise ConfigError([f"start: expected 'earliest' or 'latest', got {start!r}"])


def stamp(
    messages: Sequence[Message], first: int, last_ms: int, now: float
) -> tuple[int, list[str], list[Message]]:
    """Ids for messages about to take offsets ``first``...: (their ms, the ids, the messages).

    Ids are <ms>-<offset>: the offset is unique and increasing, so ids order
    like Redis stream ids and an ack can find the offset again (``seq_of``).
    """
    ms = max(int(now * 1000), last_ms)
    prefix = f"{ms}-"
    ids = [prefix + str(i) for i in range(first, first + len(messages))]
    stamped: list[Message] = []
    for message, message_id in zip(messages, ids, strict=True):
        if message.id:  # already on a topic: republish a copy, never rename the original
            message = replace(message, id=message_id, attempt=1)
        else:
            message.id = message_id
            if not message.created_at:
                message.created_at = now
        stamped.append(message)
    return ms, ids, stamped


def unacked(groups: Iterable[Group], end: int) -> int:
    """Entries some active group has not acknowledged yet: what capacity bounds.

    Not the log's length: one old delivery still pending must not block
    the topic while everything after it has been acknowledged.
    """
    most = 0
    for g in groups:
        if g.active:
            most = max(most, end - g.cursor + len(g.pending) + len(g.parked))
    return most


def needed_from(g: Group) -> int:
    """The lowest offset the group still needs (its cursor, or a delivery not acked)."""
    floor = g.cursor
    if g.pending:
        floor = min(floor, min(map(seq_of, g.pending)))
    if g.parked:
        floor = min(floor, min(seq for seq, _ in g.parked.values()))
    return floor


def next_due(g: Group) -> float | None:
    """Wall-clock time at which some delivery becomes due again, if any."""
    candidates = []
    if g.due:
        candidates.append(g.due[0][0])
    if g.pending:
        oldest = next(iter(g.pending.values()))
        candidates.append(oldest.at + g.visibility_timeout)
    return min(candidates) if candidates else None


def park(g: Group, seq: int, message_id: str, attempt: int, due: float) -> None:
    """Hold a delivery back until ``due``; it keeps its attempt count."""
    g.parked[message_id] = (seq, attempt)
    heapq.heappush(g.due, (due, next(_due_order), message_id))


def park_pending(
    g: Group, ids: Sequence[str], due: float, counted: bool = True
) -> list[tuple[int, int]]:
    """Park the deliveries in ``ids`` still pending until ``due`` (a nack); their
    (offset, attempt) pairs. Uncounted, each is parked one attempt back, so its
    next delivery repeats the attempt it had."""
    out = []
    for message_id in ids:
        delivery = g.pending.pop(message_id, None)
        if delivery is not None:
            seq = seq_of(message_id)
            attempt = delivery.attempt if counted else delivery.attempt - 1
            park(g, seq, message_id, attempt, due)
            out.append((seq, attempt))
    return out


def due_again(g: Group, consumer: str, count: int, now: float) -> list[tuple[int, int]]:
    """Deliveries due again, handed to ``consumer``: parked ones past their delay, then
    stale ones. Returns (offset, new attempt) for each."""
    out: list[tuple[int, int]] = []
    while g.due and g.due[0][0] <= now and len(out) < count:
        _, _, message_id = heapq.heappop(g.due)
        parked = g.parked.pop(message_id, None)
        if parked is not None:  # else acked meanwhile
            seq, attempt = parked
            g.pending[message_id] = Delivery(consumer, now, attempt + 1)
            out.append((seq, attempt + 1))
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
        g.pending[message_id] = Delivery(consumer, now, attempt + 1)
        out.append((seq_of(message_id), attempt + 1))
    return out


def extend(g: Group, ids: Sequence[str], now: float) -> None:
    """Reset the visibility clock of the deliveries in ``ids`` still pending."""
    record: Delivery | None = None
    for message_id in ids:
        delivery = g.pending.pop(message_id, None)
        if delivery is None:
            continue  # acked, or nacked and parked
        if record is None or (record.attempt, record.consumer) != (
            delivery.attempt,
            delivery.consumer,
        ):
            record = Delivery(delivery.consumer, now, delivery.attempt)
        # Re-inserted last: the dict stays in delivery order, oldest first.
        g.pending[message_id] = record


def wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()


async def wait_on(waiters: list[asyncio.Future[None]], limit: float | None) -> None:
    """Until ``wake(waiters)``, or ``limit`` seconds."""
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


async def wait_for_more(
    g: Group, readers: list[asyncio.Future[None]], deadline: float, now: float
) -> bool:
    """Wait for a publish, or for a delivery to fall due; False once ``deadline`` passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    due = next_due(g)
    if due is not None:
        remaining = min(remaining, max(0.0, due - now) + 0.001)
    await wait_on(readers, remaining)
    return True


class GroupedTopic(Protocol):
    """What the shared statistics need of a topic (this broker's and the local one's)."""

    name: str
    capacity: int
    dropped: int
    meter: RateMeter

    @property
    def groups(self) -> Mapping[str, Group]: ...

    @property
    def end(self) -> int: ...


G = TypeVar("G", bound=Group)


async def read_group(
    groups: Mapping[str, G],
    readers: list[asyncio.Future[None]],
    topic: str,
    group: str,
    consumer: str,
    count: int,
    block: float | None,
    take: Callable[[G, str, int, float], list[Message]],
    check_open: Callable[[], object],
) -> list[Message]:
    """Up to ``count`` deliveries ``take`` finds for ``consumer``, waiting up to ``block``
    seconds for a publish or a redelivery falling due (None: return at once)."""
    g = groups.get(group)
    if g is None:
        raise KeyError(f"no consumer group {group!r} on topic {topic!r}; call ensure_group")
    deadline = None if block is None else time.monotonic() + block
    while True:
        now = time.time()
        g.last_seen[consumer] = now
        batch = take(g, consumer, count, now)
        if batch or deadline is None or not await wait_for_more(g, readers, deadline, now):
            return batch
        check_open()


def topic_stats(t: GroupedTopic, stored: int) -> TopicStats:
    """A topic's statistics; ``stored`` is its length while no group reads it."""
    now = time.time()
    return TopicStats(
        topic=t.name,
        length=unacked(t.groups.values(), t.end) if t.groups else stored,
        capacity=t.capacity,
        dropped=t.dropped,
        published=t.meter.total,
        publish_rate=t.meter.rate(now),
        groups=group_stats(t.groups.values(), t.end, now),
    )


def group_stats(groups: Iterable[Group], end: int, now: float) -> list[GroupStats]:
    """Statistics of a topic's active groups; ``end`` is the topic's next offset."""
    out = []
    for g in groups:
        if not g.active:  # left by an earlier run of the local broker: not this run's work
            continue
        oldest = 0.0
        if g.pending:
            oldest = max(0.0, now - next(iter(g.pending.values())).at)
        out.append(
            GroupStats(
                name=g.name,
                consumers=len(g.last_seen),
                lag=end - g.cursor,
                pending=len(g.pending) + len(g.parked),
                oldest_pending_age=oldest,
                acked=g.acked,
                ack_rate=g.meter.rate(now),
            )
        )
    return out


class MemoryBroker:
    """Topics in this process's memory. Fast, and gone when the process exits."""

    def __init__(self, url: str = "memory://", *, default_capacity: int = 100_000) -> None:
        self.url = url
        self.default_capacity = default_capacity
        self.healthy = True
        self._topics: dict[str, _Topic] = {}
        self._closed = False

    async def start(self) -> None:
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        for topic in self._topics.values():
            wake(topic.readers)
            wake(topic.writers)

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
        check_start(start)
        t = self._topic(topic)
        existing = t.groups.get(group)
        if existing is None:
            cursor = t.base if start == "earliest" else t.end
            t.groups[group] = Group(group, cursor, visibility_timeout)
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
            room = t.capacity - unacked(t.groups.values(), t.end)
            if room <= 0:
                await wait_on(t.writers, None)
                self._check_open()
                continue
            chunk = messages[start : start + room]
            ids.extend(self._append(t, chunk))
            start += len(chunk)
        return ids

    def _append(self, t: _Topic, messages: Sequence[Message]) -> list[str]:
        now = time.time()
        t.last_ms, ids, stamped = stamp(messages, t.end, t.last_ms, now)
        log = t.log
        log.extend(stamped)
        t.meter.mark(len(ids), now)
        if not t.groups and len(log) > t.capacity:
            # Nobody reads it, so nobody acknowledges: keep the newest entries.
            excess = len(log) - t.capacity
            del log[:excess]
            t.base += excess
            t.dropped += excess
        if t.readers:
            wake(t.readers)
        return ids

    # -- reading ----------------------------------------------------------

    async def read(
        self, topic: str, group: str, consumer: str, *, count: int, block: float | None
    ) -> list[Message]:
        self._check_open()
        t = self._topic(topic)
        take = partial(self._take, t)
        return await read_group(t.groups, t.readers, topic, group, consumer, count, block, take,
                                self._check_open)  # fmt: skip

    @staticmethod
    def _take(t: _Topic, g: Group, consumer: str, count: int, now: float) -> list[Message]:
        batch: list[Message] = []
        if g.due or g.pending:
            log, base = t.log, t.base
            batch = [
                replace(log[seq - base], attempt=attempt)
                for seq, attempt in due_again(g, consumer, count, now)
            ]
            count -= len(batch)
        if count <= 0:
            return batch
        start = g.cursor - t.base
        fresh = t.log[start : start + count]
        if fresh:
            g.cursor += len(fresh)
            record = Delivery(consumer, now, 1)
            g.pending.update(zip([m.id for m in fresh], repeat(record)))
            if batch:
                batch.extend(fresh)
            else:
                batch = fresh
        return batch

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
        if t.acks_since_trim >= TRIM_EVERY:
            self._trim(t)
        if t.writers and acked:
            wake(t.writers)

    async def nack(self, topic: str, group: str, ids: Sequence[str], *, delay: float = 0.0,
                   counted: bool = True) -> None:  # fmt: skip
        t = self._topic(topic)
        g = t.groups.get(group)
        if g is None:
            return
        park_pending(g, ids, time.time() + max(0.0, delay), counted)
        if t.readers:
            wake(t.readers)

    async def extend(self, topic: str, group: str, ids: Sequence[str]) -> None:
        g = self._topic(topic).groups.get(group)
        if g is not None:
            extend(g, ids, time.time())

    @staticmethod
    def _trim(t: _Topic) -> None:
        """Drop the head of the log that every group has acknowledged."""
        t.acks_since_trim = 0
        floor = min((needed_from(g) for g in t.groups.values()), default=t.end)
        drop = floor - t.base
        if drop > 0:
            del t.log[:drop]
            t.base = floor

    async def browse(self, topic: str, *, limit: int) -> list[Message]:
        t = self._topics.get(topic)
        if t is None:
            return []
        start = min((needed_from(g) for g in t.groups.values()), default=t.base) - t.base
        return t.log[max(start, len(t.log) - limit) :]

    # -- statistics ---------------------------------------------------------

    async def stats(self, topic: str) -> TopicStats:
        t = self._topic(topic)
        return topic_stats(t, len(t.log))

    def topic_names(self) -> list[str]:
        return list(self._topics)
