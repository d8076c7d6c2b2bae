"""Subscribe to MQTT topic filters (QoS 1, persistent session) and publish each message.

A message is acknowledged to the MQTT broker (PUBACK) only after the chute
topic accepted it, that is once the broker's ``publish`` returned: with a
durable chute broker (``local``, ``redis``), a kill -9 between receipt and
acceptance leaves the PUBACK unsent and the MQTT broker delivers the message
again when chute reconnects. With ``broker = "memory"`` an accepted message
is lost with the process, as everything in that broker is.

The session is persistent (clean session off, a stable client id): messages
published while chute is stopped wait in the MQTT broker and arrive after it
starts. Mosquitto keeps 1,000 of them per client by default; raise
``max_queued_messages`` in mosquitto.conf for longer outages. Two chute nodes
need two ``client_id`` values (the same id would take each other's session).

Each MQTT message becomes one chute message: ``data`` the payload as JSON
(``payload = "json"``) or as text (``"text"``); ``key`` the payload field
``key_field`` (a dotted path), or the MQTT topic; headers ``mqtt-topic`` and
``mqtt-retain``. A payload that cannot be read (not UTF-8, not JSON, no key
field) is acknowledged and published to ``<source name>.dead`` with its raw
bytes (base64) and the reason: it never blocks the messages behind it.

The connection is retried with exponential backoff while the MQTT broker is
away; ``tls``, ``ca_file``, ``cert_file``/``key_file``, ``username`` and
``password``/``password_env`` configure how to reach it.

```toml
[sources.cameras]
type = "mqtt"
topic = "frames"
host = "127.0.0.1"
topics = ["cameras/+/frames"]
key_field = "frame_id"
```
"""

from __future__ import annotations

import base64
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar, Literal

import aiomqtt
import anyio
import msgspec
from chute.config import Duration, Strict
from chute.context import PluginContext
from chute.errors import ConfigError
from chute.message import Message, new_message
from chute.source import Emit
from chute.store import ItemStatus

from ..mqtt_conn import MqttConnection, connection_problems, make_client, where

log = logging.getLogger("chute.sources.mqtt")

_decode_json = msgspec.json.Decoder()


class MqttSourceOptions(MqttConnection):
    topics: list[str] = []
    """Topic filters to subscribe to (``+`` and ``#`` wildcards)."""
    qos: Literal[0, 1, 2] = 1
    """The subscriptions' QoS: 1 (at least once) unless you accept losing messages."""
    persistent: bool = True
    """Keep the session (subscriptions and queued messages) while chute is stopped."""
    key_field: str = ""
    """Dotted path of the payload field that is the item key; the MQTT topic when empty."""
    payload: Literal["json", "text"] = "json"
    """How to read a payload: JSON (the message's data), or UTF-8 text (a string)."""
    batch: int = 100
    """Most messages published to the chute topic at once."""
    max_backoff: Duration = Duration(30.0)
    """Longest wait between reconnection attempts."""
    quiet: Duration = Duration(1.0)
    """``--until-idle``: caught up once no message came for this long after subscribing."""


class Unreadable(Exception):
    pass


