"""What the end-to-end crash tests share: an inbox of files that a ``watch``
source named ``inbox`` feeds to the topic ``files``, and the names of the
files the state database has recorded as done.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

WATCH_INBOX = """\
workdir = "work"

[sources.inbox]
type = "watch"
topic = "files"
path = "inbox"
glob = "*.txt"
"""
"""The head of a config: the default state file under ``work/``, the inbox source."""


def fill_inbox(tmp_path: Path, names: Iterable[str]) -> list[str]:
    """``tmp_path/inbox`` with one file per name (holding its name); the names."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names = list(names)
    for name in names:
        (inbox / name).write_text(name)
    return names


def done_names(db_path: Path, pool: str | None = None) -> set[str]:
    """The files whose items the state database says are done (in ``pool``, or any)."""
    if not db_path.exists():
        return set()
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        query = "SELECT key FROM items WHERE status = 'done'"
        rows = (
            db.execute(query, ()) if pool is None else db.execute(query + " AND pool = ?", (pool,))
        )
        # A watched file's key is relpath@size@mtime_ns; the tests log the name.
        return {bytes(key).decode().split("@")[0] for (key,) in rows}
    finally:
        db.close()
