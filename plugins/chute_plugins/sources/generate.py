"""Synthetic items: a demo needs work without any files, and so do benchmarks.

Emits ``count`` items (forever when 0), ``rate`` per second (as fast as the
topic takes them when 0). Item ``i`` has key ``<prefix>-<i>`` and data
``{"n": i, **data}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
from chute.config import Strict
from chute.context import PluginContext
from chute.message import Message
from chute.source import Emit
from chute.store import ItemStatus


class GenerateOptions(Strict):
    count: int = 10
    """Items to emit; 0 emits for ever."""
    rate: float = 0.0
    """Items per second; 0 emits as fast as the topic takes them."""
    batch: int = 100
    """Most messages per publish."""
    prefix: str = "item"
    """Item ``i`` has key ``<prefix>-<i>``."""
    data: dict[str, Any] = {}
    """Extra fields merged into each item's data ``{"n": i}``."""


class GenerateSource:
    Options: ClassVar[type[Strict]] = GenerateOptions
    replays = True
    """Offers unfinished items again after a restart (it generates the same items again)."""

    @staticmethod
    def fields(options: GenerateOptions) -> set[str]:
        """The fields of every item's data (``chute check`` compares a command's argv with them)."""
        return {"n", *options.data}

    def __init__(self, options: GenerateOptions, ctx: PluginContext) -> None:
        self.options = options
        self._done = anyio.Event()

    async def run(self, emit: Emit) -> None:
        o = self.options
        n = 0
        batch = 1 if o.rate else max(1, o.batch)
        while o.count == 0 or n < o.count:
            size = batch if o.count == 0 else min(batch, o.count - n)
            await emit(
                [
                    Message(key=f"{o.prefix}-{i}", data={"n": i, **o.data})
                    for i in range(n, n + size)
                ]
            )
            n += size
            if o.rate:
                await anyio.sleep(1.0 / o.rate)
        self._done.set()

    async def caught_up(self) -> None:
        """Finite runs are caught up once everything is emitted; endless ones at once."""
        if self.options.count:
            await self._done.wait()

    async def item_finished(self, key: str, status: ItemStatus) -> None:
        return None

    async def aclose(self) -> None:
        return None
