"""The autoscaler on a fake clock: the controller alone, then a simulated pool around it."""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable

import msgspec
import pytest
from chute.autoscale import (
    PoolStats,
    Scaler,
    decide,
    describe_scale,
    initial_state,
    need,
    validate_scale,
)
from chute.broker import GroupStats, TopicStats
from chute.config import Duration, ScaleConfig, config_from_dict, dec_hook
from chute.errors import ConfigError
from chute.meters import ChangeRate, RateMeter

CFG = ScaleConfig(
    min=1,
    max=16,
    utilization=0.9,
    cooldown=Duration(30),
    drain_within=Duration(60),
    half_life=Duration(10),
    interval=Duration(1),
)


def busy(
    rate: float, service: float, *, backlog: int | None = None, in_flight: int = 1
) -> PoolStats:
    return PoolStats(
        arrival_rate=rate,
        service_time=service,
        in_flight=in_flight,
        backlog=in_flight if backlog is None else backlog,
    )


# -- the controller alone ---------------------------------------------------


def test_step_up_happens_on_the_first_tick_that_sees_the_load() -> None:
    state = initial_state(CFG)
    target, state = decide(busy(rate=10, service=0.5), CFG, state, now=0.0)
    # λ·S = 5 busy workers at 90% -> ceil(5.56) = 6
    assert target == 6
    assert state.changes == 1 and state.reason.startswith("up")


def test_step_down_waits_for_the_cooldown_and_lands_on_the_highest_need_seen() -> None:
    state = initial_state(CFG)
    _, state = decide(busy(rate=10, service=0.5), CFG, state, now=0.0)
    assert state.target == 6
    seen = []
    for t in range(1, 40):
        # the load halves; a brief spike at t=10 must set where the pool lands
        rate = 4.0 if t == 10 else 2.0
        target, state = decide(busy(rate=rate, service=0.5), CFG, state, now=float(t))
        seen.append(target)
    assert seen[:30] == [6] * 30  # t=1..30: the lower need has not held for 30 s yet
    # t=31: 30 s after the drop; the spike (λ·S=2 -> ceil(2/0.81)=3) is the floor
    assert seen[30] == 3
    assert state.changes == 2


def test_a_higher_need_during_the_cooldown_resets_it() -> None:
    state = initial_state(CFG)
    _, state = decide(busy(rate=10, service=0.5), CFG, state, now=0.0)
    for t in range(1, 25):
        _, state = decide(busy(rate=2, service=0.5), CFG, state, now=float(t))
    _, state = decide(busy(rate=10, service=0.5), CFG, state, now=25.0)
    for t in range(26, 50):
        target, state = decide(busy(rate=2, service=0.5), CFG, state, now=float(t))
        assert target == 6, t  # a fresh 30 s window started at t=26
    target, state = decide(busy(rate=2, service=0.5), CFG, state, now=56.0)
    assert target == 2  # λ·S = 1 -> ceil(1 / 0.81)


def test_hysteresis_keeps_a_load_near_a_boundary_from_flapping() -> None:
    state = initial_state(CFG)
    # λ·S/u just above 5 -> 6 workers; then just below 5 for a long time
    _, state = decide(busy(rate=10, service=0.46), CFG, state, now=0.0)
    assert state.target == 6
    for t in range(1, 300):
        target, state = decide(busy(rate=10, service=0.44), CFG, state, now=float(t))
        assert target == 6
    # at 6 workers the shrink threshold is 0.81 busy: 4.4 / 0.81 = 5.4 -> 6, so it holds


def test_backlog_adds_the_workers_that_drain_it_within_the_horizon() -> None:
    # no arrivals any more, 600 items queued, 2 s each: 600*2/60 = 20 -> clamp at 16
    grow, _, _ = need(busy(rate=0, service=2.0, backlog=602, in_flight=2), CFG)
    assert grow == 20
    target, _ = decide(
        busy(rate=0, service=2.0, backlog=602, in_flight=2), CFG, initial_state(CFG), 0
    )
    assert target == 16


