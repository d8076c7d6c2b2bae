"""A worker pool: consume a topic, run the executor on each item, settle it.

Concurrency is a count of slots (``Slots``) that the autoscaler resizes at
run time: growing starts more items at once; shrinking lets running items
finish and starts no new ones until the pool is under the new limit.

Each item is settled in one order, so a crash anywhere repeats work at most
and never loses it: claim it in the state store, run it, publish the result
downstream, record the outcome, then acknowledge the delivery. The store and
the broker see batches, never single items: a fetched batch is claimed in
one call, and final outcomes are recorded and acknowledged in passes
(``outcomes.py``).

While items run (or wait in the buffer), a heartbeat (``heartbeat.py``)
extends their deliveries and their leases, so an item that runs longer than
the visibility timeout is never redelivered, nor claimed by anyone, while it
runs. Two messages with one key never run at once: the store refuses the
second claim while the first one's lease lives (without a store, the pool
holds back keys it runs).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
import msgspec

from .autoscale import PoolStats, Scaler
from .broker import Broker
from .config import PoolConfig
from .errors import ExecutorUnavailable, ItemFailed
from .executor import Executor, WorkItem
from .heartbeat import Heartbeat
from .message import Message
from .meters import SECONDS_BUCKETS, Histogram
from .outcomes import Final, Outcomes, warn_fenced
from .slots import Slots
from .stopping import Deadline
from .store import Claim, Finish, ItemStatus, StateStore
from .time_limit import Lane, TimeLimit

log = logging.getLogger("chute.pool")
T = TypeVar("T")

OnFinal = Callable[["WorkerPool", list[Final]], Awaitable[None]]
"""Called with the items that are done or dead, once their outcomes are recorded."""

_OUTPUT_TAIL = 4000
"""Characters of an executor's output kept in a dead letter."""

_BUSY_KEY_DELAY = 5.0
"""Seconds before a delivery whose key is running elsewhere is looked at again."""

_HELD_MOST = 1000
"""Deliveries a pool without a store holds behind running keys; beyond, they go back
to the broker for ``_BUSY_KEY_DELAY`` (a topic of one key must not fill our memory)."""

FINAL_FLUSH = 1.5
"""Seconds after the stop deadline for the last outcomes to be recorded and acknowledged.

Items that finished within the grace period are recorded if the store and
the broker answer within this; otherwise they stay pending (and run again)."""

