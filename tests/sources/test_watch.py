"""The watch source on real files: inotify on Linux, and watchfiles polling with a settle check.

Every "never emitted" assertion is made after a later file (a sentinel) was
emitted: events are handled in order, so by then the earlier file was seen.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from chute.config import dec_hook
from chute.store import ItemStatus
from chute_plugins import _inotify
from chute_plugins.sources.watch import WatchOptions, WatchSource

from .conftest import Collector, build, make_context, running

MODES = {
    "inotify": {"polling": False},
    "polling": {"polling": True, "poll_interval": "50ms", "settle": "200ms"},
    # What non-Linux systems run; forced here so Linux CI covers it too.
    "watchfiles": {"polling": False, "settle": "200ms", "_mode": "watchfiles"},
}


@pytest.fixture(params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> dict[str, Any]:
    return MODES[request.param]


def source(tmp: Path, _mode: str = "", **options: Any) -> WatchSource:
    opts: dict[str, Any] = {"path": "inbox", "rescan": 0, **options}
    src: WatchSource = build(WatchSource, opts, make_context(tmp))
    if _mode:
        src.mode = _mode  # type: ignore[assignment]
    return src


def drop(path: Path | bytes, content: bytes = b"payload") -> None:
    with open(path, "wb") as f:
        f.write(content)


def content(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def same_file(a: str | bytes, b: str | bytes) -> bool:
    return os.path.samefile(a, b)


async def sentinel(got: Collector, inbox: Path, name: str = "zz-sentinel.txt") -> None:
    drop(inbox / name, name.encode())
    await got.wait_name(name)


def names(got: Collector) -> list[str]:
    return [m.data["name"] for m in got.messages]


def test_inotify_is_what_linux_uses() -> None:
    assert _inotify.available()


async def test_closed_file_becomes_one_item_with_its_identity(tmp_path: Path, mode: dict) -> None:
    inbox = tmp_path / "inbox"
    async with running(source(tmp_path, **mode)) as got:
        await sentinel(got, inbox, "ready.txt")
        drop(inbox / "video.mp4", b"0123456789")
        msg = await got.wait_name("video.mp4")
        await sentinel(got, inbox)
    st = os.stat(inbox / "video.mp4")
    assert msg.key == f"video.mp4@10@{st.st_mtime_ns}"
    assert msg.data == {
        "path": str(inbox / "video.mp4"),
        "relpath": "video.mp4",
        "name": "video.mp4",
        "size": 10,
        "mtime": st.st_mtime_ns / 1e9,
    }
    assert names(got).count("video.mp4") == 1


NASTY = [
    "with space.txt",
    'it\'s "quoted".txt',
    "semi;colon.txt",
    "$(touch CANARY).txt",
    "`touch CANARY`.txt",
    "new\nline.txt",
    "-dash-first.txt",
    "ünïcödé 名前.txt",
]


async def test_hostile_names_are_items_and_no_shell_runs_them(
    tmp_path: Path, mode: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    inbox = tmp_path / "inbox"
    raw_name = b"latin1-caf\xe9.txt"
    async with running(source(tmp_path, **mode)) as got:
        await sentinel(got, inbox, "ready.txt")
        for i, name in enumerate(NASTY):
            drop(inbox / name, f"content {i}".encode())
        drop(os.fsencode(inbox) + b"/" + raw_name, b"latin-1 content")
        for name in NASTY:
            await got.wait_name(name)
        odd = await got.wait_name("latin1-caf\\xe9.txt")
    for i, name in enumerate(NASTY):
        (msg,) = got.by_name(name)
        assert msg.key.startswith(f"{name}@")
        assert content(msg.data["path"]) == f"content {i}".encode()
    # JSON cannot carry the byte 0xE9: the item's path is a UTF-8 link to the very file.
    msgspec.json.encode(odd)
    assert content(odd.data["path"]) == b"latin-1 content"
    assert same_file(odd.data["path"], os.fsencode(inbox) + b"/" + raw_name)
    assert not (tmp_path / "CANARY").exists() and not (inbox / "CANARY").exists()


async def test_zero_byte_file_waits_until_it_has_content(tmp_path: Path, mode: dict) -> None:
    inbox = tmp_path / "inbox"
    src = source(tmp_path, **mode)
    async with running(src) as got:
        await sentinel(got, inbox, "ready.txt")
        (inbox / "empty.txt").touch()
        await sentinel(got, inbox)
        assert "empty.txt" not in names(got)
        assert src.stats.bad_input == 1
        drop(inbox / "empty.txt", b"now written")
        msg = await got.wait_name("empty.txt")
    assert msg.data["size"] == len(b"now written")


async def test_zero_byte_files_are_items_when_asked(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    async with running(source(tmp_path, skip_empty=False)) as got:
        await sentinel(got, inbox, "ready.txt")
        (inbox / "empty.txt").touch()
        msg = await got.wait_name("empty.txt")
    assert msg.data["size"] == 0


@pytest.mark.parametrize("recursive", [False, True])
async def test_a_directory_matching_the_glob_is_not_an_item(
    tmp_path: Path, mode: dict, recursive: bool
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "before.mp4").mkdir(parents=True)
    src = source(tmp_path, glob="*.mp4", recursive=recursive, **mode)
    async with running(src) as got:
        await sentinel(got, inbox, "ready.mp4")
        (inbox / "during.mp4").mkdir()
        await sentinel(got, inbox, "zz-sentinel.mp4")
        drop(inbox / "during.mp4" / "inner.mp4")
        if recursive:
            inner = await got.wait_name("inner.mp4")
            assert inner.data["relpath"] == "during.mp4/inner.mp4"
        await sentinel(got, inbox, "zzz-sentinel.mp4")
    assert not {"before.mp4", "during.mp4"} & set(names(got))
    assert ("inner.mp4" in names(got)) == recursive
    assert src.stats.bad_input >= 1


async def test_symlink_loops_neither_hang_nor_crash(tmp_path: Path, mode: dict) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    os.symlink("self.txt", inbox / "self.txt")
    os.symlink("b.txt", inbox / "a.txt")
    os.symlink("a.txt", inbox / "b.txt")
    os.symlink("..", inbox / "sub" / "up")
    os.symlink("/nonexistent/target", inbox / "dangling.txt")
    drop(inbox / "sub" / "inside.dat", b"linked content")
    os.symlink(inbox / "sub" / "inside.dat", inbox / "link.txt")
    src = source(tmp_path, recursive=True, follow_symlinks=True, **mode)
    async with running(src) as got:
        await sentinel(got, inbox, "ready.txt")
        os.symlink("loop2.txt", inbox / "loop2.txt")
        await sentinel(got, inbox)
        linked = await got.wait_name("link.txt")
    assert content(linked.data["path"]) == b"linked content"
    assert not {"self.txt", "a.txt", "b.txt", "dangling.txt", "loop2.txt"} & set(names(got))
    assert not any("up/" in m.data["relpath"] for m in got.messages)
    assert src.stats.bad_input >= 4


def _secret(tmp_path: Path) -> Path:
    """A file only its owner may read, outside the watched folder."""
    secret = tmp_path / "private" / "secret.txt"
    secret.parent.mkdir()
    drop(secret, b"the secret")
    secret.chmod(0o600)
    return secret


async def test_symlinks_are_not_followed_by_default(tmp_path: Path, mode: dict) -> None:
    """A link dropped into a shared folder must not hand chute's files to its writer."""
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    secret = _secret(tmp_path)
    drop(inbox / "real.dat", b"inside")
    os.symlink(secret, inbox / "steal.txt")
    os.symlink(secret, inbox / "sub" / "steal-deeper.txt")
    os.symlink(inbox / "real.dat", inbox / "inner-link.txt")
    src = source(tmp_path, recursive=True, **mode)
    async with running(src) as got:
        await sentinel(got, inbox, "ready.txt")
        os.symlink(secret, inbox / "steal-later.txt")
        await sentinel(got, inbox)
    handed = {m.data["name"] for m in got.messages}
    assert not {"steal.txt", "steal-deeper.txt", "steal-later.txt", "inner-link.txt"} & handed
    assert not any(content(m.data["path"]) == b"the secret" for m in got.messages)
    assert src.stats.bad_input >= 4


