"""Pool statistics and the autoscaling controller (DESIGN.md, "Autoscaling").

The book's rule, made continuous: with λ the arrival rate and S the mean
service time (queue wait excluded), c workers keep up while λ·S < c. The
target is ``ceil(λ·S / u)`` for a utilisation target u, or, when a backlog
is queued, enough to serve the arrivals and drain it within
``drain_within``: ``ceil(max(λ·S / u, λ·S + backlog·S / drain_within))``.
Scaling up happens on the tick that sees the need. Scaling down waits until
a lower target has held for ``cooldown``, lands on the highest need seen in
that window, and needs 10% of margin (``DOWN_MARGIN``: at the smaller size
the load must stay under 90% of the growth threshold, the book's "S/c under
90% of the inter-arrival time"), so noise near a boundary does not make the
pool flap. A pool idle (no backlog, nothing running) for a cooldown goes to
``min``. The result is clamped to [min, max].

λ is an exponentially weighted rate that restarts when a CUSUM test sees a
step (``meters.ChangeRate``): a plain average lags a step up by several
half-lives, and the backlog that piles up meanwhile is the queue wait users
see.

Three parts, each testable alone:

- :class:`Scaler` is what a pool calls per item (``started``, ``finished``)
  and per arrival: a few additions each, so it can sit on the hot path; the
  averages are folded in once per tick. ``stats(now)`` gives a
  :class:`PoolStats` snapshot.
- :func:`decide` is the controller: a pure function of (stats, config, state,
  now) -> (target, state), so tests drive it with a fake clock.
- :meth:`Scaler.run` ticks every ``interval`` and applies the target, in the
  pool the size of its ``Slots``. Lowering it never touches running items:
  they keep their slots until they finish, and new items wait until the pool
  is under the new limit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec

from .broker import TopicStats
from .config import ScaleConfig
from .meters import ChangeRate, Ewma

log = logging.getLogger("chute.autoscale")

DOWN_MARGIN = 0.9
"""Shrink only while the load at the smaller size stays under 90% of the growth threshold."""

_EPS = 1e-9


class PoolStats(msgspec.Struct, kw_only=True):
    """One pool's statistics: what ``chute status``, ``/metrics`` and the dashboard show."""

    pool: str = ""
    arrival_rate: float = 0.0
    """λ: items arriving per second (exponentially weighted; restarts at a detected step)."""
    service_time: float = 0.0
    """S: mean seconds an executor spends on an item, queue wait excluded."""
    backlog: int = 0
    """Items arrived and not finished: the broker's lag + pending for the pool's group."""
    in_flight: int = 0
    utilization: float = 0.0
    """Time-weighted fraction of the concurrency limit that was busy."""
    concurrency: int = 0
    """The limit in force now."""
    target: int = 0
    """What the controller asked for on its last tick."""
    min: int = 1
    max: int = 1
    scale_changes: int = 0
    arrived: int = 0
    finished: int = 0
    busy_seconds: float = 0.0
    """Executor-seconds spent on items since the pool started."""
    worker_seconds: float = 0.0
    """Integral of the concurrency limit over time: the capacity the pool held."""


class ScaleState(msgspec.Struct, frozen=True, kw_only=True):
    """The controller's memory between ticks."""

    target: int
    lower_since: float | None = None
    """When the need first fell below ``target`` (None: it has not, or it rose again)."""
    lower_peak: int = 0
    """Highest need seen since ``lower_since``: where a scale-down lands."""
    changes: int = 0
    changed_at: float | None = None
    idle_since: float | None = None
    """When the pool last became idle: no backlog, nothing running."""
    reason: str = ""


def initial_state(config: ScaleConfig) -> ScaleState:
    return ScaleState(target=config.min, reason="start")


