"""A topic's messages as the book's source API: ``[api] items = "TOPIC"``.

::

    GET /v1/items         -> {"kind": "ItemList", "apiVersion": "v1", "items": [names]}
    GET /v1/items/<name>  -> {"kind": "Item", "apiVersion": "v1", "data": {...}}

So one runtime's results (a pool's ``output``, read by no pool here) are
another's work: its ``http`` source polls this API, and its own state store
remembers what it finished. An item is a message the topic holds (retained,
with no group reading it; not yet acknowledged, with one), named by its key,
or its id when it has none; with several messages for one key, the newest
one's data is served. The listing offers the newest ``LISTED`` messages the
topic holds, oldest first: a topic that retains more (its capacity) offers a
window that moves on as new results come, as retention itself does.

The http source lists, then fetches each new name: one look at the broker
(``Browsable.browse``) serves both for ``FRESH`` seconds, so a listing of
thousands costs one browse, not one per item.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from .broker import Browsable

LISTED = 10_000
"""The most names one listing offers (the book's API has no paging)."""

FRESH = 1.0
"""Seconds a look at the topic serves listings and fetches."""


class ServedItems:
    def __init__(self, broker: Browsable, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self._held: dict[str, Any] = {}
        self._taken_at = -FRESH
        self._lock = anyio.Lock()

    async def look(self) -> dict[str, Any]:
        """The items by name, in the order of their first message; each one's data."""
        async with self._lock:  # callers arriving together share one browse
            if time.monotonic() - self._taken_at >= FRESH:
                messages = await self.broker.browse(self.topic, limit=LISTED)
                held: dict[str, Any] = {}
                for m in messages:  # oldest first: a later message of a key replaces the data
                    held[m.key or m.id] = m.data
                self._held, self._taken_at = held, time.monotonic()
            return self._held
