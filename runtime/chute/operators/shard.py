"""shard: a stable hash of the key picks one of N shard topics; unhealthy shards are skipped.

Placement is rendezvous hashing. Each key has a preference order over the
shards, a permutation that depends only on the key and N, and goes to the
first healthy shard in it. When a shard fails, only its keys move (every
other key's first choice is still healthy), they spread evenly over the
healthy shards (the next entry of a random order is uniform over the rest),
and they move back when it recovers (nothing about a key's order changed).
Highest-random-weight hashing is one way to draw such an order (sort N
weights); here it is drawn more cheaply, because the healthy path runs once
per message: the first entry is CRC-32 of the key modulo N (one C call), and
only when that shard is unhealthy is the rest of the order decoded from the
key's BLAKE2b-512 digest as a Lehmer code (uniform up to 98 shards). Both
hashes are fixed functions of the key's bytes, so placement is the same in
every process, on every machine and Python version (unlike ``hash()``).

Health is re-evaluated every ``health.interval``. A shard is unhealthy when
it was marked down (``mark_down``, from the CLI or API), when the error rate
of the pool consuming it exceeds ``health.error_rate`` (the engine supplies
``error_rate(topic)``), or when its oldest pending delivery is older than
``health.stall``. Messages already on an unhealthy shard stay there: moving
them would break per-key order for keys whose shard is merely slow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Iterator
from hashlib import blake2b
from typing import Any
from zlib import crc32

import anyio
import msgspec

from ..broker import Broker
from ..config import ShardOperator
from ..expressions import Expression, expression
from ..message import Message
from .base import Operator

log = logging.getLogger("chute.operators")


def key_bytes(value: object) -> bytes | None:
    """The bytes a key is hashed by: a string's UTF-8, any other JSON value's JSON text."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return msgspec.json.encode(value)


class ShardRing:
    """Preference orders of keys over ``n`` shards (see the module docstring)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("a shard operator needs at least one shard")
        self.n = n

    def first(self, key: bytes) -> int:
        return crc32(key) % self.n

    def order(self, key: bytes) -> Iterator[int]:
        """The key's shards, most preferred first."""
        first = crc32(key) % self.n
        yield first
        rest = [s for s in range(self.n) if s != first]
        h = int.from_bytes(blake2b(key, digest_size=64).digest(), "little")
        while rest:
            h, i = divmod(h, len(rest))
            yield rest.pop(i)

    def pick(self, key: bytes, healthy: list[bool]) -> int:
        """The first healthy shard in the key's order (its first choice if none is healthy)."""
        for shard in self.order(key):
            if healthy[shard]:
                return shard
        return self.first(key)


def no_errors(topic: str) -> float:
    return 0.0


class Shard(Operator):
    kind = "shard"

    def __init__(
        self,
        name: str,
        cfg: ShardOperator,
        broker: Broker,
        *,
        node: str,
        error_rate: Callable[[str], float] = no_errors,
    ) -> None:
        super().__init__(name, cfg, broker, node=node)
        self.inputs = [cfg.input]
        self.outputs = cfg.shard_topics()
        self.ring = ShardRing(len(self.outputs))
        self.key: Expression | None = (
            expression(cfg.key, f"[operators.{name}] key") if cfg.key else None
        )
        self.health = cfg.health
        self.error_rate = error_rate
        self._marked: set[int] = set()
        self._observed: dict[int, str] = {}
        self.healthy = [True] * self.ring.n
        self._all_healthy = True

    # -- health -----------------------------------------------------------

    def _index(self, shard: int | str) -> int:
        if isinstance(shard, int) and 0 <= shard < self.ring.n:
            return shard
        if isinstance(shard, str) and shard in self.outputs:
            return self.outputs.index(shard)
        raise KeyError(f"{self.name}: no shard {shard!r} (shards: {', '.join(self.outputs)})")

    def mark_down(self, shard: int | str, down: bool = True) -> None:
        """Take a shard out of placement (or put it back), by index or topic name."""
        index = self._index(shard)
        if down:
            self._marked.add(index)
        else:
            self._marked.discard(index)
        self._refresh()

    def _refresh(self) -> None:
        reasons = {i: "down" for i in self._marked}
        for i, why in self._observed.items():
            reasons.setdefault(i, why)
        healthy = [i not in reasons for i in range(self.ring.n)]
        if healthy != self.healthy:
            for i, (was, now) in enumerate(zip(self.healthy, healthy, strict=True)):
                if was and not now:
                    log.warning(
                        "%s: shard %s unhealthy (%s): its keys move",
                        self.name,
                        self.outputs[i],
                        reasons[i],
                    )
                elif now and not was:
                    log.warning(
                        "%s: shard %s healthy again: its keys return", self.name, self.outputs[i]
                    )
        self.healthy = healthy
        self._all_healthy = all(healthy)
        self._stats.unhealthy = {self.outputs[i]: why for i, why in sorted(reasons.items())}

    async def check_health(self) -> None:
        """One look at every shard's error rate and oldest pending delivery."""
        observed: dict[int, str] = {}
        for i, topic in enumerate(self.outputs):
            rate = self.error_rate(topic)
            if rate > self.health.error_rate:
                observed[i] = f"failing: error rate {rate:.2f} > {self.health.error_rate:.2f}"
                continue
            if self.health.stall > 0:
                stats = await self.broker.stats(topic)
                oldest = max((g.oldest_pending_age for g in stats.groups), default=0.0)
                if oldest > self.health.stall:
                    observed[i] = (
                        f"stalled: oldest pending {oldest:.0f}s > {self.health.stall:.0f}s"
                    )
        self._observed = observed
        self._refresh()

    async def _watch_health(self) -> None:
        # Sampling statistics on a period is the point here (like a probe), not coordination.
        while True:
            await anyio.sleep(self.health.interval)
            await self.check_health()

    def background(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        return [self._watch_health]

    # -- placement --------------------------------------------------------

    def route(self, messages: list[Message]) -> dict[str, list[Message]]:
        buckets: list[list[Message]] = [[] for _ in self.outputs]
        dead: list[Message] = []
        n = self.ring.n
        if self.key is None and self._all_healthy:
            for message in messages:  # the hot path: one C hash per message
                buckets[
                    crc32((message.key or message.id).encode("utf-8", "surrogatepass")) % n
                ].append(message)
        else:
            search = self.key.search if self.key is not None else None
            ring, healthy, rerouted = self.ring, self.healthy, 0
            for message in messages:
                try:
                    key = (
                        key_bytes(search(message))
                        if search
                        else (message.key or message.id).encode("utf-8", "surrogatepass")
                    )
                    if key is None:
                        self.dead(message, "the shard key expression gave null", dead)
                        continue
                    shard = ring.pick(key, healthy)
                except Exception as exc:
                    self.failed(message, exc, dead)
                    continue
                rerouted += shard != ring.first(key)
                buckets[shard].append(message)
            self._stats.rerouted += rerouted
        routes = dict(zip(self.outputs, buckets, strict=True))
        routes[self.dead_letter] = dead
        return routes
