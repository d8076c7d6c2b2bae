"""Item state in SQLite, the default: ``state = "sqlite"`` (``WORKDIR/state.db``).

One table, one row per (pool, key), in WAL mode with ``synchronous=NORMAL``:
a committed transaction survives the process being killed (only a power cut
can take the last few back), and readers such as ``chute status`` never wait
for the runtime. Each call is one short transaction run on the event loop (a
hop to a thread costs more than the statements); ``claim_many`` and
``finish_many`` put a whole batch in one, since the commit is most of the
cost of a single statement.

A claim bumps the row's fencing token; ``finish`` writes only under the
current token. Each runtime that recovers from the file holds an advisory
lock on ``<db>.lock`` (shared) until it closes; getting it exclusively proves
no other process is running items from this file, so every item left
``running`` is a crash's leftover and returns to pending. Otherwise (a second
process sharing the file) only items whose lease expired are recovered.

``state = "memory"`` is the same store on an in-memory database: nothing is
kept across restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO

import anyio
import msgspec
from chute.errors import ClosedError, ConfigError
from chute.store import Claim, Finish, ItemRecord, ItemStatus, OneItemCalls

from chute_plugins._private import make_private

log = logging.getLogger("chute.stores.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    pool TEXT NOT NULL,
    key BLOB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    token INTEGER NOT NULL DEFAULT 0,
    lease_until REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (pool, key)
) WITHOUT ROWID;
-- Only failed and dead rows are indexed (for ``failures``): the claim and
-- finish of every other item then write no index page at all.
DROP INDEX IF EXISTS items_by_status;
CREATE INDEX IF NOT EXISTS items_failed ON items (updated_at) WHERE status IN ('failed', 'dead');
"""

# Per pool and status, how many items: kept by triggers, so ``counts`` (every
# /v1/status) reads a few rows instead of the whole table. A change of status
# costs two writes to this table's one or two pages, which stay in the cache.
_COUNTS = (
    """CREATE TABLE IF NOT EXISTS item_counts (
        pool TEXT NOT NULL,
        status TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (pool, status)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER IF NOT EXISTS items_count_insert AFTER INSERT ON items BEGIN
        INSERT INTO item_counts VALUES (NEW.pool, NEW.status, 1)
            ON CONFLICT (pool, status) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER IF NOT EXISTS items_count_update AFTER UPDATE OF status ON items
    WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE item_counts SET n = n - 1 WHERE pool = OLD.pool AND status = OLD.status;
        INSERT INTO item_counts VALUES (NEW.pool, NEW.status, 1)
            ON CONFLICT (pool, status) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER IF NOT EXISTS items_count_delete AFTER DELETE ON items BEGIN
        UPDATE item_counts SET n = n - 1 WHERE pool = OLD.pool AND status = OLD.status;
    END""",
)
_COUNTS_VERSION = 1
"""``PRAGMA user_version`` once the counts exist (a file made before them is counted once)."""

_BUSY = (5, 6)
"""SQLITE_BUSY and SQLITE_LOCKED: another connection holds the write lock."""

_BUSY_WAIT = (0.001, 0.05)
"""Seconds between tries for the write lock: the first wait, and the most it doubles to."""

# Granted unless final, or running under a live lease (whoever holds it: a
# second run of a running item is what the lease prevents).
_CLAIMED = """
ON CONFLICT (pool, key) DO UPDATE SET
    status = 'running', attempts = attempts + 1, updated_at = ?3, owner = ?4,
    token = token + 1, lease_until = ?5
WHERE status NOT IN ('done', 'dead')
  AND (status != 'running' OR lease_until <= ?3)
RETURNING key, token
"""
_INSERT = "INSERT INTO items (pool, key, status, attempts, created_at, updated_at, owner, token, lease_until)"
_CLAIM = f"{_INSERT} VALUES (?1, ?2, 'running', 1, ?3, ?3, ?4, 1, ?5) {_CLAIMED}"
# The same for a JSON list of keys in one statement: SQLite walks the list,
# at a third of the cost of a statement per key. ("WHERE true" tells the
# parser that ON CONFLICT belongs to the INSERT.)
_CLAIM_EACH = (
    f"{_INSERT} SELECT ?1, CAST(value AS BLOB), 'running', 1, ?3, ?3, ?4, 1, ?5 "
    f"FROM json_each(?2) WHERE true {_CLAIMED}"
)