def need(stats: PoolStats, config: ScaleConfig) -> tuple[int, int, str]:
    """Workers needed: (to grow to, to shrink to, why), before clamping.

    The shrink figure is larger than the grow figure by the hysteresis margin.
    Returns ``(-1, -1, why)`` when there is nothing to base a decision on yet
    (work waiting but no service time measured), which means "hold".
    """
    if stats.backlog <= 0 and stats.in_flight <= 0:
        return config.min, config.min, "idle"
    service = stats.service_time
    if service <= 0.0:
        return -1, -1, "no service time measured yet"
    rate = stats.arrival_rate
    load = rate * service
    queued = max(0, stats.backlog - stats.in_flight)
    drain = queued * service / config.drain_within
    # The headroom kept by u < 1 drains a small queue by itself; workers are
    # added for the backlog only beyond that (a queue that comes and goes at
    # steady load must not move the pool).
    workers = max(load / config.utilization, load + drain)
    grow = math.ceil(workers - _EPS)
    shrink = math.ceil(workers / DOWN_MARGIN - _EPS)
    why = f"λ={rate:.3g}/s S={service:.3g}s queued={queued}"
    return max(grow, 1), max(shrink, 1), why


def decide(
    stats: PoolStats, config: ScaleConfig, state: ScaleState, now: float
) -> tuple[int, ScaleState]:
    """One controller tick: the new concurrency target and the state to pass next time."""
    lo, hi = config.min, max(config.min, config.max)
    current = min(max(state.target, lo), hi)
    grow, shrink, why = need(stats, config)
    idle_since = None
    if why == "idle":
        idle_since = now if state.idle_since is None else state.idle_since

    def hold(**changes: object) -> tuple[int, ScaleState]:
        return current, msgspec.structs.replace(
            state, target=current, idle_since=idle_since, **changes
        )

    def move(target: int, direction: str) -> tuple[int, ScaleState]:
        return target, ScaleState(
            target=target,
            changes=state.changes + 1,
            changed_at=now,
            idle_since=idle_since,
            reason=f"{direction}: {why}",
        )

    if grow < 0:
        return hold(lower_since=None)
    if grow > current:
        new = min(grow, hi)
        # at max already: nothing to do, and nothing lower holds
        return hold(lower_since=None) if new == current else move(new, "up")
    wanted = max(shrink, lo)
    if wanted >= current:
        return hold(lower_since=None)
    if state.lower_since is None:
        return hold(lower_since=now, lower_peak=wanted)
    peak = max(state.lower_peak, wanted)
    if now - state.lower_since < config.cooldown:
        return hold(lower_peak=peak)
    # A pool idle for a whole cooldown goes to min; one that just went idle
    # waits for that rather than stepping down twice.
    if idle_since is not None:
        return move(lo, "down") if now - idle_since >= config.cooldown else hold(lower_peak=peak)
    # Otherwise land on the highest need the window saw; the window restarts,
    # so each further step waits a cooldown again.
    return move(peak, "down")


def validate_scale(scale: ScaleConfig) -> list[tuple[str, str]]:
    """Problems in a ``scale`` table as (key, message); the graph validator adds file and table."""
    problems: list[tuple[str, str]] = []
    if scale.min < 1:
        problems.append(
            (
                "scale.min",
                f"must be at least 1, got {scale.min} (a pool with no workers never runs)",
            )
        )
    if scale.max < 1:
        problems.append(("scale.max", f"must be at least 1, got {scale.max}"))
    elif scale.min > scale.max:
        problems.append(
            (
                "scale.min",
                f"is more than max ({scale.min} > {scale.max}); use min = max for a fixed pool",
            )
        )
    if not 0.0 < scale.utilization <= 1.0:
        problems.append(
            (
                "scale.utilization",
                f"must be in (0, 1], got {scale.utilization} (0.9 means 90% busy)",
            )
        )
    for key in ("cooldown", "drain_within", "half_life", "interval"):
        value = getattr(scale, key)
        if not value > 0.0:  # also catches NaN
            problems.append((f"scale.{key}", f"must be a positive duration, got {value!r}"))
    return problems


