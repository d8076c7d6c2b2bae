"""A Hypothesis state machine against every backend: publish, read, ack, nack,
consumers vanishing. Checked against a simple model: no message is ever lost,
no acknowledged message comes back, and each is acked once per group."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from chute.broker import Broker
from chute.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from .backends import BACKENDS

GROUPS = ("a", "b")
CONSUMERS = ("c1", "c2", "c3")
VT = 0.15


class BrokerMachine(RuleBasedStateMachine):
    backend: str = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.cm: AbstractAsyncContextManager[Broker] = BACKENDS[self.backend]()
        self.broker: Broker = self.run(self.cm.__aenter__())
        self.run(self.broker.declare_topic("t", capacity=10_000))
        for g in GROUPS:
            self.run(self.broker.ensure_group("t", g, visibility_timeout=VT))
        self.published: list[str] = []
        # per group: id -> consumer holding it (pending in our model)
        self.held: dict[str, dict[str, str]] = {g: {} for g in GROUPS}
        self.acked: dict[str, set[str]] = {g: set() for g in GROUPS}
        self.counter = 0

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    @rule(n=st.integers(1, 8))
    def publish(self, n: int) -> None:
        batch = [Message(key=str(self.counter + i), data=self.counter + i) for i in range(n)]
        self.counter += n
        ids = self.run(self.broker.publish("t", batch))
        assert len(ids) == n
        self.published.extend(ids)

    @rule(group=st.sampled_from(GROUPS), consumer=st.sampled_from(CONSUMERS), n=st.integers(1, 6))
    def read(self, group: str, consumer: str, n: int) -> None:
        got = self.run(self.broker.read("t", group, consumer, count=n, block=None))
        assert len(got) <= n
        for m in got:
            assert m.id not in self.acked[group], f"acked message {m.id} delivered again"
            assert m.id in self.published
            self.held[group][m.id] = consumer

    @rule(group=st.sampled_from(GROUPS), consumer=st.sampled_from(CONSUMERS), k=st.integers(1, 5))
    def ack_some(self, group: str, consumer: str, k: int) -> None:
        mine = [i for i, c in self.held[group].items() if c == consumer][:k]
        self.run(self.broker.ack("t", group, mine))
        for i in mine:
            del self.held[group][i]
            self.acked[group].add(i)

    @rule(group=st.sampled_from(GROUPS), consumer=st.sampled_from(CONSUMERS))
    def nack_all(self, group: str, consumer: str) -> None:
        mine = [i for i, c in self.held[group].items() if c == consumer]
        self.run(self.broker.nack("t", group, mine, delay=0.0))
        for i in mine:
            del self.held[group][i]

    @rule(group=st.sampled_from(GROUPS), consumer=st.sampled_from(CONSUMERS))
    def consumer_vanishes(self, group: str, consumer: str) -> None:
        # It never acks what it holds; the visibility timeout must hand it on.
        for i in [i for i, c in self.held[group].items() if c == consumer]:
            self.held[group][i] = "gone"

    @invariant()
    def acked_is_subset_of_published(self) -> None:
        published = set(self.published)
        for g in GROUPS:
            assert self.acked[g] <= published

    def teardown(self) -> None:
        try:
            self.drain_and_check()
        finally:
            self.run(self.cm.__aexit__(None, None, None))
            self.loop.close()

    def drain_and_check(self) -> None:
        # Everything not acked yet must still be delivered: live holders ack
        # theirs, vanished ones come back after the visibility timeout.
        for g in GROUPS:
            for i in [i for i, c in self.held[g].items() if c != "gone"]:
                self.run(self.broker.ack("t", g, [i]))
                self.acked[g].add(i)
                del self.held[g][i]
            rounds = 0
            while len(self.acked[g]) < len(self.published) and rounds < 50:
                rounds += 1
                got = self.run(self.broker.read("t", g, "drainer", count=100, block=VT * 3))
                for m in got:
                    assert m.id not in self.acked[g], f"acked message {m.id} came back"
                self.run(self.broker.ack("t", g, [m.id for m in got]))
                self.acked[g].update(m.id for m in got)
            assert self.acked[g] == set(self.published), f"group {g} lost messages"
            stats = self.run(self.broker.stats("t"))
            assert stats.group(g).pending == 0 and stats.group(g).lag == 0


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_broker_state_machine(backend: str) -> None:
    machine = type(f"BrokerMachine_{backend}", (BrokerMachine,), {"backend": backend})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