async def test_followed_symlinks_must_stay_inside_the_folder(tmp_path: Path, mode: dict) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    secret = _secret(tmp_path)
    os.symlink(secret.parent, inbox / "linked-folder")  # never walked
    drop(inbox / "sub" / "real.dat", b"inside")
    os.symlink(secret, inbox / "steal.txt")
    os.symlink(secret, inbox / "sub" / "steal-deeper.txt")
    os.symlink("../../private/secret.txt", inbox / "sub" / "relative-escape.txt")
    os.symlink("real.dat", inbox / "sub" / "inner-link.txt")
    src = source(tmp_path, recursive=True, follow_symlinks=True, glob="*.txt", **mode)
    async with running(src) as got:
        await sentinel(got, inbox, "ready.txt")
        os.symlink(secret, inbox / "steal-later.txt")
        inner = await got.wait_name("inner-link.txt")
        await sentinel(got, inbox)
    handed = {m.data["name"] for m in got.messages}
    assert not {"steal.txt", "steal-deeper.txt", "relative-escape.txt", "steal-later.txt",
                "secret.txt"} & handed  # fmt: skip
    assert not any(content(m.data["path"]) == b"the secret" for m in got.messages)
    # The executor is given the file the link resolved to, not the link.
    assert inner.data["path"] == str(inbox / "sub" / "real.dat")
    assert inner.data["relpath"] == "sub/inner-link.txt"
    assert src.stats.bad_input >= 4


