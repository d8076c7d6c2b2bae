"""Publish each message to an MQTT broker with QoS 1, on a topic made from the message.

``send`` returns once the broker sent PUBACK for every message of the batch,
so a message acknowledged on the chute topic is in the MQTT broker's hands.
The MQTT topic is a template: ``{key}``, ``{id}``, ``{topic}`` (the chute
topic) and ``{data.a.b}`` (a field of the data) are replaced; a message that
lacks a field the template names, or whose topic would hold ``+``, ``#`` or
nothing, is dead-lettered (it can never be published). The payload is the
message's data as JSON, a string as it is, or the whole message with
``body = "message"``.

```toml
[sinks.thumbs]
type = "mqtt"
topic = "thumbnails.done"
host = "127.0.0.1"
mqtt_topic = "cameras/{data.camera}/thumbnails"
```
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import aiomqtt
import anyio
import msgspec
from chute.config import Strict
from chute.context import PluginContext
from chute.errors import ConfigError
from chute.message import Message
from chute.sink import Outcome, Refused

from ..mqtt_conn import MqttConnection, connection_problems, make_client, where

log = logging.getLogger("chute.sinks.mqtt")

_encoder = msgspec.json.Encoder()
_FIELD = re.compile(r"\{([^{}]*)\}")
_NAMES = ("key", "id", "topic")


class MqttSinkOptions(MqttConnection):
    mqtt_topic: str = "chute/{topic}/{key}"
    """The MQTT topic, a template: ``{key}``, ``{id}``, ``{topic}``, ``{data.field}``."""
    qos: Literal[0, 1, 2] = 1
    """QoS of each publish: with 1 or 2 a message is acked once the broker confirmed it."""
    retain: bool = False
    """Publish retained messages (a new subscriber gets the last one at once)."""
    body: Literal["data", "message"] = "data"
    """The payload: the message's data (a string as it is, else JSON), or the whole message."""


class MqttSink:
    Options: ClassVar[type[Strict]] = MqttSinkOptions

    def __init__(self, options: MqttSinkOptions, ctx: PluginContext) -> None:
        problems = connection_problems(options)
        for name in _FIELD.findall(options.mqtt_topic):
            if name not in _NAMES and not name.startswith("data."):
                problems.append(
                    f"mqtt_topic: unknown field {{{name}}} (use {{key}}, {{id}}, {{topic}} "
                    "or {data.FIELD})"
                )
        if problems:
            raise ConfigError(problems)
        self.options = options
        self.ctx = ctx
        self._client: aiomqtt.Client | None = None
        self._client_id = options.client_id or f"chute-{ctx.node}-{ctx.name}-out"

    def mqtt_topic(self, message: Message) -> str:
        """The template filled from ``message``; ValueError when it cannot be."""

        def field(m: re.Match[str]) -> str:
            name = m.group(1)
            if name in _NAMES:
                return str({"key": message.key, "id": message.id, "topic": self.ctx.topic}[name])
            value: Any = message.data
            for part in name.split(".")[1:]:
                if not isinstance(value, dict) or part not in value:
                    raise ValueError(f"the message has no {name}")
                value = value[part]
            return str(value)

        topic = _FIELD.sub(field, self.options.mqtt_topic)
        if not topic or "+" in topic or "#" in topic or "\0" in topic:
            raise ValueError(f"{topic!r} is not a topic one can publish to")
        return topic

    def _payload(self, message: Message) -> bytes:
        if self.options.body == "message":
            return _encoder.encode(message)
        if isinstance(message.data, str):
            return message.data.encode()
        return _encoder.encode(message.data)

    async def _connected(self) -> aiomqtt.Client:
        if self._client is None:
            client = make_client(self.options, self.ctx, client_id=self._client_id,
                                 persistent=False)  # fmt: skip
            await client.__aenter__()
            self._client = client
            log.info("sink %s: connected to %s", self.ctx.name, where(self.options))
        return self._client

    async def send(self, messages: Sequence[Message]) -> Sequence[Outcome]:
        outcomes: list[Outcome] = [None] * len(messages)
        work: list[tuple[int, str, bytes]] = []
        for i, message in enumerate(messages):
            try:
                work.append((i, self.mqtt_topic(message), self._payload(message)))
            except ValueError as exc:
                outcomes[i] = Refused(f"mqtt_topic: {exc}", permanent=True)
        if not work:
            return outcomes
        errors: list[Exception] = []
        try:
            client = await self._connected()
        except (aiomqtt.MqttError, OSError):
            await self.aclose()
            raise

        async def publish(topic: str, payload: bytes) -> None:
            try:
                await client.publish(topic, payload, qos=self.options.qos,
                                     retain=self.options.retain)  # fmt: skip
            except (aiomqtt.MqttError, OSError) as exc:
                errors.append(exc)

        # All in flight at once: the batch costs one round trip, not one per message.
        async with anyio.create_task_group() as tg:
            for _, topic, payload in work:
                tg.start_soon(publish, topic, payload)
        if errors:
            await self.aclose()  # the next batch connects afresh
            raise errors[0]
        return outcomes

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.__aexit__(None, None, None)
            except (aiomqtt.MqttError, OSError) as exc:
                log.debug("sink %s: closing the connection: %s", self.ctx.name, exc)
