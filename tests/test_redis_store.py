"""The Redis state store: item status shared by nodes, leases, fencing, recovery.

(The shared store conformance suite lives on another branch; when it lands,
the redis store joins it. These tests cover what only a shared store must do.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from plugins.stores.redis import RedisStore
from runtime.store import ItemStatus
from tests.redis_server import RedisServer, unique_prefix

pytestmark = pytest.mark.redis


@pytest.fixture
async def store(redis_url: str, tmp_path: Path) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, tmp_path)
    await s.open()
    yield s
    await s.aclose()


@pytest.fixture
async def other_node(redis_url: str, tmp_path: Path) -> AsyncIterator[RedisStore]:
    """A second process's view of the same Redis."""
    s = RedisStore(redis_url, tmp_path)
    await s.open()
    yield s
    await s.aclose()


async def test_an_item_runs_once_and_finished_work_is_not_claimed_again(
    store: RedisStore, other_node: RedisStore
) -> None:
    claim = await store.claim("p", "a", owner="n1:p", lease=30)
    assert claim.granted and claim.token > 0
    held = await other_node.claim("p", "a", owner="n2:p", lease=30)
    assert (held.granted, held.status) == (False, ItemStatus.RUNNING)
    assert await store.finish("p", "a", ItemStatus.DONE, token=claim.token)
    again = await other_node.claim("p", "a", owner="n2:p", lease=30)
    assert (again.granted, again.status) == (False, ItemStatus.DONE)
    [record] = (await other_node.get("p", ["a", "unknown"])).values()
    assert (record.status, record.attempts, record.key) == (ItemStatus.DONE, 1, "a")
    assert (await other_node.counts())["p"] == {"done": 1}


async def test_a_failed_item_can_be_claimed_again_and_counts_attempts(store: RedisStore) -> None:
    first = await store.claim("p", "a", owner="n1:p", lease=30)
    assert await store.finish("p", "a", ItemStatus.FAILED, token=first.token, error="boom")
    second = await store.claim("p", "a", owner="n2:p", lease=30)
    assert second.granted and second.token > first.token
    record = (await store.get("p", ["a"]))["a"]
    assert (record.status, record.attempts, record.last_error) == (ItemStatus.RUNNING, 2, "boom")


async def test_a_late_finisher_whose_lease_was_taken_over_is_not_recorded(
    store: RedisStore, other_node: RedisStore
) -> None:
    slow = await store.claim("p", "a", owner="n1:p", lease=0.2)
    await asyncio.sleep(0.3)  # the lease expires: n1 looks dead
    fast = await other_node.claim("p", "a", owner="n2:p", lease=30)
    assert fast.granted and fast.token > slow.token
    assert not await store.finish("p", "a", ItemStatus.DONE, token=slow.token)
    assert (await store.get("p", ["a"]))["a"].status == ItemStatus.RUNNING
    assert await other_node.finish("p", "a", ItemStatus.DEAD, token=fast.token, error="bad")
    assert (await store.get("p", ["a"]))["a"].status == ItemStatus.DEAD


async def test_two_nodes_racing_for_the_same_items_never_both_get_one(
    store: RedisStore, other_node: RedisStore
) -> None:
    keys = [f"k{i}" for i in range(200)]

    async def grab(s: RedisStore, owner: str) -> set[str]:
        claims = await asyncio.gather(*(s.claim("p", k, owner=owner, lease=30) for k in keys))
        return {k for k, c in zip(keys, claims, strict=True) if c.granted}

    mine, theirs = await asyncio.gather(grab(store, "n1:p"), grab(other_node, "n2:p"))
    assert not mine & theirs
    assert mine | theirs == set(keys)
    assert (await store.counts())["p"] == {"running": 200}


async def test_mark_pending_records_new_items_only(store: RedisStore) -> None:
    claim = await store.claim("p", "a", owner="n1:p", lease=30)
    await store.finish("p", "a", ItemStatus.DONE, token=claim.token)
    await store.mark_pending("p", ["a", "b", "c"])
    await store.mark_pending("p", ["b"])
    records = await store.get("p", ["a", "b", "c"])
    assert {k: r.status for k, r in records.items()} == {
        "a": ItemStatus.DONE,
        "b": ItemStatus.PENDING,
        "c": ItemStatus.PENDING,
    }
    assert (await store.counts())["p"] == {"done": 1, "pending": 2}


