"""Item state in Redis, so several nodes share it: ``state = "redis://host:port/db"``.

Per item (pool, key) a hash ``<prefix>item:<pool>:<key>`` holds status,
attempts, last error, times, and the owner and fencing token of the latest
claim. A claim takes a lease, ``<prefix>lease:<pool>:<key>``, with ``SET NX
PX``, so while the lease lives nobody else (the holder included) runs the
item, and the holder renews it while the item runs (``extend``, compare-and-
extend under the claim's token); every claim draws a new token from one counter (``INCR``), and
``finish`` records only under the current token, so a late finisher whose
lease expired and was taken over is not recorded as the completion. Each
transition is one Lua script, so status, counts and lease change together.

``recover`` returns to pending the items whose lease has expired with no
finish (their owner crashed), plus, with ``owner_prefix``, the items of that
owner (this node, restarted): never an item another live node holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from chute.errors import StoreUnavailable
from chute.store import Claim, Finish, ItemRecord, ItemStatus, OneItemCalls

from ..redis_conn import Reconnecting, RedisUrl, as_str

log = logging.getLogger("chute.stores.redis")

_FAILURES_KEPT = 1000

# KEYS: item, lease, tokens, counts, running, pools, failures.
# ARGV: owner, lease ms, now, member, pool.
_CLAIM = """
redis.call('SADD', KEYS[6], ARGV[5])
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'done' or status == 'dead' then return {0, 0, status} end
local ms = tonumber(ARGV[2])
-- A live lease refuses everyone, its holder too: the item is running.
if ms > 0 then
  if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ms) then return {0, 0, 'running'} end
elseif redis.call('EXISTS', KEYS[2]) == 1 then  -- a lease of no time is held by nobody after
  return {0, 0, 'running'}
end
local token = redis.call('INCR', KEYS[3])
if status then
  redis.call('HINCRBY', KEYS[4], status, -1)
else
  redis.call('HSET', KEYS[1], 'created_at', ARGV[3])
end
redis.call('HINCRBY', KEYS[4], 'running', 1)
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[1], 'token', token,
           'updated_at', ARGV[3])
redis.call('SADD', KEYS[5], ARGV[4])
redis.call('ZREM', KEYS[7], ARGV[4])  -- a failed item that runs again is no failure yet
return {1, token, 'running'}
"""

# KEYS: item, lease, counts, running, failures, seq.
# ARGV: status, token, error, now, member, kept.
# A token finishes once: it is spent here. The same finish again (a retry after
# a lost reply) is reported as recorded; anything else under it is refused.
_FINISH = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then
  local spent = redis.call('HMGET', KEYS[1], 'spent', 'status')
  if spent[1] == ARGV[2] and spent[2] == ARGV[1] then return 1 end
  return 0
end
local old = redis.call('HGET', KEYS[1], 'status')
redis.call('HINCRBY', KEYS[3], old, -1)
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'last_error', ARGV[3], 'updated_at', ARGV[4],
           'token', '', 'spent', ARGV[2])
if ARGV[1] == 'pending' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[4], ARGV[5])
if ARGV[1] == 'failed' or ARGV[1] == 'dead' then
  redis.call('ZADD', KEYS[5], redis.call('INCR', KEYS[6]), ARGV[5])
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -1 - tonumber(ARGV[6]))
else
  redis.call('ZREM', KEYS[5], ARGV[5])
end
return 1
"""

# KEYS: item, lease. ARGV: owner, token, lease ms.
# Compare-and-extend: only the current claim of a running item renews its lease.
_EXTEND = """
local item = redis.call('HMGET', KEYS[1], 'token', 'status', 'owner')
if item[1] ~= ARGV[2] or item[2] ~= 'running' or item[3] ~= ARGV[1] then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return 1
"""

# KEYS: counts, pools, then the items' hashes. ARGV: now, pool.
_MARK_PENDING = """
redis.call('SADD', KEYS[2], ARGV[2])
local added = 0
for i = 3, #KEYS do
  if redis.call('HSETNX', KEYS[i], 'status', 'pending') == 1 then
    redis.call('HSET', KEYS[i], 'attempts', 0, 'created_at', ARGV[1], 'updated_at', ARGV[1])
    added = added + 1
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[1], 'pending', added) end
return added
"""

# KEYS: item, lease, counts, running. ARGV: owner prefix, now, member.
_RECOVER = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then
  redis.call('SREM', KEYS[4], ARGV[3])
  return 0
