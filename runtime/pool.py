"""A worker pool: consume a topic, run the executor on each item, settle it.

Concurrency is an anyio CapacityLimiter whose ``total_tokens`` the autoscaler
moves at run time: growing starts more items at once; shrinking lets running
items finish and starts no new ones until the pool is under the new limit.

Each item is settled in one order, so a crash anywhere repeats work at most
and never loses it: publish the result downstream, record the outcome in the
state store, then acknowledge the delivery. Acks are batched by one flusher
task (a Redis round trip per item would cap throughput).
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import nullcontext
from typing import Any, TypeVar

import anyio
import msgspec

from .autoscale import PoolStats, Scaler
from .broker import Broker
from .config import PoolConfig
from .errors import ItemFailed
from .executor import Executor, WorkItem
from .message import Message
from .store import Claim, ItemStatus, StateStore

log = logging.getLogger("chute.pool")
T = TypeVar("T")

OnFinal = Callable[["WorkerPool", Message, ItemStatus, Any], Awaitable[None]]
"""Called once an item is done or dead (result, or the error text)."""

_OUTPUT_TAIL = 4000
"""Characters of an executor's output kept in a dead letter."""


class PoolCounters(msgspec.Struct, kw_only=True):
    name: str
    topic: str
    concurrency: int
    in_flight: int = 0
    succeeded: int = 0
    failed: int = 0
    """Failed attempts (each retry counts)."""
    dead: int = 0
    skipped: int = 0
    """Deliveries of items already done (a restart, or a duplicate)."""
    last_error: str = ""
    scale: PoolStats | None = None
    """The autoscaler's statistics and target as of its last tick."""


def retry_delay(cfg: PoolConfig, attempt: int) -> float:
    """Exponential backoff from the retry table, with jitter so a burst spreads out."""
    r = cfg.retry
    base = min(r.max_backoff, r.backoff * math.pow(2, max(0, attempt - 1)))
    return base * (1.0 + random.uniform(0.0, max(0.0, r.jitter)))