def test_targets_are_clamped_to_min_and_max() -> None:
    cfg = msgspec.structs.replace(CFG, min=3, max=5)
    target, state = decide(busy(rate=100, service=1.0), cfg, initial_state(cfg), now=0.0)
    assert target == 5
    for t in range(1, 100):
        target, state = decide(busy(rate=0.01, service=1.0), cfg, state, now=float(t))
        assert target >= 3
    assert target == 3
    # a state from a wider config is clamped back into range on the next tick
    target, _ = decide(PoolStats(), cfg, msgspec.structs.replace(state, target=40), now=200.0)
    assert target == 5


def test_fixed_pool_never_changes() -> None:
    cfg = msgspec.structs.replace(CFG, min=4, max=4)
    state = initial_state(cfg)
    for t, rate in enumerate([0, 100, 0, 1000, 0]):
        target, state = decide(
            busy(rate=rate, service=1.0, backlog=rate), cfg, state, float(t * 100)
        )
        assert target == 4
    assert state.changes == 0


def test_no_service_time_yet_holds_the_current_size() -> None:
    state = initial_state(CFG)
    target, state = decide(PoolStats(arrival_rate=50, backlog=500), CFG, state, now=0.0)
    assert target == 1 and state.changes == 0


# -- a simulated pool on a fake clock ----------------------------------------


class SimPool:
    """A discrete-event pool: Poisson arrivals, random service times, a Scaler ticking."""

    def __init__(
        self, cfg: ScaleConfig, service: Callable[[random.Random], float], seed: int = 7
    ) -> None:
        self.cfg = cfg
        self.scaler = Scaler("sim", cfg)
        self.service = service
        self.rng = random.Random(seed)
        self.queue: deque[float] = deque()  # arrival times of waiting items
        self.running: list[tuple[float, float]] = []  # heap of (finish, start)
        self.now = 0.0
        self.next_tick = float(cfg.interval)
        self.waits: list[tuple[float, float]] = []  # (arrival time, queue wait)
        self.finished_at: dict[float, float] = {}
        self.timeline: list[tuple[float, int, int]] = []  # (t, concurrency, backlog)
        self.max_running = 0

    def _start_what_fits(self) -> None:
        while self.queue and len(self.running) < self.scaler.concurrency:
            arrived = self.queue.popleft()
            self.waits.append((arrived, self.now - arrived))
            self.scaler.started(self.now)
            heapq.heappush(self.running, (self.now + self.service(self.rng), self.now))
        self.max_running = max(self.max_running, len(self.running))

    def advance(self, until: float) -> None:
        """Run finishes and controller ticks up to ``until``."""
        while True:
            finish = self.running[0][0] if self.running else until + 1
            t = min(finish, self.next_tick)
            if t > until:
                break
            self.now = t
            if t == finish:
                _, start = heapq.heappop(self.running)
                self.scaler.finished(finish - start, finish)
            else:
                self.scaler.tick(t)
                self.timeline.append((t, self.scaler.concurrency, self.scaler.stats(t).backlog))
                self.next_tick += self.cfg.interval
            self._start_what_fits()
        self.now = until

    def arrive(self, n: int = 1) -> None:
        self.queue.extend([self.now] * n)
        self.scaler.arrived(n, self.now)
        self._start_what_fits()

    def poisson(self, rate: float, until: float) -> None:
        """Arrivals at ``rate`` per second from now until ``until``."""
        while True:
            t = self.now + self.rng.expovariate(rate)
            if t >= until:
                self.advance(until)
                return
            self.advance(t)
            self.arrive()

    def changes_between(self, start: float, end: float) -> int:
        sizes = [c for t, c, _ in self.timeline if start <= t <= end]
        return sum(1 for a, b in itertools.pairwise(sizes) if a != b)

    def size_at(self, t: float) -> int:
        size = self.cfg.min
        for tick, concurrency, _ in self.timeline:
            if tick > t:
                break
            size = concurrency
        return size


def lognormal(mean: float, sigma: float) -> Callable[[random.Random], float]:
    """Service times with a long right tail, like real work; ``mean`` is the true mean."""
    import math

    mu = math.log(mean) - sigma**2 / 2
    return lambda rng: rng.lognormvariate(mu, sigma)


