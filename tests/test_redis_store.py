"""The Redis state store: what only a store shared by several nodes must do.

The contract every store keeps (claims, fencing, attempts, failures, odd keys,
counts) is tested over all backends, this one included, in tests/test_store.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chute.store import ItemStatus
from chute_plugins.stores.redis import RedisStore

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
