"""A command child's output and exit, and the item folders' events: one epoll.

Split from ``command.py`` (which starts children and settles items): what is
here only reads descriptors as they become ready, on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import select
from collections import deque
from collections.abc import Callable


class Tail:
    """The last ``limit`` bytes written to it, and how many came before them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.dropped = 0

    def write(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        while self.size > self.limit and self.chunks:
            excess = self.size - self.limit
            first = self.chunks[0]
            if len(first) <= excess:
                self.chunks.popleft()
                self.size -= len(first)
                self.dropped += len(first)
            else:
                self.chunks[0] = first[excess:]
                self.size -= excess
                self.dropped += excess

    def text(self) -> str:
        body = b"".join(self.chunks).decode("utf-8", "replace")
        return f"[... {self.dropped} bytes dropped ...]\n{body}" if self.dropped else body


class Watcher:
    """Readiness of every child's pidfd and pipes (and of the item folders'
    inotify descriptor) through one epoll of our own.

    The loop watches only this epoll; a descriptor joins it (and leaves it)
    with one system call, a fraction of what the loop's own ``add_reader``
    bookkeeping (a handle, a key, a selector lookup) costs.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        self.handlers: dict[int, Callable[[int, int], None]] = {}
        loop.add_reader(self.epoll.fileno(), self.poll)

    def add(self, fd: int, handler: Callable[[int, int], None], *, once: bool = False) -> None:
        """Call ``handler(fd, events)`` while ``fd`` is readable or hung up.

        ``once``: the first time only. The kernel then disarms ``fd`` and drops
        it when it is closed, so the handler only has to forget itself.
        """
        self.handlers[fd] = handler
        self.epoll.register(fd, select.EPOLLIN | select.EPOLLONESHOT if once else select.EPOLLIN)

    def remove(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    def poll(self) -> None:
        """Call the handlers of what is ready now (the loop calls it when any is)."""
        # Level-triggered: what does not fit in one poll is reported again.
        for fd, events in self.epoll.poll(0, 64):
            handler = self.handlers.get(fd)
            if handler is not None:
                handler(fd, events)

    def close(self) -> None:
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()
        self.handlers.clear()


AT_EXIT_READS = 16
"""Reads (of up to 64 KiB) at a child's exit for what its pipes still hold: a
pipe holds at most 1 MiB, so more can only come from a grandchild that
escaped the group, and closes the pipes (``Pipes``)."""


class Pipes:
    """A child's stdout and stderr, kept from one child to the next.

    Two new pipes per child, with their epoll calls, hang-ups and four
    closes, cost the parent 30 to 40 us of CPU per ``/bin/true`` (90 at
    concurrency 8). Their read ends stay in the epoll and never block; their
    write ends stay open here too, so they never hang up: a child's output
    is all in them once it has exited, and is read then at the latest.
    Output that arrives while no child owns them comes from a grandchild
    that escaped the process group: the pipes are closed on it, so it gets
    EPIPE as it did when each child had pipes of its own.
    """

    def __init__(self, watcher: Watcher, folders: int) -> None:
        """``folders``: the item folders' inotify descriptor (-1: none), asked
        about with the pipes at a child's exit."""
        self.watcher = watcher
        self.folders = folders
        self.out_r, self.out_w = os.pipe2(os.O_CLOEXEC)
        self.err_r, self.err_w = os.pipe2(os.O_CLOEXEC)
        self.tails: dict[int, Tail] | None = None
        """The owning child's, by read end; None while no child owns them."""
        self.closed = False
        self._asking = select.poll()
        for fd in (self.out_r, self.err_r):
            os.set_blocking(fd, False)
            watcher.add(fd, self._readable)
            self._asking.register(fd, select.POLLIN)
        if folders >= 0:
            self._asking.register(folders, select.POLLIN)

    def waiting(self) -> list[int]:
        """Which of the read ends and the folders' descriptor are readable now."""
        return [fd for fd, _ in self._asking.poll(0)]

    def _readable(self, fd: int, events: int) -> None:
        if self.tails is None:
            self.close()
        else:
            self.read(fd, 1)  # level-triggered: the rest is reported again

    def read(self, fd: int, reads: int) -> None:
        assert self.tails is not None
        for _ in range(reads):
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            self.tails[fd].write(chunk)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in (self.out_r, self.err_r):
            self.watcher.remove(fd)
        for fd in (self.out_r, self.out_w, self.err_r, self.err_w):
            os.close(fd)


class Child:
    """A running child's exit, through its pidfd."""

    def __init__(self, watcher: Watcher, pidfd: int) -> None:
        self.watcher = watcher
        self.pidfd = pidfd
        self.exited: asyncio.Future[None] = watcher.loop.create_future()
        watcher.add(pidfd, self._exit, once=True)

    def _exit(self, fd: int, events: int) -> None:
        del self.watcher.handlers[fd]  # added once: disarmed already
        if not self.exited.done():  # cancelled, while the child is being stopped
            self.exited.set_result(None)

    def close(self) -> None:
        self.watcher.remove(self.pidfd)
        os.close(self.pidfd)
        if not self.exited.done():
            self.exited.cancel()
