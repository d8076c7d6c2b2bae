"""A pool's ``timeout``: each item is stopped at its own limit, and nothing else is.

The pool keeps one timer for all of its items, and each worker runs its
items in a cancel scope it keeps until a limit cuts it (``time_limit.py``),
so these check what a timer and a scope per item gave for free: a long item
is stopped on time while short ones keep starting and ending (each end moves
the earliest deadline), an item that started later is not stopped at an
earlier item's limit, the items a worker takes after a cut run to their own
limits, a result that came as the limit was reached is kept, a shutdown is
not a timeout, and a shield inside the executor holds.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import anyio
import pytest
from chute import Runtime, load_config
from chute.engine import Outcome
from chute.message import Message
from chute.store import ItemStatus
from chute.time_limit import TimeLimit

from tests.helpers.configs import python_pool

TIMED = """\
import time, anyio
spans = {}
async def work(item):
    started = time.monotonic()
    try:
        await anyio.sleep(item["sleep"])
    finally:
        spans.setdefault(item["name"], []).append((started, time.monotonic()))
    return item["name"]
"""

RACY = (
    TIMED
    + """
import asyncio
async def work(item, timed=work):
    if "block" not in item:
        return await timed(item)
    # Its result comes in the same turn of the event loop as its time limit:
    # it blocks past the limit with the result already on its way.
    loop = asyncio.get_running_loop()
    result = loop.create_future()
    loop.call_soon(result.set_result, item["name"])
    time.sleep(item["block"])
    return await result
