"""The durable local broker, the default: topics in one SQLite file under the working folder.

``broker = "local"`` (or unset) keeps topics, consumer groups and pending
deliveries in ``WORKDIR/broker.db``; ``local:///path/to.db`` or
``local://name.db`` (relative to the working folder) name another file, and
``?durability=power`` makes every acknowledged publish survive a power cut.

What it keeps where:

- The working state lives in memory, as in the memory broker (messages by
  sequence number, each group's cursor and pending deliveries), so reads and
  statistics never touch the disk. Every change is also handed to the
  journal (``_local_db.py``), which commits what gathered in one turn of the
  event loop in one transaction: a batch publish is one commit, publishes
  arriving together share one, an ack of a pool's flush pass is one.
- ``publish``, ``ack``, ``nack`` and ``ensure_group`` return once their change
  is committed: a publish that returned survives kill -9 (and, with
  ``durability=power``, a power cut), so a source may acknowledge upstream.
  A read's new cursor and a redelivery's attempt count ride along with the
  next commit.
- A message's row is deleted in the commit where the last group acks it, so
  the file holds what is unacknowledged, and freed pages are reused: under
  steady load it stays about as big as the largest backlog it held. A topic
  with no consumer group keeps its newest ``capacity`` messages (retention),
  for a group created later with ``start="earliest"``.
- On start everything is read back: deliveries pending when the last run
  ended (stopped or killed) are due again at once, with their delivery
  counts, nacked ones at their due time.

One runtime at a time: the file's lock (``broker.db.lock``) is held until
close, and a second runtime on the same file stops with one line naming the
first one's pid. ``chute publish`` then goes through the running runtime's
API instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from functools import partial
from itertools import islice, repeat, takewhile
from pathlib import Path
from typing import IO

import msgspec
from chute.broker import TopicStats
from chute.errors import ClosedError, ConfigError, InvalidMessage
from chute.message import Message
from msgspec.structs import replace

from . import _local_db as ldb
from ._local_state import Group, Topic, load_topics
from .memory import (
    TRIM_EVERY,
    Delivery,
    check_start,
    due_again,
    extend,
    needed_from,
    park_pending,
    read_group,
    seq_of,
    stamp,
    topic_stats,
    unacked,
    wait_on,
    wake,
)

log = logging.getLogger("chute.brokers.local")

_encode = msgspec.msgpack.Encoder().encode


class LocalBroker:
    """Topics in one SQLite file: as fast to read as memory, and kept across restarts."""

    uses_workdir = True
    """Built with the runtime's working folder, where its file lives by default."""

    def __init__(self, url: str = "local", *, workdir: Path | None = None,
                 default_capacity: int = 100_000) -> None:  # fmt: skip
        self.url = url
        self.where = ldb.LocalUrl(url, workdir)
        problems = self.where.problems()
        if problems:
            raise ConfigError([f"broker: {p}" for p in problems])
        self.path = self.where.path
        self.default_capacity = default_capacity
        self.healthy = True
        self._topics: dict[str, Topic] = {}
        self._journal: ldb.Journal | None = None
        self._lock: IO[bytes] | None = None
        self._closed = True

    @staticmethod
    def url_problems(url: str) -> list[str]:
        """What ``chute check`` reports about a ``local`` URL."""
        return ldb.LocalUrl(url, None).problems()

    # -- opening and closing -------------------------------------------------

    async def start(self) -> None:
        if self._journal is not None:
            return
        self._lock = ldb.lock_exclusively(self.path) if self._lock is None else self._lock
        try:
            db = ldb.connect(self.path)
            try:
                # The last run's pending deliveries are due again now.
                self._topics = load_topics(db, self.default_capacity)
            except BaseException:
                db.close()
                raise
        except BaseException:
            self._lock.close()
            self._lock = None
            raise
        wal = Path(f"{self.path}-wal") if self.where.durability == "power" else None
        self._journal = ldb.Journal(db, asyncio.get_running_loop(), wal=wal)
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        for topic in self._topics.values():
            wake(topic.readers)
            wake(topic.writers)
        journal, self._journal = self._journal, None
        if journal is not None:
            await journal.close()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _check_open(self) -> ldb.Journal:
        if self._closed or self._journal is None:
            raise ClosedError("the local broker is closed")
        return self._journal

    async def _commit(self) -> None:
        journal = self._check_open()
        try:
            await journal.commit()
        except ClosedError:
            raise
        except Exception:
            self.healthy = False
            raise
        self.healthy = True

    # -- topics and groups -------------------------------------------------------

    def _topic(self, name: str) -> Topic:
        topic = self._topics.get(name)
        if topic is None:
            journal = self._check_open()
            tid = 1 + max((t.base >> ldb.SEQ_BITS for t in self._topics.values()), default=0)
            topic = self._topics[name] = Topic(name, tid, self.default_capacity)
            journal.add(ldb.TOPIC, [(tid, name)])
        return topic

    async def declare_topic(self, topic: str, *, capacity: int) -> None:
        self._check_open()
        self._topic(topic).capacity = max(1, capacity)
        await self._commit()

    async def ensure_group(self, topic: str, group: str, *, visibility_timeout: float,
                           start: str = "earliest") -> None:  # fmt: skip
        check_start(start)
        journal = self._check_open()
        t = self._topic(topic)
        existing = t.groups.get(group)
        if existing is not None:
            existing.visibility_timeout = visibility_timeout
            existing.active = True
            return
        used = {g.bit for g in t.groups.values()}
        bit = next((1 << i for i in range(ldb.MAX_GROUPS) if 1 << i not in used), 0)
        if not bit:
            raise ConfigError([f"topic {topic!r}: more than {ldb.MAX_GROUPS} consumer groups"])
        cursor = t.head if start == "earliest" else t.end
        t.groups[group] = Group(group, bit, cursor, visibility_timeout)
        journal.add(ldb.GROUP, [(t.base >> ldb.SEQ_BITS, group, bit, cursor)])
        if cursor < t.end:
            journal.add(ldb.NEED_ALL, [(bit, t.base + cursor, t.base + t.end)])
        await self._commit()

    # -- publishing -------------------------------------------------------

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[str]:
        self._check_open()
        t = self._topic(topic)
        ids: list[str] = []
        start = 0
        while start < len(messages):
            room = t.capacity - unacked(t.groups.values(), t.end) if t.groups else len(messages)
            if room <= 0:
                await wait_on(t.writers, None)
                self._check_open()
                continue
            chunk = messages[start : start + room]
            if not t.checked:
                self._check_groups(t)
            ids.extend(self._append(t, chunk))
            start += len(chunk)
        await self._commit()
        return ids

    @staticmethod
    def _check_groups(t: Topic) -> None:
        """Once per topic: name the groups an earlier run left that nothing reads now."""
        t.checked = True
        left = [g for g in t.groups.values() if not g.active]
        if left and len(left) < len(t.groups):
            for g in left:
                backlog = sum(1 for seq in range(g.cursor, t.end) if seq in t.msgs)
                log.warning(
                    "topic %s: consumer group %s was created by an earlier run and nothing "
                    "reads it now; it no longer holds publishers back, but the %d messages "
                    "it has not acknowledged stay in %s", t.name, g.name,
                    backlog + len(g.pending) + len(g.parked), "the broker file",
                )  # fmt: skip

    def _append(self, t: Topic, messages: Sequence[Message]) -> list[str]:
        journal = self._check_open()
        now = time.time()
        first = t.end
        ms, ids, stamped = stamp(messages, first, t.last_ms, now)
        need = 0
        for g in t.groups.values():
            need |= g.bit
        base = t.base
        rows = []
        for seq, message in enumerate(stamped, base + first):
            try:
                rows.append((seq, ms, need, _encode(message)))
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidMessage(
                    f"cannot publish to topic {t.name!r}: the message is not JSON-like data ({exc})"
                ) from None
        # Only once every message could be encoded: a refused batch leaves no trace.
        seq = first + len(stamped)
        t.msgs.update(zip(range(first, seq), stamped, strict=True))
        t.end, t.last_ms = seq, ms
        journal.add(ldb.INSERT, rows)
        journal.mark(ldb.TOPIC_END, base, 0, (seq, ms, base >> ldb.SEQ_BITS))
        if not t.groups and len(t.msgs) > t.capacity:
            self._retain(t, journal)
        t.meter.mark(len(ids), now)
        if t.readers:
            wake(t.readers)
        return ids

    @staticmethod
    def _retain(t: Topic, journal: ldb.Journal) -> None:
        """A topic without groups keeps its newest ``capacity`` messages."""
        cut = t.end - t.capacity
        t.dropped += _drop_head(t.msgs, cut)
        journal.add(ldb.DELETE_RANGE, [(t.base, t.base + cut)])

    # -- reading ----------------------------------------------------------

    async def read(
        self, topic: str, group: str, consumer: str, *, count: int, block: float | None
    ) -> list[Message]:
        self._check_open()
        t = self._topic(topic)
        take = partial(self._take, t)
        return await read_group(t.groups, t.readers, topic, group, consumer, count, block, take,
                                self._check_open)  # fmt: skip

    def _take(self, t: Topic, g: Group, consumer: str, count: int, now: float) -> list[Message]:
        batch: list[Message] = []
        if g.due or g.pending:
            batch = self._redeliver(t, g, consumer, count, now)
            count -= len(batch)
        if count <= 0 or g.cursor >= t.end:
            return batch
        fresh = self._fresh(t, g, count)
        if fresh:
            record = Delivery(consumer, now, 1)
            g.pending.update(zip([m.id for m in fresh], repeat(record)))
            journal = self._check_open()
            journal.mark(ldb.CURSOR, t.base, g.bit, (g.cursor, t.base >> ldb.SEQ_BITS, g.bit))
            if batch:
                batch.extend(fresh)
            else:
                batch = fresh
        return batch

    @staticmethod
    def _fresh(t: Topic, g: Group, count: int) -> list[Message]:
        """Up to ``count`` messages from the group's cursor on; moves the cursor."""
        msgs = t.msgs
        stop = min(t.end, g.cursor + count)
        try:
            fresh = [msgs[s] for s in range(g.cursor, stop)]
        except KeyError:  # acked by every group (or trimmed) before this group got there
            fresh = []
            seq = g.cursor
            while len(fresh) < count and seq < t.end:
                message = msgs.get(seq)
                if message is not None:
                    fresh.append(message)
                seq += 1
            stop = seq
        g.cursor = stop
        return fresh

    def _redeliver(
        self, t: Topic, g: Group, consumer: str, count: int, now: float
    ) -> list[Message]:
        """Deliveries due again, their new attempt counts journalled."""
        again = due_again(g, consumer, count, now)
        if not again:
            return []
        self._check_open().add(
            ldb.REDELIVERED, [(t.base + seq, g.bit, attempt, 0.0) for seq, attempt in again]
        )
        msgs = t.msgs
        return [replace(msgs[seq], attempt=attempt) for seq, attempt in again]

    # -- acknowledging ----------------------------------------------------

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        t = self._topics.get(topic)
        g = t.groups.get(group) if t is not None else None
        if t is None or g is None:
            return
        journal = self._check_open()
        pending, parked = g.pending, g.parked
        done: list[int] = []
        retried: list[tuple[int, int]] = []
        for message_id in ids:
            delivery = pending.pop(message_id, None)
            if delivery is not None:
                seq = seq_of(message_id)
                done.append(seq)
                if delivery.attempt > 1:
                    retried.append((t.base + seq, g.bit))
            elif parked:
                waiting = parked.pop(message_id, None)
                if waiting is not None:
                    done.append(waiting[0])
                    retried.append((t.base + waiting[0], g.bit))
        if not done:
            return
        base = t.base
        if len(t.groups) == 1:  # the only group: the messages are finished
            journal.add(ldb.DELETE, [(base + seq,) for seq in done])
            msgs = t.msgs
            for seq in done:
                msgs.pop(seq, None)
        else:
            ids_ = [(base + seq,) for seq in done]
            journal.add(ldb.UNNEED, [(~g.bit, row_id) for (row_id,) in ids_])
            journal.add(ldb.DELETE_DONE, ids_)
            t.acks_since_trim += len(done)
            if t.acks_since_trim >= TRIM_EVERY:
                self._trim(t)
        if retried:
            journal.add(ldb.SETTLED, retried)
        g.acked += len(done)
        g.meter.mark(len(done), time.time())
        if t.writers:
            wake(t.writers)
        await self._commit()

    async def nack(self, topic: str, group: str, ids: Sequence[str], *, delay: float = 0.0,
                   counted: bool = True) -> None:  # fmt: skip
        t = self._topics.get(topic)
        g = t.groups.get(group) if t is not None else None
        if t is None or g is None:
            return
        journal = self._check_open()
        due = time.time() + max(0.0, delay)
        parked = park_pending(g, ids, due, counted)
        if not parked:
            return
        journal.add(ldb.REDELIVERED, [(t.base + seq, g.bit, n, due) for seq, n in parked])
        if t.readers:
            wake(t.readers)
        await self._commit()

    async def extend(self, topic: str, group: str, ids: Sequence[str]) -> None:
        t = self._topics.get(topic)
        g = t.groups.get(group) if t is not None else None
        if g is not None:
            extend(g, ids, time.time())

    def _trim(self, t: Topic) -> None:
        """Drop from memory the head that every group has acknowledged (already off disk)."""
        t.acks_since_trim = 0
        _drop_head(t.msgs, min((needed_from(g) for g in t.groups.values()), default=t.end))

    async def browse(self, topic: str, *, limit: int) -> list[Message]:
        t = self._topics.get(topic)
        if t is None:
            return []
        floor = min((needed_from(g) for g in t.groups.values()), default=0)
        held = takewhile(lambda entry: entry[0] >= floor, reversed(t.msgs.items()))
        return [m for _, m in islice(held, limit)][::-1]

    # -- statistics ---------------------------------------------------------

    async def stats(self, topic: str) -> TopicStats:
        t = self._topics.get(topic)
        if t is None:
            return TopicStats(topic=topic, capacity=self.default_capacity)
        return topic_stats(t, len(t.msgs))

    def topic_names(self) -> list[str]:
        return list(self._topics)


def _drop_head(msgs: dict[int, Message], below: int) -> int:
    """Drop the messages before offset ``below`` (the dict is in offset order); how many."""
    dropped = 0
    while msgs:
        seq = next(iter(msgs))
        if seq >= below:
            break
        del msgs[seq]
        dropped += 1
    return dropped
