"""Replies for the JetStream broker on one wildcard inbox, without a task per message.

nats-py's ``next_msg`` starts a task and a ``wait_for`` for every message it
returns, and a subscription per request costs a SUB and an UNSUB: together
they were most of the broker's time. Here one subscription (``<inbox>.>``),
made once, files each reply (publish acks, ack confirmations) into the
mailbox named by its subject; a caller opens a mailbox, sends requests with
``reply=<mailbox subject>[.n]``, and waits on one future for the replies it
expects. Pulled entries need a subscription per pull (``open_own``).
"""

from __future__ import annotations

import asyncio
import itertools
import os

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


def is_status(msg: Msg) -> bool:
    """A JetStream status message (no data, a ``Status`` header), not an entry."""
    return not msg.data and bool(msg.headers) and "Status" in msg.headers  # type: ignore[operator]


class Mailbox:
    __slots__ = ("done", "end_on_status", "msgs", "subject", "want")

    def __init__(self, subject: str, want: int, *, end_on_status: bool) -> None:
        self.subject = subject
        self.want = want
        self.end_on_status = end_on_status
        self.msgs: list[Msg] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def put(self, msg: Msg) -> None:
        self.msgs.append(msg)
        if self.done.done():
            return
        if len(self.msgs) >= self.want or (self.end_on_status and is_status(msg)):
            self.done.set_result(None)

    async def wait(self, limit: float) -> list[Msg]:
        """The replies once complete; TimeoutError when ``limit`` seconds pass first."""
        if not self.done.done():
            await asyncio.wait_for(asyncio.shield(self.done), limit)
        return self.msgs


class Inbox:
    def __init__(self) -> None:
        self._prefix = ""
        self._boxes: dict[str, Mailbox] = {}
        self._sub: Subscription | None = None
        self._ids = itertools.count()
        self._msg_ids = itertools.count()
        self._nuid = os.urandom(8).hex()

    async def start(self, nc: NatsClient) -> None:
        self._prefix = nc.new_inbox()
        self._sub = await nc.subscribe(self._prefix + ".>", cb=self._deliver)

    def msg_id(self) -> str:
        """A publish id unique across processes (the stream's de-duplication key)."""
        return f"{self._nuid}{next(self._msg_ids)}"

    def open(self, want: int, *, end_on_status: bool = False) -> Mailbox:
        name = str(next(self._ids))
        box = Mailbox(f"{self._prefix}.{name}", want, end_on_status=end_on_status)
        self._boxes[name] = box
        return box

    async def open_own(self, nc: NatsClient, want: int) -> tuple[Mailbox, Subscription]:
        """A mailbox with a subscription of its own, for pulled entries.

        JetStream delivers pulled entries under their stream subject (the
        client routes them by subscription, not by inbox name), so they
        cannot share the wildcard inbox.
        """
        box = Mailbox(nc.new_inbox(), want, end_on_status=True)

        async def put(msg: Msg) -> None:
            box.put(msg)

        return box, await nc.subscribe(box.subject, cb=put)

    def close(self, box: Mailbox) -> None:
        self._boxes.pop(box.subject.rpartition(".")[2], None)
        if not box.done.done():
            box.done.cancel()

    async def _deliver(self, msg: Msg) -> None:
        # <prefix>.<box>[.<n>]: the box is the first token after the prefix.
        rest = msg.subject[len(self._prefix) + 1 :]
        box = self._boxes.get(rest.partition(".")[0])
        if box is not None:
            box.put(msg)
