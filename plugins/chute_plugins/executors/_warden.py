"""Executors die with the runtime that started them.

A child started by ``posix_spawn`` cannot ask the kernel for a signal when
its parent dies (``PR_SET_PDEATHSIG`` must be set in the child between fork
and exec, which glibc's vfork path has no hook for; a fork from Python, or a
helper exec'd in front of every executor, costs a large part of a spawn:
see ``bench/spawn.py``). So the guarantee is kept from outside, in two parts:

- **The warden**: one small process per command executor, started with the
  first child. The executor tells it each child's pid as the child starts
  and again just before reaping it: four bytes down a pipe each time, the
  cost of one ``write``. The warden only reads. When the pipe reaches its
  end, the executor's process is gone (a kill -9 closes its descriptors
  too), and the warden sends SIGKILL to the process group of every child it
  was told about and not told was reaped, then exits. It ignores SIGINT,
  SIGTERM and SIGHUP and runs in a process group of its own, so a Ctrl-C or
  a signal to chute's group does not take it first.

- **The take-over**: a runtime starting on a working folder kills every
  process whose ``WORK_ITEM_FILE`` lies in that folder's item folders (read
  from ``/proc/<pid>/environ``, so grandchildren are found too) and waits for
  them to die, before it runs anything: this covers a warden that was itself
  killed (``kill -9`` of every chute process), and a child started in the
  instant before a crash, whose pid the warden never received. It is done
  only when no other runtime holds the item folders' lock, so a second
  runtime on one folder never kills the first one's items.

Limits: the warden acts within milliseconds of the crash, not at the same
instant; a process that changed its environment at exec (``env -i``) and
left its process group is found by neither part.

Run as ``python -I -S _warden.py`` it is the warden: it imports nothing of
chute, so it starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import struct
import sys
import weakref

log = logging.getLogger("chute.executors.command")

_RECORD = struct.Struct("=i")
"""A pid the warden must kill on our death (positive), or may forget (negative)."""


class Warden:
    """Our side of the warden: started lazily, told about each child."""

    def __init__(self) -> None:
        self._pid = 0
        self._fd = -1
        self._finalizer: weakref.finalize[[int], Warden] | None = None
        self._unsent = b""
        """Records the pipe had no room for (the warden was starved of CPU)."""
        self.live: set[int] = set()
        """Children started and not yet reaped."""

    def start(self) -> None:
        """Start the warden now, before any child (else with the first one).

        Raises OSError when it cannot be started (no processes or descriptors left).
        """
        if self._fd < 0:
            self._start()

    def started(self, pid: int) -> None:
        """Tell the warden about a child. Raises OSError when no warden can be
        started: the caller stops the child rather than leave it unguarded."""
        self.live.add(pid)
        self._send(_RECORD.pack(pid))

    def reaping(self, pid: int) -> None:
        """Call after killing what is left in the child's group, before reaping it:
        once reaped, its pid may name someone else's group."""
        self.live.discard(pid)
        with contextlib.suppress(OSError):  # no warden: nothing to tell it
            self._send(_RECORD.pack(-pid))

    def _send(self, record: bytes) -> None:
        if self._fd < 0:
            self._start()
        self._unsent += record
        try:
            written = os.write(self._fd, self._unsent)
        except BlockingIOError:  # its pipe is full: the next write tries again
            return
        except BrokenPipeError:  # someone killed it: a new one learns who is alive
            log.warning("the executors' warden (pid %d) died; starting another", self._pid)
            self._stop()
            self._start()
            with contextlib.suppress(BlockingIOError):
                self._unsent = self._unsent[os.write(self._fd, self._unsent) :]
            return
        self._unsent = self._unsent[written:]

    def _start(self) -> None:
        read, write = os.pipe2(os.O_CLOEXEC)
        try:
            # Not a Popen: an executor nobody closed must not warn about it
            # (its pipe is closed with it, and the warden exits).
            self._pid = os.posix_spawn(
                sys.executable, [sys.executable, "-I", "-S", __file__], dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                ],
                setpgroup=0,
            )  # fmt: skip
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        os.set_blocking(write, False)
        self._fd = write
        self._finalizer = weakref.finalize(self, os.close, write)
        self._unsent = b"".join(_RECORD.pack(pid) for pid in self.live)

    def _stop(self) -> None:
        if self._fd >= 0:
            if self._finalizer is not None:
                self._finalizer.detach()
            os.close(self._fd)  # its end of file: it kills what is still live, and exits
            self._fd = -1
        if self._pid:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(self._pid)
                try:  # it exits at once: reading is all it does
                    select.select([pidfd], [], [], 1.0)
                finally:
                    os.close(pidfd)
                os.waitpid(self._pid, os.WNOHANG)
            self._pid = 0

    def close(self) -> None:
        self._stop()


def orphans(scratch: str) -> list[int]:
    """Processes (not us) whose ``WORK_ITEM_FILE`` lies under ``scratch``: a
    predecessor's executors and what they started."""
    marker = b"WORK_ITEM_FILE=" + os.fsencode(scratch).rstrip(b"/") + b"/"
    me = os.getpid()
    found: list[int] = []
    try:
        names = os.listdir(b"/proc")
    except FileNotFoundError:  # no procfs (a container without it): nothing to find
        return found
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(b"/proc/" + name + b"/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone, or another user's
            continue
        if env.startswith(marker) or b"\0" + marker in env:
            found.append(int(name))
    return found


def kill(pids: list[int]) -> list[int]:
    """SIGKILL each process and its group (never ours); pidfds to wait on for their ends."""
    ours = os.getpgrp()
    pidfds: list[int] = []
    for pid in pids:
        try:
            pidfds.append(os.pidfd_open(pid))
        except OSError:  # gone already
            continue
        with contextlib.suppress(OSError):
            group = os.getpgid(pid)
            if group != ours:
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfds[-1], signal.SIGKILL)
    return pidfds


def _serve() -> None:  # pragma: no cover - runs in the warden process
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    live: set[int] = set()
    rest = b""
    while chunk := os.read(0, 65536):
        rest += chunk
        whole = len(rest) - len(rest) % _RECORD.size
        for (pid,) in _RECORD.iter_unpack(rest[:whole]):
            if pid > 0:
                live.add(pid)
            else:
                live.discard(-pid)
        rest = rest[whole:]
    for pid in live:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)  # each child leads a group of its own
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    _serve()
