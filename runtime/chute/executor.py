"""The executor contract: run one item, return its result or raise ItemFailed."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import msgspec

from .message import Message


class WorkItem(msgspec.Struct, kw_only=True):
    """What an executor is given: the item's name (its key), data and attempt."""

    name: str
    data: Any
    attempt: int
    message: Message
    pool: str


class Executor(Protocol):
    """Runs one item at a time per call; calls may run concurrently.

    Return the result (any JSON value, or None) on success. Raise
    ``chute.errors.ItemFailed`` on failure, with ``permanent=True`` when a
    retry cannot help (the item goes straight to the dead letters). Any other
    exception counts as a retryable failure.

    ``item.data`` and ``item.message`` may be the very objects other consumer
    groups, this item's retry and its dead letter see (the memory broker hands
    one object to all): read them, never change them. An executor that hands
    the data to someone else's code gives it a copy (``message.private_copy``),
    as the python executor does.
    """

    Options: ClassVar[type[msgspec.Struct]]

    # Optional: ``pool_problems(options, pool: PoolConfig) -> list[tuple[str, str]]``,
    # a static method naming pool settings this executor cannot honour, as
    # (key in the pool's table, why); ``chute check`` reports them.

    async def run(self, item: WorkItem) -> Any: ...

    async def aclose(self) -> None: ...
