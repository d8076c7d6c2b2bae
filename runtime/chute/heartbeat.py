"""The items a pool is running, and the heartbeat that keeps them its own.

A delivery unacknowledged for the topic's visibility timeout goes to another
consumer, and an item lease that lapses lets another owner claim the item:
both are how a crashed node's work comes back. An item that simply runs long
must not come back, so while it runs (or waits in the pool's buffer) the
heartbeat extends its delivery (``Broker.extend``) and its lease
(``StateStore.extend``, compare-and-extend under the claim's token) every
quarter of the visibility timeout. Three beats may be late or lost before
anything lapses; once the node dies, the beats stop and the work comes back
after one visibility timeout, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import anyio

from .broker import Broker
from .store import StateStore

log = logging.getLogger("chute.pool")

BEATS_PER_TIMEOUT = 4

Held = tuple[str, tuple[str, int]]
"""(message id, (item key, claim token))."""


class Heartbeat:
    def __init__(self, pool: str, broker: Broker, topic: str, group: str,
                 store: StateStore | None, owner: str) -> None:  # fmt: skip
        self.pool = pool
        self.broker = broker
        self.topic = topic
        self.group = group
        self.store = store
        self.owner = owner
        self.running: dict[str, tuple[str, int]] = {}
        """Message id -> (key, token) of each item running now; the pool adds and removes
        them itself (a method call per item costs more than the dict operation)."""

    def keys(self) -> set[str]:
        """Keys running now (a pool without a store holds back a second message with one)."""
        return {key for key, _ in self.running.values()}

    async def run(self, lease: float, waiting: Callable[[], Sequence[Held]]) -> None:
        """Beat until cancelled, for the running items and those ``waiting`` returns."""
        interval = max(lease / BEATS_PER_TIMEOUT, 0.005)
        while True:
            await anyio.sleep(interval)  # the beat's period, not a wait for a condition
            # Bounded: a beat stuck on an outage must not hold back the next one.
            with anyio.move_on_after(interval):
                try:
                    await self.beat([*self.running.items(), *waiting()], lease)
                except Exception as exc:  # the next beat tries again; the lease still has time
                    log.warning("pool %s: could not extend running items: %s", self.pool, exc)

    async def beat(self, held: Sequence[Held], lease: float) -> None:
        if not held:
            return
        await self.broker.extend(self.topic, self.group, [message_id for message_id, _ in held])
        if self.store is None:
            return
        claims = [claim for _, claim in held]
        kept = await self.store.extend(self.pool, claims, owner=self.owner, lease=lease)
        for (key, token), ok in zip(claims, kept, strict=True):
            if not ok:
                log.warning("pool %s: item %r lost its lease (token %d) while it runs: another "
                            "owner may run it too", self.pool, key, token)  # fmt: skip
