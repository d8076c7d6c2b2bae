"""Exponentially weighted rates and averages: small, allocation-free, clock-injected."""

from __future__ import annotations

import bisect
import math


class Ewma:
    """An exponentially weighted average of samples, with a half-life in seconds."""

    __slots__ = ("_decay_per_s", "_last", "value", "weight")

    def __init__(self, half_life: float) -> None:
        self._decay_per_s = math.log(2) / max(half_life, 1e-9)
        self.value = 0.0
        self.weight = 0.0
        self._last: float | None = None

    def add(self, sample: float, now: float) -> None:
        if self._last is not None:
            keep = math.exp(-self._decay_per_s * max(0.0, now - self._last))
            self.value *= keep
            self.weight *= keep
        self._last = now
        self.value += sample
        self.weight += 1.0

    def add_many(self, total: float, count: int, now: float) -> None:
        """``count`` samples summing to ``total``, all at ``now`` (folded once per tick)."""
        if count:
            self.add(total, now)
            self.weight += count - 1

    @property
    def mean(self) -> float:
        return self.value / self.weight if self.weight else 0.0


class RateMeter:
    """Events per second, exponentially weighted with a half-life in seconds.

    ``mark(n, now)`` is O(1) and meant to be called once per batch.
    """

    __slots__ = ("_decay_per_s", "_last", "_start", "_sum", "half_life", "min_window", "total")

    def __init__(self, half_life: float = 10.0, min_window: float = 1e-3) -> None:
        self.half_life = half_life
        self.min_window = min_window
        """Shortest time a rate is taken over: events seen at the very start are not a
        rate over no time (5 arrivals over 1 ms would be 5,000/s)."""
        self._decay_per_s = math.log(2) / max(half_life, 1e-9)
        self._sum = 0.0
        self._last: float | None = None
        self._start: float | None = None
        self.total = 0

    def _decay_to(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._sum *= math.exp(-self._decay_per_s * (now - self._last))
        self._last = now if self._last is None else max(self._last, now)

    def mark(self, n: int, now: float) -> None:
        if self._start is None:
            self._start = now
        self._decay_to(now)
        self._sum += n
        self.total += n

    def restart(self, count: int, since: float, now: float) -> None:
        """Forget the past: as if the meter had started at ``since`` and seen ``count`` events.

        After a detected change the new rate is known only from the events
        since the change, so it keeps converging as fast as a new meter would.
        """
        self._sum = float(count)
        self._start = since
        self._last = now

    def rate(self, now: float) -> float:
        """Events per second; while younger than a few half-lives, over the time seen so far."""
        if self._start is None:
            return 0.0
        self._decay_to(now)
        # The decayed sum approximates rate / decay; before it converges, the
        # exact window weight is (1 - e^-kt) / k.
        elapsed = max(now - self._start, self.min_window)
        window = (1.0 - math.exp(-self._decay_per_s * elapsed)) / self._decay_per_s
        return self._sum / window


class ChangeRate:
    """Events per second that follows a step change at once, and noise slowly.

    An exponentially weighted rate (``RateMeter``) lags a step by a few
    half-lives; a short half-life follows steps but is noisy. This keeps the
    long half-life and adds two CUSUM detectors on the counts seen between
    ``fold`` calls (Page's test for a Poisson rate doubling or halving). When
    one fires, the rate restarts from the count since the change began: a
    step from 50/s to 200/s is followed within a few events, while a steady
    rate raises a false alarm about once in thousands of folds.

    ``mark`` is an integer add (hot path); ``fold`` does the work once per tick.
    """

    __slots__ = ("_down", "_last", "_pending", "_up", "changes", "meter", "threshold")

    def __init__(
        self, half_life: float = 10.0, threshold: float = 10.0, min_window: float = 1e-3
    ) -> None:
        self.meter = RateMeter(half_life, min_window)
        self.threshold = threshold
        self._pending = 0
        self._last: float | None = None
        self._up = _Cusum()
        self._down = _Cusum()
        self.changes = 0

    @property
    def total(self) -> int:
        return self.meter.total + self._pending

    def mark(self, n: int, now: float, since: float | None = None) -> None:
        """``n`` events by ``now``; ``since``: when the interval they arrived in began."""
        if self._last is None:  # the clock starts at the first events, not the first fold
            start = now if since is None else min(since, now)
            self._last = start
            self.meter.mark(0, start)
        self._pending += n

    def fold(self, now: float) -> None:
        n, self._pending = self._pending, 0
        last, self._last = self._last, now
        if last is None or now <= last:
            self.meter.mark(n, now)
            return
        expected = self.meter.rate(now) * (now - last)
        self.meter.mark(n, now)
        if expected <= 0.0:
            return
        # log-likelihood ratio of rate x2 (or x1/2) against the current rate
        up = self._up.step(n * _LN2 - expected, n, last)
        down = self._down.step(expected / 2 - n * _LN2, n, last)
        for cusum in (up, down):
            if cusum.score > self.threshold:
                self.meter.restart(cusum.count, cusum.since, now)
                self._up = _Cusum()
                self._down = _Cusum()
                self.changes += 1
                return

    def rate(self, now: float) -> float:
        self.fold(now)
        return self.meter.rate(now)


_LN2 = math.log(2)


class _Cusum:
    __slots__ = ("count", "score", "since")

    def __init__(self) -> None:
        self.score = 0.0
        self.count = 0
        self.since = 0.0

    def step(self, llr: float, n: int, start: float) -> _Cusum:
        if self.score <= 0.0:  # a new candidate change starts with this interval
            self.count, self.since = 0, start
        self.score = max(0.0, self.score + llr)
        self.count += n
        return self


class Histogram:
    """Counts of samples per upper bound (Prometheus' cumulative ``le`` buckets, made at read).

    ``observe`` is one bisect and two adds: cheap enough for every item. The count of
    samples is the last cumulative count (``+Inf``), so it is not kept apart.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count of samples <= le), ..., ("+Inf", count)]``."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
        return out


SECONDS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
"""From a millisecond (an in-process function) to an hour (a video transcode)."""