async def test_recover_returns_crashed_items_but_never_live_ones(
    store: RedisStore, other_node: RedisStore
) -> None:
    crashed = await store.claim("p", "crashed", owner="n1:p", lease=0.2)
    await other_node.claim("p", "live", owner="n2:p", lease=30)
    restarted = await store.claim("p", "mine", owner="n3:p", lease=30)
    await asyncio.sleep(0.3)
    assert await store.recover() == 1
    records = await store.get("p", ["crashed", "live", "mine"])
    assert {k: r.status for k, r in records.items()} == {
        "crashed": ItemStatus.PENDING,
        "live": ItemStatus.RUNNING,
        "mine": ItemStatus.RUNNING,
    }
    # A node restarted under its old name knows its own items are not running.
    assert await store.recover(owner_prefix="n3:") == 1
    assert (await store.get("p", ["mine"]))["mine"].status == ItemStatus.PENDING
    # The crashed owners, should they come back, are fenced out.
    assert not await store.finish("p", "crashed", ItemStatus.DONE, token=crashed.token)
    assert not await store.finish("p", "mine", ItemStatus.DONE, token=restarted.token)
    assert (await store.counts())["p"] == {"pending": 2, "running": 1}


async def test_failures_are_listed_newest_first_and_forgotten_once_done(
    store: RedisStore,
) -> None:
    for key, status in [("a", ItemStatus.FAILED), ("b", ItemStatus.DEAD), ("c", ItemStatus.FAILED)]:
        claim = await store.claim("p", key, owner="n1:p", lease=30)
        await store.finish("p", key, status, token=claim.token, error=f"{key} broke")
    claim = await store.claim("p", "c", owner="n1:p", lease=30)
    await store.finish("p", "c", ItemStatus.DONE, token=claim.token)
    failures = await store.failures(limit=10)
    assert [(r.key, r.status, r.last_error) for r in failures] == [
        ("b", ItemStatus.DEAD, "b broke"),
        ("a", ItemStatus.FAILED, "a broke"),
    ]


async def test_the_store_rides_out_a_redis_restart(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    s = RedisStore(f"{redis_server.url}?prefix={unique_prefix()}", tmp_path)
    await s.open()
    try:
        first = await s.claim("p", "a", owner="n1:p", lease=30)
        await s.finish("p", "a", ItemStatus.DONE, token=first.token)
        redis_server.stop()
        claiming = asyncio.create_task(s.claim("p", "b", owner="n1:p", lease=30))
        await asyncio.sleep(0.3)
        assert not claiming.done() and not s.healthy
        redis_server.start()  # the scripts are gone from its cache: they are loaded again
        assert (await asyncio.wait_for(claiming, 10)).granted
        assert s.healthy
        again = await s.claim("p", "a", owner="n1:p", lease=30)
        assert (again.granted, again.status) == (False, ItemStatus.DONE)
    finally:
        await s.aclose()


async def test_a_token_finishes_once_but_a_retried_finish_is_not_refused(
    store: RedisStore,
) -> None:
    claim = await store.claim("p", "a", owner="n1:p", lease=30)
    assert await store.finish("p", "a", ItemStatus.DONE, token=claim.token)
    # The same finish again, as after a reply lost to a dropped connection.
    assert await store.finish("p", "a", ItemStatus.DONE, token=claim.token)
    assert not await store.finish("p", "a", ItemStatus.FAILED, token=claim.token, error="x")
    assert (await store.get("p", ["a"]))["a"].status == ItemStatus.DONE
    assert (await store.counts())["p"] == {"done": 1}


async def test_a_lease_of_no_time_is_free_at_once(
    store: RedisStore, other_node: RedisStore
) -> None:
    gone = await store.claim("p", "a", owner="n1:p", lease=0)
    taken = await other_node.claim("p", "a", owner="n2:p", lease=30)
    assert gone.granted and taken.granted and taken.token > gone.token


async def test_keys_that_are_not_utf8_file_names_round_trip(store: RedisStore) -> None:
    odd = [
        "inbox/raw-\udcff\udcfe.mp4",  # os.fsdecode of a name that is not UTF-8
        "inbox/raw-\xff\xfe.mp4",  # a different item
        "inbox/line\nbreak; rm -rf $(x).mp4",
    ]
    for key in odd:
        claim = await store.claim("p", key, owner="n1:p", lease=30)
        assert await store.finish("p", key, ItemStatus.DEAD, token=claim.token, error=f"bad {key}")
    got = await store.get("p", odd)
    assert {k: (r.key, r.status, r.last_error) for k, r in got.items()} == {
        k: (k, ItemStatus.DEAD, f"bad {k}") for k in odd
    }
    assert sorted(r.key for r in await store.failures()) == sorted(odd)
