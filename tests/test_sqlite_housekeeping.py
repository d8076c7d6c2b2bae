"""The SQLite state store's housekeeping: counts without a scan, a locked file that
does not stop the event loop, and a file only its owner can read."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import anyio
import pytest
from chute.store import Finish, ItemStatus
from chute_plugins.stores.sqlite import SqliteStore


async def _opened(tmp_path: Path) -> SqliteStore:
    store = SqliteStore("sqlite", tmp_path)
    await store.open()
    return store


def _scanned(store: SqliteStore) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for pool, status, n in store.db.execute(
        "SELECT pool, status, count(*) FROM items GROUP BY pool, status"
    ):
        out.setdefault(pool, {})[status] = n
    return out


async def _mixed_history(store: SqliteStore) -> None:
    await store.mark_pending("a", [f"k{n}" for n in range(10)])
    claims = await store.claim_many("a", [f"k{n}" for n in range(8)], owner="me", lease=60)
    outcomes = [ItemStatus.DONE] * 4 + [ItemStatus.FAILED, ItemStatus.DEAD, ItemStatus.PENDING]
    await store.finish_many(
        "a", [Finish(f"k{n}", s, claims[n].token) for n, s in enumerate(outcomes)]
    )
    await store.claim_many("b", ["x", "y"], owner="me", lease=60)
    await store.claim("a", "k4", owner="me", lease=60)  # failed -> running again
    await store.claim("a", "k0", owner="me", lease=60)  # done: refused, no change


async def test_counts_stay_exact_and_never_scan_the_items(tmp_path: Path) -> None:
    store = await _opened(tmp_path)
    try:
        await _mixed_history(store)
        read: set[str] = set()

        def authorizer(action: int, table: str | None, *_: object) -> int:
            if action == sqlite3.SQLITE_READ and table:
                read.add(table)
            return sqlite3.SQLITE_OK

        store.db.set_authorizer(authorizer)
        counts = await store.counts()
        store.db.set_authorizer(None)
        assert "items" not in read, "counts() read the items table (a scan per /v1/status)"
        assert counts == _scanned(store)
        assert counts["a"] == {"done": 4, "running": 2, "dead": 1, "pending": 3}
        assert await store.recover() == 4  # every running item, of both pools
        assert await store.counts() == _scanned(store)
    finally:
        await store.aclose()


async def test_a_database_made_before_the_counts_is_counted_once_at_open(tmp_path: Path) -> None:
    store = await _opened(tmp_path)
    await _mixed_history(store)
    expected = _scanned(store)
    # As an earlier chute left it: no counts table, no triggers.
    for trigger in ("items_count_insert", "items_count_update", "items_count_delete"):
        store.db.execute(f"DROP TRIGGER {trigger}")
    store.db.execute("DROP TABLE item_counts")
    store.db.execute("PRAGMA user_version = 0")
    await store.aclose()
    store = await _opened(tmp_path)
    try:
        assert await store.counts() == expected
    finally:
        await store.aclose()


def _hold_write_lock(db_path: Path, seconds: float, held: threading.Event,
                     released: threading.Event) -> None:  # fmt: skip
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(seconds)
    released.set()
    other.execute("COMMIT")
    other.close()


async def _claim_while_locked(tmp_path: Path, seconds: float) -> int:
    """Claim while another process holds the write lock for ``seconds``; how many
    times another task ran while the lock was held."""
    store = await _opened(tmp_path)
    held, released = threading.Event(), threading.Event()
    holder = threading.Thread(
        target=_hold_write_lock, args=(tmp_path / "state.db", seconds, held, released)
    )
    holder.start()
    ticks_while_held = 0

    async def tick() -> None:
        nonlocal ticks_while_held
        while not released.is_set():
            if held.is_set():
                ticks_while_held += 1
            await anyio.sleep(0.01)

    try:
        await anyio.to_thread.run_sync(held.wait)
        async with anyio.create_task_group() as tg:
            tg.start_soon(tick)
            with anyio.fail_after(seconds + 10):
                claim = await store.claim("p", "k", owner="me", lease=60)
        assert claim.granted
        assert (await store.counts())["p"] == {"running": 1}
    finally:
        await anyio.to_thread.run_sync(holder.join)
        await store.aclose()
    return ticks_while_held


async def test_a_locked_database_does_not_stop_the_event_loop(tmp_path: Path) -> None:
    ticks = await _claim_while_locked(tmp_path, 0.5)
    assert ticks > 0, "the event loop stood still while another process held the lock"


@pytest.mark.slow
async def test_a_database_locked_longer_than_5_s_is_waited_for_not_a_crash(
    tmp_path: Path,
) -> None:
    assert await _claim_while_locked(tmp_path, 6.0) > 0


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.glob("state.db*")}


async def test_the_state_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = await _opened(tmp_path)
        await store.claim("p", "k", owner="me", lease=60)  # the WAL and its index exist now
        await store.recover()  # and the lock file
        modes = _modes(tmp_path)
        await store.aclose()
        assert set(modes) >= {"state.db", "state.db-wal", "state.db-shm", "state.db.lock"}
        assert modes == dict.fromkeys(modes, 0o600)
        os.chmod(tmp_path / "state.db", 0o644)  # as an earlier chute made it
        store = await _opened(tmp_path)
        await store.aclose()
        assert _modes(tmp_path)["state.db"] == 0o600
    finally:
        os.umask(old)
