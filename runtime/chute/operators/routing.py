"""copy, filter and split: one input, routes decided per message by expressions."""

from __future__ import annotations

from ..broker import Broker
from ..config import CopyOperator, FilterOperator, SplitOperator
from ..expressions import expression
from ..message import Message
from .base import Operator, log


class Copy(Operator):
    """Every message to every output (chapter 11's copier)."""

    kind = "copy"

    def __init__(self, name: str, cfg: CopyOperator, broker: Broker, *, node: str) -> None:
        super().__init__(name, cfg, broker, node=node)
        self.inputs = [cfg.input]
        self.outputs = list(dict.fromkeys(cfg.outputs))

    def route(self, messages: list[Message]) -> dict[str, list[Message]]:
        # The same list for every output: the broker stores each output's copy.
        return dict.fromkeys(self.outputs, messages)


class Filter(Operator):
    """Keep what matches ``where``; the rest is dropped or sent to ``rejected``."""

    kind = "filter"

    def __init__(self, name: str, cfg: FilterOperator, broker: Broker, *, node: str) -> None:
        super().__init__(name, cfg, broker, node=node)
        self.inputs = [cfg.input]
        self.outputs = [cfg.output] + ([cfg.rejected] if cfg.rejected else [])
        self.output = cfg.output
        self.rejected = cfg.rejected
        self.where = expression(cfg.where, f"[operators.{name}] where")

    def route(self, messages: list[Message]) -> dict[str, list[Message]]:
        test = self.where.test
        kept: list[Message] = []
        rejected: list[Message] = []
        dead: list[Message] = []
        for message in messages:
            try:
                (kept if test(message) else rejected).append(message)
            except Exception as exc:
                self.failed(message, exc, dead)
        routes = {self.output: kept, self.dead_letter: dead}
        if self.rejected:
            routes[self.rejected] = rejected
        else:
            self._stats.dropped += len(rejected)
        return routes


class Split(Operator):
    """Route by predicates: the first matching route, or every matching route.

    A message matching no route goes to ``default`` if there is one; otherwise
    it is counted as dropped, or dead-lettered to ``<name>.dead`` when
    ``dead_letter_unmatched`` is set.
    """

    kind = "split"

    def __init__(self, name: str, cfg: SplitOperator, broker: Broker, *, node: str) -> None:
        super().__init__(name, cfg, broker, node=node)
        self.inputs = [cfg.input]
        self.tests = [
            (expression(r.when, f"[operators.{name}] routes[{i}].when").test, r.output)
            for i, r in enumerate(cfg.routes)
        ]
        self.first = cfg.mode == "first"
        self.default = cfg.default
        self.dead_letter_unmatched = cfg.dead_letter_unmatched
        topics = [r.output for r in cfg.routes] + ([cfg.default] if cfg.default else [])
        self.outputs = list(dict.fromkeys(topics))

    def route(self, messages: list[Message]) -> dict[str, list[Message]]:
        buckets: dict[str, list[Message]] = {topic: [] for topic in self.outputs}
        # Each route appends straight into its output's list: no lookups per message.
        tests = [(test, buckets[output].append) for test, output in self.tests]
        unmatched: list[Message] = []
        dead: list[Message] = []
        first = self.first
        for message in messages:
            try:
                if first:
                    for test, put in tests:
                        if test(message):
                            put(message)
                            break
                    else:
                        unmatched.append(message)
                else:
                    hits = [put for test, put in tests if test(message)]
                    if not hits:
                        unmatched.append(message)
                    # Several routes to one output deliver it there once.
                    for put in dict.fromkeys(hits):
                        put(message)
            except Exception as exc:
                self.failed(message, exc, dead)
        if unmatched:
            self._stats.unmatched += len(unmatched)
            if self.default:
                buckets[self.default].extend(unmatched)
            elif self.dead_letter_unmatched:
                for message in unmatched:
                    self.dead(message, "matched no route", dead)
                log.warning(
                    "%s: %d message(s) matched no route (first: key %r): dead-lettered to %s",
                    self.name, len(unmatched), unmatched[0].key, self.dead_letter,
                )  # fmt: skip
            else:
                self._stats.dropped += len(unmatched)
        buckets[self.dead_letter] = dead
        return buckets