class Scaler:
    """A pool's statistics tracker and its controller state.

    The pool calls ``arrived(n, now)`` when items arrive (or ``observe`` with
    the broker's counters once per tick), ``started(now)`` when an executor
    begins an item and ``finished(seconds, now)`` when it ends, whatever the
    outcome. These are a few additions each: the averages are folded in once
    per tick by ``stats``. ``now`` is the pool's clock, injected so tests run
    on a fake one.
    """

    def __init__(self, pool: str, config: ScaleConfig) -> None:
        self.pool = pool
        self.config = config
        self.state = initial_state(config)
        self.concurrency = config.min
        self.in_flight = 0
        self.finished_total = 0
        half_life = float(config.half_life)
        # A rate is not trusted over less than a tick: the first arrivals
        # would otherwise make a rate over almost no time, and send a cold
        # pool straight to max.
        self._rate = ChangeRate(half_life, min_window=float(config.interval))
        self._service = Ewma(half_life)
        self._service_sum = 0.0
        self._service_count = 0
        self._decay_per_s = math.log(2) / max(half_life, 1e-9)
        self._busy_avg = 0.0  # decayed integrals of in-flight and of the limit
        self._capacity_avg = 0.0
        self._folded_busy = 0.0
        self._folded_workers = 0.0
        self._start_sum = 0.0
        self._busy_seconds = 0.0
        self._worker_seconds = 0.0
        self._last: float | None = None
        self._folded_at: float | None = None
        self._published: int | None = None
        self._looked_at: float | None = None

    @property
    def arrived_total(self) -> int:
        return self._rate.total

    def _account(self, now: float) -> None:
        last = self._last
        if last is None:
            self._last = now
        elif now > last:
            dt = now - last
            self._busy_seconds += self.in_flight * dt
            self._worker_seconds += self.concurrency * dt
            self._last = now

    def arrived(self, n: int, now: float, since: float | None = None) -> None:
        """``n`` items arrived by ``now`` (during the interval from ``since``, when known)."""
        self._rate.mark(n, now, since)

    def started(self, now: float) -> None:
        self._account(now)
        self.in_flight += 1
        self._start_sum += now

    def finished(self, service_seconds: float, now: float) -> None:
        self._account(now)
        self.finished_total += 1
        self.in_flight -= 1
        # Sum of start times of running items, for the age of work in progress;
        # reset at zero so float error cannot accumulate.
        self._start_sum = self._start_sum - (now - service_seconds) if self.in_flight > 0 else 0.0
        self._service_sum += service_seconds
        self._service_count += 1

    def set_concurrency(self, n: int, now: float) -> None:
        self._account(now)
        self.concurrency = n

    def _fold(self, now: float) -> None:
        """Fold the events since the last tick into the averages."""
        self._account(now)
        self._rate.fold(now)
        self._service.add_many(self._service_sum, self._service_count, now)
        self._service_sum, self._service_count = 0.0, 0
        if self._folded_at is not None and now > self._folded_at:
            keep = math.exp(-self._decay_per_s * (now - self._folded_at))
            self._busy_avg = self._busy_avg * keep + (self._busy_seconds - self._folded_busy)
            self._capacity_avg = self._capacity_avg * keep + (
                self._worker_seconds - self._folded_workers
            )
        self._folded_at = now
        self._folded_busy, self._folded_workers = self._busy_seconds, self._worker_seconds

    def service_time(self, now: float) -> float:
        if self._service.weight > 0.0:
            return self._service.mean
        # Nothing has finished yet (a cold start, or very long items): the age of
        # the running items is a lower bound, and enough to react to a backlog.
        if self.in_flight > 0:
            return max(0.0, now - self._start_sum / self.in_flight)
        return 0.0

    def stats(self, now: float, *, backlog: int | None = None) -> PoolStats:
        """A snapshot. ``backlog`` is the broker's lag + pending; by default, arrived - finished."""
        self._fold(now)
        in_flight = max(0, self.in_flight)
        if backlog is None:
            backlog = max(0, self.arrived_total - self.finished_total)
        return PoolStats(
            pool=self.pool,
            arrival_rate=self._rate.rate(now),
            service_time=self.service_time(now),
            backlog=backlog,
            in_flight=in_flight,
            utilization=self._busy_avg / self._capacity_avg if self._capacity_avg > 0 else 0.0,
            concurrency=self.concurrency,
            target=self.state.target,
            min=self.config.min,
            max=self.config.max,
            scale_changes=self.state.changes,
            arrived=self.arrived_total,
            finished=self.finished_total,
            busy_seconds=self._busy_seconds,
            worker_seconds=self._worker_seconds,
        )

    def tick(self, now: float, *, backlog: int | None = None) -> int:
        """Run the controller once and apply its target to ``concurrency``; return it."""
        return self._tick(now, backlog).target

    def _tick(self, now: float, backlog: int | None) -> PoolStats:
        """``tick``, returning the stats it decided on, updated with its decision."""
        stats = self.stats(now, backlog=backlog)
        before = self.state.target
        target, self.state = decide(stats, self.config, self.state, now)
        if target != before:
            log.info(
                "pool %s: concurrency %d -> %d (%s)", self.pool, before, target, self.state.reason
            )
        if target != self.concurrency:
            self.set_concurrency(target, now)
        return msgspec.structs.replace(
            stats, target=target, concurrency=self.concurrency, scale_changes=self.state.changes
        )

    def observe(self, topic: TopicStats, group: str, now: float) -> int:
        """Take arrivals and the backlog from the broker's counters; return the backlog.

        Arrivals are what was published on the topic since the last look: the
        pool's own reads follow its capacity, so under overload they would
        hide the very load the controller must see. The first look only sets
        the baseline (what was there before is backlog, not arrival rate), and
        starts the clock: what the next look finds arrived since this one.
        """
        published = topic.published
        if self._published is not None and published > self._published:
            self.arrived(published - self._published, now, since=self._looked_at)
        self._published = published
        self._looked_at = now
        return topic.backlog(group)

    async def run(
        self,
        apply: Callable[[int], None],
        *,
        topic: Callable[[], Awaitable[TopicStats]] | None = None,
        group: str = "",
        report: Callable[[PoolStats], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Tick every ``interval`` until cancelled: ``apply`` the target, ``report`` the stats.

        A periodic controller, not a wait for a condition: the sleep is the
        sampling period. ``topic`` reads the broker's counters for arrivals and
        the backlog (lag + pending of ``group``); when the broker cannot answer,
        the tick goes on with the pool's own counts rather than stopping.
        """
        # Applied only when the target changes: between changes the limit is
        # left alone (an operator may have set it by hand).
        applied = self.concurrency
        apply(applied)

        async def look() -> int | None:
            if topic is None:
                return None
            try:
                stats = await topic()
            except Exception as exc:  # a broker hiccup must not stop scaling
                log.warning("pool %s: cannot read the topic's counters: %s", self.pool, exc)
                return None
            return self.observe(stats, group, clock())

        await look()  # the baseline: what is published from now on arrives
        while True:
            await anyio.sleep(self.config.interval)
            backlog = await look()
            stats = self._tick(clock(), backlog)
            if stats.target != applied:
                apply(stats.target)
                applied = stats.target
            if report is not None:
                report(stats)


def describe_scale(stats: dict[str, Any]) -> str:
    """One line of ``chute status`` from a PoolStats as JSON (it comes through the HTTP API)."""
    s = msgspec.convert(stats, PoolStats)
    return (
        f"λ {s.arrival_rate:.3g}/s, S {s.service_time:.3g}s, backlog {s.backlog}, "
        f"busy {s.utilization:.0%}, concurrency {s.concurrency} (target {s.target} "
        f"in {s.min}..{s.max}), {s.scale_changes} changes"
    )