_FAULT_BACKOFF = (0.2, 30.0)
"""Seconds before the first retry of an item the runtime could not run, and the
most the wait doubles to while the cause lasts."""


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
    healthy: bool = True
    """False while the runtime cannot run this pool's items (``fault`` says why)."""
    fault: str = ""
    faults: int = 0
    """Times an item could not be run for a cause of the runtime's own (no attempt counted)."""
    scale: PoolStats | None = None
    """The autoscaler's statistics and target as of its last tick."""


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
        deadline: Deadline | None = None,
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
        self.deadline = deadline or Deadline()
        """When shielded steps give up once a stop began (the runtime shares one)."""
        scale = cfg.scale_or_fixed()
        self.slots = Slots(max(1, scale.min))
        self.scaler = Scaler(name, scale)
        self.counters = PoolCounters(name=name, topic=self.topic, concurrency=scale.min)
        self.durations = Histogram(SECONDS_BUCKETS)
        """Seconds each attempt spent in the executor (``/metrics``)."""
        self.queue_waits = Histogram(SECONDS_BUCKETS)
        """Seconds from publishing to the start of each attempt (retries include their backoff)."""
        report = functools.partial(on_final, self) if on_final is not None else None
        self.outcomes = Outcomes(name, broker, self.topic, self.group, self.store, report,
                                 self.deadline, lambda: self.counters.in_flight)  # fmt: skip
        self._buffer: list[tuple[Message, Claim]] = []
        self._held: dict[str, list[Message]] = {}
        """Without a store: deliveries waiting behind a running one with their key, in
        delivery order. Each joins the buffer when the one before it ends; only past
        ``_HELD_MOST`` do they go back to the broker (uncounted)."""
        self._interrupted: list[tuple[Message, Claim]] = []
        """Items a stop cancelled: given back with ``_buffer`` (not an attempt either)."""
        self._read_lock = anyio.Lock()
        self._stopping = False
        self._intake_scopes: set[anyio.CancelScope] = set()
        self._service_time = 1.0
        """Seconds per item, smoothed over about the last 20 items (sizes prefetch)."""
        self._lease = 300.0
        self._fault_cleared: anyio.Event | None = None
        """Set (and dropped) when items can be run again after a fault of the runtime's own."""
        self._time_limit = TimeLimit(cfg.timeout) if cfg.timeout else None
        self._heartbeat = Heartbeat(name, broker, self.topic, self.group, self.store,
                                    self.consumer)  # fmt: skip

    @property
    def changed(self) -> anyio.Event:
        """An event set when the next outcomes are acknowledged (idle detection waits on it)."""
        return self.outcomes.changed

    # -- configuration at run time -----------------------------------------

    @property
    def concurrency(self) -> int:
        return self.slots.total

    def set_concurrency(self, n: int) -> None:
        """Change the limit now; running items are never interrupted."""
        self.slots.resize(max(1, n))
        self.counters.concurrency = max(1, n)

    async def prepare(self, visibility_timeout: float) -> None:
        await self.broker.ensure_group(
            self.topic, self.group, visibility_timeout=visibility_timeout, start=self.cfg.start
        )
        # The store's lease lasts as long as the broker's patience: when a
        # dead node's delivery goes to another consumer, the item's lease has
        # expired too, so the new owner may run it at once.
        self._lease = visibility_timeout

    # -- running -------------------------------------------------------------

    async def run(self, stop: anyio.Event, grace: float) -> None:
        """Consume until ``stop`` is set, then drain in-flight items for ``grace`` seconds.

        One long-lived task per possible worker (the scale's ``max``); the
        slots decide how many of them may hold an item. Spawning a task per
        item costs more than a whole no-op item.
        """
        async with anyio.create_task_group() as outer:
            outer.start_soon(self.outcomes.run)
            outer.start_soon(self._autoscale)
            outer.start_soon(self._heartbeat.run, self._lease, self._buffered)
            async with anyio.create_task_group() as workers:
                for _ in range(self.cfg.scale_or_fixed().max):
                    workers.start_soon(self._worker)
                await stop.wait()
                self._stopping = True
                for scope in self._intake_scopes:
                    scope.cancel()
                # Drain: running items get the grace period, then are cancelled
                # and given back with the buffer (not an attempt: _return_buffer).
                # The runtime's deadline when it set one first (or a second signal).
                self.deadline.set(anyio.current_time() + grace)
                workers.cancel_scope.deadline = self.deadline.at
            with self.deadline.shield(extra=FINAL_FLUSH) as final:
                await self._return_buffer()
                await self.outcomes.flush()
            if final.cancelled_caught:
                log.warning("pool %s: the broker or store did not answer in time: the last "
                            "outcomes stay pending and run again", self.name)  # fmt: skip
            if self._time_limit is not None:
                self._time_limit.close()
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

    def _buffered(self) -> list[tuple[str, tuple[str, int]]]:
        buffered = [(m.id, (m.key or m.id, c.token)) for m, c in self._buffer]
        return buffered + [(m.id, (key, 0)) for key, held in self._held.items() for m in held]

    async def _worker(self) -> None:
        limit = self._time_limit
        if limit is None:
            await self._work(None)
            return
        while not self._stopping:  # a new lane each time an item's limit cuts one
            with limit.lane() as lane:
                await self._work(lane)

    async def _work(self, lane: Lane | None) -> None:
        """Take items and run them, until the pool stops (or ``lane`` is cut)."""
        while not self._stopping and not (lane is not None and lane.cut):
            # Fast path without a checkpoint: a free slot and a buffered message.
            if not self.slots.take_nowait():
                acquired, _ = await self._interruptible(self.slots.take())
                if not acquired:
                    return
            if self._fault_cleared is not None:  # intake paused: the items held are retrying
                cleared, _ = await self._interruptible(self._fault_cleared.wait())
                if not cleared:
                    self.slots.give_back()
                    return
            taken = self._buffer.pop() if self._buffer else None
            if taken is None:
                if not self.counters.in_flight:
                    self.outcomes.out_of_work()  # no more outcomes are coming: flush now
                _, taken = await self._interruptible(self._next_message())
            if taken is None:  # stopping
                self.slots.give_back()
                return
            try:
                await self._process(*taken, lane)
            finally:
                self.slots.give_back()

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

    async def _next_message(self) -> tuple[Message, Claim]:
        async with self._read_lock:
            return await self._fetch()

    async def _fetch(self) -> tuple[Message, Claim]:
        while not self._buffer:
            # Fetch no more than can start soon: a delivery waiting in our
            # buffer ages towards its visibility timeout.
            # Take what the waiting workers can start now, and for quick items
            # what the pool finishes within about a second: more would age
            # towards the visibility timeout in our buffer.
            waiting = self.slots.taken - self.counters.in_flight
            soon = int(self.concurrency / max(self._service_time, 1e-4))
            want = max(1, min(self.cfg.batch, max(waiting, soon)))
            got = await self.broker.read(
                self.topic, self.group, self.consumer, count=want, block=1.0
            )
            if got:
                # Shielded: a shutdown arriving mid-claim must still find the
                # batch in the buffer, to give deliveries and claims back
                # (past the stop deadline they stay pending instead).
                claimed: list[tuple[Message, Claim]] = []
                with self.deadline.shield():
                    claimed = await self._claim(got)
                claimed.reverse()  # pop() from the end keeps delivery order
                # Ahead of what joined while we read (a held delivery let go): it goes first.
                self._buffer[:0] = claimed
        return self._buffer.pop()

    async def _claim(self, messages: list[Message]) -> list[tuple[Message, Claim]]:
        """Claim a fetched batch at once; settle at once those that may not run."""
        if self.store is None:
            return await self._claim_untracked(messages)
        keys = [m.key or m.id for m in messages]
        claims = await self.store.claim_many(
            self.name, keys, owner=self.consumer, lease=self._lease
        )
        granted: list[tuple[Message, Claim]] = []
        elsewhere: list[str] = []
        for message, claim in zip(messages, claims, strict=True):
            if claim.granted:
                granted.append((message, claim))
            elif claim.status in (ItemStatus.DONE, ItemStatus.DEAD):
                # Done before (a restart, or a duplicate). Tell the source
                # again: a crash may have come between the outcome and the
                # source filing the item away.
                self.counters.skipped += 1
                self.outcomes.add(message, None, claim.status, None)
            else:  # another node holds a live lease on it: look again later
                elsewhere.append(message.id)
        if elsewhere:
            await self.broker.nack(
                self.topic, self.group, elsewhere, delay=_BUSY_KEY_DELAY, counted=False
            )
        return granted

    async def _claim_untracked(self, messages: list[Message]) -> list[tuple[Message, Claim]]:
        """Without a store: hold back a message whose key this pool runs, or took before."""
        granted: list[tuple[Message, Claim]] = []
        busy: list[str] = []
        keys = self._heartbeat.keys() | self._held.keys() | {m.key or m.id for m, _ in self._buffer}
        held = sum(map(len, self._held.values()))
        for message in messages:
            key = message.key or message.id
            if key not in keys:
                keys.add(key)
                granted.append((message, Claim(granted=True)))
            elif held < _HELD_MOST:
                self._held.setdefault(key, []).append(message)
                held += 1
            else:
                busy.append(message.id)
        if busy:
            await self.broker.nack(
                self.topic, self.group, busy, delay=_BUSY_KEY_DELAY, counted=False
            )
        return granted

    def _let_go(self, key: str) -> None:
        """The item ``key`` ended: the next delivery held behind it joins the buffer."""
        held = self._held.get(key)
        if held:
            self._buffer.append((held.pop(0), Claim(granted=True)))
            if not held:
                del self._held[key]

    async def _return_buffer(self) -> None:
        """At shutdown: deliveries fetched but not started, or cancelled by the stop, go
        back due at once, and so do their claims. None of them failed: no attempt counts."""
        held, self._held = [m.id for waiting in self._held.values() for m in waiting], {}
        taken, self._buffer = self._buffer + self._interrupted, []
        self._interrupted = []
        back = held + [m.id for m, _ in taken]
        if back:
            await self.broker.nack(self.topic, self.group, back, delay=0.0, counted=False)
        if taken and self.store is not None:
            unrun = [Finish(m.key or m.id, ItemStatus.PENDING, c.token) for m, c in taken]
            await self.store.finish_many(self.name, unrun)

    # -- one item ------------------------------------------------------------

    async def _process(self, message: Message, claim: Claim, lane: Lane | None) -> None:
        counters = self.counters
        counters.in_flight += 1
        key = message.key or message.id
        running = self._heartbeat.running
        running[message.id] = (key, claim.token)
        started = time.monotonic()
        self.scaler.started(started)
        if message.created_at:
            self.queue_waits.observe(max(0.0, time.time() - message.created_at))
        debug = log.isEnabledFor(logging.DEBUG)
        if debug:
            item = {"pool": self.name, "key": key, "attempt": message.attempt}
            log.debug("pool %s: start %r (attempt %d)", self.name, item["key"], message.attempt,
                      extra=item)  # fmt: skip
        try:
            await self._settle(message, claim, lane)
        finally:
            running.pop(message.id, None)
            if self._held:
                self._let_go(key)
            counters.in_flight -= 1
            ended = time.monotonic()
            elapsed = ended - started
            self._service_time += (elapsed - self._service_time) * 0.05
            self.scaler.finished(elapsed, ended)
            self.durations.observe(elapsed)
            if debug:
                log.debug("pool %s: finish %r (attempt %d) in %.3fs", self.name, item["key"],
                          message.attempt, elapsed, extra={**item, "duration": elapsed})  # fmt: skip

    async def _settle(self, message: Message, claim: Claim, lane: Lane | None) -> None:
        key = message.key or message.id
        item = WorkItem(
            name=key, data=message.data, attempt=message.attempt, message=message, pool=self.name
        )
        try:
            result = await self._run(item, lane)
        except TimeoutError:
            await self._failed(message, claim, ItemFailed(f"timed out after {self.cfg.timeout:g}s"))
        except ItemFailed as exc:
            await self._failed(message, claim, exc)
        except anyio.get_cancelled_exc_class():
            if self._stopping:  # past the grace: the executor has ended, the item not failed
                self._interrupted.append((message, claim))
            raise
        except Exception as exc:
            await self._failed(message, claim, ItemFailed(f"{type(exc).__name__}: {exc}"))
        else:
            await self._succeeded(message, claim, result)

    async def _run(self, item: WorkItem, lane: Lane | None) -> Any:
        """The executor's result; a fault of the runtime's own is waited out, not counted.

        In a ``lane`` (the pool has a time limit), every await from the item's
        end until the worker leaves a lane its limit cut must be shielded:
        settling the item is (``Deadline.shield``)."""
        backoff, most = _FAULT_BACKOFF
        while True:
            try:
                if lane is not None:
                    result = await lane.run(self.executor.run(item))
                else:
                    result = await self.executor.run(item)
            except ExecutorUnavailable as exc:
                self._fault(item, exc, backoff)
                await anyio.sleep(backoff)  # a shutdown leaves the delivery pending
                backoff = min(most, backoff * 2)
                continue
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException:
                self._healthy_again()
                raise
            self._healthy_again()
            return result

    def _fault(self, item: WorkItem, exc: ExecutorUnavailable, retry_in: float) -> None:
        counters = self.counters
        counters.faults += 1
        if counters.healthy:
            log.error("pool %s: UNHEALTHY: cannot run items: %s; intake paused, item %r "
                      "retried in %.1fs without counting an attempt",
                      self.name, exc.reason, item.name, retry_in)  # fmt: skip
        else:
            log.warning("pool %s: still cannot run item %r: %s; retrying in %.1fs",
                        self.name, item.name, exc.reason, retry_in)  # fmt: skip
        counters.healthy = False
        counters.fault = exc.reason
        if self._fault_cleared is None:
            self._fault_cleared = anyio.Event()

    def _healthy_again(self) -> None:
        if self.counters.healthy:
            return
        log.warning("pool %s: items run again (the fault cleared: %s)", self.name,
                    self.counters.fault)  # fmt: skip
        self.counters.healthy = True
        self.counters.fault = ""
        if self._fault_cleared is not None:
            self._fault_cleared.set()
            self._fault_cleared = None

    async def _succeeded(self, message: Message, claim: Claim, result: Any) -> None:
        if self.cfg.output:
            # Shielded: once the executor succeeded, a shutdown must not
            # stop its result from going downstream; past the stop deadline
            # (a full topic, a broker away) the item stays pending instead.
            with self.deadline.shield() as publishing:
                headers = {**message.headers, "chute-from": self.name}
                out = Message(key=message.key, data=result, headers=headers)
                await self.broker.publish(self.cfg.output, [out])
            if publishing.cancelled_caught:
                return
        self.counters.succeeded += 1
        self.outcomes.add(message, claim, ItemStatus.DONE, result)

    async def _failed(self, message: Message, claim: Claim, exc: ItemFailed) -> None:
        key = message.key or message.id
        self.counters.failed += 1
        self.counters.last_error = exc.reason
        last = exc.permanent or message.attempt >= self.cfg.retry.attempts
        with self.deadline.shield():
            if not last:
                delay = self.cfg.retry.delay(message.attempt)
                log.warning(
                    "pool %s: item %r failed (attempt %d of %d), retrying in %.1fs: %s",
                    self.name, key, message.attempt, self.cfg.retry.attempts, delay, exc.reason,
                )  # fmt: skip
                if self.store is not None:
                    failed = [Finish(key, ItemStatus.FAILED, claim.token, exc.reason)]
                    warn_fenced(self.name, failed, await self.store.finish_many(self.name, failed))
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
            self.counters.dead += 1
            self.outcomes.add(message, claim, ItemStatus.DEAD, exc.reason)