class WorkerPool:
    def __init__(
        self,
        name: str,
        cfg: PoolConfig,
        *,
        broker: Broker,
        executor: Executor,
        store: StateStore | None,
        node: str,
        on_final: OnFinal | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.topic = cfg.topic
        self.group = cfg.group or name
        self.dead_topic = f"{name}.dead"
        self.consumer = f"{node}:{name}"
        self.node = node
        self.broker = broker
        self.executor = executor
        self.store = store if cfg.track else None
        self.on_final = on_final
        scale = cfg.scale_or_fixed()
        self.limiter = anyio.CapacityLimiter(max(1, scale.min))
        self.scaler = Scaler(name, scale)
        self.counters = PoolCounters(name=name, topic=self.topic, concurrency=scale.min)
        self._changed: anyio.Event | None = None
        self._acks: list[str] = []
        self._acks_ready = anyio.Event()
        self._buffer: list[Message] = []
        self._read_lock = anyio.Lock()
        self._stopping = False
        self._intake_scopes: set[anyio.CancelScope] = set()
        self._service_time = 1.0
        """Seconds per item, smoothed over about the last 20 items (sizes prefetch)."""
        self._lease = 300.0
        self.item_started: Callable[[float], None] | None = None
        self.item_finished: Callable[[float, float], None] | None = None
        self.items_arrived: Callable[[int, float], None] | None = None

    @property
    def changed(self) -> anyio.Event:
        """An event set when the next item finishes (idle detection waits on it)."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    # -- configuration at run time -----------------------------------------

    @property
    def concurrency(self) -> int:
        return int(self.limiter.total_tokens)

    def set_concurrency(self, n: int) -> None:
        """Change the limit now; running items are never interrupted."""
        self.limiter.total_tokens = max(1, n)
        self.counters.concurrency = max(1, n)

    async def prepare(self, visibility_timeout: float) -> None:
        await self.broker.ensure_group(
            self.topic, self.group, visibility_timeout=visibility_timeout
        )
        # The store's lease lasts as long as the broker's patience: when a
        # dead node's delivery goes to another consumer, the item's lease has
        # expired too, so the new owner may run it at once.
        self._lease = visibility_timeout

    # -- running -------------------------------------------------------------

    async def run(self, stop: anyio.Event, grace: float) -> None:
        """Consume until ``stop`` is set, then drain in-flight items for ``grace`` seconds.

        One long-lived task per possible worker (the scale's ``max``); the
        limiter decides how many of them may hold an item. Spawning a task per
        item costs more than a whole no-op item.
        """
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._flush_acks_forever)
            outer.start_soon(self._autoscale)
            async with anyio.create_task_group() as workers:
                for _ in range(self.cfg.scale_or_fixed().max):
                    workers.start_soon(self._worker)
                await stop.wait()
                self._stopping = True
                for scope in self._intake_scopes:
                    scope.cancel()
                # Drain: running items get the grace period, then are cancelled
                # (their deliveries stay pending and come back later).
                workers.cancel_scope.deadline = anyio.current_time() + grace
            with anyio.CancelScope(shield=True):
                await self._return_buffer()
                await self._flush_acks()
            outer.cancel_scope.cancel()

    async def _autoscale(self) -> None:
        def report(stats: PoolStats) -> None:
            self.counters.scale = stats

        await self.scaler.run(
            self.set_concurrency,
            topic=functools.partial(self.broker.stats, self.topic),
            group=self.group,
            report=report,
        )

    async def _worker(self) -> None:
        while not self._stopping:
            # Fast path without a checkpoint: a free slot and a buffered message.
            try:
                self.limiter.acquire_nowait()
            except anyio.WouldBlock:
                acquired, _ = await self._interruptible(self.limiter.acquire())
                if not acquired:
                    return
            message = self._buffer.pop() if self._buffer else None
            if message is None:
                _, message = await self._interruptible(self._next_message())
            if message is None:  # stopping
                self.limiter.release()
                return
            try:
                await self._process(message)
            finally:
                self.limiter.release()

    async def _interruptible(self, waiting: Coroutine[Any, Any, T]) -> tuple[bool, T | None]:
        """Await intake work that ``stop`` interrupts: (completed, its result)."""
        scope = anyio.CancelScope()
        self._intake_scopes.add(scope)
        if self._stopping:
            scope.cancel()
        try:
            with scope:
                return True, await waiting
            return False, None
        finally:
            self._intake_scopes.discard(scope)
            waiting.close()  # never started when cancelled up front

    async def _next_message(self) -> Message:
        async with self._read_lock:
            return await self._fetch()

    async def _fetch(self) -> Message:
        while not self._buffer:
            # Fetch no more than can start soon: a delivery waiting in our
            # buffer ages towards its visibility timeout.
            # Take what the waiting workers can start now, and for quick items
            # what the pool finishes within about a second: more would age
            # towards the visibility timeout in our buffer.
            waiting = int(self.limiter.borrowed_tokens) - self.counters.in_flight
            soon = int(self.concurrency / max(self._service_time, 1e-4))
            want = max(1, min(self.cfg.batch, max(waiting, soon)))
            got = await self.broker.read(
                self.topic, self.group, self.consumer, count=want, block=1.0
            )
            if got:
                if self.items_arrived is not None:
                    self.items_arrived(len(got), time.monotonic())
                got.reverse()  # pop() from the end keeps delivery order
                self._buffer = got
        return self._buffer.pop()

    async def _return_buffer(self) -> None:
        if self._buffer:
            ids = [m.id for m in self._buffer]
            self._buffer = []
            await self.broker.nack(self.topic, self.group, ids, delay=0.0)

    # -- one item ------------------------------------------------------------

    async def _process(self, message: Message) -> None:
        counters = self.counters
        counters.in_flight += 1
        started = time.monotonic()
        self.scaler.started(started)
        if self.item_started is not None:
            self.item_started(started)
        try:
            await self._settle(message)
        finally:
            counters.in_flight -= 1
            ended = time.monotonic()
            elapsed = ended - started
            self._service_time += (elapsed - self._service_time) * 0.05
            self.scaler.finished(elapsed, ended)
            if self.item_finished is not None:
                self.item_finished(time.monotonic() - started, time.monotonic())
            if self._changed is not None:
                self._changed.set()
                self._changed = None

    async def _settle(self, message: Message) -> None:
        key = message.key or message.id
        claim = Claim(granted=True)
        if self.store is not None:
            claim = await self.store.claim(self.name, key, owner=self.consumer, lease=self._lease)
            if not claim.granted:
                if claim.status in (ItemStatus.DONE, ItemStatus.DEAD):
                    self.counters.skipped += 1
                    self._ack(message.id)
                    # Tell the source again: a crash may have come between the
                    # outcome and the source filing the item away.
                    if self.on_final is not None:
                        await self.on_final(self, message, claim.status, None)
                else:  # another node holds a live lease on it: look again later
                    await self.broker.nack(self.topic, self.group, [message.id], delay=5.0)
                return
        item = WorkItem(
            name=key, data=message.data, attempt=message.attempt, message=message, pool=self.name
        )
        try:
            if self.cfg.timeout:
                with anyio.fail_after(self.cfg.timeout):
                    result = await self.executor.run(item)
            else:
                result = await self.executor.run(item)
        except TimeoutError:
            await self._failed(message, claim, ItemFailed(f"timed out after {self.cfg.timeout:g}s"))
        except ItemFailed as exc:
            await self._failed(message, claim, exc)
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            await self._failed(message, claim, ItemFailed(f"{type(exc).__name__}: {exc}"))
        else:
            await self._succeeded(message, claim, result)

    async def _succeeded(self, message: Message, claim: Claim, result: Any) -> None:
        # Shielded: once the executor succeeded, a shutdown must not stop
        # the result from being recorded (the scope costs, so only if needed).
        shielded = bool(self.cfg.output) or self.store is not None
        with anyio.CancelScope(shield=True) if shielded else nullcontext():
            if self.cfg.output:
                headers = {**message.headers, "chute-from": self.name}
                out = Message(key=message.key, data=result, headers=headers)
                await self.broker.publish(self.cfg.output, [out])
            if self.store is not None:
                await self.store.finish(
                    self.name, message.key or message.id, ItemStatus.DONE, token=claim.token
                )
            self._ack(message.id)
            self.counters.succeeded += 1
            if self.on_final is not None:
                await self.on_final(self, message, ItemStatus.DONE, result)

    async def _failed(self, message: Message, claim: Claim, exc: ItemFailed) -> None:
        key = message.key or message.id
        self.counters.failed += 1
        self.counters.last_error = exc.reason
        last = exc.permanent or message.attempt >= self.cfg.retry.attempts
        with anyio.CancelScope(shield=True):
            if not last:
                delay = retry_delay(self.cfg, message.attempt)
                log.warning(
                    "pool %s: item %r failed (attempt %d of %d), retrying in %.1fs: %s",
                    self.name, key, message.attempt, self.cfg.retry.attempts, delay, exc.reason,
                )  # fmt: skip
                if self.store is not None:
                    await self.store.finish(
                        self.name, key, ItemStatus.FAILED, token=claim.token, error=exc.reason
                    )
                await self.broker.nack(self.topic, self.group, [message.id], delay=delay)
                return
            why = "permanent failure" if exc.permanent else f"failed {message.attempt} times"
            log.error("pool %s: item %r is dead (%s): %s", self.name, key, why, exc.reason)
            headers = {
                **message.headers,
                "chute-error": exc.reason[:2000],
                "chute-pool": self.name,
                "chute-attempts": str(message.attempt),
                "chute-output": exc.output[-_OUTPUT_TAIL:],
                "chute-message-id": message.id,
            }
            dead = Message(key=message.key, data=message.data, headers=headers)
            await self.broker.publish(self.dead_topic, [dead])
            if self.store is not None:
                await self.store.finish(
                    self.name, key, ItemStatus.DEAD, token=claim.token, error=exc.reason
                )
            self._ack(message.id)
            self.counters.dead += 1
            if self.on_final is not None:
                await self.on_final(self, message, ItemStatus.DEAD, exc.reason)

    # -- acknowledgements ----------------------------------------------------

    def _ack(self, message_id: str) -> None:
        self._acks.append(message_id)
        self._acks_ready.set()

    async def _flush_acks(self) -> None:
        if self._acks:
            ids, self._acks = self._acks, []
            await self.broker.ack(self.topic, self.group, ids)

    async def _flush_acks_forever(self) -> None:
        while True:
            await self._acks_ready.wait()
            self._acks_ready = anyio.Event()
            with anyio.CancelScope(shield=True):
                await self._flush_acks()