"""
)


def _runtime(tmp_path: Path, module: str, *, concurrency: int, timeout: str,
             code: str = TIMED) -> Runtime:  # fmt: skip
    (tmp_path / f"{module}.py").write_text(code)
    settings = 'broker = "memory"\nlog_level = "error"'
    pool = f'track = false\ntimeout = "{timeout}"\nretry = {{ attempts = 2, backoff = "10ms" }}'
    config = python_pool(tmp_path, module, concurrency=concurrency, settings=settings, pool=pool)
    return Runtime(load_config(config))


def _item(name: str, sleep: float) -> Message:
    return Message(data={"name": name, "sleep": sleep}, key=name)


async def _one_then_another(
    rt: Runtime, first: Message, gap: float, second: Message
) -> tuple[Outcome, Outcome]:
    """Publish ``first``, ``gap`` seconds later ``second``; both outcomes."""
    await rt.broker.publish("jobs", [first])
    await anyio.sleep(gap)
    await rt.broker.publish("jobs", [second])
    with anyio.fail_after(20):
        return await rt.wait_for("work", first.key), await rt.wait_for("work", second.key)


async def test_a_long_item_is_stopped_at_its_limit_while_short_items_come_and_go(
    tmp_path: Path,
) -> None:
    async with _runtime(tmp_path, "limit_busy", concurrency=2, timeout="300ms") as rt:
        await rt.broker.publish("jobs", [_item("long", 30)])
        shorts = []
        for n in range(40):  # one worker starts and ends an item every 25 ms meanwhile
            shorts.append(f"short-{n}")
            await rt.broker.publish("jobs", [_item(shorts[-1], 0.02)])
            await anyio.sleep(0.005)
        with anyio.fail_after(20):
            long = await rt.wait_for("work", "long")
            done = [await rt.wait_for("work", name) for name in shorts]
    from limit_busy import spans  # type: ignore[import-not-found]

    assert long == Outcome(ItemStatus.DEAD, "timed out after 0.3s")
    assert all(outcome.status is ItemStatus.DONE for outcome in done)
    assert len(spans["long"]) == 2  # retried once, stopped both times
    for started, ended in spans["long"]:
        assert 0.3 <= ended - started < 5, "stopped at its own limit, not at 30 s"


async def test_an_item_is_stopped_after_the_one_that_set_the_timer_has_ended(
    tmp_path: Path,
) -> None:
    async with _runtime(tmp_path, "limit_alone", concurrency=2, timeout="300ms") as rt:
        # "short" sets the timer for its own deadline and ends; when the timer fires,
        # "long" is the only item left, with 100 ms still to go.
        _, long = await _one_then_another(rt, _item("short", 0.05), 0.1, _item("long", 30))
    from limit_alone import spans  # type: ignore[import-not-found]

    assert long == Outcome(ItemStatus.DEAD, "timed out after 0.3s")
    assert [ended - started < 5 for started, ended in spans["long"]] == [True, True]


async def test_an_item_that_started_later_runs_to_its_own_limit(tmp_path: Path) -> None:
    async with _runtime(tmp_path, "limit_later", concurrency=2, timeout="500ms") as rt:
        first, second = await _one_then_another(rt, _item("first", 30), 0.3, _item("second", 0.4))
    from limit_later import spans  # type: ignore[import-not-found]

    # The timer fired for "first" while "second" had 0.2 s of its limit left.
    assert first.status is ItemStatus.DEAD
    assert second == Outcome(ItemStatus.DONE, "second")
    assert len(spans["second"]) == 1


async def test_the_items_a_worker_takes_after_a_cut_run_to_their_own_limits(
    tmp_path: Path,
) -> None:
    # One worker: every item after "long" runs in the lane that replaced the cut one.
    async with _runtime(tmp_path, "limit_after", concurrency=1, timeout="300ms") as rt:
        await rt.broker.publish("jobs", [_item("long", 30)])
        await rt.broker.publish("jobs", [_item(f"next-{n}", 0.1) for n in range(3)])
        with anyio.fail_after(20):
            long = await rt.wait_for("work", "long")
            after = [await rt.wait_for("work", f"next-{n}") for n in range(3)]
    from limit_after import spans  # type: ignore[import-not-found]

    assert long == Outcome(ItemStatus.DEAD, "timed out after 0.3s")
    assert after == [Outcome(ItemStatus.DONE, f"next-{n}") for n in range(3)]
    assert all(len(spans[f"next-{n}"]) == 1 for n in range(3))


async def test_a_result_that_came_as_the_limit_was_reached_is_kept(tmp_path: Path) -> None:
    async with _runtime(tmp_path, "limit_racy", concurrency=1, timeout="200ms",
                        code=RACY) as rt:  # fmt: skip
        racy = Message(data={"name": "racy", "block": 0.3}, key="racy")
        await rt.broker.publish("jobs", [racy, _item("then", 0.05)])
        with anyio.fail_after(20):
            outcomes = [await rt.wait_for("work", "racy"), await rt.wait_for("work", "then")]
    assert outcomes == [Outcome(ItemStatus.DONE, "racy"), Outcome(ItemStatus.DONE, "then")]


async def test_a_lane_is_left_without_a_cancellation_pending() -> None:
    loop = asyncio.get_running_loop()

    async def racy() -> str:
        result: asyncio.Future[str] = loop.create_future()
        loop.call_soon(result.set_result, "done")
        time.sleep(0.1)  # noqa: ASYNC251 - the result and the limit come in one turn
        return await result

    limit = TimeLimit(0.05)
    with limit.lane() as lane:
        assert await lane.run(racy()) == "done"
        assert lane.cut
    await anyio.sleep(0.05)  # after the lane: not cancelled
    limit.close()


async def test_a_shutdown_is_not_a_timeout() -> None:
    limit = TimeLimit(0.2)
    with anyio.CancelScope() as outer:

        async def stop_soon() -> None:
            await anyio.sleep(0.05)
            outer.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_soon)
            with limit.lane() as lane:
                await lane.run(anyio.sleep(5))
            pytest.fail("the shutdown's cancellation was swallowed")
    assert outer.cancelled_caught
    limit.close()


async def test_a_shield_inside_the_item_holds_against_its_limit() -> None:
    cleaned = []

    async def item_reaping_its_child() -> None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.3)  # past the limit
            cleaned.append(True)
        await anyio.sleep(5)

    started = time.monotonic()
    with pytest.raises(TimeoutError), TimeLimit(0.1).lane() as lane:
        await lane.run(item_reaping_its_child())
    assert cleaned == [True]
    assert time.monotonic() - started < 5


async def test_a_command_past_its_limit_is_stopped_and_reaped(tmp_path: Path) -> None:
    # The user's path: a program that hangs (an ffmpeg on a bad file) under a pool's timeout.
    pids = tmp_path / "pids"
    hang = tmp_path / "hang.py"
    hang.write_text(f"import os, time\nopen({str(pids)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
                    "time.sleep(600)\n")  # fmt: skip
    config = tmp_path / "hang.toml"
    config.write_text(f"""\
broker = "memory"
log_level = "error"
[topics.jobs]
[pools.work]
topic = "jobs"
track = false
timeout = "300ms"
retry = {{ attempts = 2, backoff = "10ms" }}
executor = {{ type = "command", argv = ["{sys.executable}", "{hang}"], grace = "200ms" }}
""")
    async with Runtime(load_config(config)) as rt:
        await rt.publish("jobs", {}, key="hangs")
        with anyio.fail_after(20):
            outcome = await rt.wait_for("work", "hangs")
    assert outcome == Outcome(ItemStatus.DEAD, "timed out after 0.3s")
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 2
    for pid in started:  # stopped and reaped: gone, not even a zombie
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
