"""What the watch source knows about files: which ones are items, and what becomes of them.

Everything here is synchronous and touches only the file system, so the
source can run it in a worker thread. Paths are bytes end to end: a name that
is not UTF-8 still names its file exactly.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import logging
import os
import shutil
import stat
import sys
from dataclasses import dataclass

log = logging.getLogger("chute.sources.watch")

DEFAULT_IGNORE = (".*", "*.tmp", "*.part", "*~", "#*#")
"""Hidden and dot files (rsync's ``.name.XXXXXX``, vim's ``.name.swp``), download and
editor temp files (``*.tmp``, ``*.part``, ``name~``, emacs' ``#name#``)."""


def display(raw: bytes) -> str:
    """A path as text: exact when it is UTF-8, with ``\\xNN`` for the bytes that are not."""
    return raw.decode("utf-8", "backslashreplace")


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class FileItem:
    """A complete-looking regular file that matches the glob: one unit of work."""

    path: bytes
    relpath: bytes
    size: int
    mtime_ns: int
    target: bytes = b""
    """What ``path`` resolves to, when it is a symbolic link: the file the work is on."""

    @property
    def real(self) -> bytes:
        """The file itself (``target`` for a link): what the executor is given, so
        a link changed after it was checked cannot point it elsewhere."""
        return self.target or self.path

    @property
    def key(self) -> str:
        """Identity: a file replaced by another of a different size or time is new work."""
        return f"{display(self.relpath)}@{self.size}@{self.mtime_ns}"

    @property
    def name(self) -> bytes:
        return self.relpath.rpartition(b"/")[2]


def parse_key(key: str) -> tuple[str, int, int] | None:
    """``relpath@size@mtime_ns`` back into its parts (None for a key of another shape)."""
    rest, sep1, mtime = key.rpartition("@")
    relpath, sep2, size = rest.rpartition("@")
    if not (sep1 and sep2 and relpath):
        return None
    try:
        return relpath, int(size), int(mtime)
    except ValueError:
        return None


class Matcher:
    """The glob and the ignore patterns, over names as text."""

    def __init__(self, glob: str, ignore: list[str], excluded_dirs: list[bytes]) -> None:
        self.glob = glob
        self.ignore = tuple(ignore)
        self.excluded_dirs = frozenset(d.rstrip(b"/") for d in excluded_dirs)

    def ignored(self, name: bytes) -> bool:
        text = os.fsdecode(name)
        return any(fnmatch.fnmatchcase(text, pattern) for pattern in self.ignore)

    def wanted(self, relpath: bytes) -> bool:
        """True when the file's path matches the glob and no part of it is ignored."""
        parts = relpath.split(b"/")
        if any(self.ignored(part) for part in parts):
            return False
        target = relpath if "/" in self.glob else parts[-1]
        return fnmatch.fnmatchcase(os.fsdecode(target), self.glob)

    def walk_into(self, path: bytes) -> bool:
        return path.rstrip(b"/") not in self.excluded_dirs and not self.ignored(
            path.rpartition(b"/")[2]
        )


class Verdict:
    """Why a matching path is not an item; logged once per path and reason."""

    NOT_A_FILE = "not a regular file (a directory or device whose name matches the glob)"
    EMPTY = "empty (zero bytes); it becomes an item when it is written and closed"
    LOOP = "a symbolic link loop"
    DANGLING = "a symbolic link to nothing"
    UNREADABLE = "cannot be read"
    LINK = "a symbolic link (follow_symlinks = true follows links to files inside the folder)"
    OUTSIDE = "a symbolic link to a file outside the watched folder"
    LINKED_FOLDER = "in a folder reached through a symbolic link"


@dataclass(frozen=True, slots=True)
class Rules:
    """What makes a path under ``root`` an item: fixed for a source's life, given once."""

    root: bytes
    matcher: Matcher
    skip_empty: bool
    follow_symlinks: bool = False

    def sort(self, paths: list[bytes]) -> tuple[list[FileItem], list[tuple[bytes, str]]]:
        """The items among ``paths``, and the bad input with its reason (others are not ours)."""
        items: list[FileItem] = []
        problems: list[tuple[bytes, str]] = []
        for path in paths:
            verdict = classify(self, path)
            if isinstance(verdict, FileItem):
                items.append(verdict)
            elif verdict is not None:
                problems.append((path, verdict))
        return items, problems


def classify(rules: Rules, path: bytes) -> FileItem | str | None:
    """The item at ``path``; or a reason it is bad input; or None when it is simply not ours.

    A symbolic link is not followed unless ``follow_symlinks``, and then only
    to a file under ``root`` (a real path): in a shared drop folder, a link
    would hand whoever can write there any file chute's user can read. Links
    to directories are never walked, so a link loop cannot trap a walk.
    """
    root = rules.root
    relpath = path[len(root) :].lstrip(b"/")
    if not relpath or not rules.matcher.wanted(relpath):
        return None
    try:
        st = os.lstat(path)
        if b"/" in relpath:  # a folder on the way may have become a link since it was listed
            parent = os.path.dirname(path)
            if os.path.realpath(parent) != parent:
                return Verdict.LINKED_FOLDER
        target = b""
        if stat.S_ISLNK(st.st_mode):
            if not rules.follow_symlinks:
                return Verdict.LINK
            target = os.path.realpath(path, strict=True)
            if not target.startswith(root.rstrip(b"/") + b"/"):
                return Verdict.OUTSIDE
            st = os.stat(target)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Verdict.LOOP
        if exc.errno == errno.ENOENT:
            return Verdict.DANGLING if os.path.islink(path) else None
        return f"{Verdict.UNREADABLE}: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return Verdict.NOT_A_FILE
    if st.st_size == 0 and rules.skip_empty:
        return Verdict.EMPTY
    return FileItem(path, relpath, st.st_size, st.st_mtime_ns, target)


@dataclass(slots=True)
class Listing:
    items: list[FileItem]
    problems: list[tuple[bytes, str]]
    subdirs: list[bytes]


def list_dir(rules: Rules, directory: bytes, recursive: bool) -> Listing:
    """One folder's items, bad entries and (when recursive) subfolders to walk next."""
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        return Listing([], [(directory, f"cannot list the folder: {exc.strerror}")], [])
    subdirs: list[bytes] = []
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir and recursive and rules.matcher.walk_into(entry.path):
            subdirs.append(entry.path)
    items, problems = rules.sort([entry.path for entry in entries])
    return Listing(items, problems, subdirs)


def still_same(item: FileItem) -> bool:
    try:
        st = os.stat(item.real)
    except OSError:
        return False
    return st.st_size == item.size and st.st_mtime_ns == item.mtime_ns


def dispose(item: FileItem, action: str, target_dir: bytes) -> None:
    """Keep, move (under ``target_dir``, keeping the relative path) or delete a finished file.

    Only the very file that was emitted is touched: a file replaced since then is
    new work and stays where it is.
    """
    if action == "keep":
        return
    if not still_same(item):
        log.info("%s changed or went away since it was emitted; left in place", display(item.path))
        return
    if action == "delete":
        os.unlink(item.path)
        return
    destination = os.path.join(target_dir, item.relpath)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    base, n = destination, 0
    while os.path.lexists(destination):
        n += 1
        destination = base + b".%d" % n
    try:
        os.rename(item.path, destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(os.fsdecode(item.path), os.fsdecode(destination))


def alias_name(item: FileItem) -> bytes:
    """A UTF-8 name standing for a file whose own name is not UTF-8 (JSON cannot carry it)."""
    digest = hashlib.sha256(item.path).hexdigest()[:20].encode()
    ext = os.path.splitext(item.name)[1]
    if not (is_utf8(ext) and ext[1:].isalnum() and len(ext) <= 16):
        ext = b""
    return digest + ext


def open_for_writing(root: bytes) -> set[bytes]:
    """Paths under ``root`` that a process we can see holds open for writing.

    Reads ``/proc/<pid>/fd`` and ``fdinfo`` once for the whole system, so a scan
    of any size pays for it once. Processes of other users are invisible unless
    we are root: the answer is a best effort, an extra guard on top of the
    kernel's close-write signal, never the only one.
    """
    if not sys.platform.startswith("linux"):
        return set()
    prefix = root.rstrip(b"/") + b"/"
    found: set[bytes] = set()
    try:
        pids = [p for p in os.listdir(b"/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = b"/proc/" + pid + b"/fd/"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd_dir + fd)
            except OSError:
                continue
            if not target.startswith(prefix):
                continue
            try:
                with open(b"/proc/" + pid + b"/fdinfo/" + fd, "rb") as info:
                    text = info.read()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith(b"flags:"):
                    flags = int(line.split()[1], 8)
                    if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                        found.add(target)
                    break
    return found