def write_slowly(path: Path, chunks: int = 40, pause: float = 0.05) -> int:
    with open(path, "wb") as f:
        for i in range(chunks):
            f.write(bytes([65 + i % 26]) * 1000)
            f.flush()
            time.sleep(pause)
    return chunks * 1000


@pytest.mark.slow
async def test_slow_writer_is_emitted_once_and_only_complete(tmp_path: Path, mode: dict) -> None:
    inbox = tmp_path / "inbox"
    async with running(source(tmp_path, **mode)) as got:
        await sentinel(got, inbox, "ready.txt")
        size = await anyio.to_thread.run_sync(write_slowly, inbox / "slow.bin")
        msg = await got.wait_name("slow.bin")
        await sentinel(got, inbox)
    assert [m.data["size"] for m in got.by_name("slow.bin")] == [size]
    assert msg.data["size"] == size


async def test_editor_and_download_temp_files_are_never_items(tmp_path: Path, mode: dict) -> None:
    inbox = tmp_path / "inbox"
    temp_names = [".report.txt.swp", "report.txt~", "#report.txt#", "x.tmp", "movie.mp4.part"]
    temp_names += [".hidden", ".rsync.tmpXYZ"]
    async with running(source(tmp_path, **mode)) as got:
        await sentinel(got, inbox, "ready.txt")
        for name in temp_names:
            drop(inbox / name)
        (inbox / ".cache").mkdir()
        drop(inbox / ".cache" / "inside.txt")
        # The download finishes: renamed into place, it is an item at once.
        os.rename(inbox / "movie.mp4.part", inbox / "movie.mp4")
        moved = await got.wait_name("movie.mp4")
        await sentinel(got, inbox)
    assert moved.data["size"] == len(b"payload")
    assert set(names(got)) == {"ready.txt", "movie.mp4", "zz-sentinel.txt"}


async def test_rename_into_place_is_picked_up_without_a_rescan(tmp_path: Path, mode: dict) -> None:
    inbox, staging = tmp_path / "inbox", tmp_path / "staging"
    staging.mkdir()
    async with running(source(tmp_path, rescan=0, **mode)) as got:
        await sentinel(got, inbox, "ready.txt")
        drop(staging / "report.csv", b"a,b\n1,2\n")
        os.rename(staging / "report.csv", inbox / "report.csv")
        msg = await got.wait_name("report.csv")
    assert msg.data["size"] == 8


