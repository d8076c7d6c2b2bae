"""merge: several inputs into one output, fairly, order kept per input.

One reader task per input, each reading a batch, taking its turn to publish
it, then acknowledging it. Turns go through a FIFO lock (anyio's Lock hands
itself to the longest waiter), so each input with data publishes at most one
batch per round: a busy input cannot starve a quiet one, whose messages wait
at most one batch of every other input. Each reader is sequential, so order
within an input is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anyio

from ..broker import Broker
from ..config import MergeOperator
from ..message import Message
from .base import Operator


class Merge(Operator):
    kind = "merge"

    def __init__(self, name: str, cfg: MergeOperator, broker: Broker, *, node: str) -> None:
        super().__init__(name, cfg, broker, node=node)
        self.inputs = list(dict.fromkeys(cfg.inputs))
        self.outputs = [cfg.output]
        self._turn = anyio.Lock()

    def route(self, messages: list[Message]) -> dict[str, list[Message]]:
        return {self.outputs[0]: messages}

    async def forward(
        self, topic: str, messages: Sequence[Message], routes: Mapping[str, list[Message]]
    ) -> None:
        async with self._turn:
            await super().forward(topic, messages, routes)
