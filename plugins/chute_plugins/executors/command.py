"""Run a subprocess per item: the book's executor interface (``WORK_ITEM_FILE``).

::

    executor = { type = "command", argv = ["ffmpeg", "-i", "{path}", "out/{name}.png"] }

Each argument is a template: ``{field}`` (or ``{a.b}`` for nested data) is
replaced by that field of the item's data, per argument, and the list goes to
``execve`` as it is: no shell ever sees item data, so a file called
``$(rm -rf ~).mp4`` is just a name. ``{{`` and ``}}`` are literal braces;
braces around what no field name holds (``{print $1}``) are a config error.

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
executor's own; the pipes serve child after child (``_child_io.Pipes``), and an item
folder the executor left alone serves the next item with its item file
rewritten in place (``_folders.py``): per item, the parent's cost is a few
system calls beyond the spawn's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import errno
import logging
import os
import re
import shutil
import signal
from typing import Any, ClassVar

import anyio
import anyio.to_thread
import msgspec
from chute.config import Duration, Size, Strict
from chute.context import PluginContext
from chute.errors import ConfigError, ExecutorUnavailable, ItemFailed
from chute.executor import WorkItem

from ._child_io import AT_EXIT_READS, Child, Pipes, Tail, Watcher
from ._folders import Folders, ItemFolder
from ._spawn import Launch, PosixSpawn, Spawner, SpawnThreads, spawner
from ._warden import Warden

log = logging.getLogger("chute.executors.command")

EX_DATAERR = 65
"""sysexits.h: the input data was incorrect; retrying cannot help."""

DEFAULT_PASS_ENV = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE",
    "LC_MESSAGES", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
]  # fmt: skip

_CPUS = len(os.sched_getaffinity(0))
"""CPUs this process may run on: with as many children running, a spawn goes to a thread."""

_ITEMS_OWN = frozenset({errno.E2BIG})
"""Errors of a spawn that the item's data causes (its arguments are too long)."""
_PROGRAMS_OWN = frozenset({errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR,
                           errno.ELOOP, errno.ENAMETOOLONG, errno.EISDIR, errno.EPERM})  # fmt: skip
