"""Executors for the durability tests: each stage logs what it ran to ``$CHUTE_TEST_LOG``."""

from __future__ import annotations

import os
from typing import Any

import anyio


def _log(stage: str, name: str) -> None:
    # One write per line: lines from stages running at once never interleave.
    fd = os.open(os.environ["CHUTE_TEST_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{stage} {name}\n".encode())
    finally:
        os.close(fd)


async def quick(data: Any) -> Any:
    """Stage a: fast, passes the item's name on."""
    name = str(data.get("name") or data.get("id"))
    await anyio.sleep(0.01)
    _log("a", name)
    return {"name": name}


async def slow(data: Any) -> Any:
    """Stage b: slow, so a backlog waits in front of it."""
    name = str(data.get("name") or data.get("id"))
    await anyio.sleep(0.3)
    _log("b", name)
    return {"name": name}


def ran(log: str | os.PathLike[str], stage: str) -> list[str]:
    """The names ``stage`` ran, in order (repeats included)."""
    try:
        with open(log, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    return [line.split(" ", 1)[1] for line in lines if line.startswith(stage + " ")]


async def _stage(stage: str, data: Any) -> Any:
    name = str(data.get("name") or data.get("id"))
    _log(stage, name)
    await anyio.sleep(0.02)
    return {"name": name}


async def s1(data: Any) -> Any:
    return await _stage("s1", data)


async def s2(data: Any) -> Any:
    return await _stage("s2", data)


async def s3(data: Any) -> Any:
    return await _stage("s3", data)
