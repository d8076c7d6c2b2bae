"""The default state store: SQLite under the working folder (and ``memory``, the same SQL)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from plugins.stores.sqlite import MemoryStore, SqliteStore, database_path
from runtime.errors import ConfigError
from runtime.store import ItemStatus


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = (
        SqliteStore("sqlite", tmp_path)
        if request.param == "sqlite"
        else MemoryStore("memory", tmp_path)
    )
    await s.open()
    yield s
    await s.aclose()


async def opened(tmp_path: Path) -> SqliteStore:
    s = SqliteStore("sqlite", tmp_path)
    await s.open()
    return s


async def test_finished_work_is_never_claimed_again(store: SqliteStore) -> None:
    claim = await store.claim("p", "a", owner="n1:p", lease=30)
    assert claim.granted and claim.token > 0
    held = await store.claim("p", "a", owner="n2:p", lease=30)
    assert (held.granted, held.status) == (False, ItemStatus.RUNNING)
    assert await store.finish("p", "a", ItemStatus.DONE, token=claim.token)
    again = await store.claim("p", "a", owner="n2:p", lease=30)
    assert (again.granted, again.status) == (False, ItemStatus.DONE)
    assert (await store.counts()) == {"p": {"done": 1}}


async def test_failed_items_are_claimed_again_and_count_attempts(store: SqliteStore) -> None:
    first = await store.claim("p", "a", owner="n1:p", lease=30)
    assert await store.finish("p", "a", ItemStatus.FAILED, token=first.token, error="boom")
    [failure] = await store.failures()
    assert (failure.key, failure.status, failure.last_error) == ("a", ItemStatus.FAILED, "boom")
    second = await store.claim("p", "a", owner="n1:p", lease=30)
    assert second.granted and second.token > first.token
    record = (await store.get("p", ["a"]))["a"]
    assert (record.status, record.attempts) == (ItemStatus.RUNNING, 2)
    assert await store.finish("p", "a", ItemStatus.DONE, token=second.token)
    assert await store.failures() == []  # done: no longer a failure


async def test_a_late_finisher_whose_lease_was_taken_over_is_not_recorded(
    store: SqliteStore,
) -> None:
    slow = await store.claim("p", "a", owner="n1:p", lease=0.01)
    await anyio.sleep(0.03)
    fresh = await store.claim("p", "a", owner="n2:p", lease=30)
    assert fresh.granted
    assert not await store.finish("p", "a", ItemStatus.DONE, token=slow.token)
    assert (await store.get("p", ["a"]))["a"].status is ItemStatus.RUNNING
    assert await store.finish("p", "a", ItemStatus.DEAD, token=fresh.token, error="bad")
    assert (await store.get("p", ["a"]))["a"].status is ItemStatus.DEAD


async def test_mark_pending_records_new_items_only_and_pools_are_separate(
    store: SqliteStore,
) -> None:
    claim = await store.claim("p", "a", owner="n1:p", lease=30)
    await store.finish("p", "a", ItemStatus.DONE, token=claim.token)
    await store.mark_pending("p", ["a", "b", "c"])
    await store.mark_pending("q", ["a"])
    assert await store.counts() == {"p": {"done": 1, "pending": 2}, "q": {"pending": 1}}
    assert set(await store.get("p", ["a", "b", "zzz"])) == {"a", "b"}


async def test_keys_that_are_not_utf8_file_names_round_trip(store: SqliteStore) -> None:
    key = os.fsdecode(b"caf\xe9 \xff.mp4@12@3")
    claim = await store.claim("p", key, owner="n1:p", lease=30)
    assert await store.finish("p", key, ItemStatus.DEAD, token=claim.token, error="x")
    [record] = await store.failures()
    assert record.key == key and os.fsencode(record.key) == b"caf\xe9 \xff.mp4@12@3"


async def test_outcomes_survive_a_reopen(tmp_path: Path) -> None:
    first = await opened(tmp_path)
    claim = await first.claim("p", "a", owner="n1:p", lease=30)
    await first.finish("p", "a", ItemStatus.DONE, token=claim.token)
    await first.aclose()
    assert (tmp_path / "state.db").is_file()
    second = await opened(tmp_path)
    try:
        refused = await second.claim("p", "a", owner="n2:p", lease=30)
        assert (refused.granted, refused.status) == (False, ItemStatus.DONE)
    finally:
        await second.aclose()


async def test_items_a_crash_left_running_return_to_pending(tmp_path: Path) -> None:
    crashed = await opened(tmp_path)
    await crashed.recover()
    await crashed.claim("p", "a", owner="old-1:p", lease=300)
    await crashed.aclose()  # gone without a finish, its lock released as a dead process's is
    restarted = await opened(tmp_path)
    try:
        assert await restarted.recover() == 1
        assert (await restarted.get("p", ["a"]))["a"].status is ItemStatus.PENDING
        assert (await restarted.claim("p", "a", owner="new-2:p", lease=300)).granted
    finally:
        await restarted.aclose()


async def test_a_second_process_on_the_file_never_resets_live_items(tmp_path: Path) -> None:
    runner = await opened(tmp_path)
    other = await opened(tmp_path)
    try:
        await runner.recover()  # holds state.db.lock from here on
        await runner.claim("p", "live", owner="r:p", lease=30)
        await runner.claim("p", "expired", owner="r:p", lease=0.01)
        await anyio.sleep(0.03)
        assert await other.recover() == 1  # only the one whose lease ran out
        got = await other.get("p", ["live", "expired"])
        assert got["live"].status is ItemStatus.RUNNING
        assert got["expired"].status is ItemStatus.PENDING
    finally:
        await other.aclose()
        await runner.aclose()


def test_database_paths() -> None:
    work = Path("/srv/work")
    assert database_path("sqlite", work) == work / "state.db"
    assert database_path("sqlite:///var/lib/chute/x.db", work) == Path("/var/lib/chute/x.db")
    assert database_path("sqlite://rel.db", work) == work / "rel.db"


async def test_a_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not a database, just some bytes" * 100)
    store = SqliteStore("sqlite", tmp_path)
    with pytest.raises(ConfigError) as info:
        await store.open()
    [problem] = info.value.problems
    assert problem.startswith("state: cannot open the state database") and "state.db" in problem
