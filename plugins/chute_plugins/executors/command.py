"""Run a subprocess per item: the book's executor interface (``WORK_ITEM_FILE``).

::

    executor = { type = "command", argv = ["ffmpeg", "-i", "{path}", "out/{name}.png"] }

Each argument is a template: ``{field}`` (or ``{a.b}`` for nested data) is
replaced by that field of the item's data, per argument, and the list goes to
``execve`` as it is: no shell ever sees item data, so a file called
``$(rm -rf ~).mp4`` is just a name. ``{{`` and ``}}`` are literal braces.

The process gets an allowlist of this process's environment (``pass_env``),
the config's ``env``, and the book's variables: ``WORK_ITEM_FILE`` (the
item's data as JSON, mode 0600, in a private 0700 folder), ``WORK_ITEM_NAME``,
``WORK_ITEM_ATTEMPT``, ``WORK_OUTPUT_DIR`` and ``WORK_RESULT_FILE``. Exit 0 is
success, and the result file, if written, is the item's result; exit 65
(EX_DATAERR) is a permanent failure; any other exit, a signal or the timeout
is retried by the pool.

It runs in its own process group (in chute's session: see ``_spawn.py``).
When the item is cancelled (the pool's timeout, or a shutdown past its
grace), the group gets SIGTERM, then SIGKILL after ``grace``, and the child
is always reaped. When the child exits, whatever it left running in its
group is killed: a one-shot executor owns nothing after its exit. stdout and
stderr are read as they come and only their last ``max_output`` bytes are
kept, so a chatty child costs no memory; that tail goes into the failure and
the dead letter.

Files the executor writes into ``WORK_OUTPUT_DIR`` are kept under
``WORKDIR/outputs/<pool>/`` (one folder per item); an empty output folder is
removed.

Spawn path: glibc's ``posix_spawn`` (vfork + exec, see ``_spawn.py``) called
on the event loop thread, or from a spawn thread once the executor has as
many children running as there are CPUs, and the exit awaited through a
pidfd, with no child watcher in between (measured in ``bench/spawn.py``
beside bare loops). Every child's pidfd and pipes share one epoll of the
executor's own; the pipes serve child after child (``_Pipes``), and an item
folder the executor left alone serves the next item with its item file
rewritten in place (``_folders.py``): per item, the parent's cost is a few
system calls beyond the spawn's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import os
import re
import select
import shutil
import signal
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import anyio
import msgspec
from chute.config import Duration, Size, Strict
from chute.context import PluginContext
from chute.errors import ConfigError, ItemFailed
from chute.executor import WorkItem

from ._folders import Folders, ItemFolder
from ._spawn import Launch, PosixSpawn, Spawner, SpawnThreads, spawner

log = logging.getLogger("chute.executors.command")

EX_DATAERR = 65
"""sysexits.h: the input data was incorrect; retrying cannot help."""

DEFAULT_PASS_ENV = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE",
    "LC_MESSAGES", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
]  # fmt: skip

_CPUS = len(os.sched_getaffinity(0))
"""CPUs this process may run on: with as many children running, a spawn goes to a thread."""

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class CommandOptions(Strict):
    argv: list[str]
    """The program and its arguments; ``{field}`` is replaced per argument."""
    cwd: str = ""
    """Working folder (relative to the config's folder); default the config's folder."""
    env: dict[str, str] = {}
    """Variables set for the command (after ``pass_env``)."""
    pass_env: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_PASS_ENV))
    """Variables passed on from chute's own environment; ``*`` at the end matches a prefix."""
    grace: Duration = Duration(3.0)
    """After SIGTERM, how long the process group has before SIGKILL."""
    max_output: Size = Size(1024 * 1024)
    """Bytes of stdout, and of stderr, kept per item (the last ones)."""


def _near(program: str, path: str) -> str:
    """A "did you mean" hint naming a program on PATH with a similar name, or ""."""
    names: set[str] = set()
    for folder in path.split(os.pathsep):
        with contextlib.suppress(OSError):
            names.update(os.listdir(folder or "."))
    near = difflib.get_close_matches(program, sorted(names), n=1, cutoff=0.75)
    return f"; did you mean {near[0]!r}?" if near else ""


class Template:
    """One argv entry, parsed once: literal text and field paths."""

    def __init__(self, text: str) -> None:
        self.parts: list[str | tuple[str, ...]] = []
        pos = 0
        for m in _FIELD.finditer(text):
            if m.start() > pos:
                self.parts.append(text[pos : m.start()])
            token = m.group(0)
            if token in ("{{", "}}"):
                self.parts.append(token[0])
            elif token in ("{", "}"):
                raise ValueError(f"unmatched {token!r} in {text!r} (write {token * 2} for a brace)")
            else:
                path = m.group(1).strip()
                if not path or any(not p for p in path.split(".")):
                    raise ValueError(f"empty field name in {text!r}")
                self.parts.append(tuple(path.split(".")))
            pos = m.end()
        if pos < len(text):
            self.parts.append(text[pos:])

    @property
    def fields(self) -> list[str]:
        return [".".join(p) for p in self.parts if isinstance(p, tuple)]

    def render(self, data: Any) -> str:
        out: list[str] = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value = data
            for name in part:
                if not isinstance(value, dict) or name not in value:
                    raise ItemFailed(
                        f"the item's data has no field {'.'.join(part)!r} for argv",
                        permanent=True,
                    )
                value = value[name]
            out.append(value if isinstance(value, str) else msgspec.json.encode(value).decode())
        return "".join(out)


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


class CommandExecutor:
    Options: ClassVar[type[Strict]] = CommandOptions

    def __init__(self, options: CommandOptions, ctx: PluginContext) -> None:
        if not options.argv:
            raise ConfigError(["argv: empty: give the program and its arguments"])
        problems: list[str] = []
        self.argv: list[Template] = []
        for i, text in enumerate(options.argv):
            try:
                self.argv.append(Template(text))
            except ValueError as exc:
                problems.append(f"argv[{i}]: {exc}")
            if "\0" in text:
                problems.append(f"argv[{i}]: holds a NUL byte, which no argument can")
        if problems:
            raise ConfigError(problems)
        self.cwd = ctx.resolve(options.cwd or ".")
        if options.cwd and not self.cwd.is_dir():
            raise ConfigError([f"cwd: {self.cwd} is not a folder"])
        env = self._base_env(options)
        problems = [f"env: {k!r}: a name may not hold '=' or a NUL byte"
                    for k, v in env.items() if "=" in k or "\0" in k + v]  # fmt: skip
        if problems:
            raise ConfigError(problems)
        if not self.argv[0].fields:
            self._check_program(self.argv[0].render(None), env.get("PATH", os.defpath))
        self.options = options
        self.pool = ctx.name
        # Encoded once, not for every item.
        self.folders = Folders(
            ctx.workdir, ctx.name, tuple(os.fsencode(f"{k}={v}") for k, v in env.items())
        )
        # Without fields, argv is the same for every item: encoded once.
        self._fixed_argv: tuple[bytes, ...] | None = None
        if not any(t.fields for t in self.argv):
            self._fixed_argv = tuple(os.fsencode(t.render(None)) for t in self.argv)
        self._path = env.get("PATH", os.defpath)
        self._devnull: int | None = None
        self._spawner: Spawner | None = None
        self._threads: SpawnThreads | None = None
        self._running = 0
        """Children started and not yet reaped."""
        self._free_pipes: list[_Pipes] = []
        self._watcher: _Watcher | None = None

    def item_fields(self) -> set[str]:
        """The item fields argv uses (the first name of each ``{a.b}``): ``chute check`` warns
        when the source feeding the pool does not emit one."""
        return {field.split(".")[0] for t in self.argv for field in t.fields}

    def _check_program(self, program: str, path: str) -> None:
        """Look the program up as exec will: on the child's PATH, or relative to ``cwd``."""
        if "/" in program:
            if not os.access(self.cwd / program, os.X_OK):
                raise ConfigError([f"argv[0]: program {program!r} not found in {self.cwd}"])
        elif shutil.which(program, path=path) is None:
            raise ConfigError(
                [f"argv[0]: program {program!r} not found on PATH{_near(program, path)}"]
            )

    @staticmethod
    def _base_env(options: CommandOptions) -> dict[str, str]:
        env: dict[str, str] = {}
        for name in options.pass_env:
            if name.endswith("*"):
                env.update({k: v for k, v in os.environ.items() if k.startswith(name[:-1])})
            elif name in os.environ:
                env[name] = os.environ[name]
        env.update(options.env)
        for name in _BOOK_VARIABLES:  # each item's own, never the config's
            env.pop(name, None)
        return env

    # -- one item ----------------------------------------------------------

    async def run(self, item: WorkItem) -> Any:
        argv = self._fixed_argv or self._render_argv(item.data)
        if "\0" in item.name:
            raise ItemFailed("a NUL byte in the item's name", permanent=True)
        self._watcher_here()  # before a folder is taken: its events are read by then
        folder = self.folders.take(msgspec.json.encode(item.data))
        try:
            code, stdout, stderr = await self._run_in(folder, argv, item)
            if code == 0:
                if not self.folders.changed(folder):
                    return None  # so no result file either
                return _read_result(folder.result_file, stdout, stderr)
        finally:
            self.folders.give_back(folder, item.name)
        output = _combined(stdout, stderr)
        if code == EX_DATAERR:
            raise ItemFailed(_reason("exit 65 (permanent)", stderr), permanent=True, output=output)
        if code < 0:
            raise ItemFailed(_reason(f"killed by {_signal_name(-code)}", stderr), output=output)
        raise ItemFailed(_reason(f"exit {code}", stderr), output=output)

    def _render_argv(self, data: Any) -> tuple[bytes, ...]:
        argv = tuple(os.fsencode(t.render(data)) for t in self.argv)
        if any(b"\0" in arg for arg in argv):
            raise ItemFailed("a NUL byte in an argument from the item's data", permanent=True)
        return argv

    async def _run_in(
        self, folder: ItemFolder, argv: tuple[bytes, ...], item: WorkItem
    ) -> tuple[int, Tail, Tail]:
        own_env = (
            b"WORK_ITEM_NAME=" + os.fsencode(item.name),
            b"WORK_ITEM_ATTEMPT=%d" % item.attempt,
        )
        stdout, stderr = Tail(self.options.max_output), Tail(self.options.max_output)
        try:
            code = await self._spawn_and_wait(argv, folder.env, own_env, stdout, stderr)
        except OSError as exc:  # the program vanished since the config was checked
            program = os.fsdecode(argv[0])
            raise ItemFailed(f"cannot start {program!r}: {exc.strerror or exc}") from None
        return code, stdout, stderr

    async def _spawn_and_wait(self, argv: tuple[bytes, ...], env: tuple[bytes, ...],
                              own_env: tuple[bytes, ...], stdout: Tail, stderr: Tail) -> int:  # fmt: skip
        watcher = self._watcher
        assert watcher is not None  # run() made it, for this loop
        spawn = self._spawner or self._new_spawner()
        pipes = self._take_pipes(watcher)
        pipes.tails = {pipes.out_r: stdout, pipes.err_r: stderr}
        reusable = False
        try:
            # In its own process group, which we signal as one.
            launch = Launch(argv, env, own_env, pipes.out_w, pipes.err_w)
            if self._running >= _CPUS and self._threads is not None:
                # Our children may be keeping every CPU busy: let a thread,
                # not the event loop, wait for this child to get one (_spawn.py).
                with anyio.CancelScope(shield=True):
                    pid = await self._threads.spawn(launch)
            else:
                pid = spawn.spawn(launch)
            child = _Child(watcher, os.pidfd_open(pid))
            self._running += 1
            try:
                try:
                    await child.exited
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await self._terminate(spawn, pid, child.pidfd)
                    raise
                # Exited, but not yet reaped, so its pid (the group's id)
                # cannot be reused: kill what it left in its group.
                _killpg(pid, signal.SIGKILL)
                # All it wrote is in the pipes by now, and every folder event
                # it caused is waiting: one system call asks about them all.
                for fd in pipes.waiting():
                    if fd == pipes.folders:
                        self.folders.drain()
                    else:
                        pipes.read(fd, _AT_EXIT_READS)
                reusable = True
                return spawn.reap(pid)
            finally:
                child.close()
                self._running -= 1
        finally:
            pipes.tails = None
            if reusable and not pipes.closed:
                self._free_pipes.append(pipes)
            else:  # a killed child's group may still be writing
                pipes.close()

    def _take_pipes(self, watcher: _Watcher) -> _Pipes:
        while self._free_pipes:
            pipes = self._free_pipes.pop()
            if not pipes.closed and pipes.watcher is watcher:
                return pipes
            pipes.close()
        return _Pipes(watcher, self.folders.fileno())

    def _new_spawner(self) -> Spawner:
        devnull = self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        cwd = os.fsencode(self.cwd)
        self._spawner = spawner(cwd, self._path, devnull)
        if isinstance(self._spawner, PosixSpawn):  # its reap is a plain waitpid
            threads = max(2, _CPUS)
            self._threads = SpawnThreads(lambda: PosixSpawn(cwd, self._path, devnull), threads)
        return self._spawner

    def _watcher_here(self) -> _Watcher:
        loop = asyncio.get_running_loop()
        if self._watcher is None or self._watcher.loop is not loop:
            self._watcher = _Watcher(loop)
            if self.folders.fileno() >= 0:  # folder events are read as they come
                self._watcher.add(self.folders.fileno(), lambda fd, events: self.folders.drain())
                self.folders.drain()  # and those that came while no loop watched
        return self._watcher

    async def _terminate(self, spawn: Spawner, pid: int, pidfd: int) -> None:
        """SIGTERM to the group, SIGKILL after the grace, and reap the child."""
        _killpg(pid, signal.SIGTERM)
        with anyio.move_on_after(self.options.grace):
            await anyio.wait_readable(pidfd)
        _killpg(pid, signal.SIGKILL)
        await anyio.wait_readable(pidfd)
        spawn.reap(pid)
        log.warning("pool %s: stopped pid %d and its process group", self.pool, pid)

    async def aclose(self) -> None:
        for pipes in self._free_pipes:
            pipes.close()
        self._free_pipes.clear()
        self.folders.close()
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._threads is not None:
            self._threads.close()
            self._threads = None
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None
        if self._devnull is not None:
            os.close(self._devnull)
            self._devnull = None


_BOOK_VARIABLES = (
    "WORK_ITEM_FILE", "WORK_ITEM_NAME", "WORK_ITEM_ATTEMPT", "WORK_OUTPUT_DIR", "WORK_RESULT_FILE",
)  # fmt: skip


class _Watcher:
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


_AT_EXIT_READS = 16
"""Reads (of up to 64 KiB) at a child's exit for what its pipes still hold: a
pipe holds at most 1 MiB, so more can only come from a grandchild that
escaped the group, and closes the pipes (``_Pipes``)."""


class _Pipes:
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

    def __init__(self, watcher: _Watcher, folders: int) -> None:
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


class _Child:
    """A running child's exit, through its pidfd."""

    def __init__(self, watcher: _Watcher, pidfd: int) -> None:
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


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _read_result(path: str, stdout: Tail, stderr: Tail) -> Any:
    """The item's result; the output is joined only for a failure that reports it."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = f"cannot read WORK_RESULT_FILE: {exc.strerror}"
        raise ItemFailed(why, output=_combined(stdout, stderr)) from None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        why = f"WORK_RESULT_FILE is not valid JSON: {exc}"
        raise ItemFailed(why, output=_combined(stdout, stderr)) from None


def _combined(stdout: Tail, stderr: Tail) -> str:
    parts = []
    if stdout.size:
        parts.append("--- stdout ---\n" + stdout.text())
    if stderr.size:
        parts.append("--- stderr ---\n" + stderr.text())
    return "\n".join(parts)


def _reason(what: str, stderr: Tail) -> str:
    """The failure, with the last line the program wrote to stderr (what a user reads first)."""
    lines = [ln for ln in stderr.text().splitlines() if ln.strip()]
    return f"{what}: {lines[-1].strip()[:500]}" if lines else what


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