async def test_a_replaced_file_is_new_work(tmp_path: Path, mode: dict) -> None:
    inbox = tmp_path / "inbox"
    async with running(source(tmp_path, **mode)) as got:
        await sentinel(got, inbox, "ready.txt")
        drop(inbox / "a.txt", b"one")
        await got.wait_name("a.txt")
        drop(tmp_path / "a.new", b"second version")
        os.rename(tmp_path / "a.new", inbox / "a.txt")
        await got.wait_for(lambda: len(got.by_name("a.txt")) == 2)
        await sentinel(got, inbox)
    first, second = got.by_name("a.txt")
    assert first.key != second.key
    assert (first.data["size"], second.data["size"]) == (3, 14)


async def test_files_that_arrived_while_not_watching_are_found_at_start(
    tmp_path: Path, mode: dict
) -> None:
    inbox = tmp_path / "inbox"
    async with running(source(tmp_path, **mode)) as got:
        await sentinel(got, inbox, "first-run.txt")
    drop(inbox / "offline.txt", b"arrived while stopped")
    async with running(source(tmp_path, **mode)) as got:
        msg = await got.wait_name("offline.txt")
        # Finished work is the pool's to skip: the earlier file is offered again.
        await got.wait_name("first-run.txt")
    assert msg.data["size"] == len(b"arrived while stopped")


