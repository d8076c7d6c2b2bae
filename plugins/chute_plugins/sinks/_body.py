"""What the file and http sinks write of a message: the whole of it, or only its data."""

from __future__ import annotations

from typing import Literal

import msgspec
from chute.message import Message

Body = Literal["message", "data"]

_encoder = msgspec.json.Encoder()


def encode_body(message: Message, body: Body) -> bytes:
    """JSON: ``{"id", "key", "data", "headers", "created_at"}``, or the data alone."""
    if body == "data":
        return _encoder.encode(message.data)
    # Every field named, defaults too (unlike the Struct's own encoding): readers rely on them.
    return _encoder.encode({"id": message.id, "key": message.key, "data": message.data,
                            "headers": message.headers, "created_at": message.created_at})  # fmt: skip
