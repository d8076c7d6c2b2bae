"""A pool's final outcomes, recorded and acknowledged in passes (group commit).

An item that ends (done or dead) is not written on its own: one flusher task
records the outcomes that came since its last pass in the state store, then
acknowledges their deliveries to the broker, then reports them (the runtime's
outcome lookups, and the sources that file their items away). Record before
acknowledging, acknowledge before reporting: a crash between two steps
repeats an item, and never loses one.

While other items are still running, a pass waits up to ``FLUSH_EVERY`` for
their outcomes to join it, so under load a pass carries many items; when
nothing else is running, the pass goes at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from .broker import Broker
from .message import Message
from .stopping import Deadline
from .store import Claim, Finish, ItemStatus, StateStore

log = logging.getLogger("chute.pool")  # the pool's warnings, under the pool's name

Final = tuple[Message, ItemStatus, Any]
"""An item that is done or dead, with its result (or the error text)."""
Report = Callable[[list[Final]], Awaitable[None]]

FLUSH_EVERY = 0.02
"""Seconds an outcome waits for others to join its pass (the group-commit window).

Each pass costs a store transaction and a broker round trip: with a 5 ms
window, a pool spawning ``/bin/true`` at concurrency 2 spent about 15% of the
event loop's time in passes of about 8 items each."""


class Outcomes:
    def __init__(self, pool: str, broker: Broker, topic: str, group: str,
                 store: StateStore | None, report: Report | None, deadline: Deadline,
                 running: Callable[[], int]) -> None:  # fmt: skip
        """``running``: how many of the pool's items are running now."""
        self.pool = pool
        self.broker = broker
        self.topic = topic
        self.group = group
        self.store = store
        self.report = report
        self.deadline = deadline
        self.running = running
        # Since the last pass: outcomes to record, then deliveries to
        # acknowledge, then items to report final.
        self.finishes: list[Finish] = []
        self.acks: list[str] = []
        self.finals: list[Final] = []
        self._added = anyio.Event()
        self._quiet: asyncio.Future[None] | None = None
        """Resolved when the pool runs out of work while a pass waits for more outcomes."""
        self._changed: anyio.Event | None = None

    @property
    def changed(self) -> anyio.Event:
        """An event set when the next outcomes are acknowledged (idle detection waits on it)."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def add(self, message: Message, claim: Claim | None, status: ItemStatus,
            result: Any) -> None:  # fmt: skip
        """Queue a final outcome for the next pass (``claim`` None: nothing to record).

        ``result``: the item's result, or for a dead item the error, which the store keeps."""
        if claim is not None and self.store is not None:
            error = result if status is ItemStatus.DEAD else ""
            self.finishes.append(Finish(message.key or message.id, status, claim.token, error))
        self.acks.append(message.id)
        if self.report is not None:
            self.finals.append((message, status, result))
        self._added.set()

    def out_of_work(self) -> None:
        """The pool has nothing running and nothing to start: a waiting pass goes now."""
        if self._quiet is not None and not self._quiet.done():
            self._quiet.set_result(None)

    async def flush(self) -> None:
        """Record, then acknowledge, then report: a crash between repeats work, loses none."""
        finishes, self.finishes = self.finishes, []
        acks, self.acks = self.acks, []
        finals, self.finals = self.finals, []
        if finishes:
            assert self.store is not None
            warn_fenced(self.pool, finishes, await self.store.finish_many(self.pool, finishes))
        if acks:
            await self.broker.ack(self.topic, self.group, acks)
        if finals:
            assert self.report is not None
            await self.report(finals)
        if self._changed is not None and acks:
            self._changed.set()
            self._changed = None

    async def run(self) -> None:
        """Make a pass whenever outcomes are waiting, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await self._added.wait()
            self._added = anyio.Event()
            if self.running():  # let the outcomes of the running items join this pass
                # A future and a timer: a cancel scope's deadline cost more than the pass.
                self._quiet = quiet = loop.create_future()
                timer = loop.call_later(FLUSH_EVERY, self.out_of_work)
                try:
                    await quiet
                finally:
                    timer.cancel()
                    self._quiet = None
            with self.deadline.shield():
                await self.flush()


def warn_fenced(pool: str, finishes: Sequence[Finish], recorded: Sequence[bool]) -> None:
    """Say which outcomes the store refused: another owner took their items over."""
    for finish, ok in zip(finishes, recorded, strict=True):
        if not ok:
            log.warning("pool %s: item %r finished as %s under a stale lease (token %d): "
                        "another owner took it over; not recorded",
                        pool, finish.key, finish.status, finish.token)  # fmt: skip
