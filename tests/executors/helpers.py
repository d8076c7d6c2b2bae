"""A command executor built as the runtime builds one, and the work items it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from chute.config import dec_hook
from chute.context import PluginContext
from chute.executor import WorkItem
from chute.message import Message
from chute_plugins.brokers.memory import MemoryBroker
from chute_plugins.executors.command import CommandExecutor, CommandOptions


def executor(tmp_path: Path, **options: Any) -> CommandExecutor:
    """Pool ``work``'s command executor, its work folder ``tmp_path/work``."""
    ctx = PluginContext(
        name="work", topic="in", base_dir=tmp_path, workdir=tmp_path / "work",
        node="test", broker=MemoryBroker(),
    )  # fmt: skip
    return CommandExecutor(msgspec.convert(options, CommandOptions, dec_hook=dec_hook), ctx)


def item(data: Any, name: str = "item-1", attempt: int = 1) -> WorkItem:
    message = Message(id="1-0", key=name, data=data, attempt=attempt)
    return WorkItem(name=name, data=data, attempt=attempt, message=message, pool="work")