class MqttSource:
    Options: ClassVar[type[Strict]] = MqttSourceOptions

    def __init__(self, options: MqttSourceOptions, ctx: PluginContext) -> None:
        problems = connection_problems(options)
        if not options.topics:
            problems.append("topics: give at least one topic filter to subscribe to")
        if options.batch < 1:
            problems.append(f"batch: must be at least 1, got {options.batch}")
        if problems:
            raise ConfigError(problems)
        self.options = options
        self.ctx = ctx
        # Stable across restarts (the session is found again by it), unlike the node name.
        self.client_id = options.client_id or f"chute-{socket.gethostname()}-{ctx.name}"
        self.dead_topic = f"{ctx.name}.dead"
        self.healthy = False
        self.received = 0
        self.dead_lettered = 0
        self._caught_up = anyio.Event()
        self.subscribed = anyio.Event()
        """Set once the first subscription was acknowledged."""

    async def caught_up(self) -> None:
        await self._caught_up.wait()

    async def run(self, emit: Emit) -> None:
        await self.ctx.broker.declare_topic(self.dead_topic, capacity=100_000)
        delay = 0.1
        while True:
            try:
                await self._session(emit)
            except aiomqtt.MqttError as exc:
                if self.healthy:
                    log.warning("source %s: lost %s (%s); reconnecting", self.ctx.name,
                                where(self.options), exc)  # fmt: skip
                    delay = 0.1
                else:
                    log.warning("source %s: cannot reach %s (%s); retrying in %.1fs",
                                self.ctx.name, where(self.options), exc, delay)  # fmt: skip
                self.healthy = False
                await anyio.sleep(delay)
                delay = min(delay * 2, float(self.options.max_backoff))

    async def _session(self, emit: Emit) -> None:
        o = self.options
        client = make_client(o, self.ctx, client_id=self.client_id, persistent=o.persistent)
        # PUBACK is ours to send, after the chute topic took the message (paho
        # sends it on receipt otherwise). aiomqtt exposes no switch of its own.
        paho = client._client
        paho.manual_ack_set(True)
        async with client:
            for topic_filter in o.topics:
                await client.subscribe(topic_filter, qos=o.qos)
            self.healthy = True
            self.subscribed.set()
            log.info("source %s: subscribed to %s on %s", self.ctx.name, ", ".join(o.topics),
                     where(o))  # fmt: skip
            messages = aiter(client.messages)
            while True:
                batch = await self._next_batch(client, messages)
                await self._publish(emit, batch)
                for m in batch:  # in order of receipt, as MQTT 3.1.1 requires
                    if m.qos > 0:
                        paho.ack(m.mid, m.qos)

    async def _next_batch(
        self, client: aiomqtt.Client, messages: AsyncIterator[aiomqtt.Message]
    ) -> list[aiomqtt.Message]:
        first: aiomqtt.Message | None = None
        if not self._caught_up.is_set():
            with anyio.move_on_after(float(self.options.quiet)):
                first = await anext(messages)
            if first is None:
                self._caught_up.set()
        if first is None:
            first = await anext(messages)
        batch: list[aiomqtt.Message] = [first]
        while len(client.messages) and len(batch) < self.options.batch:
            batch.append(await anext(messages))
        return batch

    async def _publish(self, emit: Emit, batch: Sequence[aiomqtt.Message]) -> None:
        good: list[Message] = []
        dead: list[Message] = []
        for m in batch:
            try:
                good.append(self._to_message(m))
            except Unreadable as exc:
                dead.append(self._dead_letter(m, str(exc)))
        if good:
            await emit(good)
            self.received += len(good)
        if dead:
            await self.ctx.broker.publish(self.dead_topic, dead)
            self.dead_lettered += len(dead)

    def _to_message(self, m: aiomqtt.Message) -> Message:
        raw = _payload_bytes(m.payload)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Unreadable(f"the payload is not UTF-8 text ({exc.reason})") from None
        data: Any = text
        if self.options.payload == "json":
            try:
                data = _decode_json.decode(raw)
            except msgspec.DecodeError as exc:
                raise Unreadable(f"the payload is not JSON ({exc})") from None
        key = m.topic.value
        if self.options.key_field:
            key = _field(data, self.options.key_field)
        headers = {"mqtt-topic": m.topic.value, "mqtt-retain": "1" if m.retain else "0"}
        return new_message(data, key=key, headers=headers)

    def _dead_letter(self, m: aiomqtt.Message, reason: str) -> Message:
        log.warning("source %s: message on %s dead-lettered: %s", self.ctx.name, m.topic.value,
                    reason)  # fmt: skip
        raw = _payload_bytes(m.payload)
        data = {"mqtt_topic": m.topic.value, "payload_base64": base64.b64encode(raw).decode()}
        return new_message(data, key=m.topic.value, headers={"chute-error": reason,
                           "chute-source": self.ctx.name, "mqtt-topic": m.topic.value})  # fmt: skip

    async def item_finished(self, key: str, status: ItemStatus) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode()


def _field(data: Any, path: str) -> str:
    value = data
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise Unreadable(f"the payload has no field {path!r} (key_field)")
        value = value[part]
    if isinstance(value, dict | list) or value is None or value == "":
        raise Unreadable(f"the field {path!r} (key_field) is not a usable key: {value!r}")
    return str(value)
