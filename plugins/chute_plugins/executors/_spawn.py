"""Start a child process for the command executor, at the least cost to the event loop.

The loop thread pays for every spawn twice: the Python work around the
system call, and the wait while the child is vforked (the parent is
suspended until the child has called exec). ``subprocess.Popen`` spends
about as long in Python as in that wait. glibc's ``posix_spawn`` does the
same vfork, exec and error report in C; what Python 3.11 to 3.13 leave out
of ``os.posix_spawn`` is changing the child's working folder and closing
every inherited descriptor, and glibc has both (``addchdir_np`` since 2.29,
``addclosefrom_np`` since 2.34). So this calls it through ctypes, with the
file actions built once per set of descriptors and reused.

The child gets what Popen would give it with ``process_group=0`` and
``close_fds=True``: its own process group (in our session), stdin, stdout
and stderr on the given descriptors and nothing else open, the working
folder, an empty signal mask, and SIGPIPE and SIGXFSZ back to their defaults
(Python ignores both). Where the C library lacks those calls (musl, glibc
before 2.34), or stdin is one of 0-2, ``Popen`` does the same job.

A process group, not a session of its own: where the kernel groups tasks
for fair scheduling by session (``CONFIG_SCHED_AUTOGROUP``, on by default
in most distributions), a child in a new session would get a share of the
machine of its own, so 16 workers would outweigh the user's other programs
16 to 1, and each spawn would set up and tear down a scheduling group. In
our session the children share chute's share, as ``make -j``'s do.

The wait for exec is short while a CPU is free for the child. Once the
executor's own children may keep every CPU busy, the vforked child queues
for one behind them, and the event loop with it: a bare loop spawning
``/bin/true`` at concurrency 8 on 2 CPUs spent 86% of its time there.
``SpawnThreads`` then lets a few threads wait instead (ctypes lets go of the
GIL during the call), each with a spawner of its own: 1.4x the spawns per
second at concurrency 8. The hop to a thread and back costs CPU (some 70 us
in a microbenchmark), a loss where the child would find a free CPU at once,
which is why the executor hands a spawn over only when it has as many
children running as there are CPUs.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import os
import queue
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Protocol

import msgspec

from .. import _libc

_POSIX_SPAWN_SETPGROUP = 0x02
_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08
"""glibc's values (spawn.h); the same on every Linux architecture."""

_OPAQUE = 512
"""Bytes set aside for posix_spawnattr_t and posix_spawn_file_actions_t
(glibc: 336 and 80 on 64-bit); only glibc reads and writes them."""

_RESET_TO_DEFAULT = (signal.SIGPIPE, signal.SIGXFSZ)
"""Signals Python ignores, which exec would otherwise pass on ignored."""

_MAX_CACHED = 64
"""File-action sets and environments kept for reuse: one per (stdout, stderr)
descriptor pair seen (the kernel hands out the lowest free numbers, so a pool
reuses a few), and one per shared environment (an item folder's)."""


class Launch(msgspec.Struct, frozen=True):
    """One child to start: its program and arguments, environment and output descriptors."""

    argv: tuple[bytes, ...]
    """The same tuple for many launches, where the arguments do not change
    (a spawner may convert it once)."""
    env: tuple[bytes, ...]
    """``KEY=value`` entries many launches share (a spawner may convert them once)."""
    own_env: tuple[bytes, ...]
    """This launch's own ``KEY=value`` entries."""
    stdout: int
    stderr: int


class Spawner(Protocol):
    def spawn(self, launch: Launch) -> int:
        """Start the child; its pid.

        Raises OSError when the program cannot be started (not found, not
        executable, the working folder is gone).
        """
        ...

    def reap(self, pid: int) -> int:
        """Wait for a started child; its exit code, or minus the signal that ended it."""
        ...

    def close(self) -> None: ...


def spawner(cwd: bytes, path: str, stdin: int) -> Spawner:
    """The fastest spawner this platform has, for children in ``cwd`` with ``stdin``.

    ``path`` is the children's PATH, which a program name is looked up on.
    """
    if _LIBC is not None and stdin > 2:
        return PosixSpawn(cwd, path, stdin)
    return PopenSpawn(cwd, stdin)


