"""One suite over every state store backend: a backend is done when this passes.

The contract is ``runtime/store.py``. Every test in the first part runs on
``sqlite`` (a file under ``tmp_path``; also as if its SQLite had no JSON
functions), ``memory`` and ``redis`` (a real
redis-server, each test in its own key prefix). The tests at the end are about
the SQLite file itself: reopening it, crashes, a second process, bad files.
What only a shared Redis store must do is in ``tests/test_redis_store.py``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chute.errors import ConfigError
from chute.store import Finish, ItemStatus, StateStore
from chute_plugins.stores.redis import RedisStore
from chute_plugins.stores.sqlite import MemoryStore, SqliteStore, database_path

BACKENDS = [
    "sqlite",
    "sqlite without JSON",  # an SQLite built without json_each claims key by key
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    s: StateStore
    if request.param == "redis":
        # Requested here, not by every test, so only the redis runs need a redis-server.
        s = RedisStore(request.getfixturevalue("redis_url"), tmp_path)
    elif request.param.startswith("sqlite"):
        s = SqliteStore("sqlite", tmp_path)
    else:
        s = MemoryStore("memory", tmp_path)
    await s.open()
    if request.param == "sqlite without JSON":
        assert isinstance(s, SqliteStore)
        s._json = False
    yield s
    await s.aclose()


async def statuses(store: StateStore, pool: str, keys: list[str]) -> dict[str, ItemStatus]:
    return {k: r.status for k, r in (await store.get(pool, keys)).items()}


# -- the contract, on every backend ---------------------------------------------


async def test_forgetting_dead_items_lets_them_run_again_and_leaves_others_alone(
    store: StateStore,
) -> None:
    for key, status in (("dead", ItemStatus.DEAD), ("done", ItemStatus.DONE)):
        claim = await store.claim("p", key, owner="n1:p", lease=30)
        await store.finish("p", key, status, token=claim.token, error="boom")
    assert await store.forget_dead("p", ["dead", "done", "unknown"]) == ["dead"]
    assert (await store.counts())["p"].get("dead", 0) == 0
    assert [r.key for r in await store.failures()] == []
    assert (await store.claim("p", "dead", owner="n1:p", lease=30)).granted
    assert not (await store.claim("p", "done", owner="n1:p", lease=30)).granted


async def test_an_item_runs_once_and_done_or_dead_items_are_never_claimed_again(
    store: StateStore,
) -> None:
    claim = await store.claim("p", "a", owner="n1:p", lease=30)
    assert claim.granted and claim.token > 0
    held = await store.claim("p", "a", owner="n2:p", lease=30)
    assert (held.granted, held.status) == (False, ItemStatus.RUNNING)
    assert await store.finish("p", "a", ItemStatus.DONE, token=claim.token)
    done = await store.claim("p", "a", owner="n2:p", lease=30)
    assert (done.granted, done.status) == (False, ItemStatus.DONE)

    claim = await store.claim("p", "b", owner="n1:p", lease=30)
    assert await store.finish("p", "b", ItemStatus.DEAD, token=claim.token, error="bad input")
    dead = await store.claim("p", "b", owner="n1:p", lease=30)
    assert (dead.granted, dead.status) == (False, ItemStatus.DEAD)

    records = await store.get("p", ["a", "b", "unknown"])
    assert {k: (r.key, r.status, r.attempts) for k, r in records.items()} == {
        "a": ("a", ItemStatus.DONE, 1),
        "b": ("b", ItemStatus.DEAD, 1),
    }
    assert (await store.counts())["p"] == {"done": 1, "dead": 1}


async def test_a_failed_item_can_be_claimed_again_and_counts_attempts(store: StateStore) -> None:
    first = await store.claim("p", "a", owner="n1:p", lease=30)
    assert await store.finish("p", "a", ItemStatus.FAILED, token=first.token, error="boom")
    assert (await store.get("p", ["a"]))["a"].status == ItemStatus.FAILED
    second = await store.claim("p", "a", owner="n2:p", lease=30)
    assert second.granted and second.token > first.token
    record = (await store.get("p", ["a"]))["a"]
    assert (record.status, record.attempts, record.last_error) == (ItemStatus.RUNNING, 2, "boom")
    assert await store.finish("p", "a", ItemStatus.DONE, token=second.token)
    record = (await store.get("p", ["a"]))["a"]
    assert (record.status, record.attempts) == (ItemStatus.DONE, 2)
    assert (await store.counts())["p"] == {"done": 1}


async def test_a_late_finisher_whose_lease_was_taken_over_is_not_recorded(
    store: StateStore,
) -> None:
    slow = await store.claim("p", "a", owner="n1:p", lease=0.05)
    await asyncio.sleep(0.15)  # the lease expires: n1 looks dead
    fast = await store.claim("p", "a", owner="n2:p", lease=30)
    assert fast.granted and fast.token > slow.token
    assert not await store.finish("p", "a", ItemStatus.DONE, token=slow.token)
    assert (await store.get("p", ["a"]))["a"].status == ItemStatus.RUNNING
    assert (await store.counts())["p"] == {"running": 1}
    assert await store.finish("p", "a", ItemStatus.DEAD, token=fast.token, error="bad")
    record = (await store.get("p", ["a"]))["a"]
    assert (record.status, record.last_error, record.attempts) == (ItemStatus.DEAD, "bad", 2)


async def test_a_live_lease_refuses_a_second_claim_even_from_its_owner(
    store: StateStore,
) -> None:
    # A redelivery of an item still running, to the same pool on the same node,
    # must not start it a second time beside the first run.
    first = await store.claim("p", "a", owner="n1:p", lease=30)
    again = await store.claim("p", "a", owner="n1:p", lease=30)
    assert (again.granted, again.status) == (False, ItemStatus.RUNNING)
    twice = await store.claim_many("p", ["b", "b"], owner="n1:p", lease=30)
    assert [c.granted for c in twice] == [True, False]
    assert await store.finish("p", "a", ItemStatus.DONE, token=first.token)
    assert (await store.counts())["p"] == {"done": 1, "running": 1}


async def test_extending_a_lease_keeps_other_claims_out_until_it_lapses(
    store: StateStore,
) -> None:
    held = await store.claim("p", "a", owner="n1:p", lease=0.3)
    for _ in range(3):  # three heartbeats carry it past its first lease
        await asyncio.sleep(0.15)
        assert await store.extend("p", [("a", held.token)], owner="n1:p", lease=0.3) == [True]
        assert not (await store.claim("p", "a", owner="n2:p", lease=30)).granted
    await asyncio.sleep(0.4)  # no heartbeat: the holder looks dead, another may take it
    taken = await store.claim("p", "a", owner="n2:p", lease=30)
    assert taken.granted
    # The old holder's lease is gone for good: compare-and-extend refuses it.
    assert await store.extend("p", [("a", held.token)], owner="n1:p", lease=30) == [False]
    assert await store.extend("p", [("a", taken.token)], owner="n1:p", lease=30) == [False]
    assert not await store.finish("p", "a", ItemStatus.DONE, token=held.token)
    assert await store.finish("p", "a", ItemStatus.DONE, token=taken.token)
    assert await store.extend("p", [("a", taken.token)], owner="n2:p", lease=30) == [False]
    assert await store.extend("p", [], owner="n2:p", lease=30) == []


async def test_a_lease_of_no_time_is_free_at_once(store: StateStore) -> None:
    gone = await store.claim("p", "a", owner="n1:p", lease=0)
    taken = await store.claim("p", "a", owner="n2:p", lease=30)
    assert gone.granted and taken.granted and taken.token > gone.token
    assert not await store.finish("p", "a", ItemStatus.DONE, token=gone.token)


async def test_mark_pending_records_new_items_only(store: StateStore) -> None:
    claim = await store.claim("p", "a", owner="n1:p", lease=30)
    await store.finish("p", "a", ItemStatus.DONE, token=claim.token)
    running = await store.claim("p", "r", owner="n1:p", lease=30)
    await store.mark_pending("p", ["a", "r", "b", "c"])
    await store.mark_pending("p", ["b"])
    await store.mark_pending("p", [])
    records = await store.get("p", ["a", "r", "b", "c"])
    assert {k: (r.status, r.attempts) for k, r in records.items()} == {
        "a": (ItemStatus.DONE, 1),
        "r": (ItemStatus.RUNNING, 1),
        "b": (ItemStatus.PENDING, 0),
        "c": (ItemStatus.PENDING, 0),
    }
    assert (await store.counts())["p"] == {"done": 1, "running": 1, "pending": 2}
    # Marking it pending did not take the running item from its owner.
    assert await store.finish("p", "r", ItemStatus.DONE, token=running.token)
    assert (await store.claim("p", "b", owner="n1:p", lease=30)).granted


async def test_counts_are_per_pool_and_a_key_is_separate_in_each_pool(store: StateStore) -> None:
    assert await store.counts() == {}
    claim = await store.claim("resize", "a.mp4", owner="n1:resize", lease=30)
    await store.finish("resize", "a.mp4", ItemStatus.DONE, token=claim.token)
    # The same key in the next pool of the pipeline is a different item.
    second = await store.claim("upload", "a.mp4", owner="n1:upload", lease=30)
    assert second.granted
    await store.finish("upload", "a.mp4", ItemStatus.FAILED, token=second.token, error="503")
    await store.mark_pending("upload", ["b.mp4", "c.mp4"])
    assert await store.counts() == {
        "resize": {"done": 1},
        "upload": {"failed": 1, "pending": 2},
    }
    assert set(await store.get("resize", ["a.mp4", "b.mp4"])) == {"a.mp4"}
    assert (await store.get("upload", ["a.mp4"]))["a.mp4"].pool == "upload"


async def test_thousands_of_items_at_once(store: StateStore) -> None:
    keys = [f"inbox/{i:05}.jpg" for i in range(1234)]
    await store.mark_pending("p", keys)
    records = await store.get("p", keys)
    assert sorted(records) == keys
    assert {r.status for r in records.values()} == {ItemStatus.PENDING}
    assert (await store.counts())["p"] == {"pending": 1234}


async def test_failures_are_listed_newest_first_and_forgotten_once_done(
    store: StateStore,
) -> None:
    for key, status in [("a", ItemStatus.FAILED), ("b", ItemStatus.DEAD), ("c", ItemStatus.FAILED)]:
        claim = await store.claim("p", key, owner="n1:p", lease=30)
        await store.finish("p", key, status, token=claim.token, error=f"{key} broke")
        await asyncio.sleep(0.002)  # distinct finish times, as in real runs
    claim = await store.claim("p", "c", owner="n1:p", lease=30)
    await store.finish("p", "c", ItemStatus.DONE, token=claim.token)
    failures = await store.failures(limit=10)
    assert [(r.pool, r.key, r.status, r.last_error) for r in failures] == [
        ("p", "b", ItemStatus.DEAD, "b broke"),
        ("p", "a", ItemStatus.FAILED, "a broke"),
    ]
    assert [r.key for r in await store.failures(limit=1)] == ["b"]


async def test_a_batch_of_claims_and_finishes_follows_the_same_rules(store: StateStore) -> None:
    held = await store.claim("p", "held", owner="n2:p", lease=30)
    finished = await store.claim("p", "done", owner="n1:p", lease=30)
    await store.finish("p", "done", ItemStatus.DONE, token=finished.token)

    claims = await store.claim_many("p", ["a", "held", "done", "b"], owner="n1:p", lease=30)
    assert [(c.granted, c.status) for c in claims] == [
        (True, ItemStatus.RUNNING),
        (False, ItemStatus.RUNNING),
        (False, ItemStatus.DONE),
        (True, ItemStatus.RUNNING),
    ]
    a, _, _, b = claims
    recorded = await store.finish_many(
        "p",
        [
            Finish("a", ItemStatus.DONE, a.token),
            Finish("held", ItemStatus.DONE, held.token + 1000),  # a stale token: refused
            Finish("b", ItemStatus.DEAD, b.token, "bad input"),
        ],
    )
    assert recorded == [True, False, True]
    assert await statuses(store, "p", ["a", "held", "b"]) == {
        "a": ItemStatus.DONE,
        "held": ItemStatus.RUNNING,
        "b": ItemStatus.DEAD,
    }
    assert await store.claim_many("p", [], owner="n1:p", lease=30) == []
    assert await store.finish_many("p", []) == []


async def test_a_claim_given_back_unrun_is_pending_and_costs_no_attempt(store: StateStore) -> None:
    first = await store.claim("p", "a", owner="n1:p", lease=30)
    await store.finish("p", "a", ItemStatus.FAILED, token=first.token, error="boom")
    [again] = await store.claim_many("p", ["a"], owner="n1:p", lease=300)
    assert await store.finish_many("p", [Finish("a", ItemStatus.PENDING, again.token)]) == [True]
    record = (await store.get("p", ["a"]))["a"]
    assert (record.status, record.attempts) == (ItemStatus.PENDING, 1)
    # Nobody holds it now: another node may take it at once.
    assert (await store.claim("p", "a", owner="n2:p", lease=30)).granted


async def test_a_failed_item_being_retried_is_not_listed_as_a_failure(store: StateStore) -> None:
    first = await store.claim("p", "a", owner="n1:p", lease=30)
    await store.finish("p", "a", ItemStatus.FAILED, token=first.token, error="boom")
    assert [r.key for r in await store.failures()] == ["a"]
    await store.claim("p", "a", owner="n1:p", lease=30)
    assert await store.failures() == []


async def test_recover_returns_an_abandoned_item_to_pending_and_fences_its_owner(
    store: StateStore,
) -> None:
    crashed = await store.claim("p", "a", owner="n1:p", lease=0.05)
    await asyncio.sleep(0.15)  # its owner is gone: the lease runs out with no finish
    assert await store.recover() == 1
    assert await statuses(store, "p", ["a"]) == {"a": ItemStatus.PENDING}
    assert (await store.counts())["p"] == {"pending": 1}
    assert await store.recover() == 0
    assert not await store.finish("p", "a", ItemStatus.DONE, token=crashed.token)
    retry = await store.claim("p", "a", owner="n2:p", lease=30)
    assert retry.granted
    assert await store.finish("p", "a", ItemStatus.DONE, token=retry.token)
    assert (await store.get("p", ["a"]))["a"].attempts == 2


async def test_keys_that_are_not_utf8_file_names_round_trip(store: StateStore) -> None:
    odd = [
        os.fsdecode(b"inbox/raw-\xff.mp4"),  # a file name that is not UTF-8
        "inbox/raw-\udcff\udcfe.mp4",  # the same kind, two bytes
        "inbox/raw-\xff\xfe.mp4",  # a different item: UTF-8 for U+00FF U+00FE
        "inbox/line\nbreak; rm -rf $(x).mp4",
    ]
    for key in odd:
        claim = await store.claim("p", key, owner="n1:p", lease=30)
        assert await store.finish("p", key, ItemStatus.DEAD, token=claim.token, error=f"bad {key}")
    got = await store.get("p", odd)
    assert {k: (r.key, r.status, r.last_error) for k, r in got.items()} == {
        k: (k, ItemStatus.DEAD, f"bad {k}") for k in odd
    }
    failed = [r.key for r in await store.failures()]
    assert sorted(failed) == sorted(odd)
    assert os.fsdecode(b"inbox/raw-\xff.mp4") in failed
    assert os.fsencode(odd[0]) == b"inbox/raw-\xff.mp4"
    refused = await store.claim("p", odd[0], owner="n2:p", lease=30)
    assert (refused.granted, refused.status) == (False, ItemStatus.DEAD)
    assert (await store.counts())["p"] == {"dead": 4}


async def test_a_batch_of_odd_or_repeated_keys_is_claimed_as_one_by_one(store: StateStore) -> None:
    odd = [os.fsdecode(b"raw-\xff.mp4"), "nul\0in it", 'caf\u00e9 "q" \\ x', "plain"]
    claims = await store.claim_many("p", odd, owner="n1:p", lease=30)
    assert all(c.granted for c in claims)
    finishes = [Finish(k, ItemStatus.DONE, c.token) for k, c in zip(odd, claims, strict=True)]
    assert await store.finish_many("p", finishes) == [True] * len(odd)
    assert await statuses(store, "p", odd) == dict.fromkeys(odd, ItemStatus.DONE)
    # A key delivered twice in one batch: the second claim is refused, so the
    # two never run side by side.
    first, second = await store.claim_many("p", ["twice", "twice"], owner="n1:p", lease=30)
    assert first.granted and (second.granted, second.status) == (False, ItemStatus.RUNNING)
    assert await store.finish("p", "twice", ItemStatus.DONE, token=first.token)


async def test_a_batch_of_finishes_records_each_claim_once_whatever_its_status(
    store: StateStore,
) -> None:
    keys = ["ok", "broke", "unrun", "dead", "again"]
    claims = dict(zip(keys, await store.claim_many("p", keys, owner="n1:p", lease=30), strict=True))
    recorded = await store.finish_many(
        "p",
        [
            Finish("ok", ItemStatus.DONE, claims["ok"].token),
            Finish("broke", ItemStatus.FAILED, claims["broke"].token, "exit 1"),
            Finish("unrun", ItemStatus.PENDING, claims["unrun"].token),
            Finish("dead", ItemStatus.DEAD, claims["dead"].token, "exit 65"),
            Finish("never claimed", ItemStatus.DONE, 1),
        ],
    )
    assert recorded == [True, True, True, True, False]
    # A finished claim takes no second outcome, even with its token.
    late = Finish("ok", ItemStatus.DEAD, claims["ok"].token, "late")
    assert await store.finish_many("p", [late, Finish("dead", ItemStatus.DONE, 9)]) == [False] * 2
    # The same claim twice in one batch: the first outcome is the one recorded.
    recorded = await store.finish_many(
        "p",
        [
            Finish("again", ItemStatus.DONE, claims["again"].token),
            Finish("again", ItemStatus.DEAD, claims["again"].token, "a second outcome"),
        ],
    )
    assert recorded == [True, False]
    got = await store.get("p", [*keys, "never claimed"])
    assert {k: (r.status, r.attempts, r.last_error) for k, r in got.items()} == {
        "ok": (ItemStatus.DONE, 1, ""),
        "broke": (ItemStatus.FAILED, 1, "exit 1"),
        "unrun": (ItemStatus.PENDING, 0, ""),
        "dead": (ItemStatus.DEAD, 1, "exit 65"),
        "again": (ItemStatus.DONE, 1, ""),
    }
    assert (await store.counts())["p"] == {"done": 2, "failed": 1, "pending": 1, "dead": 1}


# -- the SQLite file ------------------------------------------------------------


async def opened(tmp_path: Path, url: str = "sqlite") -> SqliteStore:
    s = SqliteStore(url, tmp_path)
    await s.open()
    return s


async def test_sqlite_outcomes_survive_a_reopen(tmp_path: Path) -> None:
    first = await opened(tmp_path)
    claim = await first.claim("p", "a", owner="n1:p", lease=30)
    assert await first.finish("p", "a", ItemStatus.DONE, token=claim.token)
    await first.aclose()
    second = await opened(tmp_path)
    try:
        refused = await second.claim("p", "a", owner="n2:p", lease=30)
        assert (refused.granted, refused.status) == (False, ItemStatus.DONE)
        assert await second.counts() == {"p": {"done": 1}}
    finally:
        await second.aclose()


async def test_sqlite_items_a_crash_left_running_return_to_pending(tmp_path: Path) -> None:
    crashed = await opened(tmp_path)
    await crashed.recover()  # a runner: it holds state.db.lock
    await crashed.claim("p", "a", owner="old:p", lease=300)
    await crashed.aclose()  # gone without a finish; its lock released as a dead process's is
    restarted = await opened(tmp_path)
    try:
        assert await restarted.recover() == 1  # the lease had long to run: the lock proves it
        assert await statuses(restarted, "p", ["a"]) == {"a": ItemStatus.PENDING}
        assert (await restarted.claim("p", "a", owner="new:p", lease=300)).granted
    finally:
        await restarted.aclose()


async def test_sqlite_a_second_process_on_the_file_never_resets_live_items(
    tmp_path: Path,
) -> None:
    runner = await opened(tmp_path)
    other = await opened(tmp_path)
    try:
        assert await runner.recover() == 0  # takes state.db.lock, held until aclose
        await runner.claim("p", "live", owner="r:p", lease=30)
        await runner.claim("p", "expired", owner="r:p", lease=0.01)
        await asyncio.sleep(0.05)
        assert await other.recover() == 1  # only the one whose lease ran out
        assert await statuses(other, "p", ["live", "expired"]) == {
            "live": ItemStatus.RUNNING,
            "expired": ItemStatus.PENDING,
        }
    finally:
        await other.aclose()
        await runner.aclose()


async def test_sqlite_a_runner_started_later_never_resets_a_live_second_runner(
    tmp_path: Path,
) -> None:
    first = await opened(tmp_path)
    second = await opened(tmp_path)
    await first.recover()
    await second.recover()  # not alone: it recovers only expired leases
    claim = await second.claim("p", "live", owner="second:p", lease=30)
    await first.aclose()  # the first runner stops; the second runs on
    third = await opened(tmp_path)
    try:
        assert await third.recover() == 0
        assert await statuses(third, "p", ["live"]) == {"live": ItemStatus.RUNNING}
        assert await second.finish("p", "live", ItemStatus.DONE, token=claim.token)
    finally:
        await third.aclose()
        await second.aclose()


async def test_sqlite_the_database_is_state_db_in_the_workdir(tmp_path: Path) -> None:
    workdir = tmp_path / "work" / "dir"  # created when missing
    s = await opened(workdir)
    try:
        await s.mark_pending("p", ["a"])
    finally:
        await s.aclose()
    assert s.path == workdir / "state.db"
    assert (workdir / "state.db").is_file()


def test_sqlite_database_paths() -> None:
    work = Path("/srv/work")
    assert database_path("sqlite", work) == work / "state.db"
    assert database_path("sqlite:///var/lib/chute/x.db", work) == Path("/var/lib/chute/x.db")
    assert database_path("sqlite://rel.db", work) == work / "rel.db"
    assert database_path("sqlite://sub/rel.db", work) == work / "sub" / "rel.db"


async def test_sqlite_a_url_with_an_absolute_path_is_used_as_given(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "x.db"
    s = await opened(tmp_path / "work", f"sqlite://{target}")
    await s.aclose()
    assert target.is_file()
    assert not (tmp_path / "work" / "state.db").exists()


async def test_sqlite_a_corrupt_database_is_a_config_error_naming_the_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not a database, just some bytes\x00\xff" * 100)
    store = SqliteStore("sqlite", tmp_path)
    with pytest.raises(ConfigError) as info:
        await store.open()
    [problem] = info.value.problems
    assert problem.startswith("state: cannot open the state database")
    assert str(tmp_path / "state.db") in problem
    assert info.value.__cause__ is None and info.value.__suppress_context__
