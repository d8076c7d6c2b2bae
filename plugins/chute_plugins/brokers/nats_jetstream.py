"""Topics on NATS JetStream: durable on disk, clustered, shared by many nodes.

The mapping (one stream per topic, one durable pull consumer per group):

- ``publish``: a JetStream publish per message, all in flight at once, each
  with a ``Nats-Msg-Id`` so a publish retried after a lost reply is stored
  once (the stream's duplicate window). The id is ``<ms>-<stream seq>``, ``ms``
  being the publisher's clock (kept monotonic per process).
- ``ensure_group``: a durable pull consumer with explicit acks; the
  visibility timeout is its ``AckWait`` (a delivery not acked in time is
  handed to another consumer), no ``MaxDeliver`` limit (the pool counts
  attempts and dead-letters), no ``MaxAckPending`` limit.
- ``read``: pull requests on the consumer; consumers of a group (on any node)
  share one durable consumer, so JetStream splits the work between them.
  ``attempt`` is JetStream's delivery count, less the give-backs that did
  not count (below).
- ``ack`` is ``+ACK``, ``nack(delay)`` is ``-NAK`` with a delay (NakWithDelay),
  ``extend`` is ``+WPI`` (AckProgress: the running-item heartbeat). Each is
  sent as a request, so it returns once the server applied it.
- A delivery count only grows, so a give-back that must not count (a pool's
  stop, a busy key) is written down first, and a redelivery looked up
  (``nats_given_back.py``).
- Retention is by interest: JetStream removes an entry once every group
  acknowledged it, so nothing unacknowledged is ever removed. Until the
  first group exists a "keeper" consumer that never reads holds the entries
  (a dead-letter topic nobody reads keeps its letters).
- Capacity: ``publish`` waits while some group has ``capacity`` entries
  not yet acknowledged (delivered or not). A topic no group reads keeps its
  last ``capacity`` entries (``max_msgs``, discard old) and counts the rest
  as dropped; publishing to it never waits.

URL: ``nats://host:4222[,host2:4222]/?prefix=chute&replicas=1&storage=file``
(``connect_timeout``: seconds to wait for the first connection, default 10)
(``user:password@`` or ``token@`` for credentials; ``tls://`` for TLS).

While the server is away (a restart, a partition) every call waits and
retries with backoff and ``healthy`` is False; nats-py reconnects by itself.
Deliveries this process held when it died come back after ``AckWait``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import anyio
import msgspec
import nats
import nats.errors
import nats.js.errors
from chute.broker import GroupStats, TopicStats
from chute.errors import BrokerUnavailable, ClosedError
from chute.message import Message, decode_message, encode_message
from chute.meters import RateMeter
from msgspec.structs import replace
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from . import nats_given_back as given_back
from .nats_inbox import Inbox, is_status

log = logging.getLogger("chute.brokers.nats")

T = TypeVar("T")

_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_MS = "Chute-Ms"
_KEEPER = "KEEPER"
"""A consumer that never reads: it holds a topic's entries until a group exists."""
_SLACK = 2.0
"""Seconds a pull may outlive its expiry before the server is taken for gone."""

_AWAY = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    TimeoutError,
    OSError,
)
"""The server (or its JetStream) cannot answer now: wait and try again."""


def _name(kind: str, prefix: str, name: str) -> str:
    """A stream, consumer or subject token for a topic or group name (any characters)."""
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{prefix}{kind}{_SAFE.sub('_', name)[:64]}-{digest}"


class _Group:
    def __init__(self, name: str, durable: str) -> None:
        self.name = name
        self.durable = durable
        self.held: dict[str, tuple[str, float]] = {}
        """Deliveries this process holds: id -> (ack subject, when handed out)."""
        self.waiting: set[str] = set()
        """Ids this process nacked with a delay: JetStream will deliver them again."""
        self.cancelled: set[str] = set()
        """Waiting ids acked meanwhile: a NAK's redelivery cannot be withdrawn on the
        server, so it is acked and dropped here when it arrives."""
        self.uncounted: dict[str, int] = {}
        """Held ids given back uncounted before: id -> deliveries not counted."""
        self.consumers: set[str] = set()
        self.acked = 0
        self.meter = RateMeter()


