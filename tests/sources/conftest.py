"""Run a real source in a task group and collect what it emits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis
from chute.config import dec_hook
from chute.context import PluginContext
from chute.message import Message
from chute_plugins.brokers.memory import MemoryBroker

WAIT = 10.0
"""Upper bound for something that should happen at once; reaching it fails the test."""


class Collector:
    """The ``emit`` callable a source gets: keeps every message, wakes waiters on each batch."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.batches = 0
        self._changed = anyio.Event()

    async def __call__(self, batch: Sequence[Message]) -> list[str]:
        self.messages.extend(batch)
        self.batches += 1
        self._changed.set()
        self._changed = anyio.Event()
        return [str(len(self.messages) - len(batch) + i) for i in range(len(batch))]

    def keys(self) -> list[str]:
        return [m.key for m in self.messages]

    def by_name(self, name: str) -> list[Message]:
        return [m for m in self.messages if m.data.get("name") == name]

    async def wait_for(self, ready: Callable[[], Any], limit: float = WAIT) -> None:
        with anyio.fail_after(limit):
            while not ready():
                await self._changed.wait()

    async def wait_name(self, name: str, limit: float = WAIT) -> Message:
        await self.wait_for(lambda: self.by_name(name), limit)
        return self.by_name(name)[0]


def make_context(tmp: Path, name: str = "inbox") -> PluginContext:
    return PluginContext(
        name=name,
        topic=f"{name}.items",
        base_dir=tmp,
        workdir=tmp / ".chute",
        node="test-node",
        broker=MemoryBroker(),
    )


def build(cls: Any, options: dict[str, Any], ctx: PluginContext) -> Any:
    """Decode options exactly as the runtime does, then build the plugin."""
    return cls(msgspec.convert(options, cls.Options, dec_hook=dec_hook), ctx)


@asynccontextmanager
async def running(source: Any) -> AsyncIterator[Collector]:
    collector = Collector()
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.run, collector)
        ready = getattr(source, "ready", None)
        if ready is not None:
            with anyio.fail_after(WAIT):
                await ready.wait()
        try:
            yield collector
        finally:
            tg.cancel_scope.cancel()
    await source.aclose()


async def until_caught_up(source: Any, emit: Callable[[Sequence[Message]], Any]) -> None:
    """Run a ``redis`` source until it has read all the stream held, then close it."""
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.run, emit)
            with anyio.fail_after(WAIT):
                await source.caught_up()
            tg.cancel_scope.cancel()
    finally:
        await source.aclose()


@pytest.fixture
def base_url(redis_url: str) -> str:
    """The shared Redis, without the ``?prefix=`` the ``redis_url`` fixture adds."""
    return redis_url.partition("?")[0]


@pytest.fixture
def stream(redis_url: str) -> str:
    """A stream key under the test's own prefix (dropped at the end)."""
    return redis_url.partition("prefix=")[2] + "orders"


@pytest.fixture
async def raw(base_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client, to write and inspect the stream as another program would."""
    client = aioredis.Redis.from_url(base_url, decode_responses=True)
    yield client
    await client.aclose()