def test_sim_steps_up_under_load_and_back_down_after_the_cooldown() -> None:
    sim = SimPool(CFG, lognormal(0.5, 0.5))
    sim.poisson(2.0, until=120)  # λ·S = 1
    low = sim.size_at(120)
    sim.poisson(16.0, until=300)  # λ·S = 8 -> about 9-10 workers
    high = sim.size_at(300)
    sim.poisson(2.0, until=500)
    back = sim.size_at(500)
    assert low <= 3
    assert 9 <= high <= 12
    assert back <= 3
    # it did not shrink before the cooldown after the load fell at t=300
    assert sim.size_at(300 + CFG.cooldown - CFG.interval) >= high - 1
    assert sim.max_running <= CFG.max


def test_sim_burst_drains_within_the_horizon() -> None:
    sim = SimPool(CFG, lognormal(1.0, 0.3))
    sim.poisson(1.0, until=60)
    burst_at = sim.now
    sim.arrive(600)  # 600 worker-seconds of work at once: 10 workers for 60 s
    sim.poisson(1.0, until=300)
    burst_waits = [w for a, w in sim.waits if a == burst_at]
    assert len(burst_waits) == 600
    # the backlog is gone within drain_within, plus a tick and a service time of slack
    assert max(burst_waits) <= CFG.drain_within + CFG.interval + 3.0
    assert sim.size_at(burst_at + 5) >= 10
    assert sim.size_at(300) <= 3


@pytest.mark.parametrize("seed", range(5))
def test_sim_constant_rate_with_noisy_service_times_settles(seed: int) -> None:
    sim = SimPool(CFG, lognormal(0.4, 1.0), seed)  # heavy noise: p99 about 10x the median
    sim.poisson(15.0, until=900)  # λ·S = 6
    settled = 120.0
    minutes = (900 - settled) / 60
    changes = sim.changes_between(settled, 900)
    assert changes <= 2 * minutes, sim.timeline
    assert 6 <= sim.size_at(900) <= 10


def test_sim_idle_pool_goes_to_min() -> None:
    cfg = msgspec.structs.replace(CFG, min=2)
    sim = SimPool(cfg, lognormal(0.5, 0.5))
    sim.poisson(20.0, until=100)
    assert sim.size_at(100) >= 10
    sim.advance(100 + cfg.cooldown + 5)
    assert sim.size_at(sim.now) == 2
    stats = sim.scaler.stats(sim.now)
    assert stats.in_flight == 0 and stats.backlog == 0 and stats.concurrency == 2


def test_sim_never_exceeds_max_under_overload() -> None:
    cfg = msgspec.structs.replace(CFG, max=4)
    sim = SimPool(cfg, lognormal(1.0, 0.5))
    sim.poisson(50.0, until=60)  # needs 56 workers
    assert sim.max_running == 4
    assert sim.size_at(60) == 4


# -- the statistics ----------------------------------------------------------


def test_stats_measure_rate_service_time_backlog_and_utilization() -> None:
    scaler = Scaler("thumbs", msgspec.structs.replace(CFG, min=4, max=4))
    for i in range(1000):  # 10 per second for 100 s, each taking 0.2 s: 2 in flight
        t = i / 10
        if i >= 2:
            scaler.finished(0.2, t)
        scaler.arrived(1, t)
        scaler.started(t)
        if i % 10 == 0:
            scaler.stats(t)  # the pool's tick: averages fold in once per interval
    scaler.finished(0.2, 100.0)
    scaler.finished(0.2, 100.1)
    scaler.arrived(5, 100.1)
    stats = scaler.stats(100.1)
    assert stats.arrival_rate == pytest.approx(10.0, rel=0.1)
    assert stats.service_time == pytest.approx(0.2)
    assert stats.backlog == 5
    # 2 busy workers on average out of 4
    assert stats.utilization == pytest.approx(0.5, rel=0.1)
    assert stats.busy_seconds == pytest.approx(200.0, rel=0.01)
    assert stats.worker_seconds == pytest.approx(400.0, rel=0.01)
    assert stats.arrived == 1005 and stats.finished == 1000
    assert msgspec.json.decode(msgspec.json.encode(stats), type=PoolStats) == stats


