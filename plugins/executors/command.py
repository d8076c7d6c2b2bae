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

It runs in its own session (so its own process group). When the item is
cancelled (the pool's timeout, or a shutdown past its grace), the group gets
SIGTERM, then SIGKILL after ``grace``, and the child is always reaped. When
the child exits, whatever it left running in its group is killed: a one-shot
executor owns nothing after its exit. stdout and stderr are read as they
come and only their last ``max_output`` bytes are kept, so a chatty child
costs no memory; that tail goes into the failure and the dead letter.

Files the executor writes into ``WORK_OUTPUT_DIR`` are kept under
``WORKDIR/outputs/<pool>/`` (one folder per item); an empty output folder is
removed.

Spawn path: ``subprocess.Popen`` (vfork + exec) called on the event loop
thread, and the exit awaited through a pidfd, with no child watcher or
thread in between (measured in ``bench/spawn.py`` beside bare loops). Every
child's pidfd and pipes share one epoll of the executor's own, and item
folders are reused with their item file rewritten in place: per item, the
parent's cost is a few system calls beyond Popen's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import anyio
import msgspec

from runtime.config import Duration, Size, Strict
from runtime.context import PluginContext
from runtime.errors import ConfigError, ItemFailed
from runtime.executor import WorkItem

log = logging.getLogger("chute.executors.command")

EX_DATAERR = 65
"""sysexits.h: the input data was incorrect; retrying cannot help."""

DEFAULT_PASS_ENV = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE",
    "LC_MESSAGES", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
]  # fmt: skip

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


