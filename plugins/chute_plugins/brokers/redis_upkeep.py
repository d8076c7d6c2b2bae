"""What the Redis broker reads and tidies besides the hot path: counts, trimming, stale consumers.

Plain functions over a redis client and a stream key, so the broker module
keeps to publishing, reading and acknowledging.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..redis_conn import as_str


class GroupSnapshot(msgspec.Struct, frozen=True):
    name: str
    consumers: int
    lag: int
    pending: int
    oldest_pending_age: float


def parse_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = as_str(raw).partition("-")
    return int(ms), int(seq or 0)


async def _groups(redis: aioredis.Redis, key: str) -> list[dict[str, Any]]:
    try:
        groups: list[dict[str, Any]] = await redis.xinfo_groups(key)
    except ResponseError:  # no stream yet
        return []
    return groups


async def _lag(redis: aioredis.Redis, key: str, info: dict[str, Any]) -> int:
    lag = info.get("lag")
    if lag is None:
        # Redis cannot tell (entries deleted behind the group's cursor): the
        # stream's length bounds it.
        return int(await redis.xlen(key))
    return int(lag)


async def unacked(redis: aioredis.Redis, key: str) -> dict[str, int]:
    """Per group, entries it has not acknowledged: what a topic's capacity bounds."""
    return {
        as_str(info["name"]): await _lag(redis, key, info) + int(info.get("pending", 0))
        for info in await _groups(redis, key)
    }


async def group_idle(redis: aioredis.Redis, key: str, names: list[str]) -> dict[str, float | None]:
    """Seconds since each group's most recently active consumer acted (None: never)."""
    out: dict[str, float | None] = {}
    for name in names:
        try:
            consumers = await redis.xinfo_consumers(key, name)
        except ResponseError:  # gone meanwhile
            continue
        idle = [int(c.get("idle", 0)) / 1000.0 for c in consumers]
        out[name] = min(idle) if idle else None
    return out


async def snapshot(
    redis: aioredis.Redis, key: str, due_key: Callable[[str], str]
) -> tuple[int, list[GroupSnapshot]]:
    """Entries ever added, and each group's lag, pending count and oldest pending age.

    The age is the longest idle time among the 16 lowest pending ids that are
    not retries waiting out a delay (members of ``due_key(group)``): Redis
    keeps pending entries by id, not by delivery time, so this is a close
    lower bound rather than an exact maximum.
    """
    groups = await _groups(redis, key)
    try:
        added = int((await redis.xinfo_stream(key)).get("entries-added", 0))
    except ResponseError:  # no stream yet
        return 0, []
    if not groups:
        return added, []
    pipe = redis.pipeline(transaction=False)
    for info in groups:
        pipe.zrange(due_key(as_str(info["name"])), 0, 999)
    waiting = await pipe.execute()
    pipe = redis.pipeline(transaction=False)
    for info, due in zip(groups, waiting, strict=True):
        pipe.execute_command("XPENDING", key, info["name"], "-", "+", 16 + len(due))
    oldest = await pipe.execute()
    out = []
    for info, rows, due in zip(groups, oldest, waiting, strict=True):
        skip = {as_str(i) for i in due}
        idle = [int(row[2]) for row in rows or () if as_str(row[0]) not in skip][:16]
        age = max(idle, default=0) / 1000.0
        out.append(
            GroupSnapshot(
                name=as_str(info["name"]),
                consumers=int(info.get("consumers", 0)),
                lag=await _lag(redis, key, info),
                pending=int(info.get("pending", 0)),
                oldest_pending_age=age,
            )
        )
    return added, out


async def trim(redis: aioredis.Redis, key: str) -> None:
    """Drop entries below the lowest id any group still needs (never an unacked one).

    Redis 7.0 has no ``XTRIM ... ACKED``; ``MINID ~`` trims whole radix-tree
    nodes only, never past the given id.
    """
    floor = await needed_floor(redis, key)
    if floor is not None and floor > (0, 1):
        await redis.execute_command("XTRIM", key, "MINID", "~", f"{floor[0]}-{floor[1]}")  # type: ignore[no-untyped-call]


async def needed_floor(redis: aioredis.Redis, key: str) -> tuple[int, int] | None:
    """The lowest id some group still needs: its oldest pending id, or the one after its
    last delivered id. None when no group reads the stream."""
    groups = await _groups(redis, key)
    if not groups:
        return None
    pipe = redis.pipeline(transaction=False)
    for info in groups:
        pipe.execute_command("XPENDING", key, info["name"])
    summaries = await pipe.execute()
    floor: tuple[int, int] | None = None
    for info, summary in zip(groups, summaries, strict=True):
        ms, seq = parse_id(info["last-delivered-id"])
        need = (ms, seq + 1)
        if summary and int(summary[0]) > 0:
            need = min(need, parse_id(summary[1]))
        floor = need if floor is None else min(floor, need)
    return floor


async def forget_consumers(redis: aioredis.Redis, key: str, group: str, idle: float) -> None:
    """Delete consumers of processes long gone (each run names new ones).

    Only those holding nothing: deleting a consumer drops its pending list.
    A consumer deleted by mistake is recreated by its next read.
    """
    for consumer in await redis.xinfo_consumers(key, group):
        if int(consumer.get("pending", 1)) == 0 and int(consumer.get("idle", 0)) > idle * 1000:
            await redis.xgroup_delconsumer(key, group, consumer["name"])
