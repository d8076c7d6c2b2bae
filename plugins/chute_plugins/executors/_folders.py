"""Private item folders for the command executor, reused while nothing changed them.

Each item runs in a 0700 folder of its own holding ``item.json`` (its data,
0600), an empty ``output/`` and, if the executor writes one, ``result.json``.
Making and removing a folder costs about as much as the rest of an item
(mkdir and rmdir on ext4), so a folder the executor left as it found it
serves the next item, its ``item.json`` rewritten in place.

Knowing that it was left alone costs no system call of its own where
inotify exists: the folder and its ``output/`` are watched for entries
created, deleted or moved and for changed attributes (not for writes into
``item.json``, which the next item rewrites whole). The kernel queues an
event in the system call that causes it, so once the executor has exited,
every event it caused is already waiting on the inotify descriptor, which
the owner reads (``drain``) whenever it is readable, and at the latest
before asking whether a folder ``changed``. A folder without events needs no
listing, and its ``item.json``, still open, takes the next item's data in
two system calls.
A folder with events (or without inotify) is listed: the result and outputs
are taken, and anything else left behind means a fresh folder next time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import select
import shutil
import stat
import tempfile
import time
from pathlib import Path

from .. import _inotify as ino
from . import _warden

log = logging.getLogger("chute.executors.command")

_WATCH = (
    ino.IN_CREATE | ino.IN_DELETE | ino.IN_MOVED_FROM | ino.IN_MOVED_TO | ino.IN_ATTRIB
    | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF | ino.IN_ONLYDIR | ino.IN_DONT_FOLLOW
)  # fmt: skip
"""What makes a folder need a look: entries and their attributes, never writes into them."""

_READ_SIZE = 16384
"""Bytes per inotify read: usually there is nothing to read at all."""

_OURS = frozenset({"item.json", "result.json", "output"})
"""What an item's folder may hold after it and still be reused."""


def safe_name(key: str) -> str:
    """A folder name for an item key: readable, unique, never a path or a dot name."""
    raw = key.encode("utf-8", "surrogateescape")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[-60:].lstrip(".") or "item"
    return f"{readable}-{hashlib.sha256(raw).hexdigest()[:12]}"


class ItemFolder:
    """One item's folder, with its paths and variables built once."""

    __slots__ = ("changed", "env", "fd", "item_file", "output", "path", "result_file", "wds")

    def __init__(self, path: str, env: tuple[bytes, ...]) -> None:
        self.path = path
        self.item_file = os.path.join(path, "item.json")
        self.result_file = os.path.join(path, "result.json")
        self.output = os.path.join(path, "output")
        self.env = (
            *env,
            b"WORK_ITEM_FILE=" + os.fsencode(self.item_file),
            b"WORK_OUTPUT_DIR=" + os.fsencode(self.output),
            b"WORK_RESULT_FILE=" + os.fsencode(self.result_file),
        )
        """The environment of a child run in this folder, but for the item's own variables."""
        self.fd = -1
        """``item.json`` open for writing, kept only while the folder is watched and unchanged."""
        self.wds: list[int] = []
        self.changed = True
        """Whether anything may have changed since we last looked (always, unwatched)."""


