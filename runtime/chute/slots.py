"""A pool's concurrency limit, which the autoscaler resizes while items run (``pool.py``)."""

from __future__ import annotations

import anyio


class Slots:
    """How many of a pool's workers may hold an item at once: a resizable semaphore.

    anyio's CapacityLimiter does this too, but records which task holds each
    token, which cost more per item than the rest of the pool's bookkeeping.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.taken = 0
        self._freed: anyio.Event | None = None

    def take_nowait(self) -> bool:
        if self.taken < self.total:
            self.taken += 1
            return True
        return False

    async def take(self) -> None:
        while not self.take_nowait():
            if self._freed is None:
                self._freed = anyio.Event()
            await self._freed.wait()

    def give_back(self) -> None:
        self.taken -= 1
        self._wake()

    def resize(self, total: int) -> None:
        self.total = total
        self._wake()

    def _wake(self) -> None:
        if self._freed is not None and self.taken < self.total:
            self._freed.set()  # every waiter tries again; the first ones win
            self._freed = None
