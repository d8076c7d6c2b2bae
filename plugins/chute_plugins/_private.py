"""SQLite files that hold item data, readable by this user only."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


def make_private(path: Path) -> None:
    """The database (and its -wal and -shm, which SQLite creates with the database's
    mode, and its .lock) readable by us only: they hold item keys, data and output."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    for each in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(each.stat().st_mode) & 0o077:  # made by an earlier chute
                each.chmod(0o600)
