"""Give-backs that do not count, on JetStream: a key-value bucket beside the topics.

JetStream's delivery count only grows, and a delivery's ``attempt`` is that
count. A delivery a pool gives back without having worked on it (a stop, a
key running elsewhere) must come back with the attempt it had, so before its
NAK the broker writes it down here: ``<prefix>_given_back``, one key per
topic, group and entry (``<stream>.<consumer>.<sequence>``) whose value is how
many of its deliveries did not count. A redelivery (count above 1) is looked
up, and its attempt lowered by that. An ack purges the record; a week's TTL
clears what a crash left behind.

Records are read and written all at once; the first error comes out as it
is, so the broker's retry loop tells an outage (retried) from the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.kv import KeyValue

TTL = 7 * 24 * 3600.0
"""Seconds a record lives: a delivery not seen again by then counts its give-backs."""

_IN_USE = 10058
"""JetStream's error code: a stream by that name exists with another configuration."""


def bucket_name(prefix: str) -> str:
    return f"{prefix}_given_back"


async def open_bucket(js: JetStreamContext, prefix: str, replicas: int,
                      storage: StorageType) -> KeyValue:  # fmt: skip
    """The bucket, made if no node made it yet."""
    name = bucket_name(prefix)
    try:
        return await js.create_key_value(
            bucket=name, history=1, ttl=TTL, replicas=replicas, storage=storage
        )
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _IN_USE:
            raise
        # Made by a node with other settings (replicas, storage): used as it is.
        return await js.key_value(name)


async def read(kv: KeyValue, keys: dict[str, str]) -> dict[str, int]:
    """For ``{id: key}``, the give-backs not counted of the ids that have any."""
    found: dict[str, int] = {}

    async def look(message_id: str) -> None:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):  # purged too
            entry = await kv.get(keys[message_id])
            found[message_id] = int(entry.value or b"0")

    await _each(look, list(keys))
    return found


async def write(kv: KeyValue, records: dict[str, int]) -> None:
    """Set ``{key: give-backs not counted}``; 0 purges the record."""

    async def one(key: str) -> None:
        if records[key]:
            await kv.put(key, b"%d" % records[key])
        else:
            await kv.purge(key)

    await _each(one, list(records))


async def _each(call: Callable[[str], Coroutine[Any, Any, None]], items: list[str]) -> None:
    try:
        async with anyio.create_task_group() as tg:
            for item in items:
                tg.start_soon(call, item)
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
