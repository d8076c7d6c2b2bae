from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
from chute import Runtime
from chute.config import config_from_dict
from chute.message import Message


def sink_config(tmp_path: Path, sink: dict[str, Any], **top: Any) -> dict[str, Any]:
    """A graph of one declared topic ``in`` read by the sink ``out``."""
    return {
        "workdir": str(tmp_path / "work"),
        "shutdown_grace": "5s",
        **top,
        "topics": {"in": {"visibility_timeout": "30s"}},
        "sinks": {
            "out": {"topic": "in", **sink},
            # The dead letters, kept where the test can read them.
            "dead": {"type": "file", "topic": "out.dead", "path": str(tmp_path / "dead.ndjson")},
        },
    }


@asynccontextmanager
async def running(doc: dict[str, Any], base: Path) -> AsyncIterator[Runtime]:
    rt = Runtime(config_from_dict(doc, path="test.toml", base_dir=str(base)))
    async with rt:
        yield rt


async def drained(rt: Runtime) -> None:
    with anyio.fail_after(30):
        await rt.wait_idle()


async def dead_letters(rt: Runtime) -> list[Message]:
    """What the ``out`` sink dead-lettered (once drained)."""
    path = Path(rt.config.base_dir) / "dead.ndjson"
    if not path.exists():
        return []
    return [msgspec.json.decode(line, type=Message) for line in path.read_bytes().splitlines()]
