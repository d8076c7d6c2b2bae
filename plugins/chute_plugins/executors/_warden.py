"""Executors die with the runtime that started them.

A child started by ``posix_spawn`` cannot ask the kernel for a signal when
its parent dies (``PR_SET_PDEATHSIG`` must be set in the child between fork
and exec, which glibc's vfork path has no hook for; a fork from Python, or a
helper exec'd in front of every executor, costs a large part of a spawn:
``bench/spawn.py`` prints it). So the guarantee is kept from outside, at no
cost per item, in two parts:

- **The warden**: one small process per command executor, started before its
  first item and told nothing after that. It holds the read end of a pipe
  whose write end only the executor's process holds; when the pipe reaches
  its end, that process is gone (a kill -9 closes its descriptors too), and
  the warden kills every process still running in the process's item
  folders (its ``WORK_ITEM_FILE`` names one: read from
  ``/proc/<pid>/environ``, so grandchildren are found too) with its process
  group, then exits. The folders carry the runtime's pid in their names, so
  a second runtime on the same working folder loses nothing. The warden
  ignores SIGINT, SIGTERM and SIGHUP and runs in a process group of its own,
  so a Ctrl-C or a signal to chute's group does not take it first; if it is
  killed anyway, the executor starts another (it watches the warden's pidfd).

- **The take-over**: a runtime starting on a working folder kills every
  process whose ``WORK_ITEM_FILE`` lies in its item folders and waits for
  them to die, before it runs anything, when no other runtime holds the
  folders' lock: this covers a warden that died with the runtime (a kill -9
  of every chute process, a power cut of the container).

Limits: the warden acts within milliseconds of the crash, not at the same
instant; a process that cleared its environment at exec (``env -i``) and
left its process group is found by neither part.

Run as ``python -I -S _warden.py FOLDER PREFIX`` it is the warden: it imports
nothing of chute, so it starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import weakref


class Warden:
    """Our side of the warden of the item folders named ``prefix*`` under ``scratch``."""

    def __init__(self, scratch: str, prefix: str) -> None:
        self.scratch = scratch
        self.prefix = prefix
        self.pid = 0
        self._fd = -1
        self._finalizer: weakref.finalize[[int], Warden] | None = None

    def start(self) -> int:
        """Start the warden; its pidfd (readable when it has died), owned by the caller.

        Raises OSError when it cannot be started (no processes or descriptors left).
        """
        self.close()
        read, write = os.pipe2(os.O_CLOEXEC)
        try:
            # Not a Popen: an executor nobody closed must not warn about it
            # (its pipe is closed with it, and the warden exits).
            argv = [sys.executable, "-I", "-S", __file__, self.scratch, self.prefix]
            self.pid = os.posix_spawn(
                sys.executable, argv, dict(os.environ),
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
        self._fd = write
        self._finalizer = weakref.finalize(self, os.close, write)
        return os.pidfd_open(self.pid)

    def close(self) -> None:
        """Let it go: it finds nothing of ours left running, and exits."""
        if self._fd >= 0:
            if self._finalizer is not None:
                self._finalizer.detach()
            os.close(self._fd)
            self._fd = -1
        if self.pid:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(self.pid)
                try:  # its scan of /proc takes milliseconds
                    select.select([pidfd], [], [], 2.0)
                finally:
                    os.close(pidfd)
                os.waitpid(self.pid, os.WNOHANG)
            self.pid = 0


def orphans(scratch: str, prefix: str = "") -> list[int]:
    """Processes (not us) whose ``WORK_ITEM_FILE`` lies in a folder named
    ``prefix*`` under ``scratch``: a dead runtime's executors and what they started."""
    marker = b"WORK_ITEM_FILE=" + os.fsencode(os.path.join(scratch, prefix))
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


def _serve(scratch: str, prefix: str) -> None:  # pragma: no cover - runs in the warden process
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while os.read(0, 4096):  # nothing is ever written: this waits for the end
        pass
    for fd in kill(orphans(scratch, prefix)):
        os.close(fd)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
