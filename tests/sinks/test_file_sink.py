"""The file sink: NDJSON lines, durable per batch, rotated by size, private to the user."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from .conftest import drained, running, sink_config


def rotated(folder: Path) -> list[Path]:
    return sorted(folder.glob("r.ndjson*"))


async def test_every_message_becomes_one_line(tmp_path: Path) -> None:
    doc = sink_config(tmp_path, {"type": "file", "path": "out/results.ndjson"})
    async with running(doc, tmp_path) as rt:
        for i in range(250):
            await rt.publish("in", {"n": i}, key=f"k{i}")
        await drained(rt)
    path = tmp_path / "out/results.ndjson"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["data"]["n"] for line in lines] == list(range(250))
    assert lines[0]["key"] == "k0" and lines[0]["id"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_rotates_by_size_and_keeps_every_line(tmp_path: Path) -> None:
    doc = sink_config(
        tmp_path,
        {"type": "file", "path": "r.ndjson", "body": "data", "max_bytes": 1000, "keep": 50},
    )
    async with running(doc, tmp_path) as rt:
        for i in range(300):
            await rt.publish("in", {"n": i, "pad": "x" * 20})
        await drained(rt)
    files = rotated(tmp_path)
    assert len(files) > 5
    assert all(f.stat().st_size <= 1000 for f in files)
    # Oldest first: .N ... .1, then the live file.
    ordered = sorted((f for f in files if f.name != "r.ndjson"), key=lambda f: -int(f.suffix[1:]))
    ordered.append(tmp_path / "r.ndjson")
    numbers = [json.loads(line)["n"] for f in ordered for line in f.read_text().splitlines()]
    assert numbers == list(range(300))


async def test_keeps_only_the_newest_rotated_files(tmp_path: Path) -> None:
    doc = sink_config(
        tmp_path, {"type": "file", "path": "r.ndjson", "body": "data", "max_bytes": 200, "keep": 2}
    )
    async with running(doc, tmp_path) as rt:
        for i in range(300):  # about 1 KB of lines: five files' worth
            await rt.publish("in", i)
        await drained(rt)
    assert [f.name for f in rotated(tmp_path)] == [
        "r.ndjson",
        "r.ndjson.1",
        "r.ndjson.2",
    ]
    last = (tmp_path / "r.ndjson").read_text().split()
    assert last[-1] == "299"
