"""How long a stopping runtime waits for work that a shutdown must not cut short.

Some steps are shielded from the cancellation a shutdown sends: claiming a
fetched batch, publishing a finished item's result, recording outcomes and
acknowledging them, an operator's ack. Cut in the middle, each would turn
finished work into duplicates. But a shield must not mean "wait for ever":
a publish waiting on a full topic, or Redis frozen, would keep the process
alive after SIGTERM. So every shielded step runs in a ``Deadline.shield()``
scope: immune to cancellation until the runtime's stop deadline (the grace
period after the stop began), cancelled then; what did not finish stays
pending and is delivered again (at-least-once holds). ``expire`` (a second
SIGINT or SIGTERM) moves the deadline to now.
"""

from __future__ import annotations

import math
from types import TracebackType

import anyio


class Deadline:
    """The stop deadline shared by a runtime's shielded sections (none until a stop)."""

    def __init__(self) -> None:
        self.at = math.inf
        """anyio clock time at which shielded sections give up."""
        self._scopes: dict[anyio.CancelScope, float] = {}
        self._expired = False

    def set(self, at: float) -> None:
        """Shielded sections give up at ``at`` (never later than an earlier setting)."""
        self.at = min(self.at, at)
        for scope, extra in self._scopes.items():
            scope.deadline = self._deadline(extra)

    def expire(self) -> None:
        """Give up now, extra time included (a second signal)."""
        self._expired = True
        self.set(anyio.current_time())

    def _deadline(self, extra: float) -> float:
        return self.at if self._expired else self.at + extra

    def shield(self, extra: float = 0.0) -> _Shield:
        """A scope shielded from cancellation until the deadline (plus ``extra`` seconds).

        Check ``cancelled_caught`` afterwards: True when the deadline cut it short.
        """
        return _Shield(self, extra)


class _Shield:
    """``Deadline.shield``'s context manager. A class: a pool enters one per item with an
    output, and a ``contextlib`` generator added 40% to the cost of the scope itself."""

    __slots__ = ("_deadline", "_extra", "_scope")

    def __init__(self, deadline: Deadline, extra: float) -> None:
        self._deadline = deadline
        self._extra = extra
        self._scope = anyio.CancelScope(shield=True, deadline=deadline._deadline(extra))

    def __enter__(self) -> anyio.CancelScope:
        scope = self._scope.__enter__()
        self._deadline._scopes[scope] = self._extra
        return scope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        del self._deadline._scopes[self._scope]
        return bool(self._scope.__exit__(exc_type, exc, tb))
