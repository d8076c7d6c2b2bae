"""The local broker's file: where it is, its schema, and the journal that commits to it.

One SQLite database in WAL mode, written by one connection (the *journal*).
The broker keeps the working state in memory and hands every change to the
journal as rows for a prepared statement; the journal puts all changes that
arrived since its last commit into one transaction (group commit), then
resolves the futures of the callers waiting for it, so N publishers arriving
together cost one commit. See ``Journal`` for where the commit runs at each
durability level.

Changes without a waiter (a read's new cursor, a redelivery's attempt count)
ride along with the next commit; they only count attempts across a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl

from chute.errors import BrokerUnavailable

from chute_plugins._private import make_private

DURABILITY = ("process", "power")
"""``process``: a commit survives the process dying (kill -9, OOM, a crash);
the last commits before a power cut or kernel panic may be lost (WAL with
``synchronous=NORMAL``: no fsync per commit). ``power``: a publish returns
only once its commit is on stable storage (an fsync of the WAL after the
commit, shared by every commit made while the previous fsync ran)."""

SEQ_BITS = 40
"""A message's row id is ``topic id << SEQ_BITS | seq``: one integer key, the
fastest table layout SQLite has, and a topic's rows stay contiguous."""

MAX_GROUPS = 62
"""Groups per topic: each has one bit of a message's ``need`` mask."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    next_seq INTEGER NOT NULL DEFAULT 0,
    last_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS groups (
    topic INTEGER NOT NULL,
    name TEXT NOT NULL,
    bit INTEGER NOT NULL,
    cursor INTEGER NOT NULL,
    PRIMARY KEY (topic, name)
);
-- need: a bit per group that has not acknowledged the message yet.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    ms INTEGER NOT NULL,
    need INTEGER NOT NULL,
    body BLOB NOT NULL
);
-- Deliveries handed out more than once, or waiting out a retry delay.
CREATE TABLE IF NOT EXISTS redeliveries (
    id INTEGER NOT NULL,
    bit INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    due REAL NOT NULL,
    PRIMARY KEY (id, bit)
) WITHOUT ROWID;
"""

INSERT = "INSERT INTO messages (id, ms, need, body) VALUES (?, ?, ?, ?)"
DELETE = "DELETE FROM messages WHERE id = ?"
DELETE_RANGE = "DELETE FROM messages WHERE id >= ? AND id < ?"
UNNEED = "UPDATE messages SET need = need & ? WHERE id = ?"
DELETE_DONE = "DELETE FROM messages WHERE id = ? AND need = 0"
NEED_ALL = "UPDATE messages SET need = need | ? WHERE id >= ? AND id < ?"
REDELIVERED = "INSERT OR REPLACE INTO redeliveries (id, bit, attempt, due) VALUES (?, ?, ?, ?)"
SETTLED = "DELETE FROM redeliveries WHERE id = ? AND bit = ?"
TOPIC = "INSERT OR IGNORE INTO topics (id, name) VALUES (?, ?)"
TOPIC_END = "UPDATE topics SET next_seq = ?, last_ms = ? WHERE id = ?"
GROUP = "INSERT OR IGNORE INTO groups (topic, name, bit, cursor) VALUES (?, ?, ?, ?)"
CURSOR = "UPDATE groups SET cursor = ? WHERE topic = ? AND bit = ?"


class LocalUrl:
    """``local`` -> WORKDIR/broker.db; ``local:///abs.db``; ``local://rel.db`` (in WORKDIR);
    each optionally with ``?durability=process|power``."""

    def __init__(self, url: str, workdir: Path | None) -> None:
        rest = url.removeprefix("local").removeprefix(":").removeprefix("//")
        rest, _, query = rest.partition("?")
        self.options = dict(parse_qsl(query, keep_blank_values=True))
        self.durability = self.options.get("durability", "process")
        base = workdir if workdir is not None else Path(".chute")
        path = Path(rest).expanduser() if rest else Path("broker.db")
        self.path = path if path.is_absolute() else base / path

    def problems(self) -> list[str]:
        out = []
        if self.durability not in DURABILITY:
            out.append(
                f"durability {self.durability!r} is not one of {', '.join(DURABILITY)} "
                "(process: survives kill -9; power: also a power cut, one fsync per commit)"
            )
        for key in sorted(set(self.options) - {"durability"}):
            out.append(f"unknown option {key!r} in the local broker URL (known: durability)")
        return out


