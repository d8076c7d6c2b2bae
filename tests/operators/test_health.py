"""Pool error rates as the shard operator sees them."""

from __future__ import annotations

from dataclasses import dataclass, field

from chute.operators import PoolErrorRates


@dataclass
class Counters:
    succeeded: int = 0
    failed: int = 0


@dataclass
class Pool:
    topic: str
    counters: Counters = field(default_factory=Counters)


def test_rate_is_over_the_attempts_since_the_last_look() -> None:
    p1, p1b, p2 = Pool("photos-1"), Pool("photos-1"), Pool("photos-2")
    rates = PoolErrorRates([p1, p1b, p2])
    assert rates("photos-1") == 0.0  # nothing seen yet: healthy
    p1.counters.failed, p1b.counters.failed, p1b.counters.succeeded = 3, 3, 2
    assert rates("photos-1") == 0.75  # both pools on the topic count
    assert rates("photos-2") == 0.0
    # No outcome since: the last rate stands (a shard without work cannot prove itself).
    assert rates("photos-1") == 0.75
    p1.counters.succeeded += 4  # its retries succeed
    assert rates("photos-1") == 0.0
    assert rates("unknown") == 0.0