def _load_libc() -> ctypes.CDLL | None:
    libc = _libc.load(
        "posix_spawn_file_actions_addchdir_np", "posix_spawn_file_actions_addclosefrom_np"
    )
    if libc is None:
        return None
    c_void_p, c_int, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    libc.posix_spawn.argtypes = [c_void_p, c_char_p, c_void_p, c_void_p, c_void_p, c_void_p]
    libc.posix_spawn_file_actions_adddup2.argtypes = [c_void_p, c_int, c_int]
    libc.posix_spawn_file_actions_addchdir_np.argtypes = [c_void_p, c_char_p]
    libc.posix_spawn_file_actions_addclosefrom_np.argtypes = [c_void_p, c_int]
    libc.posix_spawnattr_setflags.argtypes = [c_void_p, ctypes.c_short]
    libc.posix_spawnattr_setpgroup.argtypes = [c_void_p, c_int]
    return libc


_LIBC = _load_libc()


def _check(result: int, what: str) -> None:
    if result != 0:
        raise OSError(result, f"{what}: {os.strerror(result)}")


class _SigSet(ctypes.Structure):
    _fields_ = [("bits", ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong))))]


class PosixSpawn:
    """glibc's posix_spawn through ctypes (see the module's docstring)."""

    def __init__(self, cwd: bytes, path: str, stdin: int) -> None:
        assert _LIBC is not None
        self._libc = _LIBC
        self._cwd = cwd
        self._path = path
        self._stdin = stdin
        self._programs: dict[bytes, bytes] = {}
        self._actions: dict[tuple[int, int], ctypes.Array[ctypes.c_char]] = {}
        # Converting some 25 entries to a C array costs more than the rest of
        # the call, so each shared environment is converted once, with room
        # left at the end for a spawn's own entries.
        self._envs: dict[tuple[tuple[bytes, ...], int], ctypes.Array[ctypes.c_char_p]] = {}
        self._argv: tuple[tuple[bytes, ...], ctypes.Array[ctypes.c_char_p]] | None = None
        """The last argv and its C array."""
        self._pid = ctypes.c_int()
        self._pid_ref = ctypes.byref(self._pid)
        self._attr = ctypes.create_string_buffer(_OPAQUE)
        libc = self._libc
        _check(libc.posix_spawnattr_init(self._attr), "posix_spawnattr_init")
        empty, defaults = _SigSet(), _SigSet()
        libc.sigemptyset(ctypes.byref(empty))
        libc.sigemptyset(ctypes.byref(defaults))
        for sig in _RESET_TO_DEFAULT:
            libc.sigaddset(ctypes.byref(defaults), int(sig))
        _check(libc.posix_spawnattr_setsigmask(self._attr, ctypes.byref(empty)), "setsigmask")
        _check(libc.posix_spawnattr_setsigdefault(self._attr, ctypes.byref(defaults)), "sigdef")
        _check(libc.posix_spawnattr_setpgroup(self._attr, 0), "posix_spawnattr_setpgroup")
        flags = _POSIX_SPAWN_SETPGROUP | _POSIX_SPAWN_SETSIGMASK | _POSIX_SPAWN_SETSIGDEF
        _check(libc.posix_spawnattr_setflags(self._attr, flags), "posix_spawnattr_setflags")

    def spawn(self, launch: Launch) -> int:
        argv, env, own_env, stdout, stderr = msgspec.structs.astuple(launch)
        if stdout <= 2 or stderr <= 2:  # only when our own 0-2 are closed
            return self._spawn_above_2(launch)
        program = self._program(argv[0])
        actions = self._actions.get((stdout, stderr)) or self._new_actions(stdout, stderr)
        if self._argv is not None and self._argv[0] is argv:
            c_argv = self._argv[1]
        else:
            c_argv = (ctypes.c_char_p * (len(argv) + 1))(*argv)
            self._argv = (argv, c_argv)
        c_env = self._envs.get((env, len(own_env))) or self._new_env(env, len(own_env))
        c_env[len(env) : len(env) + len(own_env)] = own_env
        failed = self._libc.posix_spawn(self._pid_ref, program, actions, self._attr, c_argv, c_env)
        if failed:
            if failed == errno.ENOENT:
                self._programs.pop(argv[0], None)  # look it up again next time
            raise OSError(failed, os.strerror(failed), os.fsdecode(argv[0]))
        return self._pid.value

    def _spawn_above_2(self, launch: Launch) -> int:
        """Spawn with copies of the descriptors above 2: a dup2 onto 0-2 must not
        overwrite another of the three."""
        out, err = (
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in (launch.stdout, launch.stderr)
        )
        try:
            return self.spawn(msgspec.structs.replace(launch, stdout=out, stderr=err))
        finally:
            os.close(out)
            os.close(err)

    def reap(self, pid: int) -> int:
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def _program(self, name: bytes) -> bytes:
        """What exec is given: a name is looked up on the children's PATH, as Popen does."""
        if b"/" in name:
            return name  # relative to the working folder, which the child is in by then
        found = self._programs.get(name)
        if found is None:
            where = shutil.which(os.fsdecode(name), path=self._path)
            if where is None:
                raise FileNotFoundError(errno.ENOENT, "not found on PATH", os.fsdecode(name))
            found = self._programs[name] = os.fsencode(where)
        return found

    def _new_env(self, env: tuple[bytes, ...], room: int) -> ctypes.Array[ctypes.c_char_p]:
        """``env`` as a NULL-terminated C array, with ``room`` slots after it left to fill."""
        if len(self._envs) >= _MAX_CACHED:
            self._envs.clear()
        c_env = self._envs[(env, room)] = (ctypes.c_char_p * (len(env) + room + 1))(*env)
        return c_env

    def _new_actions(self, stdout: int, stderr: int) -> ctypes.Array[ctypes.c_char]:
        libc = self._libc
        actions = ctypes.create_string_buffer(_OPAQUE)
        _check(libc.posix_spawn_file_actions_init(actions), "posix_spawn_file_actions_init")
        for fd, target in ((self._stdin, 0), (stdout, 1), (stderr, 2)):
            _check(libc.posix_spawn_file_actions_adddup2(actions, fd, target), "adddup2")
        _check(libc.posix_spawn_file_actions_addchdir_np(actions, self._cwd), "addchdir_np")
        _check(libc.posix_spawn_file_actions_addclosefrom_np(actions, 3), "addclosefrom_np")
        if len(self._actions) >= _MAX_CACHED:
            self._forget_actions()
        self._actions[(stdout, stderr)] = actions
        return actions

    def close(self) -> None:
        self._forget_actions()
        self._envs.clear()
        self._libc.posix_spawnattr_destroy(self._attr)

    def _forget_actions(self) -> None:
        for actions in self._actions.values():
            self._libc.posix_spawn_file_actions_destroy(actions)
        self._actions.clear()


