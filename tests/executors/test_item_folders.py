"""Item folders are reused only while clean: whatever an executor does to its
folder, the next item sees its own data alone, in a private file.

Every test runs three ways: with inotify telling which folders changed (so
an untouched one is not even listed), without inotify, and out of inotify
watches (in both, every folder is listed).
"""

from __future__ import annotations

import errno
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from chute.config import dec_hook
from chute.context import PluginContext
from chute.executor import WorkItem
from chute.message import Message
from chute_plugins import _inotify
from chute_plugins.brokers.memory import MemoryBroker
from chute_plugins.executors.command import CommandExecutor, CommandOptions

PY = sys.executable

TRICKS = """
import json, os, shutil, sys
path = os.environ["WORK_ITEM_FILE"]
folder = os.path.dirname(path)
data = json.load(open(path))
trick = data.get("trick")
if trick == "report":
    st = os.stat(path)
    json.dump({"data": data, "mode": oct(st.st_mode & 0o777), "links": st.st_nlink,
               "file": path, "extra": sorted(os.listdir(folder))},
              open(os.environ["WORK_RESULT_FILE"], "w"))
elif trick == "chmod":
    os.chmod(path, 0o644)
elif trick == "hardlink":
    os.link(path, sys.argv[1] + "/kept")
elif trick == "append":
    open(path, "a").write("garbage that is not json" * 100)
elif trick == "truncate":
    open(path, "w").close()
elif trick == "stray-file":
    open(os.path.join(folder, "stray"), "w").write("left behind")
elif trick == "stray-output":
    os.mkdir(os.path.join(os.environ["WORK_OUTPUT_DIR"], "made"))
elif trick == "delete":
    os.unlink(path)
elif trick == "symlink":
    os.unlink(path)
    os.symlink(sys.argv[1] + "/outside.txt", path)
elif trick == "no-output-dir":
    os.rmdir(os.environ["WORK_OUTPUT_DIR"])
elif trick == "remove-folder":
    shutil.rmtree(folder)
elif trick == "late-symlink":  # a straggler outside the group, after the item ended
    import subprocess
    subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time; time.sleep(0.3); os.rename(sys.argv[1], sys.argv[1] + '.old');"
         "os.symlink(sys.argv[2], sys.argv[1])", path, sys.argv[1] + "/outside.txt"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
elif trick == "fail-after-stray":
    open(os.path.join(folder, "stray"), "w").close()
    sys.exit(3)
"""


def _no_watches_left(self: _inotify.Inotify, path: bytes, mask: int) -> int:
    raise OSError(errno.ENOSPC, "inotify watch limit reached", path)


@pytest.fixture(params=["inotify", "listing", "out-of-watches"])
def ex(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> CommandExecutor:
    if request.param == "listing":
        monkeypatch.setattr(_inotify, "available", lambda: False)
    elif request.param == "out-of-watches":
        monkeypatch.setattr(_inotify.Inotify, "add_watch", _no_watches_left)
    elif not _inotify.available():
        pytest.skip("no inotify here")
    (tmp_path / "outside.txt").write_text("untouched")
    tricks = tmp_path / "tricks.py"
    tricks.write_text(textwrap.dedent(TRICKS))
    ctx = PluginContext(
        name="work", topic="in", base_dir=tmp_path, workdir=tmp_path / "work",
        node="test", broker=MemoryBroker(),
    )  # fmt: skip
    options = msgspec.convert({"argv": [PY, str(tricks), str(tmp_path)]}, CommandOptions,
                              dec_hook=dec_hook)  # fmt: skip
    return CommandExecutor(options, ctx)


def item(data: Any, name: str = "item") -> WorkItem:
    message = Message(id="1-0", key=name, data=data, attempt=1)
    return WorkItem(name=name, data=data, attempt=1, message=message, pool="work")


async def report(ex: CommandExecutor, n: int) -> dict[str, Any]:
    result = await ex.run(item({"trick": "report", "n": n, "pad": "x" * (n % 7)}))
    assert isinstance(result, dict)
    assert result["data"] == {"trick": "report", "n": n, "pad": "x" * (n % 7)}
    assert (result["mode"], result["links"]) == ("0o600", 1)
    assert result["extra"] == ["item.json", "output"]  # never a stray, nor the last result
    return result


@pytest.mark.parametrize(
    "trick",
    ["chmod", "hardlink", "append", "truncate", "stray-file", "stray-output", "delete",
     "symlink", "no-output-dir", "remove-folder", "fail-after-stray"],
)  # fmt: skip
async def test_the_next_item_sees_only_its_own_data(
    ex: CommandExecutor, tmp_path: Path, trick: str
) -> None:
    await report(ex, 1)
    failed = False
    try:
        await ex.run(item({"trick": trick, "long": "y" * 3000}))
    except Exception:
        failed = True
    assert failed == (trick == "fail-after-stray")  # that one trick fails, and only it
    await report(ex, 2)
    await report(ex, 3)
    await ex.aclose()
    assert (tmp_path / "outside.txt").read_text() == "untouched"
    if trick == "stray-output":
        [kept] = (tmp_path / "work" / "outputs").glob("*/item-*/made")
        assert kept.is_dir()
    if trick == "hardlink":
        assert msgspec.json.decode((tmp_path / "kept").read_bytes())["trick"] == "hardlink"


async def test_a_straggler_replacing_the_item_file_later_is_noticed(
    ex: CommandExecutor, tmp_path: Path
) -> None:
    await report(ex, 1)
    await ex.run(item({"trick": "late-symlink"}))
    await anyio.sleep(1.0)  # the straggler has struck by now
    # Listing only after each item, its renamed file may still be around; its data is not.
    result = await ex.run(item({"trick": "report", "n": 2}))
    await ex.aclose()
    assert result["data"] == {"trick": "report", "n": 2}
    assert (result["mode"], result["links"]) == ("0o600", 1)
    assert (tmp_path / "outside.txt").read_text() == "untouched"


async def test_a_folder_left_alone_serves_the_next_item(ex: CommandExecutor) -> None:
    first = await report(ex, 1)
    await ex.run(item({"trick": "nothing"}))
    again = await report(ex, 2)
    await ex.run(item({"trick": "stray-file"}))
    fresh = await report(ex, 3)
    await ex.aclose()
    assert again["file"] == first["file"]
    assert fresh["file"] != first["file"]
    assert not Path(first["file"]).parent.exists()  # the folder with the stray is gone


async def test_data_of_any_size_replaces_the_last_items_whole(ex: CommandExecutor) -> None:
    for n in [5000, 1, 70000, 3, 12, 2]:
        await report(ex, n)
        await ex.run(item({"trick": "nothing", "blob": "z" * n}))
    await ex.aclose()
