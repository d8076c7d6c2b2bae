"""The watch source inside the runtime: files in, executor runs, finished files moved."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from chute.config import config_from_dict
from chute.engine import Runtime

from . import tasks


def config(tmp_path: Path, **watch: Any) -> Any:
    doc: dict[str, Any] = {
        "workdir": str(tmp_path / "work"),
        "sources": {
            "inbox": {"type": "watch", "topic": "files", "path": "inbox", "glob": "*.txt", **watch}
        },
        "pools": {
            "readers": {
                "topic": "files",
                "concurrency": 2,
                "track": False,
                "executor": {"type": "python", "function": "tests.sources.tasks:read_file"},
                "retry": {"attempts": 1},
            }
        },
    }
    return config_from_dict(doc, path="watch.toml", base_dir=str(tmp_path))


async def test_until_idle_processes_the_folder_and_files_away_the_results(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "one two.txt").write_bytes(b"first")
    (inbox / "$(rm -rf x);.txt").write_bytes(b"second")
    (inbox / "broken.txt").write_bytes(b"bad")
    (inbox / "empty.txt").write_bytes(b"")
    (inbox / "skip.mp4").write_bytes(b"not matched")
    (inbox / "partial.txt.part").write_bytes(b"still downloading")
    os.symlink("loop.txt", inbox / "loop.txt")
    tasks.seen.clear()
    rt = Runtime(
        config(tmp_path, on_done="move", done_dir="done", on_dead="move", dead_dir="rejected"),
        until_idle=True,
    )
    await rt.run()
    assert sorted(s["name"] for s in tasks.seen) == [
        "$(rm -rf x);.txt",
        "broken.txt",
        "one two.txt",
    ]
    assert sorted(os.listdir(tmp_path / "done")) == ["$(rm -rf x);.txt", "one two.txt"]
    assert os.listdir(tmp_path / "rejected") == ["broken.txt"]
    assert sorted(os.listdir(inbox)) == ["empty.txt", "loop.txt", "partial.txt.part", "skip.mp4"]