def lock_exclusively(path: Path) -> IO[bytes]:
    """Hold ``<db>.lock`` until closed; one line naming the holder when another runtime has it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        make_private(path)  # the file holds every queued item's data
        lock = open(f"{path}.lock", "a+b")  # noqa: SIM115 - held until the broker closes
        os.chmod(lock.fileno(), 0o600)
    except OSError as exc:
        raise BrokerUnavailable(
            f"cannot open the local broker file {path}: {exc.strerror}"
        ) from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().decode(errors="replace").strip() or "unknown"
        lock.close()
        raise BrokerUnavailable(
            f"the local broker file {path} is in use by another chute process (pid {holder}); "
            "stop it, or give this one its own workdir"
        ) from None
    try:
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()).encode())
        lock.flush()
    except OSError as exc:  # a full disk or a file-size limit: the broker cannot work here
        with contextlib.suppress(OSError):  # close() flushes the same bytes again
            lock.close()
        raise BrokerUnavailable(
            f"cannot write the local broker file {path}: {exc.strerror}"
        ) from None
    return lock


def connect(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise BrokerUnavailable(f"cannot open the local broker file {path}: {exc}") from None
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("PRAGMA journal_mode = WAL")
        # At durability=power the journal fsyncs the WAL after each commit itself (what
        # FULL would do inside COMMIT), off the event loop.
        db.execute("PRAGMA synchronous = NORMAL")
        # After a checkpoint, cut the WAL back: a burst must not leave a big file behind.
        db.execute("PRAGMA journal_size_limit = 16777216")
        db.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:
        db.close()
        raise BrokerUnavailable(f"cannot open the local broker file {path}: {exc}") from None
    return db


def _settle(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


class Journal:
    """Changes waiting for the next commit, and what commits them.

    Commits run on the event loop, once per turn of the loop, so every caller
    that became ready in that turn shares one. A commit without fsync costs
    tens of microseconds, less than a hop to a thread and back (the state
    store runs on the loop for the same reason).

    ``durability=power`` adds an fsync of the WAL after each commit (what
    SQLite's ``synchronous=FULL`` does in WAL mode), made by a thread: the
    callers of a commit are answered once the fsync that followed it is done,
    and while the disk syncs, the loop runs on and the next commits gather
    behind it, to be covered by one fsync together.
    """

    def __init__(self, db: sqlite3.Connection, loop: asyncio.AbstractEventLoop,
                 *, wal: Path | None) -> None:  # fmt: skip
        self.db = db
        self.loop = loop
        self._ops: list[tuple[str, Sequence[tuple[Any, ...]]]] = []
        self._marks: dict[tuple[str, int, int], tuple[Any, ...]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._closing = False
        self._due = False
        self._syncer = None if wal is None else _Syncer(wal, loop)

    def add(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Run ``sql`` for each row in the next commit, after everything added before."""
        self._ops.append((sql, rows))

    def mark(self, sql: str, a: int, b: int, args: tuple[Any, ...]) -> None:
        """Like ``add``, but only the last ``args`` for (sql, a, b) are written."""
        self._marks[(sql, a, b)] = args

    def commit(self) -> asyncio.Future[None]:
        """A future resolved once everything added so far is committed (and synced)."""
        if self._closing:
            raise BrokerUnavailable("the local broker is closing")
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        if not self._due:
            # Once the callers ready in this turn of the loop have all asked.
            self._due = True
            self.loop.call_soon(self._pass)
        return waiter

    async def close(self) -> None:
        """Commit what is left, wait for its fsync, close the file."""
        self._closing = True
        try:
            self._pass()
            if self._syncer is not None:
                await self._syncer.close()
        finally:
            self.db.close()

    def _pass(self) -> None:
        self._due = False
        ops, self._ops = self._ops, []
        marks, self._marks = self._marks, {}
        waiters, self._waiters = self._waiters, []
        error: BaseException | None = None
        if ops or marks:
            try:
                self._write(ops, marks)
            except Exception as exc:  # every waiter must hear of it, whatever it is
                error = BrokerUnavailable(f"the local broker cannot write: {exc}")
        if self._syncer is None or error is not None:
            _settle(waiters, error)
        elif waiters:
            self._syncer.after_next_sync(waiters)

    def _write(self, ops: list[tuple[str, Sequence[tuple[Any, ...]]]],
               marks: dict[tuple[str, int, int], tuple[Any, ...]]) -> None:  # fmt: skip
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in ops:
                db.executemany(sql, rows)
            for (sql, _, _), args in marks.items():
                db.execute(sql, args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


class _Syncer:
    """A thread that fsyncs the WAL, then answers the callers of the commits before it."""

    def __init__(self, wal: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._fd = os.open(wal, os.O_RDONLY | os.O_CREAT, 0o600)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: list[asyncio.Future[None]] = []
        self._closing = False
        self._closed: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(target=self._run, name="chute-local-fsync", daemon=True)
        self._thread.start()

    def after_next_sync(self, waiters: list[asyncio.Future[None]]) -> None:
        with self._lock:
            self._waiting.extend(waiters)
            self._wake.notify()

    async def close(self) -> None:
        with self._lock:
            self._closing = True
            self._wake.notify()
        await asyncio.shield(self._closed)

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._waiting and not self._closing:
                        self._wake.wait()
                    waiting, self._waiting = self._waiting, []
                    last = self._closing
                error: BaseException | None = None
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    error = BrokerUnavailable(f"the local broker cannot sync: {exc.strerror}")
                if waiting:
                    with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                        self.loop.call_soon_threadsafe(_settle, waiting, error)
                if last:
                    break
        finally:
            os.close(self._fd)
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(_settle, [self._closed], None)
