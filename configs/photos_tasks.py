"""The sharded-photos example's workers: one per shard; shard 1 starts out broken."""

from __future__ import annotations

from typing import Any

BROKEN_ATTEMPTS = 8
"""Shard 1 fails this many attempts before it works (a disk that came back)."""

_failures = 0


def _process(shard: int, photo: dict[str, Any]) -> dict[str, Any]:
    print(f"photo-{photo['n']} processed on shard {shard}", flush=True)
    return {"n": photo["n"], "shard": shard}


def shard0(photo: dict[str, Any]) -> dict[str, Any]:
    return _process(0, photo)


def shard1(photo: dict[str, Any]) -> dict[str, Any]:
    global _failures
    if _failures < BROKEN_ATTEMPTS:
        _failures += 1
        raise OSError(f"photo-{photo['n']}: shard 1 storage unavailable")
    return _process(1, photo)


def shard2(photo: dict[str, Any]) -> dict[str, Any]:
    return _process(2, photo)