def _given_key(t: _Topic, g: _Group, message_id: str) -> str:
    """The give-back record of a topic's entry in a group (an id ends in its stream sequence)."""
    return f"{t.stream}.{g.durable}.{message_id.rsplit('-', 1)[1]}"


class _Topic:
    def __init__(self, name: str, stream: str, subject: str) -> None:
        self.name = name
        self.stream = stream
        self.subject = subject
        self.capacity = 100_000
        self.groups: dict[str, _Group] = {}
        self.meter = RateMeter()
        self.room = 0
        """Entries this process may still publish before it asks the server again."""


class JetStreamBroker:
    """The ``nats`` broker: ``broker = "nats://127.0.0.1:4222"``."""

    def __init__(self, url: str = "nats://127.0.0.1:4222") -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.prefix = _SAFE.sub("_", query.pop("prefix", "chute"))
        self.replicas = int(query.pop("replicas", "1"))
        self.connect_timeout = float(query.pop("connect_timeout", "10"))
        storage = query.pop("storage", "file")
        self.storage = StorageType.MEMORY if storage == "memory" else StorageType.FILE
        scheme = "tls" if parts.scheme == "tls" else "nats"
        self.servers = [
            urlunsplit((scheme, host, "", "", ""))
            for host in (parts.netloc or "127.0.0.1:4222").split(",")
        ]
        self.url = url
        self.healthy = False
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._topics: dict[str, _Topic] = {}
        self._last_ms = 0
        self._inbox = Inbox()
        self._closed = False
        self._given_back: KeyValue | None = None
        self._records_refused = False

    # -- connection -----------------------------------------------------------

    async def start(self) -> None:
        self._closed = False

        async def quiet(exc: Exception) -> None:  # outages are logged by _call, once
            log.debug("nats: %s", exc)

        async def disconnected() -> None:
            self.healthy = False

        async def reconnected() -> None:
            log.warning("nats: connected again to %s", self._nc.connected_url if self._nc else "")

        connecting = nats.connect(
            servers=self.servers,
            name="chute",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=2,
            allow_reconnect=True,
            error_cb=quiet,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
        )
        try:
            # nats-py retries the first connection for ever too: bound it here.
            with anyio.fail_after(self.connect_timeout):
                self._nc = await connecting
        except (TimeoutError, OSError, nats.errors.NoServersError):
            where = ", ".join(self.servers)
            raise BrokerUnavailable(f"cannot reach nats at {where}") from None
        self._js = self._nc.jetstream(timeout=5.0)
        await self._inbox.start(self._nc)
        self.healthy = True

    async def aclose(self) -> None:
        self._closed = True
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with anyio.move_on_after(5):
                await nc.drain()

    @property
    def nc(self) -> NatsClient:
        if self._nc is None or self._closed:
            raise ClosedError("the nats broker is closed")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        self.nc  # noqa: B018 (raises when closed)
        assert self._js is not None
        return self._js

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` until the server answers; ``healthy`` is False meanwhile."""
        backoff = 0.05
        while True:
            self.nc  # noqa: B018 (a closed broker stops retrying)
            try:
                result = await op()
            except _AWAY as exc:
                if self.healthy:
                    log.warning("nats: cannot %s (%s); retrying", what, type(exc).__name__)
                self.healthy = False
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if not self.healthy:
                log.warning("nats: %s works again", what)
                self.healthy = True
            return result

    # -- topics and groups ----------------------------------------------------

    def _topic(self, name: str) -> _Topic:
        topic = self._topics.get(name)
        if topic is None:
            stream = _name("T_", self.prefix + "_", name)
            topic = self._topics[name] = _Topic(name, stream, f"{self.prefix}.t.{stream}")
        return topic

    async def declare_topic(self, topic: str, *, capacity: int) -> None:
        t = self._topic(topic)
        t.capacity = max(1, capacity)

        async def declare() -> None:
            try:
                info = await self.js.stream_info(t.stream)
            except nats.js.errors.NotFoundError:
                await self.js.add_stream(self._stream_config(t, groupless=True))
                # Until a group reads the topic, the keeper holds its entries:
                # an interest stream keeps nothing nobody is interested in.
                await self.js.add_consumer(t.stream, _keeper_config())
                return
            limit = info.config.max_msgs
            if limit not in (None, -1) and limit != t.capacity:  # groupless: a new retention
                await self.js.update_stream(self._stream_config(t, groupless=True))

        await self._call(f"declare topic {topic!r}", declare)

    def _stream_config(self, t: _Topic, *, groupless: bool) -> StreamConfig:
        # With no group, capacity is a retention limit (the oldest entries go);
        # with groups, nothing unacked may go: the publisher waits instead.
        return StreamConfig(
            name=t.stream,
            description=t.name,
            subjects=[t.subject],
            retention=RetentionPolicy.INTEREST,
            max_msgs=t.capacity if groupless else -1,
            discard=DiscardPolicy.OLD,
            storage=self.storage,
            num_replicas=self.replicas,
            duplicate_window=120.0,
        )

    async def ensure_group(
        self, topic: str, group: str, *, visibility_timeout: float, start: str = "earliest"
    ) -> None:
        t = self._topic(topic)
        if not await self._stream_exists(t):
            await self.declare_topic(topic, capacity=t.capacity)
        g = t.groups.get(group)
        if g is None:
            g = t.groups[group] = _Group(group, _name("G_", "", group))
        config = ConsumerConfig(
            durable_name=g.durable,
            description=group,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=max(0.001, float(visibility_timeout)),
            deliver_policy=DeliverPolicy.ALL if start == "earliest" else DeliverPolicy.NEW,
            max_deliver=-1,
            max_ack_pending=-1,
            max_waiting=4096,
        )

        async def ensure() -> None:
            try:
                info = await self.js.consumer_info(t.stream, g.durable)
            except nats.js.errors.NotFoundError:
                # Unlimited first, so no entry the group is to read is dropped.
                await self.js.update_stream(self._stream_config(t, groupless=False))
                await self.js.add_consumer(t.stream, config)
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self.js.delete_consumer(t.stream, _KEEPER)
                return
            if info.config.ack_wait != config.ack_wait:
                # Everything else of a group is fixed at creation; AckWait may change.
                await self.js.add_consumer(
                    t.stream, replace_config(info.config, ack_wait=config.ack_wait)
                )

        await self._call(f"create group {group!r} on {topic!r}", ensure)

    async def _stream_exists(self, t: _Topic) -> bool:
        async def look() -> bool:
            try:
                await self.js.stream_info(t.stream)
            except nats.js.errors.NotFoundError:
                return False
            return True

        return await self._call(f"look up topic {t.name!r}", look)

    # -- publishing -------------------------------------------------------------

    def _ms(self) -> int:
        self._last_ms = max(self._last_ms, int(time.time() * 1000))
        return self._last_ms

    async def publish(self, topic: str, messages: Sequence[Message]) -> list[str]:
        if not messages:
            return []
        t = self._topic(topic)
        ms = str(self._ms())
        todo = [
            (encode_message(replace(m, id="", attempt=1)), self._inbox.msg_id()) for m in messages
        ]
        seqs: list[int | None] = [None] * len(todo)
        await self._make_room(t, len(todo))
        await self._call(f"publish to {topic!r}", lambda: self._publish_some(t, ms, todo, seqs))
        t.meter.mark(len(messages), time.time())
        return [f"{ms}-{s}" for s in seqs]

    async def _publish_some(
        self,
        t: _Topic,
        ms: str,
        todo: list[tuple[bytes, str]],
        seqs: list[int | None],
    ) -> None:
        """Publish what ``seqs`` lacks, in order, all in flight at once; fill in ``seqs``.

        By hand rather than nats-py's ``publish_async``, whose future never
        settles when the server answers with an error status such as 503.
        """
        which = [i for i, seq in enumerate(seqs) if seq is None]
        nc = self.nc
        box = self._inbox.open(len(which))
        try:
            for i in which:
                payload, msg_id = todo[i]
                headers = {_MS: ms, "Nats-Msg-Id": msg_id}
                await nc.publish(t.subject, payload, reply=f"{box.subject}.{i}", headers=headers)
            # A reply lost in an outage: publish again (the ids make it idempotent).
            for reply in await box.wait(5.0):
                if not reply.data:  # a status: no JetStream behind the subject right now
                    raise nats.errors.NoRespondersError
                answer = json.loads(reply.data)
                error = answer.get("error")
                if error is not None:
                    raise nats.js.errors.APIError(**error)
                seqs[int(reply.subject.rpartition(".")[2])] = int(answer["seq"])
        finally:
            self._inbox.close(box)

    async def _make_room(self, t: _Topic, n: int) -> None:
        """Wait until the topic holds fewer than ``capacity`` unacknowledged entries.

        Capacity counts, as on every backend, what some group has not
        acknowledged yet (not the stream's length: one old pending delivery
        must not block a topic whose later entries are all acked). The
        server is asked only when this process's estimate of the room runs
        out; across nodes the bound is approximate by a batch or so.
        """
        wait = 0.01
        while t.room < n:
            unacked = await self._call(f"measure {t.name!r}", lambda: self._unacked(t))
            t.room = t.capacity - unacked
            if t.room >= n or unacked == 0:
                break
            # Another process's acks make the room: nothing here to wait on.
            await anyio.sleep(wait)
            wait = min(wait * 2, 0.5)
        t.room -= n

    async def _unacked(self, t: _Topic) -> int:
        consumers = await self.js.consumers_info(t.stream)
        return max((_unacked(c) for c in consumers if c.name != _KEEPER), default=0)

    # -- reading -----------------------------------------------------------------

    async def read(
        self, topic: str, group: str, consumer: str, *, count: int, block: float | None
    ) -> list[Message]:
        t = self._topic(topic)
        g = t.groups.get(group)
        if g is None:  # a group created by another process
            g = t.groups[group] = _Group(group, _name("G_", "", group))
        g.consumers.add(consumer)
        got = await self._call(f"read {topic!r}", lambda: self._pull(t, g, count, None))
        if not got and block:
            got = await self._call(f"read {topic!r}", lambda: self._pull(t, g, 1, block))
            if got and count > 1:
                got += await self._call(
                    f"read {topic!r}", lambda: self._pull(t, g, count - 1, None)
                )
        now = time.time()
        out = []
        withdrawn = []
        for msg in got:
            meta = msg.metadata
            message_id = f"{(msg.headers or {}).get(_MS, '0')}-{meta.sequence.stream}"
            g.waiting.discard(message_id)
            if message_id in g.cancelled:
                g.cancelled.discard(message_id)
                withdrawn.append(msg.reply)
                continue
            g.held[message_id] = (msg.reply, now)
            try:
                message = decode_message(msg.data)
            except Exception:
                log.error("nats: entry %s of %r is not a chute message", message_id, topic)
                message = Message(data=None, headers={"chute-error": "undecodable entry"})
            out.append(replace(message, id=message_id, attempt=meta.num_delivered))
        if withdrawn:
            await self._call(f"ack on {topic!r}", lambda: self._respond(withdrawn, b"+ACK"))
        again = [m.id for m in out if m.attempt > 1]
        if again:
            keys = {i: _given_key(t, g, i) for i in again}
            uncounted: dict[str, int] = await self._given_back_records(
                f"read {topic!r}", lambda kv: given_back.read(kv, keys), {}
            )
            g.uncounted.update(uncounted)
            out = [replace(m, attempt=m.attempt - uncounted.get(m.id, 0)) for m in out]
        return out

    async def _given_back_records(
        self, what: str, op: Callable[[KeyValue], Awaitable[T]], without: T
    ) -> T:
        """``op`` on the bucket of uncounted give-backs (opened on first use), retried
        through outages; ``without`` where the server refuses the bucket (a permission, a
        limit on streams): give-backs then count, as they did before, and the run goes on."""
        if self._records_refused:
            return without

        async def call() -> T:
            if self._given_back is None:
                self._given_back = await given_back.open_bucket(
                    self.js, self.prefix, self.replicas, self.storage
                )
            return await op(self._given_back)

        try:
            return await self._call(what, call)
        except nats.errors.Error as exc:  # not an outage: _call retries those
            bucket = given_back.bucket_name(self.prefix)
            log.warning("nats: cannot keep give-back records in %r (%s): a delivery given back "
                        "unworked now counts as an attempt", bucket, exc)  # fmt: skip
            self._records_refused = True
            return without

    async def _pull(self, t: _Topic, g: _Group, count: int, block: float | None) -> list[Msg]:
        """One pull request; returns when it is answered in full or ends (404/408)."""
        request: dict[str, Any] = {"batch": count}
        if block:
            request["expires"] = int(block * 1e9)
        else:
            request["no_wait"] = True
        box, sub = await self._inbox.open_own(self.nc, count)
        try:
            await self.nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{t.stream}.{g.durable}",
                json.dumps(request).encode(),
                reply=box.subject,
            )
            got = await box.wait((block or 0.0) + _SLACK)
        finally:
            await sub.unsubscribe()
        msgs = []
        for msg in got:
            if not is_status(msg):
                msgs.append(msg)
            elif "Consumer Deleted" in str(msg.headers):
                raise ClosedError(f"group {g.name!r} was deleted on the server")
        return msgs

    # -- settling ------------------------------------------------------------------

    async def _respond(self, subjects: list[str], body: bytes) -> None:
        """Send ack-type replies and wait until the server applied each (double ack)."""
        if not subjects:
            return
        box = self._inbox.open(len(subjects))
        try:
            for subject in subjects:
                await self.nc.publish(subject, body, reply=box.subject)
            await box.wait(5.0)
        finally:
            self._inbox.close(box)

    def _take(self, topic: str, group: str, ids: Sequence[str], *, keep: bool = False) -> list[str]:
        t = self._topics.get(topic)
        g = t.groups.get(group) if t else None
        if g is None:
            return []
        subjects = []
        for i in ids:
            held = g.held.get(i) if keep else g.held.pop(i, None)
            if held is not None:
                subjects.append(held[0])
        return subjects

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        t = self._topics.get(topic)
        waiting = t.groups.get(group) if t else None
        if waiting is not None and waiting.waiting:
            cancel = waiting.waiting.intersection(ids)
            waiting.waiting -= cancel
            waiting.cancelled |= cancel
        subjects = self._take(topic, group, ids)
        await self._call(f"ack on {topic!r}", lambda: self._respond(subjects, b"+ACK"))
        g = self._topic(topic).groups[group] if subjects else None
        if g is not None:
            g.acked += len(subjects)
            g.meter.mark(len(subjects), time.time())
            t = self._topic(topic)
            forget = {_given_key(t, g, i): 0 for i in ids if g.uncounted.pop(i, 0)}
            if forget:
                await self._given_back_records(
                    f"ack on {topic!r}", lambda kv: given_back.write(kv, forget), None
                )

    async def nack(self, topic: str, group: str, ids: Sequence[str], *, delay: float = 0.0,
                   counted: bool = True) -> None:  # fmt: skip
        t = self._topics.get(topic)
        g = t.groups.get(group) if t else None
        if t is not None and g is not None:
            before = {i: g.uncounted.pop(i, 0) for i in ids if i in g.held}
            if not counted and before:  # written before the NAK: its redelivery looks it up
                given = {_given_key(t, g, i): n + 1 for i, n in before.items()}
                await self._given_back_records(
                    f"nack on {topic!r}", lambda kv: given_back.write(kv, given), None
                )
        if delay > 0 and g is not None:
            g.waiting.update(i for i in ids if i in g.held)
        subjects = self._take(topic, group, ids)
        body = b"-NAK" if delay <= 0 else b'-NAK {"delay": %d}' % int(delay * 1e9)
        await self._call(f"nack on {topic!r}", lambda: self._respond(subjects, body))

    async def extend(self, topic: str, group: str, ids: Sequence[str]) -> None:
        subjects = self._take(topic, group, ids, keep=True)
        await self._call(f"extend on {topic!r}", lambda: self._respond(subjects, b"+WPI"))

    async def delete_all(self) -> None:
        """Delete every stream under this broker's prefix (and so its groups): a teardown."""

        bucket = given_back.bucket_name(self.prefix)

        async def delete() -> None:
            for info in await self.js.streams_info():
                name = info.config.name or ""
                if name.startswith(self.prefix + "_T_") or name == f"KV_{bucket}":
                    await self.js.delete_stream(name)
            self._given_back = None

        await self._call("delete the topics", delete)

    async def browse(self, topic: str, *, limit: int) -> list[Message]:
        t = self._topic(topic)

        async def entries() -> list[Any]:
            # One request per entry (JetStream 2.9 has no batched get), each
            # asking for the next entry still there, over the last ``limit``
            # sequence numbers (fewer entries where acknowledged ones left gaps).
            try:
                state = (await self.js.stream_info(t.stream)).state
            except nats.js.errors.NotFoundError:
                return []
            got: list[Any] = []
            seq = max(state.first_seq, state.last_seq - limit + 1)
            while len(got) < limit:
                try:
                    raw = await self.js.get_msg(t.stream, seq, t.subject, next=True)
                except nats.js.errors.NotFoundError:  # no more
                    break
                got.append(raw)
                seq = (raw.seq or seq) + 1
            return got

        out: list[Message] = []
        for raw in await self._call(f"browse {topic!r}", entries):
            try:
                message = decode_message(raw.data or b"")
            except (msgspec.DecodeError, msgspec.ValidationError):  # not an item: another program's
                continue
            out.append(replace(message, id=f"{(raw.headers or {}).get(_MS, '0')}-{raw.seq}"))
        return out

    # -- statistics ------------------------------------------------------------------

    async def stats(self, topic: str) -> TopicStats:
        t = self._topic(topic)

        async def look() -> tuple[Any, list[Any]]:
            try:
                info = await self.js.stream_info(t.stream)
            except nats.js.errors.NotFoundError:
                return None, []
            return info, await self.js.consumers_info(t.stream)

        info, consumers = await self._call(f"read the stats of {topic!r}", look)
        now = time.time()
        groups = []
        consumers = [c for c in consumers if c.name != _KEEPER]
        for c in consumers:
            name = c.config.description or c.name
            g = t.groups.get(name)
            oldest = 0.0
            if g is not None and g.held and c.num_ack_pending:
                oldest = max(0.0, now - min(at for _, at in g.held.values()))
            groups.append(
                GroupStats(
                    name=name,
                    consumers=len(g.consumers) if g else 0,
                    lag=c.num_pending or 0,
                    pending=c.num_ack_pending or 0,
                    oldest_pending_age=oldest,
                    acked=g.acked if g else 0,
                    ack_rate=g.meter.rate(now) if g else 0.0,
                )
            )
        # As on every backend: what some group has not acknowledged yet; with
        # no group, what the topic holds, and what its retention limit dropped.
        held = info.state.messages if info else 0
        length = max((_unacked(c) for c in consumers), default=held)
        dropped = 0 if consumers or info is None else max(0, info.state.last_seq - held)
        return TopicStats(
            topic=topic,
            length=length,
            capacity=t.capacity,
            dropped=dropped,
            published=info.state.last_seq if info else 0,
            publish_rate=t.meter.rate(now),
            groups=groups,
        )


def _unacked(c: ConsumerInfo) -> int:
    """Entries a group has not acknowledged: not yet delivered plus delivered and pending."""
    return (c.num_pending or 0) + (c.num_ack_pending or 0)


def _keeper_config() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=_KEEPER,
        description="holds entries until a group reads the topic",
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
    )


def replace_config(config: ConsumerConfig, **changes: Any) -> ConsumerConfig:
    fields = {k: v for k, v in config.__dict__.items() if v is not None}
    fields.update(changes)
    return ConsumerConfig(**fields)