def _safe_name(key: str) -> str:
    """A folder name for an item key: readable, unique, never a path or a dot name."""
    raw = key.encode("utf-8", "surrogateescape")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[-60:].lstrip(".") or "item"
    return f"{readable}-{hashlib.sha256(raw).hexdigest()[:12]}"


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
        if problems:
            raise ConfigError(problems)
        self.cwd = ctx.resolve(options.cwd or ".")
        if options.cwd and not self.cwd.is_dir():
            raise ConfigError([f"cwd: {self.cwd} is not a folder"])
        env = self._base_env(options)
        if not self.argv[0].fields:
            self._check_program(options.argv[0], env.get("PATH", os.defpath))
        self.options = options
        self.pool = ctx.name
        self.scratch = ctx.workdir / "run" / _safe_name(ctx.name)
        self.outputs = ctx.workdir / "outputs" / _safe_name(ctx.name)
        # Encoded once: Popen would encode every variable of every item.
        self._env = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
        self._free: list[_Folder] = []
        self._devnull: int | None = None
        self._watcher: _Watcher | None = None

    def _check_program(self, program: str, path: str) -> None:
        """Look the program up as exec will: on the child's PATH, or relative to ``cwd``."""
        if "/" in program:
            if not os.access(self.cwd / program, os.X_OK):
                raise ConfigError([f"argv[0]: program {program!r} not found in {self.cwd}"])
        elif shutil.which(program, path=path) is None:
            raise ConfigError([f"argv[0]: program {program!r} not found on PATH"])

    @staticmethod
    def _base_env(options: CommandOptions) -> dict[str, str]:
        env: dict[str, str] = {}
        for name in options.pass_env:
            if name.endswith("*"):
                env.update({k: v for k, v in os.environ.items() if k.startswith(name[:-1])})
            elif name in os.environ:
                env[name] = os.environ[name]
        env.update(options.env)
        return env

    # -- one item ----------------------------------------------------------

    async def run(self, item: WorkItem) -> Any:
        argv = [t.render(item.data) for t in self.argv]
        folder = self._take_folder()
        left: set[str] | None = None
        try:
            code, stdout, stderr = await self._run_in(folder, argv, item)
            left = _listdir(folder.path)
            if code == 0:
                if left is None or "result.json" not in left:
                    return None
                return _read_result(folder.result_file, stdout, stderr)
        finally:
            self._give_back(folder, item.name, left)
        output = _combined(stdout, stderr)
        if code == EX_DATAERR:
            raise ItemFailed(_reason("exit 65 (permanent)", stderr), permanent=True, output=output)
        if code < 0:
            raise ItemFailed(_reason(f"killed by {_signal_name(-code)}", stderr), output=output)
        raise ItemFailed(_reason(f"exit {code}", stderr), output=output)

    async def _run_in(
        self, folder: _Folder, argv: list[str], item: WorkItem
    ) -> tuple[int, Tail, Tail]:
        _write_private(folder.item_file, msgspec.json.encode(item.data))
        env = {
            **self._env,
            **folder.env,
            b"WORK_ITEM_NAME": os.fsencode(item.name),
            b"WORK_ITEM_ATTEMPT": b"%d" % item.attempt,
        }
        stdout, stderr = Tail(self.options.max_output), Tail(self.options.max_output)
        try:
            code = await self._spawn_and_wait(argv, env, stdout, stderr)
        except OSError as exc:  # the program vanished since the config was checked
            raise ItemFailed(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        return code, stdout, stderr

    def _take_folder(self) -> _Folder:
        """A private 0700 folder holding an empty ``output/``.

        Folders are reused when an item leaves nothing behind: on ext4 a
        mkdir + rmdir pair costs about 100 us, as much as the rest of an item.
        """
        if self._free:
            return self._free.pop()
        self.scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = _Folder(tempfile.mkdtemp(prefix="item-", dir=self.scratch))
        os.mkdir(folder.output, 0o700)
        return folder

    def _give_back(self, folder: _Folder, name: str, left: set[str] | None) -> None:
        """Keep what the item wrote to its output folder; reuse the folder if it is clean.

        ``left`` is what the folder held after the item (None: not looked at).
        """
        try:
            self._keep_outputs(folder, name)
            if left is not None and "output" in left and left <= _OURS:
                if "result.json" in left:
                    os.unlink(folder.result_file)
                self._free.append(folder)  # item.json stays: the next item rewrites it
                return
        except OSError:
            pass
        shutil.rmtree(folder.path, ignore_errors=True)  # the executor left something odd behind

    def _keep_outputs(self, folder: _Folder, name: str) -> None:
        if not os.listdir(folder.output):
            return
        target = self.outputs / _safe_name(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(folder.output, target)
        os.mkdir(folder.output, 0o700)

    async def _spawn_and_wait(
        self, argv: list[str], env: dict[bytes, bytes], stdout: Tail, stderr: Tail
    ) -> int:
        watcher = self._watcher_here()
        if self._devnull is None:
            self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        # Our ends stay blocking: they are read only when epoll says they
        # are readable, so a read never waits (and saves two fcntl calls).
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(  # noqa: ASYNC220 - vfork+exec beats a hop to a thread
                argv,
                cwd=self.cwd,
                env=env,
                stdin=self._devnull,
                stdout=out_w,
                stderr=err_w,
                start_new_session=True,  # its own process group, which we signal as one
            )
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        child = _Child(watcher, os.pidfd_open(proc.pid), {out_r: stdout, err_r: stderr})
        try:
            try:
                await child.exited
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._terminate(proc, child.pidfd)
                raise
            # Exited, but not yet reaped, so its pid (the group's id) cannot
            # be reused: kill what it left in its group, which also closes
            # the pipes a stray grandchild held. One that escaped the group
            # gets a second to let go of them.
            _killpg(proc.pid, signal.SIGKILL)
            if not child.drained.done():
                with anyio.move_on_after(1.0):
                    await child.drained
            return proc.wait()
        finally:
            child.close()

    def _watcher_here(self) -> _Watcher:
        loop = asyncio.get_running_loop()
        if self._watcher is None or self._watcher.loop is not loop:
            self._watcher = _Watcher(loop)
        return self._watcher

    async def _terminate(self, proc: subprocess.Popen[bytes], pidfd: int) -> None:
        """SIGTERM to the group, SIGKILL after the grace, and reap the child."""
        _killpg(proc.pid, signal.SIGTERM)
        with anyio.move_on_after(self.options.grace):
            await anyio.wait_readable(pidfd)
        _killpg(proc.pid, signal.SIGKILL)
        await anyio.wait_readable(pidfd)
        proc.wait()
        log.warning("pool %s: stopped pid %d and its process group", self.pool, proc.pid)

    async def aclose(self) -> None:
        self._free.clear()
        shutil.rmtree(self.scratch, ignore_errors=True)
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._devnull is not None:
            os.close(self._devnull)
            self._devnull = None


_OURS = frozenset({"item.json", "result.json", "output"})
"""What an item's folder may hold after it and still be reused."""


class _Folder:
    """A private folder for one item at a time, with its paths built once."""

    __slots__ = ("env", "item_file", "output", "path", "result_file")

    def __init__(self, path: str) -> None:
        self.path = path
        self.item_file = os.path.join(path, "item.json")
        self.result_file = os.path.join(path, "result.json")
        self.output = os.path.join(path, "output")
        self.env = {
            b"WORK_ITEM_FILE": os.fsencode(self.item_file),
            b"WORK_OUTPUT_DIR": os.fsencode(self.output),
            b"WORK_RESULT_FILE": os.fsencode(self.result_file),
        }


def _write_private(path: str, data: bytes) -> None:
    """Write an item file, 0600, rewriting the one a reused folder holds in place.

    Rewriting skips an inode allocation and two directory updates (about
    half an item's file work on ext4).
    """
    fd, size = _open_private(path)
    try:
        _write_all(fd, data)
        if size > len(data):
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _open_private(path: str) -> tuple[int, int]:
    """The item file open for writing, and its size: ours if still our private
    regular file, else a fresh one in place of whatever a child left there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    except OSError:  # a symlink (ELOOP) or some other odd thing in its place
        os.unlink(path)
    else:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and stat.S_IMODE(st.st_mode) == 0o600:
            return fd, st.st_size
        os.close(fd)
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), 0


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    while written < len(data):  # only after a signal, or with the disk nearly full
        written += os.write(fd, data[written:])


def _listdir(path: str) -> set[str] | None:
    try:
        return set(os.listdir(path))
    except OSError:  # the executor removed its own folder
        return None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Watcher:
    """Readiness of every child's pidfd and pipes through one epoll of our own.

    The loop watches only this epoll; a child's descriptor joins it and
    leaves it with one system call each, a fraction of what the loop's own
    ``add_reader`` bookkeeping (a handle, a key, a selector lookup) costs.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        loop.add_reader(self.epoll.fileno(), self._ready)

    def add(self, fd: int, handler: Callable[[int], None]) -> None:
        self.handlers[fd] = handler
        self.epoll.register(fd, select.EPOLLIN)

    def remove(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.epoll.unregister(fd)

    def _ready(self) -> None:
        # Level-triggered: what does not fit in one poll is reported again.
        for fd, _ in self.epoll.poll(0, 64):
            handler = self.handlers.get(fd)
            if handler is not None:
                handler(fd)

    def close(self) -> None:
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()
        self.handlers.clear()


class _Child:
    """A running child's exit (its pidfd) and its stdout and stderr, read as data comes."""

    def __init__(self, watcher: _Watcher, pidfd: int, tails: dict[int, Tail]) -> None:
        self.watcher = watcher
        self.pidfd = pidfd
        self.tails = tails
        self.exited: asyncio.Future[None] = watcher.loop.create_future()
        self.drained: asyncio.Future[None] = watcher.loop.create_future()
        watcher.add(pidfd, self._exit)
        for fd in tails:
            watcher.add(fd, self._read)

    def _exit(self, fd: int) -> None:
        self.watcher.remove(fd)
        _resolve(self.exited)

    def _read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if chunk:
            self.tails[fd].write(chunk)
            return
        self._close_pipe(fd)
        if not self.tails:
            _resolve(self.drained)

    def _close_pipe(self, fd: int) -> None:
        self.watcher.remove(fd)
        os.close(fd)
        del self.tails[fd]

    def close(self) -> None:
        for fd in list(self.tails):
            self._close_pipe(fd)
        self.watcher.remove(self.pidfd)
        os.close(self.pidfd)
        for future in (self.exited, self.drained):
            if not future.done():
                future.cancel()


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
