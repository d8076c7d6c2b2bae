"""Drive one sink: read its topic, send, then acknowledge what the far side accepted.

The order is the guarantee, as in the operators: a message is acknowledged
on the topic only after ``send`` said the far side accepted it, so a crash in
between delivers it again (at-least-once; the far side may see a duplicate,
never a gap). A refused message is retried with exponential backoff (a nack
with a delay, so the topic keeps it), and after the last attempt, or at once
when the refusal is permanent, it is published to ``<name>.dead`` with the
reason in its headers, then acknowledged.

When ``send`` raises (the far side is unreachable), the whole batch is
refused for now and the runner itself waits the backoff before it reads
again, so an outage costs one attempt per backoff, not one per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

from .broker import Broker
from .config import dec_hook, describe_validation_error
from .errors import ConfigError
from .message import Message
from .reading import READ_BLOCK, BatchReader
from .sink import SINK_KEYS, Outcome, Refused, Sink, SinkSettings, SinkStats
from .stopping import Deadline

log = logging.getLogger("chute.sinks")

_FINAL_WRITES = 10.0
"""Seconds the shielded acks and dead letters of one batch may take (and never past
the stop deadline)."""


def sink_settings(spec: dict[str, Any]) -> SinkSettings:
    """The runtime's keys of a ``[sinks.NAME]`` table; ConfigError with ``KEY: message``."""
    try:
        settings = msgspec.convert(
            {k: v for k, v in spec.items() if k in SINK_KEYS}, SinkSettings, dec_hook=dec_hook
        )
    except msgspec.ValidationError as err:
        key, msg = describe_validation_error(err)
        raise ConfigError([f"{key}: {msg}"]) from None
    problems = []
    if settings.batch < 1:
        problems.append(f"batch: must be at least 1, got {settings.batch}")
    if settings.retry.attempts < 1:
        problems.append(f"retry.attempts: must be at least 1, got {settings.retry.attempts}")
    if problems:
        raise ConfigError(problems)
    return settings


class SinkRunner(BatchReader):
    def __init__(
        self,
        name: str,
        settings: SinkSettings,
        sink: Sink,
        broker: Broker,
        *,
        node: str,
        deadline: Deadline | None = None,
    ) -> None:
        super().__init__(
            broker, group=settings.group or name, consumer=f"{node}/{name}",
            batch=settings.batch, who=f"sink {name}", log=log, deadline=deadline,
        )  # fmt: skip
        self.name = name
        self.settings = settings
        self.sink = sink
        self.topic = settings.topic
        self.dead_topic = f"{name}.dead"
        self.counters = SinkStats(name=name, type=settings.type, topic=settings.topic)
        self.changed = anyio.Event()
        """Set (then replaced) each time a batch was settled."""

    def stats(self) -> SinkStats:
        return msgspec.structs.replace(self.counters)

    async def prepare(self, visibility_timeout: float) -> None:
        """Create the sink's consumer group before any source publishes."""
        await self.broker.ensure_group(
            self.topic, self.group, visibility_timeout=visibility_timeout
        )

    async def run(self, stop: anyio.Event | None = None) -> None:
        """Deliver until cancelled, or until ``stop``: the batch in hand is still settled."""
        async with anyio.create_task_group() as tg:
            if stop is not None:
                tg.start_soon(self._stop_on, stop)
            while not self._stopping:
                await self.pump()
            tg.cancel_scope.cancel()

    async def pump(self, *, block: float | None = READ_BLOCK) -> int:
        """Deliver one batch; the number of messages read (0: none came)."""
        messages = await self.read(self.topic, block)
        if messages:
            pause = await self.deliver(messages)
            if pause:
                with self._interruptible():
                    await anyio.sleep(pause)
        await anyio.lowlevel.checkpoint()
        return len(messages)

    async def deliver(self, messages: Sequence[Message]) -> float:
        """Send a batch and settle each message; the pause before the next read."""
        pause = 0.0
        try:
            outcomes: Sequence[Outcome] = await self.sink.send(messages)
        except Exception as exc:  # the far side is away: every message waits its backoff
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("sink %s: cannot deliver %d messages: %s", self.name, len(messages), reason)
            outcomes = [Refused(reason)] * len(messages)
            pause = self.settings.retry.delay(min(m.attempt for m in messages))
        if len(outcomes) != len(messages):
            raise RuntimeError(
                f"sink {self.name}: send returned {len(outcomes)} outcomes for {len(messages)}"
            )
        # Shielded so a shutdown does not turn delivered messages into duplicates,
        # but only until the runtime's stop deadline (a second signal: now).
        with self.deadline.shield(), anyio.move_on_after(_FINAL_WRITES):
            await self._settle(messages, outcomes)
        return pause

    async def _settle(self, messages: Sequence[Message], outcomes: Sequence[Outcome]) -> None:
        retry = self.settings.retry
        done: list[str] = []
        dead: list[Message] = []
        later: dict[float, list[str]] = {}
        for message, outcome in zip(messages, outcomes, strict=True):
            if outcome is None:
                done.append(message.id)
            elif outcome.permanent or message.attempt >= retry.attempts:
                dead.append(self._dead_letter(message, outcome))
            else:
                # Round so one nack covers the batch a failing far side refused.
                delay = round(retry.delay(message.attempt), 1)
                later.setdefault(delay, []).append(message.id)
        if dead:
            await self._retrying(
                f"publish to {self.dead_topic!r}",
                lambda: self.broker.publish(self.dead_topic, dead),
            )
        if done or dead:
            ids = done + [m.headers["chute-message-id"] for m in dead]
            await self._retrying(
                f"ack {self.topic!r}", lambda: self.broker.ack(self.topic, self.group, ids)
            )
        for delay, ids in later.items():
            await self._retrying(
                f"nack {self.topic!r}",
                lambda: self.broker.nack(self.topic, self.group, ids, delay=delay),  # noqa: B023
            )
        self.counters.delivered += len(done)
        self.counters.dead_lettered += len(dead)
        self.counters.retried += sum(len(ids) for ids in later.values())
        self.changed.set()
        self.changed = anyio.Event()

    def _dead_letter(self, message: Message, refused: Refused) -> Message:
        why = "refused for good" if refused.permanent else f"refused {message.attempt} times"
        log.error("sink %s: message %s is dead (%s): %s", self.name, message.id, why,
                  refused.reason)  # fmt: skip
        headers = {
            **message.headers,
            "chute-error": refused.reason[:2000],
            "chute-sink": self.name,
            "chute-attempts": str(message.attempt),
            "chute-message-id": message.id,
        }
        return Message(key=message.key, data=message.data, headers=headers)
