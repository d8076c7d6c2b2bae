"""A pool's per-item time limit (``timeout``), for next to nothing an item.

Two costs are kept off the items, which nearly always end long before their
limit:

- a timer: the pool keeps one for all of its items. It fires at the earliest
  deadline known when it was armed, cuts the items whose deadline has passed,
  and arms itself again at the earliest one left: at most once per
  ``seconds`` while items come and go. (``anyio.fail_after`` armed and took
  down a timer and a deadline for every item: 21 us of CPU an item, twice
  what the engine spends on a whole no-op item.)
- a cancel scope: each worker runs its items in a ``Lane``, a cancel scope it
  keeps from one item to the next; a limit cuts the lane (cancels its scope),
  and the worker takes its next item in a new one. A scope an item cost
  4 to 7 us of CPU, as much as the rest of the engine's work on a no-op item
  (``python bench/item_timeout.py``).

Items still run inside an anyio cancel scope, so a shield inside the
executor (a command executor reaping its child) holds against a time limit
as it holds against a shutdown; ``asyncio.timeout`` would cancel through it.

Once a lane is cut, its cancellation stays pending until the worker leaves
it: between an item's end and the lane's, the worker may only await inside
a shield (the pool records outcomes in ``Deadline.shield``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import TracebackType
from typing import TypeVar

import anyio

T = TypeVar("T")


class TimeLimit:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._running: set[Lane] = set()
        """Lanes with an item running, each with its item's deadline."""
        self._timer: asyncio.TimerHandle | None = None

    def lane(self) -> Lane:
        """A cancel scope for a worker's items, to enter with ``with``."""
        return Lane(self)

    def _started(self, lane: Lane, loop: asyncio.AbstractEventLoop) -> None:
        lane.deadline = loop.time() + self.seconds
        self._running.add(lane)
        if self._timer is None:
            self._timer = loop.call_at(lane.deadline, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for lane in [lane for lane in self._running if lane.deadline <= now]:
            self._running.discard(lane)
            lane.scope.cancel()
        if self._running:
            earliest = min(lane.deadline for lane in self._running)
            self._timer = loop.call_at(earliest, self._expire, loop)

    def close(self) -> None:
        """Take the timer down (the pool has stopped: no item is left to time)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Lane:
    """A worker's cancel scope, kept from item to item until a time limit cuts it."""

    __slots__ = ("_limit", "deadline", "scope")

    def __init__(self, limit: TimeLimit) -> None:
        self._limit = limit
        self.scope = anyio.CancelScope()
        self.deadline = 0.0
        """The running item's, while one runs."""

    def __enter__(self) -> Lane:
        self.scope.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:  # fmt: skip
        return self.scope.__exit__(exc_type, exc, tb)

    @property
    def cut(self) -> bool:
        """Whether an item's limit ended this lane: the worker must leave it."""
        return self.scope.cancel_called

    async def run(self, work: Awaitable[T]) -> T:
        """``await work`` (in this lane), cancelled with ``TimeoutError`` once it has run
        ``seconds``. A result that came as the limit was reached is returned."""
        self._limit._started(self, asyncio.get_running_loop())
        try:
            return await work
        except (Exception, asyncio.CancelledError):
            # Only the limit cuts a lane: the item reached it, whatever it raised
            # on its way out (a shutdown's cancellation comes again once we leave).
            if self.scope.cancel_called:
                raise TimeoutError from None
            raise
        finally:
            self._limit._running.discard(self)