class Folders:
    """The item folders of one executor: under ``run/<pool>/``, outputs kept under ``outputs/<pool>/``."""

    def __init__(self, workdir: Path, pool: str, env: tuple[bytes, ...] = ()) -> None:
        """``env``: the environment every item's child gets (``ItemFolder.env`` adds the folder's)."""
        self.env = env
        self.scratch = workdir / "run" / safe_name(pool)
        self.outputs = workdir / "outputs" / safe_name(pool)
        self._free: list[ItemFolder] = []
        self._watched: dict[int, ItemFolder] = {}
        self._inotify: ino.Inotify | None = None
        self._pending = select.poll()  # asks whether there are events, where the owner did not
        self._looked_at: ItemFolder | None = None
        self._lock = -1
        """``run/<pool>.lock``, held shared while we use the folders (``take_over``)."""
        self.prefix = f"item-{os.getpid()}-"
        """Of our folders' names: a second runtime's warden tells its folders from ours."""
        self._trash: list[str] = []
        """Folders to remove, whatever they hold: off the event loop (``take_trash``)."""
        if ino.available():
            with contextlib.suppress(OSError):  # out of inotify instances: list every folder
                self._inotify = ino.Inotify()
                self._pending.register(self._inotify.fd, select.POLLIN)

    def take_over(self, wait: float) -> int:
        """Before the first item: make sure no executor of a dead runtime still runs
        in these folders (see ``_warden.py``); how many processes were killed.

        Blocking (it waits up to ``wait`` seconds for them to die): run it in a thread.
        """
        self.scratch.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._lock < 0:
            path = self.scratch.with_name(self.scratch.name + ".lock")
            self._lock = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another runtime uses %s: its items are left alone", self.scratch)
            fcntl.flock(self._lock, fcntl.LOCK_SH)
            return 0
        pids = _warden.orphans(str(self.scratch))
        pidfds = _warden.kill(pids)
        try:
            waiting = select.poll()
            for fd in pidfds:
                waiting.register(fd, select.POLLIN)
            deadline = time.monotonic() + wait
            left = len(pidfds)
            while left and (remaining := deadline - time.monotonic()) > 0:
                for fd, _ in waiting.poll(remaining * 1000):
                    waiting.unregister(fd)
                    left -= 1
            if left:
                log.error("%d processes of a dead runtime's items survived SIGKILL for %gs",
                          left, wait)  # fmt: skip
        finally:
            for fd in pidfds:
                os.close(fd)
        if pids:
            log.warning("killed %d processes left running in %s by a runtime that died",
                        len(pids), self.scratch)  # fmt: skip
        shutil.rmtree(self.scratch, ignore_errors=True)  # its folders, with their item data
        fcntl.flock(self._lock, fcntl.LOCK_SH)  # and let a second runtime see us
        return len(pids)

    def take(self, data: bytes) -> ItemFolder:
        """A folder for one item, its ``item.json`` holding ``data``."""
        if self._free:
            folder = self._free.pop()
            # A straggler of the last item may have touched it since: the
            # owner has read its events as they came.
            if folder.changed and folder.fd >= 0:  # it did: a fresh folder is the safe one
                self._discard(folder)
                folder = self._new()
        else:
            folder = self._new()
        try:
            # Checked before writing: a hard link to it (which inotify does not
            # report on the folder) must not receive this item's data.
            size = _private_size(os.fstat(folder.fd)) if folder.fd >= 0 else -1
            if size < 0:
                if folder.fd >= 0:
                    os.close(folder.fd)
                folder.fd, size = _open_private(folder.item_file)
            _write_all(folder.fd, data)
            # Truncating costs more than the write (an ext4 journal update),
            # and is needed only when the last item's data was longer.
            if size > len(data):
                os.ftruncate(folder.fd, len(data))
        except BaseException:
            self._discard(folder)
            raise
        if folder.changed:  # unwatched or touched: the next item opens and checks it again
            os.close(folder.fd)
            folder.fd = -1
        return folder

    def fileno(self) -> int:
        """The inotify descriptor, readable while events wait; -1 without inotify."""
        return self._inotify.fd if self._inotify is not None else -1

    def drain(self) -> None:
        """Read the events waiting: call it whenever ``fileno()`` is readable."""
        if self._inotify is None:
            return
        for wd, mask, _name in self._inotify.read(_READ_SIZE):
            if mask & ino.IN_Q_OVERFLOW:  # events were lost: look at every folder
                for each in self._watched.values():
                    each.changed = True
                continue
            folder = self._watched.get(wd)
            if folder is not None:
                folder.changed = True
                if mask & ino.IN_IGNORED:  # the watch is gone with its folder
                    del self._watched[wd]

    def changed(self, folder: ItemFolder) -> bool:
        """Whether the item (whose executor has exited) may have changed its folder.

        The events it caused must have been read (``drain``) since its exit.
        """
        self._looked_at = folder
        return folder.changed

    def give_back(self, folder: ItemFolder, name: str) -> None:
        """Keep what the item wrote to its output folder; reuse the folder if it is clean."""
        if self._looked_at is not folder:  # not since its executor ended (cancelled)
            self._drain_waiting()
        self._looked_at = None
        if not folder.changed:
            self._free.append(folder)
            return
        try:
            self._keep_outputs(folder, name)
            left = set(os.listdir(folder.path))
            if "output" in left and left <= _OURS:
                if "result.json" in left:
                    os.unlink(folder.result_file)
                self._settle(folder)
                self._free.append(folder)
                return
        except OSError:
            pass  # the executor removed its folder, or left something odd in it
        self._discard(folder)

    def take_trash(self) -> list[str]:
        """Folders given up since the last call: the caller removes them, in a thread."""
        trash, self._trash = self._trash, []
        return trash

    def close(self) -> None:
        for folder in self._free:
            if folder.fd >= 0:
                os.close(folder.fd)
        self._free.clear()
        for path in self.take_trash():
            shutil.rmtree(path, ignore_errors=True)
        self._watched.clear()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._lock < 0:
            shutil.rmtree(self.scratch, ignore_errors=True)
            return
        try:  # not while another runtime still uses them
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            shutil.rmtree(self.scratch, ignore_errors=True)
        os.close(self._lock)
        self._lock = -1

    # -- inside ------------------------------------------------------------

    def _new(self) -> ItemFolder:
        self.scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = ItemFolder(tempfile.mkdtemp(prefix=self.prefix, dir=self.scratch), self.env)
        os.mkdir(folder.output, 0o700)
        self._settle(folder)
        return folder

    def _settle(self, folder: ItemFolder) -> None:
        """Take the folder as it is now as clean: watch it, or check it before each item."""
        if folder.fd >= 0:  # it may no longer be the file at item.json's path
            os.close(folder.fd)
            folder.fd = -1
        if self._inotify is None:
            return
        folder.fd, _ = _open_private(folder.item_file)
        try:
            self._watch(folder)
        except OSError:  # out of watches: this folder is listed after each item
            os.close(folder.fd)
            folder.fd = -1
            folder.changed = True
            return
        self._drain_waiting()  # our own changes to it, made just now
        folder.changed = False

    def _watch(self, folder: ItemFolder) -> None:
        assert self._inotify is not None
        for wd in folder.wds:
            self._watched.pop(wd, None)
            self._inotify.rm_watch(wd)
        folder.wds = []
        for path in (folder.path, folder.output):
            wd = self._inotify.add_watch(os.fsencode(path), _WATCH)
            folder.wds.append(wd)
            self._watched[wd] = folder

    def _drain_waiting(self) -> None:
        if self._inotify is not None and self._pending.poll(0):
            self.drain()

    def _keep_outputs(self, folder: ItemFolder, name: str) -> None:
        if not os.listdir(folder.output):
            return
        target = self.outputs / safe_name(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        # An earlier run's, out of the way; looked for first, so that an item
        # whose name is new costs no folder made for nothing and removed in a thread.
        if os.path.lexists(target):
            self._trash.append(tempfile.mkdtemp(prefix="old-", dir=self.scratch))
            with contextlib.suppress(FileNotFoundError):
                os.rename(target, os.path.join(self._trash[-1], "output"))
        os.replace(folder.output, target)
        os.mkdir(folder.output, 0o700)

    def _discard(self, folder: ItemFolder) -> None:
        if folder.fd >= 0:
            os.close(folder.fd)
            folder.fd = -1
        for wd in folder.wds:
            if self._watched.get(wd) is folder:
                del self._watched[wd]
        self._trash.append(folder.path)


def _private_size(st: os.stat_result) -> int:
    """The size of a file that is still our private one: regular, 0600, one link; else -1."""
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) == 0o600:
        return st.st_size
    return -1


def _open_private(path: str) -> tuple[int, int]:
    """``item.json`` open for writing and its size: ours if still our private file,
    else a fresh one in place of whatever an executor left there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    except OSError:  # a symlink (ELOOP) or some other odd thing in its place
        os.unlink(path)
    else:
        size = _private_size(os.fstat(fd))
        if size >= 0:
            return fd, size
        os.close(fd)
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), 0


def _write_all(fd: int, data: bytes) -> None:
    written = os.pwrite(fd, data, 0)
    while written < len(data):  # only after a signal, or with the disk nearly full
        written += os.pwrite(fd, data[written:], written)
