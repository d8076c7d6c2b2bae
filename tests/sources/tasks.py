"""In-process executors for the source tests (``tests.sources.tasks:NAME``)."""

from __future__ import annotations

from typing import Any

from chute.errors import ItemFailed

seen: list[dict[str, Any]] = []


def read_file(data: Any) -> Any:
    """Reads the item's file (as an executor would), rejects files that say "bad"."""
    with open(data["path"], "rb") as f:
        content = f.read()
    seen.append({**data, "content": content})
    if content == b"bad":
        raise ItemFailed("bad content", permanent=True)
    return {"bytes": len(content)}
