"""The source contract: turn the outside world into messages on a topic.

A source class may set ``replays = True`` when it offers every unfinished item
again after a restart (a watched folder, an item server): ``chute check`` then
does not warn when it feeds a memory topic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, Protocol

import msgspec

from .message import Message
from .store import ItemStatus

Emit = Callable[[Sequence[Message]], Awaitable[list[str]]]
"""Publishes messages on the source's topic (waits while the topic is full)."""


class Source(Protocol):
    Options: ClassVar[type[msgspec.Struct]]

    async def run(self, emit: Emit) -> None:
        """Produce messages until cancelled (or, for finite sources, until done)."""

    async def item_finished(self, key: str, status: ItemStatus) -> None:
        """The pool reading this source's topic finished ``key`` (done or dead)."""

    async def aclose(self) -> None: ...