_FINISH = """
UPDATE items SET status = ?1, last_error = ?2, updated_at = ?3, owner = '', lease_until = 0,
    attempts = attempts - (?1 = 'pending')
WHERE pool = ?4 AND key = ?5 AND token = ?6 AND status = 'running'
"""

# The same for a batch of outcomes of one status and error, keys and tokens
# as a JSON list of pairs: one statement per batch, not one per item.
_FINISH_EACH = """
UPDATE items SET status = ?1, last_error = ?2, updated_at = ?3, owner = '', lease_until = 0,
    attempts = attempts - (?1 = 'pending')
WHERE pool = ?4 AND status = 'running' AND (key, token) IN (
    SELECT CAST(json_extract(value, '$[0]') AS BLOB), json_extract(value, '$[1]')
    FROM json_each(?5)
)
RETURNING key
"""

_EXTEND = """
UPDATE items SET lease_until = ?1
WHERE pool = ?2 AND key = ?3 AND token = ?4 AND owner = ?5 AND status = 'running'
"""

_COLUMNS = "pool, key, status, attempts, last_error, created_at, updated_at"


def _b(key: str) -> bytes:
    """Item keys are often file names, which need not be UTF-8 (``os.fsdecode``)."""
    return key.encode("utf-8", "surrogateescape")


def _s(raw: bytes | str) -> str:
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw


def _listed(keys: Sequence[str], json: bool) -> bytes | None:
    """``keys`` as a JSON list, for one statement over the batch; None where the batch
    must go key by key: a key comes twice (each statement must see the one before it),
    JSON cannot carry one exactly (a NUL, or bytes that are not UTF-8), or this SQLite
    was built without JSON."""
    if not json or len(set(keys)) != len(keys) or any("\0" in key for key in keys):
        return None
    try:
        return msgspec.json.encode(keys)
    except UnicodeEncodeError:
        return None


def _claim_tokens(db: sqlite3.Connection, pool: str, keys: Sequence[str],
                  args: tuple[float, str, float], json: bool) -> list[int | None]:  # fmt: skip
    """Claim each key in order: its new fencing token, or None where refused."""
    listed = _listed(keys, json)
    if listed is not None:
        tokens = dict(db.execute(_CLAIM_EACH, (pool, listed, *args)).fetchall())
        return [tokens.get(_b(key)) for key in keys]
    rows = (db.execute(_CLAIM, (pool, _b(key), *args)).fetchone() for key in keys)
    return [None if row is None else row[1] for row in rows]


def _finish_rows(db: sqlite3.Connection, pool: str, outcomes: Sequence[Finish], now: float,
                 json: bool) -> list[bool]:  # fmt: skip
    """Record each outcome in order: whether it was (its claim still held)."""
    keys = [o.key for o in outcomes]
    if _listed(keys, json) is None:
        return [
            db.execute(_FINISH, (o.status.value, _b(o.error), now, pool, _b(o.key), o.token))
            .rowcount == 1
            for o in outcomes
        ]  # fmt: skip
    # One statement per status and error: usually one for the whole batch.
    alike: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for o in outcomes:
        alike.setdefault((o.status.value, o.error), []).append((o.key, o.token))
    done: set[bytes] = set()
    for (status, error), pairs in alike.items():
        rows = db.execute(_FINISH_EACH, (status, _b(error), now, pool, msgspec.json.encode(pairs)))
        done.update(key for (key,) in rows)
    return [_b(key) in done for key in keys]