async def test_periodic_rescan_catches_what_no_event_announced(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    src = source(tmp_path, rescan="200ms")
    async with running(src) as got:
        await sentinel(got, inbox, "ready.txt")
        drop(inbox / "a.txt", b"one")
        first = await got.wait_name("a.txt")
        # A new mtime makes it new work, but inotify sends no close-write for it.
        os.utime(inbox / "a.txt", ns=(time.time_ns(), time.time_ns() - 10**9))
        await got.wait_for(lambda: len(got.by_name("a.txt")) == 2)
    assert got.by_name("a.txt")[1].key != first.key
    assert src.stats.rescans >= 1


async def test_inotify_overflow_triggers_a_full_rescan(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    src = source(tmp_path, rescan=0)
    async with running(src) as got:
        await sentinel(got, inbox, "ready.txt")
        # Simulate the kernel dropping events: take them off the queue before the
        # source sees them (no await in between), then deliver what the kernel
        # says after dropping: IN_Q_OVERFLOW.
        for i in range(5):
            drop(inbox / f"lost-{i}.txt")
        assert src._inotify is not None
        assert src._inotify.read()
        await src._handle([(-1, _inotify.IN_Q_OVERFLOW, b"")])
        await got.wait_for(lambda: sum(n.startswith("lost-") for n in names(got)) == 5)
    assert src.stats.overflows == 1


async def test_recursive_watch_follows_new_subfolders(tmp_path: Path, mode: dict) -> None:
    inbox, staging = tmp_path / "inbox", tmp_path / "staging"
    (staging / "pack").mkdir(parents=True)
    for i in range(3):
        drop(staging / "pack" / f"{i}.txt")
    async with running(source(tmp_path, recursive=True, **mode)) as got:
        await sentinel(got, inbox, "ready.txt")
        (inbox / "a" / "b").mkdir(parents=True)
        drop(inbox / "a" / "b" / "deep.txt")
        deep = await got.wait_name("deep.txt")
        # A folder moved in whole: its files were written before any watch existed.
        os.rename(staging / "pack", inbox / "pack")
        await got.wait_for(lambda: {"0.txt", "1.txt", "2.txt"} <= set(names(got)))
    assert deep.data["relpath"] == "a/b/deep.txt"
    assert {m.data["relpath"] for m in got.messages} >= {"pack/0.txt", "pack/1.txt", "pack/2.txt"}


async def test_not_recursive_ignores_subfolders(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    async with running(source(tmp_path)) as got:
        await sentinel(got, inbox, "ready.txt")
        (inbox / "sub").mkdir()
        drop(inbox / "sub" / "x.txt")
        await sentinel(got, inbox)
    assert "x.txt" not in names(got)


async def test_finished_files_are_moved_or_deleted(tmp_path: Path) -> None:
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    src = source(tmp_path, on_done="move", done_dir="done", on_dead="delete")
    async with running(src) as got:
        await sentinel(got, inbox, "ready.txt")
        drop(inbox / "good.txt", b"good")
        drop(inbox / "bad.txt", b"bad")
        drop(inbox / "kept.txt", b"v1")
        good, bad, kept = [await got.wait_name(n) for n in ("good.txt", "bad.txt", "kept.txt")]
        (done / "good.txt").parent.mkdir(parents=True, exist_ok=True)
        drop(done / "good.txt", b"an older good.txt")
        await src.item_finished(good.key, ItemStatus.DONE)
        await src.item_finished(bad.key, ItemStatus.DEAD)
        # Replaced after it was emitted: the finished version is gone, the new one is work.
        drop(inbox / "kept.txt", b"version 2")
        await src.item_finished(kept.key, ItemStatus.DONE)
        await src.item_finished("not-a-key-of-ours", ItemStatus.DONE)
        await src.item_finished("../../etc/passwd@10@10", ItemStatus.DEAD)
    assert not (inbox / "good.txt").exists() and not (inbox / "bad.txt").exists()
    assert (done / "good.txt.1").read_bytes() == b"good"
    assert (done / "good.txt").read_bytes() == b"an older good.txt"
    assert (inbox / "kept.txt").read_bytes() == b"version 2"


async def test_finishing_an_item_emitted_by_an_earlier_process(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    async with running(source(tmp_path)) as got:
        await sentinel(got, inbox, "old work.txt")
    (msg,) = got.by_name("old work.txt")
    later = source(tmp_path, on_done="delete")
    await later.item_finished(msg.key, ItemStatus.DONE)
    assert not (inbox / "old work.txt").exists()


async def test_done_dir_inside_a_recursive_watch_is_not_rewatched(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    src = source(tmp_path, recursive=True, on_done="move", done_dir="inbox/done")
    async with running(src) as got:
        await sentinel(got, inbox, "ready.txt")
        drop(inbox / "a.txt")
        msg = await got.wait_name("a.txt")
        await src.item_finished(msg.key, ItemStatus.DONE)
        await sentinel(got, inbox)
    assert (inbox / "done" / "a.txt").exists()
    assert names(got).count("a.txt") == 1


async def test_one_batch_per_burst(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(300):
        drop(inbox / f"{i:04}.txt")
    async with running(source(tmp_path, batch=100)) as got:
        await got.wait_for(lambda: len(got.messages) == 300)
    assert got.batches == 3
    assert len(set(got.keys())) == 300


def test_options_are_checked() -> None:
    def decode(**kw: Any) -> WatchOptions:
        return msgspec.convert({"path": "x", **kw}, WatchOptions, dec_hook=dec_hook)

    with pytest.raises(msgspec.ValidationError, match="done_dir"):
        decode(on_done="move")
    with pytest.raises(msgspec.ValidationError, match="on_dead"):
        decode(on_dead="shred")
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        decode(recursve=True)
    assert decode(rescan="2m", settle="250ms").rescan == 120.0


async def test_without_inotify_instances_it_polls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_instances() -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(_inotify, "Inotify", no_instances)
    inbox = tmp_path / "inbox"
    src = source(tmp_path, poll_interval="50ms", settle="100ms")
    async with running(src) as got:
        await sentinel(got, inbox, "ready.txt")
    assert src.stats.mode == "polling"


async def test_a_hostile_source_name_stays_inside_the_workdir(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    raw = os.fsencode(inbox) + b"/caf\xe9.txt"
    drop(raw, b"latin-1")
    src: WatchSource = build(
        WatchSource, {"path": "inbox", "rescan": 0}, make_context(tmp_path, "../../escape")
    )
    async with running(src) as got:
        msg = await got.wait_name("caf\\xe9.txt")
    assert Path(msg.data["path"]).parent.parent == tmp_path / ".chute" / "watch-aliases"
    assert not (tmp_path.parent / "escape").exists()
