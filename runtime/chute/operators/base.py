"""What every operator shares: the consume, publish, then ack loop, and its counters.

The order is the guarantee. A batch is read from the input, routed, published
to every output it goes to, and only then acknowledged on the input. A crash
before the ack leaves the batch pending, so it is delivered again after the
input's visibility timeout: outputs may see a message twice, never zero times.
The ack itself is shielded from cancellation: once the outputs accepted a
batch, a shutdown must not turn it into duplicates; but only until the
runtime's stop deadline (``stopping.py``), so a broker that stops answering
cannot hold the process: the batch then stays pending (at-least-once).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import msgspec
from msgspec.structs import replace

from ..broker import Broker
from ..config import OperatorBase, TopicConfig
from ..message import Message
from ..reading import READ_BLOCK, BatchReader

log = logging.getLogger("chute.operators")


class OperatorStats(msgspec.Struct, kw_only=True):
    """Counters for ``/metrics``, ``chute status`` and the dashboard."""

    name: str
    type: str
    received: int = 0
    """Messages read from the input(s) and acknowledged."""
    published: int = 0
    """Messages accepted by outputs (a message copied to two outputs counts twice)."""
    dropped: int = 0
    """Filtered out, or matching no route without a default: acknowledged, sent nowhere."""
    dead_lettered: int = 0
    """Sent to ``<name>.dead``: an expression failed on it, or it matched no route."""
    unmatched: int = 0
    """Split: messages that matched no route (whether a default took them or not)."""
    errors: int = 0
    """Expression failures on a message (each also dead-lettered)."""
    rerouted: int = 0
    """Shard: messages sent to another shard because their own was unhealthy."""
    outputs: dict[str, int] = {}
    """Messages accepted per output topic."""
    unhealthy: dict[str, str] = {}
    """Shard: unhealthy shard topics and why (down, stalled, failing)."""


class Operator(BatchReader):
    """Base of the routing operators; ``run`` consumes ``inputs[0]`` until cancelled."""

    kind: ClassVar[str] = ""

    def __init__(self, name: str, cfg: OperatorBase, broker: Broker, *, node: str) -> None:
        super().__init__(
            broker, group=cfg.group or name, consumer=f"{node}/{name}",
            batch=max(1, cfg.batch), who=name, log=log,
        )  # fmt: skip
        self.name = name
        self.start = cfg.start
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.dead_letter = f"{name}.dead"
        """Topic for messages an operator cannot route (bad input)."""
        self._stats = OperatorStats(name=name, type=self.kind)

    def stats(self) -> OperatorStats:
        return replace(
            self._stats,
            outputs=dict(self._stats.outputs),
            unhealthy=dict(self._stats.unhealthy),
        )

    async def prepare(self, topics: Mapping[str, TopicConfig] | None = None) -> None:
        """Create this operator's consumer group on each input (before sources start)."""
        topics = topics or {}
        for topic in self.inputs:
            timeout = topics.get(topic, TopicConfig()).visibility_timeout
            await self.broker.ensure_group(
                topic, self.group, visibility_timeout=timeout, start=self.start
            )

    async def run(self, stop: anyio.Event | None = None) -> None:
        """Move messages until cancelled, or until ``stop`` is set.

        On ``stop`` the batch in hand is still published and acknowledged;
        only waiting for the next one is abandoned.
        """
        async with anyio.create_task_group() as tg:
            if stop is not None:
                tg.start_soon(self._stop_on, stop)
            for task in self.background():
                tg.start_soon(task)
            async with anyio.create_task_group() as readers:
                for topic in self.inputs:
                    readers.start_soon(self._consume, topic)
            tg.cancel_scope.cancel()

    def background(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """Tasks that run beside the readers (the shard's health watch)."""
        return []

    async def _consume(self, topic: str) -> None:
        while not self._stopping:
            await self.pump(topic)

    async def pump(self, topic: str, *, block: float | None = READ_BLOCK) -> int:
        """Move one batch from ``topic``; the number of messages moved (0: none came)."""
        messages = await self.read(topic, block)
        if messages:
            await self.forward(topic, messages, self.route(messages))
        # The memory broker answers without yielding while it has data: give
        # the rest of the process (sources, pools, other operators) a turn.
        await anyio.lowlevel.checkpoint()
        return len(messages)

    def route(self, messages: list[Message]) -> dict[str, list[Message]]:
        """Output topic -> messages for it, in input order. Counts what goes nowhere."""
        raise NotImplementedError

    # -- shared steps -----------------------------------------------------

    async def forward(
        self, topic: str, messages: Sequence[Message], routes: Mapping[str, list[Message]]
    ) -> None:
        """Publish every routed batch, then acknowledge the input batch."""
        counts = self._stats.outputs
        for output, batch in routes.items():
            if batch:
                await self._retrying(
                    f"publish to {output!r}", partial(self.broker.publish, output, batch)
                )
                counts[output] = counts.get(output, 0) + len(batch)
                self._stats.published += len(batch)
        ids = [m.id for m in messages]
        with self.deadline.shield() as acking:
            await self._retrying(f"ack {topic!r}", lambda: self.broker.ack(topic, self.group, ids))
        if not acking.cancelled_caught:
            self._stats.received += len(messages)

    def dead(self, message: Message, reason: str, bucket: list[Message]) -> None:
        """Queue a message for the dead-letter topic, with the reason in its headers."""
        self._stats.dead_lettered += 1
        headers = dict(message.headers)
        headers["error"] = reason
        headers["operator"] = self.name
        bucket.append(replace(message, headers=headers))

    def failed(self, message: Message, exc: Exception, bucket: list[Message]) -> None:
        """An expression raised on this message: log, count, dead-letter; never crash."""
        self._stats.errors += 1
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("%s: message %s dead-lettered: %s", self.name, message.id, reason)
        self.dead(message, reason, bucket)
