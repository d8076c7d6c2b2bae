"""The broker contract: topics, consumer groups, pending deliveries.

Semantics shared by every backend (proven by ``tests/conformance``):

- ``publish`` appends a batch in order and assigns ids of the Redis stream form
  ``<ms>-<seq>``, strictly increasing per topic. When the topic holds
  ``capacity`` unacknowledged entries the call waits (back-pressure) instead of
  dropping anything.
- A new consumer group starts at the start of what the topic retains
  (``start="earliest"``, the default: messages published before any reader
  existed are not skipped) or at its end (``"latest"``: only messages
  published from then on). Every group sees every message from its start on;
  consumers inside one group share them. ``read`` returns first the
  deliveries that are due again (nacked and past their delay, or pending longer
  than the group's visibility timeout), then new messages, each with
  ``attempt`` set to its delivery count in that group.
- A topic that no consumer group reads (dead letters, an output read from
  outside) has nobody to acknowledge it: there ``capacity`` is a retention
  limit instead, the oldest entries beyond it are dropped and counted
  (``TopicStats.dropped``), and publishing never waits.
- A delivery stays pending until ``ack``; ``nack`` makes it due again after
  ``delay`` seconds. While it waits out its delay it counts as pending but
  not in ``oldest_pending_age`` (a retry is not a stuck delivery). A
  delivery given back uncounted (``counted=False``: a pool stopped before it
  ran it, or its key was running) comes back with the attempt it had.
  Nothing unacknowledged is ever trimmed.
- ``extend`` restarts a pending delivery's visibility clock: a pool calls it
  for the items it is running (a heartbeat at a fraction of the visibility
  timeout), so an item that runs longer than the timeout is not redelivered
  while it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

from .message import Message


class GroupStats(msgspec.Struct, kw_only=True):
    name: str
    consumers: int = 0
    lag: int = 0
    """Messages published but not yet delivered to this group."""
    pending: int = 0
    """Deliveries not yet acknowledged."""
    oldest_pending_age: float = 0.0
    """Seconds since the oldest pending delivery was handed out."""
    acked: int = 0
    ack_rate: float = 0.0
    """Acknowledgements per second (exponentially weighted)."""


class TopicStats(msgspec.Struct, kw_only=True):
    topic: str
    length: int = 0
    """Entries the topic still holds (unacknowledged by some group; all, with no group)."""
    capacity: int = 0
    dropped: int = 0
    """Entries dropped unread because no group reads the topic and it held ``capacity``."""
    published: int = 0
    publish_rate: float = 0.0
    groups: list[GroupStats] = []

    def group(self, name: str) -> GroupStats:
        for stats in self.groups:
            if stats.name == name:
                return stats
        return GroupStats(name=name)

    def backlog(self, group: str) -> int:
        """Work a group still has to do: not yet delivered plus not yet acked."""
        stats = self.group(group)
        return stats.lag + stats.pending


@runtime_checkable
class Broker(Protocol):
    """Topics with consumer groups. Implementations: ``plugins/brokers``."""

    healthy: bool
    """False while the backing service is unreachable (shown by ``chute status``)."""

    async def start(self) -> None:
        """Connect. Called once before any other call."""

    async def aclose(self) -> None:
        """Release connections; pending deliveries stay pending for the next run."""

    async def declare_topic(self, topic: str, *, capacity: int) -> None:
        """Create the topic if needed and set its capacity (entries not yet acked)."""

    async def ensure_group(
        self, topic: str, group: str, *, visibility_timeout: float, start: str = "earliest"
    ) -> None:
        """Create the group if needed, starting at ``start``: ``"earliest"`` (the start
        of the retained topic) or ``"latest"`` (only messages published from now on).
        An existing group keeps its position."""

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[str]:
        """Append messages in order; return their ids. Waits while the topic is full."""

    async def read(
        self, topic: str, group: str, consumer: str, *, count: int, block: float | None
    ) -> list[Message]:
        """Up to ``count`` deliveries; wait up to ``block`` seconds for one (None: no wait)."""

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        """Finish deliveries. Unknown or already acked ids are ignored."""

    async def nack(self, topic: str, group: str, ids: Sequence[str], *, delay: float = 0.0,
                   counted: bool = True) -> None:  # fmt: skip
        """Make deliveries due again after ``delay`` seconds.

        ``counted=False``: they go back without having been worked on (a
        stop, a key running elsewhere), so each comes back with the attempt
        it had.
        """

    async def extend(self, topic: str, group: str, ids: Sequence[str]) -> None:
        """Reset the visibility clock of deliveries still being worked on (the
        running-item heartbeat). Ids no longer pending are ignored."""

    async def stats(self, topic: str) -> TopicStats:
        """A snapshot of the topic and its groups."""


@runtime_checkable
class Browsable(Protocol):
    """A broker that can list what a topic holds without delivering it (the API's
    ``/v1/items``). Optional: a broker without it serves no items."""

    async def browse(self, topic: str, *, limit: int) -> list[Message]:
        """The newest ``limit`` (at least 1) or fewer of the messages the topic holds,
        oldest first, with their ids. A topic holds every message some consumer group
        has not yet acknowledged (with no group, every one it retains); one that every
        group has acknowledged may still be held until the backend drops it. An
        unknown topic holds nothing."""
        ...
