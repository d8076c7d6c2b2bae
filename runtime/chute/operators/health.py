"""Error rates of the pools behind shard topics, from their outcome counters.

The shard operator asks ``error_rate(topic)`` once per health interval. The
answer is the fraction of failed attempts among the attempts the topic's
pools finished since the previous question. When none finished, the last
answer stands: a shard taken out of placement gets no new work, so it can
only prove itself healthy again through its own retries succeeding.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class _Counters(Protocol):
    succeeded: int
    failed: int


class _Pool(Protocol):
    topic: str

    @property
    def counters(self) -> _Counters: ...


class PoolErrorRates:
    """``error_rate(topic)`` over the pools that consume each topic."""

    def __init__(self, pools: Iterable[_Pool]) -> None:
        self._pools = list(pools)
        self._seen: dict[str, tuple[int, int]] = {}
        self._rate: dict[str, float] = {}

    def __call__(self, topic: str) -> float:
        succeeded = failed = 0
        for pool in self._pools:
            if pool.topic == topic:
                succeeded += pool.counters.succeeded
                failed += pool.counters.failed
        last_ok, last_failed = self._seen.get(topic, (0, 0))
        self._seen[topic] = (succeeded, failed)
        ok, bad = succeeded - last_ok, failed - last_failed
        if ok + bad > 0:
            self._rate[topic] = bad / (ok + bad)
        return self._rate.get(topic, 0.0)