end
local mine = ARGV[1] ~= '' and
  string.sub(redis.call('HGET', KEYS[1], 'owner') or '', 1, #ARGV[1]) == ARGV[1]
if redis.call('EXISTS', KEYS[2]) == 1 and not mine then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HINCRBY', KEYS[1], 'token', 1)
redis.call('HSET', KEYS[1], 'status', 'pending', 'updated_at', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'running', -1)
redis.call('HINCRBY', KEYS[3], 'pending', 1)
redis.call('SREM', KEYS[4], ARGV[3])
return 1
"""

# KEYS: item, counts, failures. ARGV: member. Only a dead item is forgotten.
_FORGET_DEAD = """
if redis.call('HGET', KEYS[1], 'status') ~= 'dead' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HINCRBY', KEYS[2], 'dead', -1)
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

Arg = str | bytes | int | float


def _b(text: str) -> bytes:
    """Item keys are often file names, which need not be UTF-8 (``os.fsdecode``)."""
    return text.encode("utf-8", "surrogateescape")


def _s(raw: bytes | str) -> str:
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw


def _member(pool: str, key: str) -> bytes:
    """(pool, key) in one set member; pool names never hold a NUL."""
    return _b(pool) + b"\0" + _b(key)


def _unmember(member: bytes) -> tuple[str, str]:
    pool, _, key = member.partition(b"\0")
    return _s(pool), _s(key)


class RedisStore(OneItemCalls):
    """``StateStore`` on Redis: nodes pointing at one Redis share item state and leases."""

    def __init__(self, url: str, workdir: Path, *, connect_timeout: float = 10.0) -> None:
        self._url = RedisUrl.parse(url)
        self.prefix = self._url.prefix
        self.connect_timeout = connect_timeout
        """Seconds ``open`` waits for Redis (as the broker's ``start``) before giving up."""
        self._conn = Reconnecting("redis state store", self._url, log, StoreUnavailable)
        self._redis = self._url.client()
        self._claim = self._redis.register_script(_CLAIM)
        self._finish = self._redis.register_script(_FINISH)
        self._mark_pending = self._redis.register_script(_MARK_PENDING)
        self._recover = self._redis.register_script(_RECOVER)
        self._forget_dead = self._redis.register_script(_FORGET_DEAD)
        self._extend = self._redis.register_script(_EXTEND)

    @property
    def healthy(self) -> bool:
        return self._conn.healthy

    # -- keys ------------------------------------------------------------

    def _item(self, pool: str, key: str) -> bytes:
        return b"%sitem:%s:%s" % (_b(self.prefix), _b(pool), _b(key))

    def _lease(self, pool: str, key: str) -> bytes:
        return b"%slease:%s:%s" % (_b(self.prefix), _b(pool), _b(key))

    def _counts(self, pool: str) -> bytes:
        return b"%scounts:%s" % (_b(self.prefix), _b(pool))

    @property
    def _pools(self) -> bytes:
        return _b(self.prefix) + b"pools"

    @property
    def _running(self) -> bytes:
        return _b(self.prefix) + b"running"

    @property
    def _failures(self) -> bytes:
        return _b(self.prefix) + b"failures"

    async def _smembers(self, key: bytes) -> list[bytes]:
        return [m if isinstance(m, bytes) else _b(m) for m in await self._redis.smembers(key)]

    async def _hgetall_many(self, keys: list[bytes]) -> list[dict[bytes, bytes]]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            return await pipe.execute()

    # -- the protocol ------------------------------------------------------

    @property
    def problem(self) -> str:
        return self._conn.problem

    async def open(self, connect_timeout: float | None = None) -> None:
        """Connect; give up after ``connect_timeout`` (default: the constructor's, 10 s)."""
        # A deadline: a runtime starting while Redis is away says so and exits.
        self._conn.ping = self._redis.ping
        limit = self.connect_timeout if connect_timeout is None else connect_timeout
        await self._conn.connect(limit, "the state store")

    async def aclose(self) -> None:
        self._conn.closed = True
        await self._redis.aclose()

    async def claim_many(
        self, pool: str, keys: Sequence[str], *, owner: str, lease: float
    ) -> list[Claim]:
        lease_ms = max(0, int(lease * 1000))
        now = time.time()

        async def run() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    script_keys: list[bytes] = [self._item(pool, key), self._lease(pool, key),
                            _b(self.prefix) + b"tokens", self._counts(pool), self._running,
                            self._pools, self._failures]  # fmt: skip
                    args: list[Arg] = [_b(owner), lease_ms, now, _member(pool, key), _b(pool)]
                    await self._claim(script_keys, args, client=pipe)
                return await pipe.execute()

        replies = await self._conn.call(run) if keys else []
        return [
            Claim(granted=bool(granted), token=int(token), status=ItemStatus(as_str(status)))
            for granted, token, status in replies
        ]

    async def finish_many(self, pool: str, outcomes: Sequence[Finish]) -> list[bool]:
        now = time.time()

        async def run() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for o in outcomes:
                    script_keys: list[bytes] = [self._item(pool, o.key), self._lease(pool, o.key),
                            self._counts(pool), self._running, self._failures,
                            _b(self.prefix) + b"seq"]  # fmt: skip
                    args: list[Arg] = [o.status.value, o.token, _b(o.error), now,
                                       _member(pool, o.key), _FAILURES_KEPT]  # fmt: skip
                    await self._finish(script_keys, args, client=pipe)
                return await pipe.execute()

        recorded = [bool(r) for r in await self._conn.call(run)] if outcomes else []
        return recorded

    async def extend(
        self, pool: str, held: Sequence[tuple[str, int]], *, owner: str, lease: float
    ) -> list[bool]:
        lease_ms = max(1, int(lease * 1000))

        async def run() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, token in held:
                    script_keys = [self._item(pool, key), self._lease(pool, key)]
                    args: list[Arg] = [_b(owner), token, lease_ms]
                    await self._extend(script_keys, args, client=pipe)
                return await pipe.execute()

        return [bool(r) for r in await self._conn.call(run)] if held else []

    async def mark_pending(self, pool: str, keys: list[str]) -> None:
        if not keys:
            return

        for start in range(0, len(keys), 500):
            chunk = [self._item(pool, k) for k in keys[start : start + 500]]
            script_keys: list[bytes] = [self._counts(pool), self._pools, *chunk]
            args: list[Arg] = [time.time(), _b(pool)]
            await self._conn.call(partial(self._mark_pending, script_keys, args))

    async def get(self, pool: str, keys: list[str]) -> dict[str, ItemRecord]:
        async def run() -> list[Any]:
            return await self._hgetall_many([self._item(pool, key) for key in keys])

        rows = await self._conn.call(run)
        out: dict[str, ItemRecord] = {}
        for key, row in zip(keys, rows, strict=True):
            if row:
                out[key] = _record(pool, key, row)
        return out

    async def recover(self, owner_prefix: str = "") -> int:
        members = await self._conn.call(partial(self._smembers, self._running))
        recovered = 0
        now = time.time()
        for member in members:
            pool, key = _unmember(member)
            keys: list[bytes] = [self._item(pool, key), self._lease(pool, key), self._counts(pool),
                    self._running]  # fmt: skip
            args: list[Arg] = [_b(owner_prefix), now, member]
            recovered += int(await self._conn.call(partial(self._recover, keys, args)))
        return recovered

    async def counts(self) -> dict[str, dict[str, int]]:
        async def run() -> dict[str, dict[str, int]]:
            pools = sorted(_s(p) for p in await self._smembers(self._pools))
            rows = await self._hgetall_many([self._counts(pool) for pool in pools])
            out: dict[str, dict[str, int]] = {}
            for pool, row in zip(pools, rows, strict=True):
                # Only the statuses an item is in (the hash keeps zeros).
                counts = {as_str(s): int(n) for s, n in row.items() if int(n)}
                if counts:
                    out[pool] = counts
            return out

        return await self._conn.call(run)

    async def failures(self, limit: int = 20) -> list[ItemRecord]:
        async def run() -> list[ItemRecord]:
            members = await self._redis.zrevrange(self._failures, 0, max(0, limit - 1))
            pairs = [_unmember(m) for m in members if isinstance(m, bytes)]
            rows = await self._hgetall_many([self._item(pool, key) for pool, key in pairs])
            return [_record(p, k, row) for (p, k), row in zip(pairs, rows, strict=True) if row]

        return await self._conn.call(run)

    async def forget_dead(self, pool: str, keys: Sequence[str]) -> list[str]:
        async def run() -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    item_keys = [self._item(pool, key), self._counts(pool), self._failures]
                    await self._forget_dead(item_keys, [_member(pool, key)], client=pipe)
                return await pipe.execute()

        replies = await self._conn.call(run) if keys else []
        return [key for key, gone in zip(keys, replies, strict=True) if gone]


def _record(pool: str, key: str, row: dict[bytes, bytes]) -> ItemRecord:
    fields = {as_str(k): _s(v) for k, v in row.items()}
    return ItemRecord(
        pool=pool,
        key=key,
        status=ItemStatus(fields.get("status", "pending")),
        attempts=int(fields.get("attempts", 0)),
        last_error=fields.get("last_error", ""),
        created_at=float(fields.get("created_at", 0.0)),
        updated_at=float(fields.get("updated_at", 0.0)),
    )
