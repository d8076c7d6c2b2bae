"""The ``watch`` source: files dropped into a folder become items once they are complete.

Completeness without latency. On Linux the kernel says when a file is done:
``IN_CLOSE_WRITE`` (a writer closed it) and ``IN_MOVED_TO`` (a finished file was
renamed into place), so an item is emitted within a millisecond of the close
and never before it. Elsewhere watchfiles reports changes; in ``polling`` mode
(network file systems, where inotify sees nothing) the source lists the folder
every ``poll_interval`` itself. watchfiles' own poller is not used: it compares
mtimes in whole seconds, so a file replaced within the second it was written
goes unseen, and it stops on a name that is not UTF-8. In both, a file is
emitted once its size and mtime (to the nanosecond) held still for ``settle``
and, on Linux, no process holds it open for writing.

Nothing is lost. Watches are set before each folder is listed, so a file is
either listed or announced. A full scan at start picks up what arrived while
nothing was watching, and a periodic rescan (and one at once after an inotify
queue overflow) catches what the kernel dropped or never reported.

What the source does not do: skip finished work. The state store is keyed by
the pool, which the source does not know; the pool reading the topic claims
each item and skips the ones already done (DESIGN: "the manager, not the
source, remembers what is done"). So on start every complete file present is
emitted once, and finished ones cost the pool one store lookup each.

Symbolic links are skipped (logged once) unless ``follow_symlinks``, and then
only a link to a file inside the watched folder is an item, given to the
executor as the file it resolved to: a link in a shared drop folder must not
make chute read, move or hand over a file its writer could not read.

Identity: ``relpath@size@mtime_ns``, so a replaced file is new work. Within one
process a key is emitted once. Names that are not UTF-8 are items too; JSON
cannot carry their bytes, so ``data.path`` is then a UTF-8 symbolic link in the
runtime's folder pointing at the file, and ``relpath``/``name`` show the bad
bytes as ``\\xNN``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import time
from typing import Literal

import anyio
import anyio.to_thread
import msgspec
from chute.config import Duration, Strict
from chute.context import PluginContext
from chute.message import Message, new_message
from chute.source import Emit
from chute.store import ItemStatus

from .. import _inotify as ino
from ._files import (
    DEFAULT_IGNORE,
    FileItem,
    Matcher,
    Rules,
    alias_name,
    display,
    dispose,
    is_utf8,
    list_dir,
    open_for_writing,
    parse_key,
    still_same,
)

log = logging.getLogger("chute.sources.watch")

Disposal = Literal["keep", "move", "delete"]

_DIR_MASK = ino.IN_CLOSE_WRITE | ino.IN_MOVED_TO | ino.IN_CREATE | ino.IN_ONLYDIR
_DIR_MASK |= ino.IN_DONT_FOLLOW | ino.IN_EXCL_UNLINK


class WatchOptions(Strict):
    path: str
    """The folder to watch (relative to the config file); created when missing."""
    glob: str = "*"
    """Matched against the file name, or the relative path when it contains ``/``."""
    recursive: bool = False
    """Watch sub-folders too (matched by ``glob`` on the relative path)."""
    follow_symlinks: bool = False
    """Take a symbolic link dropped into the folder as the file it points to, if that
    file is inside the folder too. Off: links are skipped (logged once), so in a
    shared drop folder nobody can have chute's user read a file they cannot."""
    ignore: list[str] = []
    """More name patterns to ignore, on top of the defaults (``.*``, ``*.tmp``, ``*.part``,
    ``*~``, ``#*#``). A pattern matching a folder's name ignores the whole folder."""
    ignore_defaults: bool = True
    """Apply the default ignore patterns; ``false`` keeps only ``ignore``."""
    skip_empty: bool = True
    """Zero-byte files are not items (logged once): most are placeholders about to be
    written, and their close-write makes them items when they are."""
    on_done: Disposal = "keep"
    """What happens to a file whose item is done: ``keep``, ``move`` (to ``done_dir``) or ``delete``."""
    done_dir: str = ""
    """Folder for ``on_done = "move"`` (relative to the config file)."""
    on_dead: Disposal = "keep"
    """What happens to a file whose item is dead-lettered: ``keep``, ``move`` (to ``dead_dir``) or ``delete``."""
    dead_dir: str = ""
    """Folder for ``on_dead = "move"`` (relative to the config file)."""
    rescan: Duration = Duration(60.0)
    """Full rescan period (0 = only at start and after an inotify overflow)."""
    polling: bool = False
    """List the folder every ``poll_interval`` instead of waiting for events (network file
    systems); files then settle before emission."""
    poll_interval: Duration = Duration(1.0)
    """How often the folder is listed in ``polling`` mode."""
    settle: Duration = Duration(0.5)
    """Polling mode and non-Linux: how long size and mtime must hold still."""
    batch: int = 512
    """Most messages per publish."""

    def __post_init__(self) -> None:
        if self.on_done == "move" and not self.done_dir:
            raise ValueError("on_done = 'move' needs done_dir")
        if self.on_dead == "move" and not self.dead_dir:
            raise ValueError("on_dead = 'move' needs dead_dir")
        if self.batch < 1:
            raise ValueError("batch must be at least 1")


