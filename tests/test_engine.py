"""The engine as a library (the edge-box use) and the pool's settle rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from chute.config import config_from_dict
from chute.engine import Runtime
from chute.message import new_message
from chute.store import ItemStatus

from .helpers import tasks


def make_config(tmp_path: Path, **pools: dict[str, Any]) -> Any:
    doc: dict[str, Any] = {
        "workdir": str(tmp_path / "work"),
        "state": "sqlite",
        "topics": {"jobs": {"visibility_timeout": "5s"}},
        "pools": pools,
    }
    return config_from_dict(doc, path="test.toml", base_dir=str(tmp_path))


def pool(function: str, **extra: Any) -> dict[str, Any]:
    return {
        "topic": "jobs",
        "executor": {"type": "python", "function": f"tests.helpers.tasks:{function}"},
        "track": False,
        **extra,
    }


async def test_embedded_runtime_publishes_waits_and_stops(tmp_path: Path) -> None:
    config = make_config(tmp_path, work=pool("slow_double", concurrency=4))
    async with Runtime(config) as rt:
        for n in range(10):
            await rt.publish("jobs", {"n": n, "sleep": 0.01}, key=f"job-{n}")
        outcomes = [await rt.wait_for("work", f"job-{n}") for n in range(10)]
        status = await rt.status()
    assert [o.result for o in outcomes] == [{"n": 2 * n} for n in range(10)]
    assert all(o.status is ItemStatus.DONE for o in outcomes)
    [counters] = status.pools
    assert counters.succeeded == 10 and counters.in_flight == 0


async def test_runtime_inside_the_callers_task_group(tmp_path: Path) -> None:
    config = make_config(tmp_path, work=pool("double"))
    rt = Runtime(config)
    async with anyio.create_task_group() as tg:
        await tg.start(rt.run)
        await rt.publish("jobs", {"n": 21}, key="x")
        assert (await rt.wait_for("work", "x")).result == {"n": 42}
        rt.stop()
    assert rt.pools["work"].counters.succeeded == 1


async def test_failures_are_retried_then_succeed(tmp_path: Path) -> None:
    tasks.calls.clear()
    config = make_config(
        tmp_path, work=pool("flaky", retry={"attempts": 3, "backoff": "10ms", "jitter": 0})
    )
    async with Runtime(config) as rt:
        await rt.publish("jobs", {"n": 7, "fail": 2}, key="k7")
        outcome = await rt.wait_for("work", "k7")
    assert outcome.status is ItemStatus.DONE
    assert tasks.calls["7"] == 3
    assert rt.pools["work"].counters.failed == 2


async def test_exhausted_retries_go_to_the_dead_letters_and_others_continue(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        work=pool("expects_number", retry={"attempts": 2, "backoff": "10ms"}),
    )
    async with Runtime(config) as rt:
        await rt.broker.ensure_group("work.dead", "inspect", visibility_timeout=60)
        await rt.publish("jobs", {"n": "not a number"}, key="bad")
        await rt.publish("jobs", {"n": 1}, key="good")
        bad = await rt.wait_for("work", "bad")
        good = await rt.wait_for("work", "good")
        [dead] = await rt.broker.read("work.dead", "inspect", "t", count=10, block=1.0)
    assert good.status is ItemStatus.DONE and good.result == {"n": 2}
    assert bad.status is ItemStatus.DEAD and "ValueError" in bad.result
    assert dead.key == "bad" and dead.data == {"n": "not a number"}
    assert dead.headers["chute-attempts"] == "2" and "ValueError" in dead.headers["chute-error"]


async def test_permanent_failure_skips_the_retries(tmp_path: Path) -> None:
    config = make_config(tmp_path, work=pool("rejects", retry={"attempts": 5, "backoff": "10ms"}))
    async with Runtime(config) as rt:
        await rt.publish("jobs", {"n": 1}, key="r")
        outcome = await rt.wait_for("work", "r")
    assert outcome.status is ItemStatus.DEAD
    assert rt.pools["work"].counters.failed == 1


async def test_pipeline_output_feeds_the_next_pool(tmp_path: Path) -> None:
    doc = {
        "workdir": str(tmp_path / "w"),
        "pools": {
            "first": pool("double", output="mid"),
            "second": {**pool("double"), "topic": "mid"},
        },
        "topics": {"jobs": {}},
    }
    config = config_from_dict(doc, path="t.toml", base_dir=str(tmp_path))
    async with Runtime(config) as rt:
        await rt.publish("jobs", {"n": 5}, key="a")
        assert (await rt.wait_for("second", "a")).result == {"n": 20}


async def test_until_idle_stops_when_drained(tmp_path: Path) -> None:
    doc = {
        "workdir": str(tmp_path / "w"),
        "sources": {"gen": {"type": "generate", "topic": "jobs", "count": 50}},
        "pools": {"work": pool("double", concurrency=3)},
    }
    rt = Runtime(config_from_dict(doc, path="t.toml", base_dir=str(tmp_path)), until_idle=True)
    with anyio.fail_after(20):
        await rt.run()
    assert rt.pools["work"].counters.succeeded == 50


async def test_shutdown_lets_running_items_finish_within_the_grace(tmp_path: Path) -> None:
    doc = {
        "workdir": str(tmp_path / "w"),
        "shutdown_grace": "5s",
        "topics": {"jobs": {}},
        "pools": {"work": pool("slow_double", concurrency=2)},
    }
    config = config_from_dict(doc, path="t.toml", base_dir=str(tmp_path))
    async with Runtime(config) as rt:
        await rt.publish("jobs", {"n": 1, "sleep": 0.3}, key="long")
        await anyio.sleep(0.1)
        assert rt.pools["work"].counters.in_flight == 1
    # leaving the block stopped the runtime; the running item was allowed to finish
    assert rt.pools["work"].counters.succeeded == 1


async def test_shutdown_cancels_items_past_the_grace(tmp_path: Path) -> None:
    doc = {
        "workdir": str(tmp_path / "w"),
        "shutdown_grace": "100ms",
        "topics": {"jobs": {}},
        "pools": {"work": pool("slow_double", concurrency=2)},
    }
    config = config_from_dict(doc, path="t.toml", base_dir=str(tmp_path))
    with anyio.fail_after(5):
        async with Runtime(config) as rt:
            await rt.publish("jobs", {"n": 1, "sleep": 30}, key="stuck")
            await anyio.sleep(0.1)
    counters = rt.pools["work"].counters
    assert counters.succeeded == 0 and counters.in_flight == 0


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_never_more_running_than_the_limit(tmp_path: Path, concurrency: int) -> None:
    config = make_config(tmp_path, work=pool("slow_double", concurrency=concurrency))
    peak = 0
    async with Runtime(config) as rt:
        for n in range(12):
            await rt.publish("jobs", {"n": n, "sleep": 0.02}, key=str(n))
        for n in range(12):
            while (str(n)) not in {k for (_, k) in rt._outcomes}:
                peak = max(peak, rt.pools["work"].counters.in_flight)
                await anyio.sleep(0.002)
    assert 1 <= peak <= concurrency


async def test_items_fetched_but_not_started_at_shutdown_go_back_pending(tmp_path: Path) -> None:
    """A batch is claimed as it is fetched; what never started is given back, unclaimed."""
    from chute_plugins.stores.sqlite import SqliteStore

    config = make_config(tmp_path, work=pool("slow_double", concurrency=1, track=True))
    async with Runtime(config) as rt:
        rt.pools["work"]._service_time = 0.001  # as after many quick items: fetch a big batch
        # One publish: the pool fetches the five as one batch, whatever the broker.
        await rt.publish_many(
            "jobs", [new_message({"n": n, "sleep": 0.3}, key=f"item-{n}") for n in range(5)]
        )
        await anyio.sleep(0.1)
        assert rt.pools["work"].counters.in_flight == 1
    assert rt.pools["work"].counters.succeeded == 1  # the running one finished in the grace

    store = SqliteStore("sqlite", tmp_path / "work")
    await store.open()
    try:
        records = await store.get("work", [f"item-{n}" for n in range(5)])
    finally:
        await store.aclose()
    assert records["item-0"].status == ItemStatus.DONE
    assert {(records[f"item-{n}"].status, records[f"item-{n}"].attempts) for n in range(1, 5)} == {
        (ItemStatus.PENDING, 0)
    }


@pytest.mark.parametrize(
    ("function", "thread"), [("exits", False), ("exits", True), ("exits_async", False)]
)
async def test_sys_exit_or_keyboard_interrupt_in_a_python_function_fails_only_that_item(
    tmp_path: Path, function: str, thread: bool
) -> None:
    work = pool(function, retry={"attempts": 1})
    work["executor"]["thread"] = thread
    async with Runtime(make_config(tmp_path, work=work)) as rt:
        await rt.publish("jobs", {"exit": "exit"}, key="exit")
        await rt.publish("jobs", {"exit": "interrupt"}, key="interrupt")
        await rt.publish("jobs", {"n": 1}, key="fine")
        with anyio.fail_after(10):
            outcomes = {k: await rt.wait_for("work", k) for k in ("exit", "interrupt", "fine")}
    assert outcomes["fine"].status is ItemStatus.DONE
    assert outcomes["exit"].status is ItemStatus.DEAD
    assert "SystemExit: 3" in outcomes["exit"].result
    assert outcomes["interrupt"].status is ItemStatus.DEAD
    assert "KeyboardInterrupt: bad item" in outcomes["interrupt"].result


async def test_a_consumer_changing_its_message_changes_no_other_delivery(tmp_path: Path) -> None:
    # Pool a changes the data it is given in place and fails; pool b reads the
    # same topic, a's retry and a's dead letter must all see the data as published.
    tasks.seen.clear()
    config = make_config(
        tmp_path,
        a=pool("mutate_then_fail", retry={"attempts": 2, "backoff": "10ms", "jitter": 0}),
        b=pool("look"),
    )
    config.settings.broker = "memory"
    async with Runtime(config) as rt:
        await rt.broker.ensure_group("a.dead", "reader", visibility_timeout=30)
        await rt.publish("jobs", {"n": 1}, key="k")
        with anyio.fail_after(10):
            dead = await rt.wait_for("a", "k")
            await rt.wait_for("b", "k")
        letters = await rt.broker.read("a.dead", "reader", "me", count=10, block=None)
    assert dead.status is ItemStatus.DEAD
    assert sorted(tasks.seen, key=str) == [("a", {"n": 1}), ("a", {"n": 1}), ("b", {"n": 1})]
    assert [m.data for m in letters] == [{"n": 1}]