class PopenSpawn:
    """``subprocess.Popen``: the same child, where glibc's calls are missing."""

    def __init__(self, cwd: bytes, stdin: int) -> None:
        self._cwd = cwd
        self._stdin = stdin
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, launch: Launch) -> int:
        variables = dict(entry.split(b"=", 1) for entry in (*launch.env, *launch.own_env))
        child = subprocess.Popen(
            launch.argv, cwd=self._cwd, env=variables, stdin=self._stdin, stdout=launch.stdout,
            stderr=launch.stderr, process_group=0,
        )  # fmt: skip
        self._children[child.pid] = child
        return child.pid

    def reap(self, pid: int) -> int:
        return self._children.pop(pid).wait()

    def close(self) -> None:
        pass


class SpawnThreads:
    """Spawns run by a few threads, each with its own spawner (none of them is
    shared: a spawner's cached file actions are not safe to share between
    threads). For spawners whose ``reap`` is a plain waitpid, as PosixSpawn's is.

    A request is a queue put and the answer a ``call_soon_threadsafe``: about
    half the CPU of ``run_in_executor``'s futures and locks.
    """

    def __init__(self, new_spawner: Callable[[], Spawner], threads: int) -> None:
        self._new_spawner = new_spawner
        self._count = threads
        # A launch and the future for its pid; None tells a thread to stop.
        self._requests: queue.SimpleQueue[tuple[asyncio.Future[int], Launch] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []

    async def spawn(self, launch: Launch) -> int:
        """``Spawner.spawn`` in one of the threads. Await it shielded: a child
        it started must reach the caller, to be waited for and reaped."""
        if not self._threads:
            self._threads = [
                threading.Thread(
                    target=self._serve, args=(self._new_spawner(),), name="chute-spawn", daemon=True
                )
                for _ in range(self._count)
            ]
            for thread in self._threads:
                thread.start()
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._requests.put((started, launch))
        return await started

    def _serve(self, spawner: Spawner) -> None:
        try:
            while (request := self._requests.get()) is not None:
                started, launch = request
                try:
                    pid = spawner.spawn(launch)
                except BaseException as exc:  # handed to the caller, whatever it is
                    started.get_loop().call_soon_threadsafe(started.set_exception, exc)
                else:
                    started.get_loop().call_soon_threadsafe(started.set_result, pid)
        finally:
            spawner.close()

    def close(self) -> None:
        for _ in self._threads:
            self._requests.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []
