"""Watching what is published to a topic (``chute tail``, ``GET /v1/topics/<t>/tail``).

A consumer group would be the broker's way to read a topic, but a group
that a tail leaves behind holds every later message unacknowledged, so the
topic would fill up. A tap instead sees each batch as it is published, on
this node: it wraps the broker's ``publish`` while at least one tail is
open and puts it back after, so a runtime nobody tails pays nothing.
Slow tails drop messages (counted) rather than slow publishers down.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .message import Message

_BUFFER = 1000


class Taps:
    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self._streams: dict[str, set[MemoryObjectSendStream[Message]]] = {}
        self._original: Any = None
        self.dropped = 0

    def _install(self) -> None:
        original = self._original = self.broker.publish

        async def publish(topic: str, messages: Sequence[Message]) -> list[str]:
            ids: list[str] = await original(topic, messages)
            for stream in self._streams.get(topic, ()):
                for message, message_id in zip(messages, ids, strict=False):
                    try:
                        stream.send_nowait(_with_id(message, message_id))
                    except anyio.WouldBlock:
                        self.dropped += 1
            return ids

        self.broker.publish = publish

    def _uninstall(self) -> None:
        if self._original is not None and not any(self._streams.values()):
            del self.broker.publish  # the class's method shows through again
            self._original = None

    @asynccontextmanager
    async def open(self, topic: str) -> AsyncIterator[AsyncIterator[Message]]:
        send, receive = anyio.create_memory_object_stream[Message](_BUFFER)
        if self._original is None:
            self._install()
        self._streams.setdefault(topic, set()).add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._streams[topic].discard(send)
            send.close()
            self._uninstall()


def _with_id(message: Message, message_id: str) -> Message:
    return Message(
        id=message_id, key=message.key, data=message.data, headers=message.headers,
        attempt=message.attempt, created_at=message.created_at,
    )  # fmt: skip