class WatchStats(msgspec.Struct, kw_only=True):
    mode: str = ""
    watches: int = 0
    emitted: int = 0
    bad_input: int = 0
    """Matching entries that are not items: empty, directories, link loops, unreadable."""
    overflows: int = 0
    rescans: int = 0
    settling: int = 0
    restarts: int = 0
    """Times the watchfiles watcher failed and was started again (fallback mode)."""


class WatchSource:
    Options = WatchOptions
    replays = True
    """Offers unfinished items again after a restart (the files stay in the folder until done)."""

    def __init__(self, options: WatchOptions, ctx: PluginContext) -> None:
        self.options = options
        self.ctx = ctx
        # Real paths: the root may be a link, and done_dir must compare equal to what we walk.
        self.root = os.fsencode(os.path.realpath(ctx.resolve(options.path)))
        self._dirs: dict[str, bytes] = {}
        for action, folder in (("done", options.done_dir), ("dead", options.dead_dir)):
            if folder:
                self._dirs[action] = os.fsencode(os.path.realpath(ctx.resolve(folder)))
        ignore = [*(DEFAULT_IGNORE if options.ignore_defaults else ()), *options.ignore]
        self.matcher = Matcher(options.glob, ignore, list(self._dirs.values()))
        self.rules = Rules(self.root, self.matcher, options.skip_empty, options.follow_symlinks)
        self.mode: Literal["inotify", "watchfiles", "polling"] = (
            "polling" if options.polling else "inotify" if ino.available() else "watchfiles"
        )
        self.stats = WatchStats(mode=self.mode)
        # The table name is the user's text: keep it to one harmless path component.
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", ctx.name)[:64] or "_"
        self._aliases = ctx.workdir / "watch-aliases" / safe
        self._emit: Emit | None = None
        self._emitted: dict[str, FileItem] = {}
        self._key_at: dict[bytes, str] = {}
        self._reported: dict[bytes, str] = {}
        self._inotify: ino.Inotify | None = None
        self._wds: dict[int, bytes] = {}
        self._rescan_now = anyio.Event()
        self._settling: dict[bytes, tuple[int, int, float]] = {}
        self._settle_wake = anyio.Event()
        self.ready = anyio.Event()
        """Set once the folder is watched and its first scan is done (tests, benchmarks)."""
        self._settle_round = anyio.Event()

    # -- the contract ------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        self._emit = emit
        await anyio.to_thread.run_sync(self._prepare_folders)
        self.stats.mode = self.mode
        if self.mode == "inotify":
            await self._run_inotify()
        elif self.mode == "polling":
            await self._run_polling()
        else:
            await self._run_watchfiles()

    async def item_finished(self, key: str, status: ItemStatus) -> None:
        if status == ItemStatus.DONE:
            action, folder = self.options.on_done, self._dirs.get("done", b"")
        elif status == ItemStatus.DEAD:
            action, folder = self.options.on_dead, self._dirs.get("dead", b"")
        else:
            return
        if action == "keep":
            return  # the common case costs nothing: no lookup, no thread
        item = self._emitted.get(key) or self._item_from_key(key)
        if item is None:
            log.warning("finished item %r is not a file this source knows; left alone", key)
            return
        try:
            await anyio.to_thread.run_sync(dispose, item, action, folder)
        except OSError as exc:
            log.error("could not %s %s: %s", action, display(item.path), exc.strerror or exc)
            return
        self._forget(item)

    async def caught_up(self) -> None:
        """Return once every complete file present at start was emitted (``--until-idle``)."""
        await self.ready.wait()
        while self._settling:
            await self._settle_round.wait()

    async def aclose(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    # -- emitting ----------------------------------------------------------------------

    def _prepare_folders(self) -> None:
        if not os.path.isdir(self.root):
            log.info("creating the watch folder %s", display(self.root))
            os.makedirs(self.root, exist_ok=True)
        # Aliases outlive a restart (a redelivered message may name one); drop dangling ones.
        with contextlib.suppress(OSError), os.scandir(self._aliases) as links:
            for link in links:
                if not os.path.exists(link.path):
                    os.unlink(link.path)

    async def _offer(self, items: list[FileItem]) -> None:
        """Emit the items not yet emitted by this process, in batches."""
        assert self._emit is not None
        fresh: list[Message] = []
        for item in items:
            key = item.key
            if key in self._emitted:
                continue
            previous = self._key_at.get(item.path)
            if previous is not None:
                # Replaced in place: the old key can no longer be finished by us.
                self._emitted.pop(previous, None)
            self._emitted[key] = item
            self._key_at[item.path] = key
            self._reported.pop(item.path, None)
            fresh.append(new_message(self._data(item), key=key))
        for start in range(0, len(fresh), self.options.batch):
            batch = fresh[start : start + self.options.batch]
            await self._emit(batch)
            self.stats.emitted += len(batch)

    @staticmethod
    def fields(options: WatchOptions) -> set[str]:
        """The fields of every item's data (``chute check`` compares a command's argv with them)."""
        return {"path", "relpath", "name", "size", "mtime"}

    def _data(self, item: FileItem) -> dict[str, object]:
        path = item.real
        if not is_utf8(path):
            path = self._alias(item)
        return {
            "path": path.decode("utf-8"),
            "relpath": display(item.relpath),
            "name": display(item.name),
            "size": item.size,
            "mtime": item.mtime_ns / 1e9,
        }

    def _alias(self, item: FileItem) -> bytes:
        self._aliases.mkdir(parents=True, exist_ok=True, mode=0o700)
        link = os.fsencode(self._aliases) + b"/" + alias_name(item)
        with contextlib.suppress(FileExistsError):
            os.symlink(item.real, link)
        return link

    def _forget(self, item: FileItem) -> None:
        key = self._key_at.pop(item.path, None)
        if key is not None:
            self._emitted.pop(key, None)
        if not is_utf8(item.path):
            with contextlib.suppress(OSError):
                os.unlink(os.fsencode(self._aliases) + b"/" + alias_name(item))

    def _item_from_key(self, key: str) -> FileItem | None:
        """A key emitted by an earlier process (only UTF-8 paths can be recovered from text)."""
        parts = parse_key(key)
        if parts is None:
            return None
        relpath, size, mtime_ns = parts
        raw = relpath.encode("utf-8", "surrogateescape")
        if b"\0" in raw or raw.startswith(b"/") or b".." in raw.split(b"/"):
            return None  # not a key this source made: never touch a file outside the folder
        return FileItem(self.root + b"/" + raw, raw, size, mtime_ns)

    def _report(self, problems: list[tuple[bytes, str]]) -> None:
        for path, reason in problems:
            if self._reported.get(path) == reason:
                continue
            self._reported[path] = reason
            self.stats.bad_input += 1
            log.warning("skipping %s: %s", display(path), reason)

    # -- scanning ----------------------------------------------------------------------

    async def _walk(self, top: bytes) -> list[FileItem]:
        """Every item under ``top``, watching each folder before listing it."""
        items: list[FileItem] = []
        queue = [top]
        recursive = self.options.recursive
        while queue:
            folder = queue.pop()
            if self._inotify is not None:
                try:
                    self._wds[self._inotify.add_watch(folder, _DIR_MASK)] = folder
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        log.error("inotify watch limit reached (fs.inotify.max_user_watches)")
                    self._report([(folder, f"cannot watch the folder: {exc.strerror}")])
            listing = await anyio.to_thread.run_sync(list_dir, self.rules, folder, recursive)
            self._report(listing.problems)
            items.extend(listing.items)
            queue.extend(listing.subdirs)
        self.stats.watches = len(self._wds)
        return items

    async def _scan_complete(self, top: bytes) -> list[FileItem]:
        """Items under ``top`` no process is writing: checked before and after listing,
        and re-stat'ed, so a file still being written is left to its close-write event."""
        busy = await anyio.to_thread.run_sync(open_for_writing, self.root)
        items = await self._walk(top)
        busy |= await anyio.to_thread.run_sync(open_for_writing, self.root)

        def settled() -> list[FileItem]:
            return [i for i in items if i.path not in busy and still_same(i)]

        return await anyio.to_thread.run_sync(settled)

    async def _rescan(self) -> None:
        self.stats.rescans += 1
        if self.mode == "inotify":
            items = await self._scan_complete(self.root)
            await self._offer(items)
        else:
            items = await self._walk(self.root)
            self._settle(items)
        present = {i.path for i in items}
        known = [p for p in self._key_at if p not in present]
        reported = [p for p in self._reported if p not in present]

        def gone(paths: list[bytes]) -> list[bytes]:
            return [p for p in paths if not os.path.lexists(p)]

        for path in await anyio.to_thread.run_sync(gone, reported):
            self._reported.pop(path, None)
        for path in await anyio.to_thread.run_sync(gone, known):
            key = self._key_at.pop(path, None)
            item = self._emitted.pop(key, None) if key is not None else None
            if item is not None:
                self._forget(item)

    async def _rescan_loop(self) -> None:
        while True:
            period = self.options.rescan or float("inf")
            with anyio.move_on_after(period):
                await self._rescan_now.wait()
            self._rescan_now = anyio.Event()
            await self._rescan()

    # -- inotify -----------------------------------------------------------------------

    async def _run_inotify(self) -> None:
        try:
            self._inotify = ino.Inotify()
        except OSError as exc:
            # EMFILE: fs.inotify.max_user_instances reached (other programs hold them all).
            log.error("cannot use inotify (%s); polling %s instead", exc, display(self.root))
            self.mode = self.stats.mode = "polling"
            await self._run_polling()
            return
        try:
            await self._offer(await self._scan_complete(self.root))
            self.ready.set()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._rescan_loop)
                while True:
                    await anyio.wait_readable(self._inotify.fd)
                    await self._handle(self._inotify.read())
        finally:
            await self.aclose()

    async def _handle(self, events: list[ino.Event]) -> None:
        candidates: list[bytes] = []
        created: list[bytes] = []
        new_dirs: list[bytes] = []
        for wd, mask, name in events:
            if mask & ino.IN_Q_OVERFLOW:
                self.stats.overflows += 1
                log.warning("inotify queue overflowed (fs.inotify.max_queued_events); rescanning")
                self._rescan_now.set()
                continue
            if mask & ino.IN_IGNORED:
                folder = self._wds.pop(wd, None)
                if folder == self.root:
                    log.error("the watch folder %s went away; rescans will retry", display(folder))
                continue
            folder = self._wds.get(wd)
            if folder is None or not name:
                continue
            path = folder + b"/" + name
            if mask & ino.IN_ISDIR:
                appeared = mask & (ino.IN_CREATE | ino.IN_MOVED_TO)
                if self.options.recursive and appeared and self.matcher.walk_into(path):
                    new_dirs.append(path)
            elif mask & (ino.IN_CLOSE_WRITE | ino.IN_MOVED_TO):
                candidates.append(path)
            elif mask & ino.IN_CREATE:
                created.append(path)
        items, problems = self.rules.sort(
            candidates + [p for p in created if _complete_on_create(p)]
        )
        self._report(problems)
        await self._offer(items)
        for folder in new_dirs:
            # Files written before the watch was set are listed; files still open wait for
            # their close-write, which the new watch now sees.
            await self._offer(await self._scan_complete(folder))

    # -- watchfiles and settling -------------------------------------------------------

    async def _run_watchfiles(self) -> None:
        import watchfiles

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_set_when_cancelled, stop)
            tg.start_soon(self._settle_loop)
            self._settle(await self._walk(self.root))
            tg.start_soon(self._rescan_loop)
            # watchfiles' watcher starts with the first awatch step; a file created between
            # this point and then is found by the next rescan, not by an event.
            self.ready.set()
            failures = 0
            while True:
                try:
                    async for changes in watchfiles.awatch(
                        os.fsdecode(self.root),
                        watch_filter=None,
                        debounce=0,
                        step=5,
                        stop_event=stop,
                        rust_timeout=1000,
                        recursive=self.options.recursive,
                        force_polling=False,
                        ignore_permission_denied=True,
                    ):
                        failures = 0
                        changed = [p for c, p in changes if c != watchfiles.Change.deleted]
                        await self._changed([os.fsencode(p) for p in changed])
                except Exception as exc:
                    # watchfiles' thread dies on a name that is not UTF-8, and on a folder
                    # that vanishes: a rescan (in bytes) finds the files, then watch again.
                    failures += 1
                    self.stats.restarts += 1
                    log.warning("the folder watcher stopped (%s); rescanning and restarting", exc)
                    await anyio.sleep(min(30.0, 0.05 * 2**failures))
                    await self._rescan()

    async def _run_polling(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._settle_loop)
            await self._rescan()
            self.ready.set()
            while True:
                await anyio.sleep(self.options.poll_interval)
                await self._rescan()

    async def _changed(self, paths: list[bytes]) -> None:
        def look() -> tuple[list[FileItem], list[bytes], list[tuple[bytes, str]]]:
            files, dirs = [], []
            for path in paths:
                with contextlib.suppress(OSError):
                    if stat.S_ISDIR(os.lstat(path).st_mode):
                        if self.options.recursive and self.matcher.walk_into(path):
                            dirs.append(path)
                        continue
                files.append(path)
            items, problems = self.rules.sort(files)
            return items, dirs, problems

        items, dirs, problems = await anyio.to_thread.run_sync(look)
        self._report(problems)
        self._settle(items)
        for folder in dirs:
            self._settle(await self._walk(folder))

    def _settle(self, items: list[FileItem]) -> None:
        """Start (or restart, when it changed) the settle clock of each file not yet emitted."""
        due = time.monotonic() + self.options.settle
        for item in items:
            if item.key in self._emitted:
                continue
            seen = self._settling.get(item.path)
            if seen is None or seen[:2] != (item.size, item.mtime_ns):
                self._settling[item.path] = (item.size, item.mtime_ns, due)
        self.stats.settling = len(self._settling)
        self._settle_wake.set()

    async def _settle_loop(self) -> None:
        """Emit each settling file once it held still for ``settle`` and nobody writes it."""
        while True:
            if not self._settling:
                await self._settle_wake.wait()
            else:
                first = min(due for _, _, due in self._settling.values())
                with anyio.move_on_after(first - time.monotonic()):
                    await self._settle_wake.wait()
            self._settle_wake = anyio.Event()
            now = time.monotonic()
            ready = {p: v for p, v in self._settling.items() if v[2] <= now}
            if not ready:
                continue
            for path in ready:
                del self._settling[path]
            done, moving, problems = await anyio.to_thread.run_sync(self._recheck, ready)
            self._report(problems)
            self._settle(moving)
            await self._offer(done)
            self._settle_round.set()
            self._settle_round = anyio.Event()

    def _recheck(
        self, ready: dict[bytes, tuple[int, int, float]]
    ) -> tuple[list[FileItem], list[FileItem], list[tuple[bytes, str]]]:
        """Split settling files into still (and not being written) and still moving."""
        busy = open_for_writing(self.root)
        done: list[FileItem] = []
        moving: list[FileItem] = []
        items, problems = self.rules.sort(list(ready))
        for item in items:
            still = ready[item.path][:2] == (item.size, item.mtime_ns)
            (done if still and item.path not in busy else moving).append(item)
        return done, moving, problems


async def _set_when_cancelled(event: anyio.Event) -> None:
    """watchfiles' thread checks ``event`` between steps: set it so cancellation is prompt."""
    try:
        await anyio.sleep_forever()
    finally:
        event.set()


def _complete_on_create(path: bytes) -> bool:
    """A symbolic link or a hard link is whole when it appears (and no close-write follows);
    a file created by ``open`` waits for its close-write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1)