"""Errors of a spawn that say the program is missing or not one: the item's own
failure when its data names the program, the runtime's (a deploy in progress)
when the config does."""
_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})
"""Errors that are the runtime's shortage wherever they happen."""

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_CODE = re.compile(r"[$\"'()\[\];=\\|&<>!*`,\n\t]")
"""Characters no item field's name holds, and code in braces does (awk, a shell snippet)."""


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
    max_result: Size = Size(16 * 1024 * 1024)
    """The largest ``WORK_RESULT_FILE`` taken as the item's result; a larger one fails the item."""


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
                if _CODE.search(path):
                    raise ValueError(f"{token} is not an item field: for braces in the argument "
                                     f"itself (awk, a shell snippet) write {{{token}}}")  # fmt: skip
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
        self._free_pipes: list[Pipes] = []
        self._watcher: Watcher | None = None
        self._warden = Warden(str(self.folders.scratch), self.folders.prefix)
        self._warden_pidfd = -1
        self._ready = False
        """Whether a dead runtime's executors in our folders are gone (``_take_over``)."""
        self._taking_over: anyio.Event | None = None

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
        if not self._ready:
            await self._take_over()
        argv = self._fixed_argv or self._render_argv(item.data)
        if "\0" in item.name:
            raise ItemFailed("a NUL byte in the item's name", permanent=True)
        self._watcher_here()  # before a folder is taken: its events are read by then
        try:
            folder = self.folders.take(msgspec.json.encode(item.data))
        except OSError as exc:  # the disk is full, or out of descriptors: not the item's fault
            where = self.folders.scratch
            raise ExecutorUnavailable(f"cannot write an item file in {where}: {exc}") from None
        try:
            code, stdout, stderr = await self._run_in(folder, argv, item)
            result = None
            if code == 0 and self.folders.changed(folder):  # else there is no result file
                limit = self.options.max_result
                result = _read_result(folder.result_file, limit, stdout, stderr)
        finally:
            self.folders.give_back(folder, item.name)
        trash = self.folders.take_trash()
        if trash:  # what a folder held can be any size: removed off the event loop
            await anyio.to_thread.run_sync(_remove_all, trash)
        if code == 0:
            return result
        output = _combined(stdout, stderr)
        if code == EX_DATAERR:
            raise ItemFailed(_reason("exit 65 (permanent)", stderr), permanent=True, output=output)
        if code < 0:
            raise ItemFailed(_reason(f"killed by {_signal_name(-code)}", stderr), output=output)
        raise ItemFailed(_reason(f"exit {code}", stderr), output=output)

    async def _take_over(self) -> None:
        """Before our first item: kill what a dead runtime left running in our
        folders, and start the warden that kills ours if we die (``_warden.py``)."""
        while not self._ready:
            if self._taking_over is not None:  # another worker is at it
                await self._taking_over.wait()
                continue
            self._taking_over = done = anyio.Event()
            try:
                # Shielded, and bounded: take_over waits at most this long.
                with anyio.CancelScope(shield=True):
                    wait = self.options.grace + 5.0
                    await anyio.to_thread.run_sync(self.folders.take_over, wait)
                self._watch_warden(self._warden.start())
                self._ready = True
            except OSError as exc:
                why = f"cannot prepare the item folders in {self.folders.scratch}: {exc}"
                raise ExecutorUnavailable(why) from None
            finally:
                self._taking_over = None
                done.set()

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
        except OSError as exc:
            why = f"cannot start {os.fsdecode(argv[0])!r}: {exc.strerror or exc}"
            items_own = _ITEMS_OWN | (_PROGRAMS_OWN if self.argv[0].fields else frozenset())
            if exc.errno in items_own:
                raise ItemFailed(why) from None
            # Out of processes or descriptors, or the config's program gone
            # since it was checked (a deploy in progress): no fault of the item's.
            raise ExecutorUnavailable(why) from None
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
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:  # out of descriptors: the child must not outlive the item
                await self._kill_and_reap(spawn, pid)
                raise
            child = Child(watcher, pidfd)
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
                        pipes.read(fd, AT_EXIT_READS)
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

    def _take_pipes(self, watcher: Watcher) -> Pipes:
        while self._free_pipes:
            pipes = self._free_pipes.pop()
            if not pipes.closed and pipes.watcher is watcher:
                return pipes
            pipes.close()
        return Pipes(watcher, self.folders.fileno())

    def _new_spawner(self) -> Spawner:
        devnull = self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        cwd = os.fsencode(self.cwd)
        self._spawner = spawner(cwd, self._path, devnull)
        if isinstance(self._spawner, PosixSpawn):  # its reap is a plain waitpid
            threads = max(2, _CPUS)
            self._threads = SpawnThreads(lambda: PosixSpawn(cwd, self._path, devnull), threads)
        return self._spawner

    def _watcher_here(self) -> Watcher:
        loop = asyncio.get_running_loop()
        if self._watcher is None or self._watcher.loop is not loop:
            self._watcher = Watcher(loop)
            if self._warden_pidfd >= 0:  # watched by the last loop's
                self._watcher.add(self._warden_pidfd, self._warden_died, once=True)
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

    async def _kill_and_reap(self, spawn: Spawner, pid: int) -> None:
        """Stop a child we cannot watch (no pidfd): SIGKILL its group, and reap it."""
        _killpg(pid, signal.SIGKILL)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(spawn.reap, pid)

    def _watch_warden(self, pidfd: int) -> None:
        watcher = self._watcher_here()
        self._warden_pidfd = pidfd
        watcher.add(pidfd, self._warden_died, once=True)

    def _warden_died(self, fd: int, events: int) -> None:
        """Someone killed the warden: start another, or make the next item try again."""
        assert self._watcher is not None
        del self._watcher.handlers[fd]  # added once: disarmed already
        os.close(fd)
        self._warden_pidfd = -1
        log.warning("pool %s: the executors' warden (pid %d) died; starting another",
                    self.pool, self._warden.pid)  # fmt: skip
        try:
            self._watch_warden(self._warden.start())
        except OSError as exc:
            log.error("pool %s: cannot start the executors' warden: %s", self.pool, exc)
            self._ready = False  # the next item tries again, or waits as a runtime fault

    async def aclose(self) -> None:
        for pipes in self._free_pipes:
            pipes.close()
        self._free_pipes.clear()
        self.folders.close()
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._warden_pidfd >= 0:
            os.close(self._warden_pidfd)
            self._warden_pidfd = -1
        if self._threads is not None:
            self._threads.close()
            self._threads = None
        if self._spawner is not None:
            self._spawner.close()
            self._spawner = None
        if self._devnull is not None:
            os.close(self._devnull)
            self._devnull = None
        self._warden.close()


_BOOK_VARIABLES = (
    "WORK_ITEM_FILE", "WORK_ITEM_NAME", "WORK_ITEM_ATTEMPT", "WORK_OUTPUT_DIR", "WORK_RESULT_FILE",
)  # fmt: skip


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _read_result(path: str, limit: int, stdout: Tail, stderr: Tail) -> Any:
    """The item's result; the output is joined only for a failure that reports it."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in _RESOURCES:
            raise ExecutorUnavailable(f"cannot read WORK_RESULT_FILE: {exc}") from None
        why = f"cannot read WORK_RESULT_FILE: {exc.strerror}"
        raise ItemFailed(why, output=_combined(stdout, stderr)) from None
    if len(raw) > limit:
        why = f"WORK_RESULT_FILE is larger than max_result ({limit} bytes)"
        raise ItemFailed(why, output=_combined(stdout, stderr))
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        why = f"WORK_RESULT_FILE is not valid JSON: {exc}"
        raise ItemFailed(why, output=_combined(stdout, stderr)) from None


def _remove_all(paths: list[str]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


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
