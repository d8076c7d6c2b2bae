"""What operators and sink runners share: read a topic in batches until stopped.

A stop abandons only the waits (for the next batch, or a backoff): the batch
in hand is still published or sent, then acknowledged. A broker call that
fails because the broker is unreachable is retried with a growing delay; the
batch stays pending meanwhile, so nothing is lost if the process dies.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio

from .broker import Broker
from .errors import BrokerUnavailable
from .message import Message
from .stopping import Deadline

T = TypeVar("T")

READ_BLOCK = 5.0
"""Seconds one read waits for a message before it is issued again."""

_RETRYABLE = (BrokerUnavailable, ConnectionError, TimeoutError)


class BatchReader:
    """Reads ``batch`` messages at a time for ``group`` until ``stop``."""

    def __init__(
        self,
        broker: Broker,
        *,
        group: str,
        consumer: str,
        batch: int,
        who: str,
        log: logging.Logger,
        deadline: Deadline | None = None,
    ) -> None:
        self.broker = broker
        self.group = group
        self.consumer = consumer
        self.batch = batch
        self.deadline = deadline or Deadline()
        """When shielded acks give up once a stop began (the runtime shares its own)."""
        self._who = who
        """How log lines name this reader (``shard-by-user``, ``sink archive``)."""
        self._log = log
        self._stopping = False
        self._waiting: set[anyio.CancelScope] = set()

    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run``."""
        self._stopping = True
        for scope in self._waiting:
            scope.cancel()

    async def _stop_on(self, stop: anyio.Event) -> None:
        await stop.wait()
        self.stop()

    @contextmanager
    def _interruptible(self) -> Iterator[anyio.CancelScope]:
        """A scope ``stop`` cancels: around a wait that a stop abandons."""
        with anyio.CancelScope() as scope:
            self._waiting.add(scope)
            try:
                yield scope
            finally:
                self._waiting.discard(scope)

    async def read(self, topic: str, block: float | None = READ_BLOCK) -> list[Message]:
        """The next batch; empty once ``stop`` was called (a wait for one is abandoned)."""
        if self._stopping:
            return []
        with self._interruptible():
            return await self._retrying(
                f"read {topic!r}",
                lambda: self.broker.read(
                    topic, self.group, self.consumer, count=self.batch, block=block
                ),
            )
        return []

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry while the broker is unreachable; the batch stays pending meanwhile."""
        delay = 0.1
        while True:
            try:
                return await call()
            except _RETRYABLE as exc:
                self._log.warning(
                    "%s: cannot %s (%s); retrying in %.1fs", self._who, what, exc, delay
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