def test_cold_start_uses_the_age_of_running_items() -> None:
    scaler = Scaler("cold", CFG)
    scaler.arrived(300, 0.0)
    scaler.started(0.0)
    # nothing has finished after 5 s: S is at least 5 s, and 299 queued must drain in 60 s
    assert scaler.tick(5.0) == 16


def test_cold_start_with_a_steady_rate_asks_for_what_the_rate_needs_not_max() -> None:
    # The reproduction on a fake clock: a source publishing 5 items a
    # second, items of 0.3 s, a pool in [1, 16] ticking every second. The
    # need is ceil(5 * 0.3 / 0.9) = 2; the first tick used to ask for 16
    # (λ = 5e+03/s: five arrivals counted over the 1 ms floor of a new window).
    scaler = Scaler("cold", CFG)
    free = [0.0]  # when each worker is free next
    events: list[tuple[float, int]] = []  # (time, +1 started / -1 finished)
    published = finished = 0
    targets = []
    scaler.observe(TopicStats(topic="jobs"), "cold", 0.0)  # Scaler.run's baseline look
    for tick in range(1, 11):
        for i in range(5):  # five arrivals in the second before the tick
            at = tick - 1 + i / 5
            published += 1
            worker = min(range(len(free)), key=free.__getitem__)
            begin = max(at, free[worker])
            free[worker] = begin + 0.3
            heapq.heappush(events, (begin, 1))
            heapq.heappush(events, (begin + 0.3, -1))
        now = float(tick)
        while events and events[0][0] <= now:
            at, kind = heapq.heappop(events)
            if kind == 1:
                scaler.started(at)
            else:
                scaler.finished(0.3, at)
                finished += 1
        group = GroupStats(name="cold", pending=published - finished)
        backlog = scaler.observe(TopicStats(topic="jobs", published=published, groups=[group]),
                                 "cold", now)  # fmt: skip
        targets.append(scaler.tick(now, backlog=backlog))
        free += [free[0]] * (scaler.concurrency - len(free))
    assert max(targets) <= 3, targets  # never near max: at most one worker of slack
    assert targets[-1] == 2, targets


def test_arrivals_at_the_very_start_are_not_a_rate_over_no_time() -> None:
    # Without a broker to look at, the first arrivals start the clock: a
    # batch of 20 at once is 20 over a tick, not 20 per millisecond.
    scaler = Scaler("first", CFG)
    scaler.arrived(20, 0.0)
    scaler.started(0.0)
    scaler.finished(0.1, 0.1)
    assert scaler.stats(0.1).arrival_rate == pytest.approx(20.0, rel=0.05)


def poisson_counts(
    rng: random.Random, rate: Callable[[float], float], start: float, end: float, step: float
) -> list[tuple[float, int]]:
    """(time, arrivals in the step before it) for a Poisson process, one entry per fold."""
    out = []
    t = start
    while t < end:
        n, clock = 0, 0.0
        while True:
            clock += rng.expovariate(rate(t))
            if clock > step:
                break
            n += 1
        t += step
        out.append((t, n))
    return out


def test_change_rate_follows_a_step_at_once_where_the_plain_average_lags() -> None:
    rng = random.Random(3)
    fast, plain = ChangeRate(half_life=10.0), RateMeter(half_life=10.0)
    fast.mark(0, 0.0)
    plain.mark(0, 0.0)
    for t, n in poisson_counts(rng, lambda t: 50.0 if t < 60 else 200.0, 0.0, 61.0, 0.1):
        fast.mark(n, t)
        fast.fold(t)
        plain.mark(n, t)
    assert fast.rate(61.0) > 150  # one second after the step
    assert plain.rate(61.0) < 70  # what the controller saw before


def test_change_rate_follows_the_end_of_a_burst_down() -> None:
    rng = random.Random(4)
    meter = ChangeRate(half_life=10.0)
    meter.mark(0, 0.0)
    for t, n in poisson_counts(rng, lambda t: 500.0 if t < 5 else 10.0, 0.0, 8.0, 0.1):
        meter.mark(n, t)
        meter.fold(t)
    assert meter.rate(8.0) < 40


