"""Shared test helpers: a memory broker, publishing, draining an operator, reading outputs."""

from __future__ import annotations

from typing import Any

import msgspec
from chute.config import Duration, OperatorConfig, TopicConfig, dec_hook
from chute.message import Message, new_message
from chute.operators import Operator, build_operator
from chute_plugins.brokers.memory import MemoryBroker


def operator_cfg(table: dict[str, Any]) -> OperatorConfig:
    cfg: OperatorConfig = msgspec.convert(table, OperatorConfig, dec_hook=dec_hook)
    return cfg


async def make(
    broker: MemoryBroker, name: str, table: dict[str, Any], *, visibility: float = 300.0, **kw: Any
) -> Operator:
    """Build, create the groups (as the engine does before sources start)."""
    op = build_operator(name, operator_cfg(table), broker, node="test", **kw)
    await op.prepare({t: TopicConfig(visibility_timeout=Duration(visibility)) for t in op.inputs})
    return op


async def watch(broker: MemoryBroker, *topics: str) -> None:
    """A reader group on output topics, created before anything is published there."""
    for topic in topics:
        await broker.ensure_group(topic, "reader", visibility_timeout=300)


async def publish(broker: MemoryBroker, topic: str, rows: list[tuple[str, Any]]) -> None:
    await broker.publish(topic, [new_message(data, key=key) for key, data in rows])


async def drain(op: Operator) -> int:
    """Move everything now waiting on the operator's inputs; messages moved."""
    moved = 0
    for topic in op.inputs:
        while n := await op.pump(topic, block=None):
            moved += n
    return moved


async def take(broker: MemoryBroker, topic: str, *, wait: float | None = None) -> list[Message]:
    """Everything the reader group has on a topic (waiting up to ``wait`` for the first)."""
    got: list[Message] = []
    while batch := await broker.read(topic, "reader", "r", count=10_000, block=wait):
        got.extend(batch)
        await broker.ack(topic, "reader", [m.id for m in batch])
        wait = None
    return got


def keys(messages: list[Message]) -> list[str]:
    return [m.key for m in messages]
