"""Linux inotify through ctypes: the watch source's events, and the command
executor's check that an item's folder is as it left it.

Why not watchfiles here: it reports "added" and "modified", never "closed after
writing" (its issue #345), so a file it reports may still be half written.
The kernel does say so: ``IN_CLOSE_WRITE`` when a writer closes the file and
``IN_MOVED_TO`` when a finished file is renamed into place. These are three
libc calls and a fixed event layout, so a ctypes binding costs less than a
dependency (the small inotify packages on PyPI are either unmaintained or
thread-based).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from . import _libc

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

_EVENT = struct.Struct("iIII")
_READ_SIZE = 1 << 20
"""Bytes per read: room for ~30,000 short-named events, so a burst drains in a few reads."""

Event = tuple[int, int, bytes]
"""(watch descriptor, mask, name); the name is empty for events on the watched folder itself."""


_LIBC = _libc.load("inotify_init1")


def available() -> bool:
    return _LIBC is not None


class Inotify:
    """One inotify instance: a non-blocking descriptor the event loop waits on."""

    def __init__(self) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "inotify is not available on this platform")
        self._libc = _LIBC
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    def add_watch(self, path: bytes, mask: int) -> int:
        wd = self._libc.inotify_add_watch(self.fd, ctypes.c_char_p(path), ctypes.c_uint32(mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fsdecode(path))
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        """Stop a watch; quietly if it is already gone (its folder was deleted)."""
        self._libc.inotify_rm_watch(self.fd, ctypes.c_int(wd))

    def read(self, size: int = _READ_SIZE) -> list[Event]:
        """Every event queued now (empty when none), read ``size`` bytes at a time."""
        events: list[Event] = []
        while True:
            try:
                buf = os.read(self.fd, size)
            except BlockingIOError:
                return events
            offset, end = 0, len(buf)
            while offset + _EVENT.size <= end:
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, offset)
                offset += _EVENT.size
                name = buf[offset : offset + length].rstrip(b"\0")
                offset += length
                events.append((wd, mask, name))
            if len(buf) < size // 2:
                return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
