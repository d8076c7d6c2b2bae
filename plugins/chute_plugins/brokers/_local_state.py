"""The local broker's working state in memory, and reading it back from the file."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import msgspec
from chute.message import Message
from chute.meters import RateMeter

from . import _local_db as ldb
from . import memory

_decode = msgspec.msgpack.Decoder(Message).decode


class Group(memory.Group):
    """A memory broker group with its bit in the ``need`` mask of the file's messages."""

    __slots__ = ("bit",)

    def __init__(self, name: str, bit: int, cursor: int, visibility_timeout: float) -> None:
        super().__init__(name, cursor, visibility_timeout)
        self.bit = bit


class Topic:
    __slots__ = ("acks_since_trim", "base", "capacity", "checked", "dropped", "end", "groups",
                 "last_ms", "meter", "msgs", "name", "readers", "writers")  # fmt: skip

    def __init__(self, name: str, tid: int, capacity: int) -> None:
        self.name = name
        self.base = tid << ldb.SEQ_BITS
        self.capacity = capacity
        self.msgs: dict[int, Message] = {}
        """seq -> message, in order: everything some group still needs, or retained."""
        self.end = 0
        self.last_ms = 0
        self.groups: dict[str, Group] = {}
        self.readers: list[asyncio.Future[None]] = []
        self.writers: list[asyncio.Future[None]] = []
        self.meter = RateMeter()
        self.acks_since_trim = 0
        self.checked = False
        self.dropped = 0
        """Entries dropped unread by retention since this process started."""

    @property
    def head(self) -> int:
        return next(iter(self.msgs), self.end)


def load_topics(db: sqlite3.Connection, default_capacity: int) -> dict[str, Topic]:
    """Read back the last run's topics; its pending deliveries are due again now."""
    now = time.time()
    topics: dict[str, Topic] = {}
    for tid, name, next_seq, last_ms in db.execute("SELECT id, name, next_seq, last_ms FROM topics"):  # fmt: skip
        t = Topic(name, tid, default_capacity)
        t.end, t.last_ms = next_seq, last_ms
        topics[name] = t
        hi = t.base + (1 << ldb.SEQ_BITS)
        rows = db.execute("SELECT id, need, body FROM messages WHERE id >= ? AND id < ? "
                          "ORDER BY id", (t.base, hi))  # fmt: skip
        needs: dict[int, int] = {}
        for row_id, need, body in rows:
            seq = row_id - t.base
            t.msgs[seq] = _decode(body)
            needs[seq] = need
        retries = {
            (row_id - t.base, bit): (attempt, due)
            for row_id, bit, attempt, due in db.execute(
                "SELECT id, bit, attempt, due FROM redeliveries WHERE id >= ? AND id < ?",
                (t.base, hi),
            )
        }
        for gname, bit, cursor in db.execute(
            "SELECT name, bit, cursor FROM groups WHERE topic = ?", (tid,)
        ):
            g = t.groups[gname] = Group(gname, bit, cursor, 300.0)
            g.active = False
            for seq, need in needs.items():
                if seq >= cursor:
                    break
                if need & bit:  # delivered by the last run, never acknowledged
                    attempt, due = retries.get((seq, bit), (1, 0.0))
                    memory.park(g, seq, t.msgs[seq].id, attempt, max(due, now))
    return topics
