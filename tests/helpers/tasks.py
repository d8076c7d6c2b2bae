"""In-process executors the tests point pools at (``tests.helpers.tasks:NAME``)."""

from __future__ import annotations

import time
from typing import Any

import anyio
from chute.errors import ItemFailed

calls: dict[str, int] = {}


def double(data: Any) -> Any:
    return {"n": data["n"] * 2}


async def slow_double(data: Any) -> Any:
    await anyio.sleep(float(data.get("sleep", 0.05)))
    return {"n": data["n"] * 2}


def flaky(data: Any) -> Any:
    """Fails the first ``fail`` times it sees an item, then succeeds."""
    key = str(data["n"])
    calls[key] = calls.get(key, 0) + 1
    if calls[key] <= int(data.get("fail", 1)):
        raise RuntimeError(f"flaky failure {calls[key]} for {key}")
    return data


def always_fails(data: Any) -> Any:
    raise RuntimeError("this executor always fails")


def rejects(data: Any) -> Any:
    raise ItemFailed("bad item: cannot be processed", permanent=True)


def expects_number(data: Any) -> Any:
    return {"n": int(data["n"]) + 1}


def record(data: Any) -> Any:
    """Appends the item to the file named in its data: proof it ran, in another process too."""

    time.sleep(float(data.get("sleep", 0)))
    with open(data["log"], "a", encoding="utf-8") as f:
        f.write(f"{data['n']}\n")
    return data


def exits(data: Any) -> Any:
    """A library that calls sys.exit(), or raises KeyboardInterrupt, on a bad item."""
    if data.get("exit") == "interrupt":
        raise KeyboardInterrupt("bad item")
    if data.get("exit") == "exit":
        raise SystemExit(3)
    return data


async def exits_async(data: Any) -> Any:
    return exits(data)


seen: list[tuple[str, Any]] = []


def mutate_then_fail(data: Any) -> Any:
    """Records what it was given, changes it in place, and fails."""
    seen.append(("a", dict(data)))
    data["n"] += 100
    raise RuntimeError("changed my input, then failed")


def look(data: Any) -> Any:
    seen.append(("b", dict(data)))
    return data
