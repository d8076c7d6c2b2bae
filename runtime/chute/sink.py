"""The sink contract: deliver the messages of a topic to the outside world.

A sink is the mirror of a source. The runtime reads the sink's topic with the
sink's own consumer group (``sink_runner.py``), hands each batch to ``send``
and acknowledges a message only once the far side accepted it. The sink only
says, per message, whether it was accepted: retries, backoff and the dead
letter (``<name>.dead``) are the runtime's, the same for every sink.

```toml
[sinks.results]
type = "http"                 # or file, redis, mqtt, or "module:Class"
topic = "thumbnails.done"     # the topic to deliver
url = "https://example.com/hook"
retry = { attempts = 10, backoff = "1s", max_backoff = "1m" }
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol

import msgspec

from .config import Duration, RetryConfig, Strict
from .message import Message


class Refused(msgspec.Struct, frozen=True):
    """The far side did not accept one message.

    ``permanent``: it never will (HTTP 400, a payload too large): the message
    goes straight to the dead letters instead of being retried.
    """

    reason: str
    permanent: bool = False


Outcome = Refused | None
"""One per message sent: None when the far side accepted it."""


class Sink(Protocol):
    Options: ClassVar[type[msgspec.Struct]]

    async def send(self, messages: Sequence[Message]) -> Sequence[Outcome]:
        """Deliver a batch; return one outcome per message, in order.

        Raising (the far side is unreachable) refuses the whole batch for
        now: every message in it is retried after a backoff.
        """

    async def aclose(self) -> None: ...


def _sink_retry() -> RetryConfig:
    # A sink's far side is often down for minutes (a network link, a broker
    # restart): give it more and longer attempts than an executor gets.
    return RetryConfig(attempts=10, backoff=Duration(0.5), max_backoff=Duration(60.0))


class SinkSettings(Strict):
    """The keys of ``[sinks.NAME]`` the runtime reads; the others are the plugin's."""

    type: str
    """Which sink: ``file``, ``http``, ``redis``, ``mqtt``, or ``module:Class``."""
    topic: str
    """The topic whose messages the sink delivers."""
    group: str = ""
    """Consumer group on the topic; defaults to the sink's name."""
    batch: int = 100
    """Most messages handed to the sink at once (the file sink fsyncs once per batch)."""
    retry: RetryConfig = msgspec.field(default_factory=_sink_retry)
    """Attempts and backoff for refused messages (default 10 attempts, 0.5 s doubling to 1 min)."""


SINK_KEYS = ("type", "topic", "group", "batch", "retry")
"""Keys of the table that are not the plugin's options."""


class SinkStats(msgspec.Struct, kw_only=True):
    """Counters for ``chute status`` and ``/metrics``."""

    name: str
    type: str
    topic: str
    delivered: int = 0
    """Messages the far side accepted (acknowledged on the topic)."""
    retried: int = 0
    """Deliveries refused for now and scheduled again after a backoff."""
    dead_lettered: int = 0
    """Messages refused for good, or after the last attempt: sent to ``<name>.dead``."""
