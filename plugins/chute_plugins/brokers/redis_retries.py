"""Delayed retries on Redis Streams: due times in a sorted set, apart from idle times.

Redis has no delayed redelivery. A nacked delivery stays pending, and its
due time goes to a sorted set per group (``<stream>:due:<group>``, score =
due time in ms) that every node reads. The entry's idle time keeps meaning
"how long a consumer has held it": it is reset at the nack, so the
oldest-pending age (and the shard operator's stall detection) never takes
a retry waiting out its delay for a stuck delivery; ``stats`` leaves the
set's members out of the age, as the memory broker leaves its parked
deliveries out.

A read first takes due entries: ``ZREM`` decides which node gets each one
(only one removal succeeds), then ``XCLAIM`` (not ``JUSTID``) hands it to the
reader and counts the delivery. Every node renews the idle time of entries
still waiting (``XCLAIM IDLE 0 JUSTID``, every third of the visibility
timeout) so ``XAUTOCLAIM`` does not take them as stale before they are due.
If every node dies meanwhile, the delivery comes back after the visibility
timeout, as any crashed delivery does (and leaves the set when claimed).

Each function here builds its whole request when called, so
``Reconnecting.call`` can run it again after a dropped connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from ..redis_conn import as_str, pack, pipelined


def due_key(stream_key: str, group: str) -> str:
    """The sorted set of a group's delayed retries (score: due time in ms)."""
    return f"{stream_key}:due:{group}"


async def _cmd(redis: aioredis.Redis, *args: Any) -> Any:
    return await redis.execute_command(*args)  # type: ignore[no-untyped-call]


async def park(redis: aioredis.Redis, key: str, group: str, holder: str,
               ids: Sequence[str], due: float, counts: dict[str, int] | None = None) -> None:  # fmt: skip
    """Make ``ids`` due again at ``due`` (wall clock), idle 0 meanwhile, in one round trip.

    With ``counts`` (``read_counts``: an uncounted give-back), each entry's
    delivery count is set one below what it was (``XCLAIM ... RETRYCOUNT``),
    so the claim that hands it out again repeats it. The counts are read
    before, in a call of their own: run again after a dropped connection,
    this sets the same counts, never one lower again.
    """
    due_ms = int(due * 1000)
    if counts is None:
        claims = [pack("XCLAIM", key, group, holder, 0, *ids, "IDLE", 0, "JUSTID")]
    else:
        claims = [
            pack("XCLAIM", key, group, holder, 0, i, "IDLE", 0, "RETRYCOUNT", max(0, n - 1),
                 "JUSTID")
            for i, n in counts.items()
        ]  # fmt: skip
    packed = b"".join(claims) + pack(
        "ZADD", due_key(key, group), *[x for i in ids for x in (due_ms, i)]
    )
    await pipelined(redis, packed, len(claims) + 1)


async def read_counts(redis: aioredis.Redis, key: str, group: str,
                      ids: Sequence[str]) -> dict[str, int]:  # fmt: skip
    """The delivery count of each of ``ids`` still pending: one more round trip, paid only
    by a rare give-back (a stop, a key running elsewhere)."""
    return delivery_counts(await pipelined(redis, counts_request(key, group, ids), len(ids)))


def counts_request(key: str, group: str, ids: Sequence[Any]) -> bytes:
    """``XPENDING`` for each of ``ids``, packed: read the replies with ``delivery_counts``."""
    return b"".join(pack("XPENDING", key, group, i, i, 1) for i in ids)


def delivery_counts(replies: Sequence[Any]) -> dict[str, int]:
    """The delivery count of each entry still pending, from ``counts_request``'s replies."""
    counts: dict[str, int] = {}
    for reply in replies:
        for row in reply or ():
            counts[as_str(row[0])] = int(row[3])
    return counts


async def take_due(redis: aioredis.Redis, key: str, group: str, consumer: str, count: int,
                   now: float) -> tuple[list[Any], float | None]:  # fmt: skip
    """Up to ``count`` retries whose delay is over, claimed for ``consumer`` as entries
    ``[id, fields]``; and the wall-clock time the next one is due (None: none waits)."""
    due = due_key(key, group)
    now_ms = int(now * 1000)
    packed = pack("ZRANGEBYSCORE", due, "-inf", now_ms, "LIMIT", 0, count) + pack(
        "ZRANGEBYSCORE", due, f"({now_ms}", "+inf", "WITHSCORES", "LIMIT", 0, 1
    )
    ready, after = await pipelined(redis, packed, 2)
    next_due = _first_score(after) / 1000 if after else None
    if not ready:
        return [], next_due
    removed = await pipelined(redis, b"".join(pack("ZREM", due, i) for i in ready), len(ready))
    mine = [i for i, gone in zip(ready, removed, strict=True) if gone]
    if not mine:  # another node took them first
        return [], next_due
    entries = await _cmd(redis, "XCLAIM", key, group, consumer, 0, *mine)
    return [e for e in entries or () if e and e[1] is not None], next_due


async def renew(redis: aioredis.Redis, key: str, group: str, holder: str) -> None:
    """Keep the retries still waiting from looking stale; forget those acknowledged."""
    due = due_key(key, group)
    waiting = await _cmd(redis, "ZRANGE", due, 0, 9999)
    if not waiting:
        return
    still = await _cmd(redis, "XCLAIM", key, group, holder, 0, *waiting, "IDLE", 0, "JUSTID")
    gone = set(waiting) - set(still or ())
    if gone:
        await _cmd(redis, "ZREM", due, *gone)


def _first_score(reply: list[Any]) -> float:
    """The score of the first member of a ``WITHSCORES`` reply, flat or in pairs."""
    first = reply[0]
    return float(first[1] if isinstance(first, (list, tuple)) else reply[1])
