"""The autoscaler inside the real worker pool, on the memory broker."""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import msgspec
from chute.autoscale import PoolStats
from chute.config import Duration, PoolConfig, ScaleConfig
from chute.executor import WorkItem
from chute.message import Message
from chute.outcomes import Final
from chute.pool import WorkerPool
from chute.store import ItemStatus
from chute_plugins.brokers.memory import MemoryBroker

FAST = ScaleConfig(
    min=1,
    max=4,
    utilization=0.9,
    interval=Duration(0.05),
    cooldown=Duration(0.5),
    drain_within=Duration(0.5),
    half_life=Duration(0.5),
)


class Gauge:
    """Counts the items inside the executor right now, and the most ever."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0

    def enter(self) -> None:
        self.running += 1
        self.most = max(self.most, self.running)

    def leave(self) -> None:
        self.running -= 1


class SleepExecutor:
    Options: ClassVar[type[msgspec.Struct]] = msgspec.Struct

    def __init__(self, gauge: Gauge, seconds: float = 0.05, gate: anyio.Event | None = None):
        self.gauge = gauge
        self.seconds = seconds
        self.gate = gate
        self.entered = anyio.Event()
        self.entries: list[int] = []
        """Items running (this one included) as each item starts."""

    async def run(self, item: WorkItem) -> Any:
        self.gauge.enter()
        self.entries.append(self.gauge.running)
        self.entered.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            await anyio.sleep(self.seconds)
            return item.data
        finally:
            self.gauge.leave()

    async def aclose(self) -> None:
        pass


async def make_pool(
    executor: SleepExecutor, scale: ScaleConfig, on_final: Any = None
) -> tuple[MemoryBroker, WorkerPool]:
    broker = MemoryBroker()
    await broker.start()
    await broker.declare_topic("jobs", capacity=10_000)
    cfg = PoolConfig(topic="jobs", executor={"type": "test"}, scale=scale, track=False)
    pool = WorkerPool(
        "work", cfg, broker=broker, executor=executor, store=None, node="t", on_final=on_final
    )
    await pool.prepare(visibility_timeout=30)
    return broker, pool


async def test_pool_scales_up_under_load_never_past_max_and_back_down_when_idle() -> None:
    gauge = Gauge()
    done = anyio.Event()
    finished: list[ItemStatus] = []
    count = 160

    async def on_final(pool: WorkerPool, finals: list[Final]) -> None:
        finished.extend(status for _, status, _ in finals)
        if len(finished) == count:
            done.set()

    broker, pool = await make_pool(SleepExecutor(gauge), FAST, on_final)
    samples: list[tuple[int, int]] = []  # (running in the executor, concurrency limit)
    back_at_min = anyio.Event()
    up = anyio.Event()  # the autoscaler has taken its first look (its baseline)

    async def sample() -> None:
        while True:  # the test's 100 ms sampler, as the issue asks
            samples.append((gauge.running, pool.concurrency))
            if pool.counters.scale is not None:
                up.set()
            if done.is_set() and pool.concurrency == FAST.min:
                back_at_min.set()
            await anyio.sleep(0.1)

    stop = anyio.Event()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, stop, 5.0)
            tg.start_soon(sample)
            # Not wait_all_tasks_blocked: its 100 ms checks can lock in phase with the
            # autoscaler's 50 ms ticks and the sampler's 100 ms, and never see all asleep.
            await up.wait()
            # 160 items of 50 ms: 8 worker-seconds, far more than one worker drains in time
            await broker.publish("jobs", [Message(key=f"k{i}", data=i) for i in range(count)])
            await done.wait()
            stats = pool.counters.scale
            await back_at_min.wait()
            stop.set()
            tg.cancel_scope.cancel()
    await broker.aclose()

    assert finished == [ItemStatus.DONE] * count
    assert max(limit for _, limit in samples) == FAST.max  # it scaled up...
    assert max(running for running, _ in samples) <= FAST.max
    assert gauge.most <= FAST.max  # ...never past max, not even between samples
    assert pool.concurrency == FAST.min  # ...and came back down once idle
    assert isinstance(stats, PoolStats)
    assert stats.service_time > 0.04 and stats.arrived == count and stats.scale_changes >= 1


async def test_scaling_down_lets_running_items_finish() -> None:
    gauge = Gauge()
    gate = anyio.Event()
    fixed = msgspec.structs.replace(FAST, min=4, max=4)  # the test moves the limit itself
    executor = SleepExecutor(gauge, seconds=0.0, gate=gate)
    finished: list[ItemStatus] = []
    all_done = anyio.Event()

    async def on_final(pool: WorkerPool, finals: list[Final]) -> None:
        finished.extend(status for _, status, _ in finals)
        if len(finished) == 8:
            all_done.set()

    broker, pool = await make_pool(executor, fixed, on_final)
    stop = anyio.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, stop, 5.0)
            await broker.publish("jobs", [Message(key=f"k{i}", data=i) for i in range(8)])
            while gauge.running < 4:  # the four slots fill up
                executor.entered = anyio.Event()
                await executor.entered.wait()
            pool.set_concurrency(1)
            gate.set()
            await all_done.wait()
            stop.set()
    await broker.aclose()

    # the four running items finished; the other four then ran one at a time
    assert finished == [ItemStatus.DONE] * 8
    assert pool.counters.failed == 0
    assert executor.entries == [1, 2, 3, 4, 1, 1, 1, 1]
    assert pool.concurrency == 1