def test_change_rate_rarely_raises_a_false_alarm_on_a_steady_rate() -> None:
    rng = random.Random(5)
    meter = ChangeRate(half_life=10.0)
    meter.mark(0, 0.0)
    for t, n in poisson_counts(rng, lambda t: 50.0, 0.0, 600.0, 0.1):  # 6000 folds
        meter.mark(n, t)
        meter.fold(t)
    assert meter.changes <= 1
    assert meter.rate(600.0) == pytest.approx(50.0, rel=0.15)


def test_observe_counts_what_is_published_after_the_first_look() -> None:
    scaler = Scaler("thumbs", CFG)
    group = GroupStats(name="thumbs", lag=40, pending=2)
    assert (
        scaler.observe(TopicStats(topic="in", published=1000, groups=[group]), "thumbs", 0.0) == 42
    )
    assert scaler.arrived_total == 0  # what was there before is backlog, not arrivals
    scaler.observe(TopicStats(topic="in", published=1030, groups=[group]), "thumbs", 1.0)
    assert scaler.arrived_total == 30
    # a broker that restarted counts from zero again: no negative arrivals
    scaler.observe(TopicStats(topic="in", published=5, groups=[group]), "thumbs", 2.0)
    scaler.observe(TopicStats(topic="in", published=9, groups=[group]), "thumbs", 3.0)
    assert scaler.arrived_total == 34


def test_status_line_reads_the_stats_as_the_api_sends_them() -> None:
    stats = PoolStats(
        pool="thumbs", arrival_rate=12.0, service_time=0.5, backlog=7, utilization=0.8,
        concurrency=6, target=7, min=1, max=16, scale_changes=3,
    )  # fmt: skip
    line = describe_scale(msgspec.json.decode(msgspec.json.encode(stats)))
    assert line == (
        "λ 12/s, S 0.5s, backlog 7, busy 80%, concurrency 6 (target 7 in 1..16), 3 changes"
    )


# -- config validation --------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "fragment"),
    [
        ({"min": 5, "max": 2}, "scale.min", "is more than max (5 > 2)"),
        ({"min": 0, "max": 2}, "scale.min", "at least 1"),
        ({"min": -1, "max": 2}, "scale.min", "at least 1"),
        ({"min": 1, "max": 0}, "scale.max", "at least 1"),
        ({"max": 4, "utilization": 0}, "scale.utilization", "(0, 1]"),
        ({"max": 4, "utilization": 1.5}, "scale.utilization", "(0, 1]"),
        ({"max": 4, "utilization": -0.5}, "scale.utilization", "(0, 1]"),
        ({"max": 4, "cooldown": 0}, "scale.cooldown", "positive"),
        ({"max": 4, "drain_within": "0s"}, "scale.drain_within", "positive"),
        ({"max": 4, "half_life": 0}, "scale.half_life", "positive"),
        ({"max": 4, "interval": "0ms"}, "scale.interval", "positive"),
    ],
)
def test_bad_scale_tables_are_errors_naming_the_key(
    table: dict[str, object], key: str, fragment: str
) -> None:
    scale = msgspec.convert(table, ScaleConfig, dec_hook=dec_hook)
    problems = validate_scale(scale)
    assert [k for k, _ in problems] == [key]
    assert fragment in problems[0][1]


def test_good_scale_tables_pass() -> None:
    for table in ({}, {"min": 3, "max": 3}, {"min": 1, "max": 16, "utilization": 1.0}):
        assert validate_scale(msgspec.convert(table, ScaleConfig, dec_hook=dec_hook)) == []


def test_negative_durations_are_rejected_while_decoding() -> None:
    doc = {"pools": {"thumbs": {"topic": "in", "executor": {}, "scale": {"cooldown": "-5s"}}}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(doc, path="configs/x.toml")
    assert err.value.problems[0].startswith("configs/x.toml: [pools.thumbs] scale.cooldown:")
