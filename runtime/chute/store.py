"""The state store contract: what the work-queue manager remembers per item.

Items are scoped by pool, so one key can flow through several pools of a
pipeline. ``claim`` is how a pool starts an item: it refuses items that are
done or dead, and items another owner holds a live lease on, and returns a
fencing token so a late finisher whose lease was taken over cannot record the
completion.

The lease is refused to everyone while it lives, its own holder included (a
redelivery of an item still running must not start it beside itself); the
pool renews the leases of the items it runs with ``extend`` (the heartbeat).

The pool claims a whole fetched batch with ``claim_many`` and records
outcomes with ``finish_many`` just before it acknowledges them: one
transaction (SQLite) or one round trip (Redis) for many items, where a call
per item would cost as much as spawning the item's process.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

import msgspec


class ItemStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


FINAL_STATUSES = frozenset({ItemStatus.DONE, ItemStatus.DEAD})


class ItemRecord(msgspec.Struct, kw_only=True):
    pool: str
    key: str
    status: ItemStatus
    attempts: int = 0
    last_error: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    granted: bool
    token: int = 0
    """Fencing token: pass it back to ``finish``."""
    status: ItemStatus = ItemStatus.RUNNING
    """When not granted: why (DONE/DEAD: finished already; RUNNING: leased elsewhere)."""


class Finish(msgspec.Struct, frozen=True):
    """One outcome for ``finish_many``."""

    key: str
    status: ItemStatus
    """DONE, FAILED or DEAD; PENDING gives an unrun claim back (one attempt less)."""
    token: int
    error: str = ""


class StateStore(Protocol):
    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def claim(self, pool: str, key: str, *, owner: str, lease: float) -> Claim:
        """Mark the item running for ``owner`` for ``lease`` seconds, unless final or held."""

    async def claim_many(
        self, pool: str, keys: Sequence[str], *, owner: str, lease: float
    ) -> list[Claim]:
        """``claim`` for each key (in order), in one transaction or round trip."""

    async def finish(
        self, pool: str, key: str, status: ItemStatus, *, token: int, error: str = ""
    ) -> bool:
        """Record the outcome. False (and nothing written) when ``token`` was fenced out."""

    async def finish_many(self, pool: str, outcomes: Sequence[Finish]) -> list[bool]:
        """``finish`` for each outcome (in order), in one transaction or round trip."""

    async def extend(
        self, pool: str, held: Sequence[tuple[str, int]], *, owner: str, lease: float
    ) -> list[bool]:
        """Renew for ``lease`` seconds the leases of running items, given as (key, token).

        Compare-and-extend: only where ``token`` is still the item's current
        claim and the item is running for ``owner``; False where the lease was
        lost (fenced by a later claim or by ``recover``).
        """

    async def mark_pending(self, pool: str, keys: list[str]) -> None:
        """Record items as known and waiting (no-op for items already known)."""

    async def get(self, pool: str, keys: list[str]) -> dict[str, ItemRecord]: ...

    async def recover(self, owner_prefix: str = "") -> int:
        """Return items left running by a crashed process to pending; count them."""

    async def counts(self) -> dict[str, dict[str, int]]:
        """Per pool, the number of items in each status."""

    async def failures(self, limit: int = 20) -> list[ItemRecord]:
        """The most recent failed and dead items, newest first."""

    async def forget_dead(self, pool: str, keys: Sequence[str]) -> list[str]:
        """Drop the records of those items that are dead, so they may run again; the keys dropped.

        Items in any other status are left alone (``chute dead requeue``/``purge``).
        """


class OneItemCalls:
    """``claim`` and ``finish`` of one item, as a batch of one: a store writes the batch calls."""

    async def claim(self: StateStore, pool: str, key: str, *, owner: str, lease: float) -> Claim:
        [claim] = await self.claim_many(pool, [key], owner=owner, lease=lease)
        return claim

    async def finish(
        self: StateStore, pool: str, key: str, status: ItemStatus, *, token: int, error: str = ""
    ) -> bool:
        [recorded] = await self.finish_many(pool, [Finish(key, status, token, error)])
        return recorded
