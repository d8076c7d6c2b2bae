"""A pool's per-item time limit (``timeout``), for the price of a cancel scope an item.

``anyio.fail_after`` arms a loop timer and a deadline for every item and
takes them down again: 21 us of CPU an item, twice what the engine spends
on a whole no-op item (10 us; ``python bench/item_timeout.py``). Items
nearly always end long before their limit, so a pool keeps one timer for
all of its items instead, and the limit costs 10 us an item. The timer fires
at the earliest deadline known when it was armed, cancels the items whose
deadline has passed, and arms itself again at the earliest one left: at most
once per ``seconds`` while items come and go.

Each item still runs in an anyio cancel scope of its own, so a shield inside
the executor (a command executor reaping its child) holds against a time
limit as it holds against a shutdown; ``asyncio.timeout`` would cancel
through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import anyio

T = TypeVar("T")


class TimeLimit:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadlines: dict[anyio.CancelScope, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def run(self, work: Awaitable[T]) -> T:
        """``await work``, cancelled with ``TimeoutError`` once it has run ``seconds``."""
        loop = asyncio.get_running_loop()
        with anyio.CancelScope() as scope:
            deadline = loop.time() + self.seconds
            self._deadlines[scope] = deadline
            if self._timer is None:
                self._timer = loop.call_at(deadline, self._expire, loop)
            try:
                return await work
            finally:
                self._deadlines.pop(scope, None)
        # Only _expire cancels this scope: when the scope caught the
        # cancellation, the limit was reached (a shutdown's propagates).
        raise TimeoutError

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for scope, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[scope]
                scope.cancel()
        if self._deadlines:
            self._timer = loop.call_at(min(self._deadlines.values()), self._expire, loop)

    def close(self) -> None:
        """Take the timer down (the pool has stopped: no item is left to time)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