def _record(row: tuple[str, bytes, str, int, bytes | str, float, float]) -> ItemRecord:
    pool, key, status, attempts, last_error, created_at, updated_at = row
    return ItemRecord(
        pool=pool,
        key=_s(key),
        status=ItemStatus(status),
        attempts=attempts,
        last_error=_s(last_error),  # bytes: an error often quotes the item's file name
        created_at=created_at,
        updated_at=updated_at,
    )


def database_path(url: str, workdir: Path) -> Path:
    """``sqlite`` -> WORKDIR/state.db; ``sqlite:///abs.db``; ``sqlite://rel.db`` (in WORKDIR)."""
    rest = url.removeprefix("sqlite").removeprefix(":").removeprefix("//")
    if not rest:
        return workdir / "state.db"
    path = Path(rest).expanduser()
    return path if path.is_absolute() else workdir / path


class SqliteStore(OneItemCalls):
    """``StateStore`` in one SQLite file under the working folder."""

    def __init__(self, url: str, workdir: Path) -> None:
        self.path: Path | None = database_path(url, workdir)
        self._db: sqlite3.Connection | None = None
        self._lock: IO[bytes] | None = None
        self._json = True
        """Whether this SQLite has json_each (built in since 3.38, an option before)."""

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise ClosedError("the sqlite state store is not open (call open() first)")
        return self._db

    async def open(self) -> None:
        target = ":memory:"
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            make_private(self.path)
            target = str(self.path)
        db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = 5000")  # at start only: see _transaction
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(_SCHEMA)
            _add_counts(db)
            db.execute("PRAGMA busy_timeout = 0")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ConfigError([f"state: cannot open the state database {target}: {exc}"]) from None
        try:
            db.execute("SELECT count(*) FROM json_each('[]')")
        except sqlite3.OperationalError:
            self._json = False
        self._db = db

    async def aclose(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[sqlite3.Connection]:
        """One commit for many statements: the commit is most of a statement's cost.

        While another process holds the write lock, the wait is here, between
        tries, and never inside SQLite: its busy timeout would stop the event
        loop for as long, then fail the call.
        """
        db = self.db
        wait, most = _BUSY_WAIT
        waited = 0.0
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in _BUSY:
                    raise
            if waited < 5.0 <= waited + wait:
                log.warning("the state database %s is locked by another process; waiting",
                            self.path)  # fmt: skip
            await anyio.sleep(wait)
            waited += wait
            wait = min(most, wait * 2)
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    async def claim_many(
        self, pool: str, keys: Sequence[str], *, owner: str, lease: float
    ) -> list[Claim]:
        now = time.time()
        args = (now, owner, now + max(0.0, lease))
        claims: list[Claim] = []
        async with self._transaction() as db:
            tokens = _claim_tokens(db, pool, keys, args, self._json)
            for key, token in zip(keys, tokens, strict=True):
                if token is not None:
                    claims.append(Claim(granted=True, token=token))
                    continue
                found = db.execute(
                    "SELECT status FROM items WHERE pool = ? AND key = ?", (pool, _b(key))
                ).fetchone()
                claims.append(Claim(granted=False, status=ItemStatus(found[0])))
        return claims

    async def finish_many(self, pool: str, outcomes: Sequence[Finish]) -> list[bool]:
        now = time.time()
        async with self._transaction() as db:
            return _finish_rows(db, pool, outcomes, now, self._json)

    async def extend(
        self, pool: str, held: Sequence[tuple[str, int]], *, owner: str, lease: float
    ) -> list[bool]:
        until = time.time() + max(0.0, lease)
        async with self._transaction() as db:
            return [
                db.execute(_EXTEND, (until, pool, _b(key), token, owner)).rowcount == 1
                for key, token in held
            ]

    async def mark_pending(self, pool: str, keys: list[str]) -> None:
        now = time.time()
        async with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO items (pool, key, status, created_at, updated_at) "
                "VALUES (?, ?, 'pending', ?, ?)",
                [(pool, _b(k), now, now) for k in keys],
            )

    async def get(self, pool: str, keys: list[str]) -> dict[str, ItemRecord]:
        out: dict[str, ItemRecord] = {}
        for start in range(0, len(keys), 500):  # SQLite caps bound parameters
            chunk = [_b(k) for k in keys[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE pool = ? AND key IN ({marks})", (pool, *chunk)
            )
            for row in rows:
                record = _record(row)
                out[record.key] = record
        return out

    async def _sole_user(self) -> bool:
        """Lock ``<db>.lock`` until aclose; True when no other runner holds it too.

        Every runner holds it shared, so the next one to start sees all that
        are still running, not only the first. Only while recovering is it
        held exclusively (see ``recover``).
        """
        if self.path is None:
            return True
        if self._lock is None:
            fd = os.open(f"{self.path}.lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._lock = os.fdopen(fd, "ab")  # held until aclose
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await self._share()
            return False
        return True

    async def _share(self) -> None:
        """Hold the lock shared; refused only while another runner is inside recover()."""
        assert self._lock is not None
        for _ in range(200):
            try:
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                await anyio.sleep(0.01)  # a moment, at start-up; never wait on it for good

    async def recover(self, owner_prefix: str = "") -> int:
        now = time.time()
        where = "status = 'running'"
        args: list[float | int | str] = [now]
        if not await self._sole_user():
            log.warning("another process (lock file %s.lock) runs items from %s; only items "
                        "whose lease expired are recovered (several nodes: use a redis state "
                        "store)", self.path, self.path)  # fmt: skip
            where += " AND (lease_until <= ?"
            args.append(now)
            if owner_prefix:
                where += " OR substr(owner, 1, ?) = ?"
                args += [len(owner_prefix), owner_prefix]
            where += ")"
        async with self._transaction() as db:
            cursor = db.execute(
                "UPDATE items SET status = 'pending', token = token + 1, owner = '', "
                f"lease_until = 0, updated_at = ? WHERE {where}",
                args,
            )
        if self._lock is not None:
            await self._share()  # let the next runner in, and be seen by it
        return cursor.rowcount

    async def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        rows = self.db.execute(
            "SELECT pool, status, n FROM item_counts WHERE n > 0 ORDER BY pool, status"
        )
        for pool, status, n in rows:
            out.setdefault(pool, {})[status] = n
        return out

    async def forget_dead(self, pool: str, keys: Sequence[str]) -> list[str]:
        forgotten = []
        async with self._transaction() as db:
            for key in keys:
                sql = "DELETE FROM items WHERE pool = ? AND key = ? AND status = 'dead'"
                if db.execute(sql, (pool, _b(key))).rowcount == 1:
                    forgotten.append(key)
        return forgotten

    async def failures(self, limit: int = 20) -> list[ItemRecord]:
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM items WHERE status IN ('failed', 'dead') "
            "ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )
        return [_record(row) for row in rows]


def _add_counts(db: sqlite3.Connection) -> None:
    """Keep counts per pool and status; count a file made before them once."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= _COUNTS_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("PRAGMA user_version").fetchone()[0] < _COUNTS_VERSION:  # not meanwhile
            for statement in _COUNTS:
                db.execute(statement)
            db.execute("DELETE FROM item_counts")
            db.execute(
                "INSERT INTO item_counts SELECT pool, status, count(*) FROM items "
                "GROUP BY pool, status"
            )
            db.execute(f"PRAGMA user_version = {_COUNTS_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class MemoryStore(SqliteStore):
    """``state = "memory"``: the same rules, kept in memory only (tests, benchmarks)."""

    def __init__(self, url: str, workdir: Path) -> None:
        super().__init__(url, workdir)
        self.path = None
