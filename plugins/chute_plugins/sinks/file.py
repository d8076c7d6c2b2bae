"""Append each message to a file as one JSON line (NDJSON), rotated by size.

A batch is written, flushed and fsynced before ``send`` returns, so a message
acknowledged on the topic is on disk. When the file would grow past
``max_bytes`` it is renamed ``<path>.1`` (older ones shift to ``.2`` ...,
keeping ``keep`` of them) and a new file begins; a reader tailing the file
sees whole lines only. The file holds item data: it is created mode 0600.

Each line: ``{"id": ..., "key": ..., "data": ..., "headers": {...}, "created_at": ...}``,
or only ``data`` with ``body = "data"``.

```toml
[sinks.archive]
type = "file"
topic = "results"
path = "out/results.ndjson"
max_bytes = "64MiB"
keep = 5
```
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import anyio.to_thread
from chute.config import Size, Strict
from chute.context import PluginContext
from chute.errors import ConfigError
from chute.message import Message
from chute.sink import Outcome

from ._body import Body, encode_body


class FileOptions(Strict):
    path: str
    """The file to append to (relative to the config file's folder)."""
    max_bytes: Size = Size(64 * 1024**2)
    """Rotate before the file would grow past this; 0 never rotates."""
    keep: int = 5
    """Rotated files kept (``<path>.1`` is the newest)."""
    body: Body = "message"
    """Each line: the whole message (id, key, data, headers, created_at), or its data."""


class FileSink:
    Options: ClassVar[type[Strict]] = FileOptions

    def __init__(self, options: FileOptions, ctx: PluginContext) -> None:
        if options.keep < 0:
            raise ConfigError([f"keep: cannot be negative, got {options.keep}"])
        self.options = options
        self.path = ctx.resolve(options.path)
        self._fd: int | None = None
        self._size = 0

    async def send(self, messages: Sequence[Message]) -> Sequence[Outcome]:
        lines = [encode_body(m, self.options.body) + b"\n" for m in messages]
        # One thread hop per batch: the write and its fsync block.
        await anyio.to_thread.run_sync(self._append, lines)
        return [None] * len(messages)

    def _append(self, lines: list[bytes]) -> None:
        limit = self.options.max_bytes
        chunk: list[bytes] = []
        size = self._open()
        for line in lines:
            if limit and size and size + len(line) > limit:
                self._write(chunk)
                self._rotate()
                size, chunk = self._open(), []
            chunk.append(line)
            size += len(line)
        self._write(chunk)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size
        return self._size

    def _write(self, chunk: list[bytes]) -> None:
        assert self._fd is not None
        if not chunk:
            return
        data = b"".join(chunk)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self._size += len(data)

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        keep = self.options.keep
        if keep == 0:
            self.path.unlink(missing_ok=True)
            return
        for n in range(keep - 1, 0, -1):
            older = _numbered(self.path, n)
            if older.exists():
                older.replace(_numbered(self.path, n + 1))
        self.path.replace(_numbered(self.path, 1))
        _fsync_dir(self.path.parent)

    async def aclose(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _numbered(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
