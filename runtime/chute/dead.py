"""Dead letters: list them, run them again, or let them go.

An item is dead in two places: its record in the state store (status
``dead``: a restart will not run it again) and, while the runtime that
killed it still runs, its message (kept in ``Runtime.dead_letters``).
Requeueing forgets the record, so the item runs again when it arrives (a
watch-folder file moved back after a fix), and publishes the kept message
to the pool's topic again when there is one. Purging forgets both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .message import new_message
from .store import ItemStatus, StateStore

if TYPE_CHECKING:
    from .engine import Runtime

_LISTED = 10_000


class DeadItem(msgspec.Struct, kw_only=True):
    key: str
    error: str = ""
    at: float = 0.0
    attempts: int = 0
    data: Any = None
    """The message's data while the runtime that killed it runs; else None."""
    held: bool = False


async def store_dead(store: StateStore, pool: str) -> list[DeadItem]:
    """Dead items of ``pool`` in the state store, newest first."""
    return [
        DeadItem(key=r.key, error=r.last_error, at=r.updated_at, attempts=r.attempts)
        for r in await store.failures(_LISTED)
        if r.pool == pool and r.status is ItemStatus.DEAD
    ]


async def list_dead(rt: Runtime, pool: str) -> list[DeadItem]:
    items = {d.key: d for d in await store_dead(rt.store, pool)} if rt.store else {}
    for (name, key), letter in rt.dead_letters.items():
        if name == pool:
            items[key] = DeadItem(key=key, error=letter.error, at=letter.at,
                                  attempts=letter.attempts, data=letter.message.data,
                                  held=True)  # fmt: skip
    return sorted(items.values(), key=lambda d: d.at, reverse=True)


async def _forget(rt: Runtime, pool: str, keys: Sequence[str]) -> list[str]:
    if rt.store is None or not rt.config.pools[pool].track:
        return []
    return await rt.store.forget_dead(pool, keys)


async def requeue(rt: Runtime, pool: str, keys: Sequence[str]) -> dict[str, list[str]]:
    """Forget the dead records of ``keys`` and publish the kept messages again."""
    forgotten = await _forget(rt, pool, keys)
    republished = []
    topic = rt.config.pools[pool].topic
    for key in keys:
        letter = rt.dead_letters.pop((pool, key), None)
        if letter is None:
            continue
        m = letter.message
        headers = {k: v for k, v in m.headers.items() if not k.startswith("chute-")}
        await rt.broker.publish(topic, [new_message(m.data, key=m.key, headers=headers)])
        republished.append(key)
    return {"forgotten": forgotten, "republished": republished}


async def purge(rt: Runtime, pool: str, keys: Sequence[str]) -> dict[str, list[str]]:
    forgotten = await _forget(rt, pool, keys)
    dropped = [k for k in keys if rt.dead_letters.pop((pool, k), None) is not None]
    return {"forgotten": forgotten, "dropped": dropped}
