"""command: the book's executor API, run as real processes (no shell, ever)."""

from __future__ import annotations

import os
import resource
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from chute.config import config_from_dict
from chute.engine import Runtime
from chute.errors import ConfigError, ItemFailed
from chute.store import ItemStatus
from chute_plugins.executors import _spawn, command

from .helpers import executor, item

PY = sys.executable


@pytest.fixture(autouse=True, params=["posix_spawn", "posix_spawn in threads", "Popen"])
def spawn_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on glibc's posix_spawn, called on the event loop and from the
    spawn threads (as when the CPUs are busy), and on the Popen fallback alike."""
    if request.param == "Popen":
        monkeypatch.setattr(_spawn, "_LIBC", None)
    elif _spawn._LIBC is None:
        pytest.skip("this C library has no posix_spawn_file_actions_addclosefrom_np")
    elif request.param == "posix_spawn in threads":
        monkeypatch.setattr(command, "_CPUS", 0)
    return str(request.param)


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


async def test_the_book_file_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUTE_TEST_SECRET", "must not leak")
    probe = script(tmp_path, """
        import json, os, stat, sys
        item = os.environ["WORK_ITEM_FILE"]
        out = os.environ["WORK_OUTPUT_DIR"]
        open(os.path.join(out, "made.txt"), "w").write("output")
        report = {
            "data": json.load(open(item)),
            "mode": oct(stat.S_IMODE(os.stat(item).st_mode)),
            "folder_mode": oct(stat.S_IMODE(os.stat(os.path.dirname(item)).st_mode)),
            "name": os.environ["WORK_ITEM_NAME"],
            "attempt": os.environ["WORK_ITEM_ATTEMPT"],
            "secret": os.environ.get("CHUTE_TEST_SECRET"),
            "extra": os.environ.get("EXTRA"),
            "argv": sys.argv[1:],
            "own_group": os.getpgid(0) == os.getpid(),
        }
        json.dump(report, open(os.environ["WORK_RESULT_FILE"], "w"))
    """)  # fmt: skip
    ex = executor(tmp_path, argv=[PY, probe, "{path}", "n={meta.n}", "{{literal}}"],
                  env={"EXTRA": "x"})  # fmt: skip
    data = {"path": "a b;$(touch CANARY).mp4", "meta": {"n": 3}}
    result = await ex.run(item(data, name="video 1", attempt=2))
    assert result == {
        "data": data,
        "mode": "0o600",
        "folder_mode": "0o700",
        "name": "video 1",
        "attempt": "2",
        "secret": None,
        "extra": "x",
        "argv": ["a b;$(touch CANARY).mp4", "n=3", "{literal}"],
        "own_group": True,
    }
    [kept] = (tmp_path / "work" / "outputs").glob("*/*/made.txt")
    assert kept.read_text() == "output"
    assert not (tmp_path / "CANARY").exists()
    assert not list((tmp_path / "work" / "run").glob("*/item.json"))
    await ex.aclose()


def _ignored_here() -> int:
    """The signals this process ignores (SigIgn): what a child inherits unless reset."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))


def _autogroup() -> str:
    """This process's scheduling group, where the kernel groups tasks by session."""
    path = Path("/proc/self/autogroup")
    return path.read_text() if path.exists() else ""


async def test_the_child_starts_clean(tmp_path: Path) -> None:
    """Its own process group in our session and scheduling group, the working
    folder, stdin from /dev/null, nothing else inherited: no descriptor beyond
    0-2, no blocked or ignored signal."""
    probe = script(tmp_path, """
        import json, os
        json.dump({
            "group": os.getpgid(0) == os.getpid(),
            "session": os.getsid(0),
            "autogroup": open("/proc/self/autogroup").read() if os.path.exists("/proc/self/autogroup") else "",
            "cwd": os.getcwd(),
            "stdin": os.readlink("/proc/self/fd/0"),
            "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        }, open(os.environ["WORK_RESULT_FILE"], "w"))
    """)  # fmt: skip
    (tmp_path / "jobs").mkdir()
    ex = executor(tmp_path, argv=[PY, probe], cwd="jobs")
    # Python ignores SIGPIPE itself, so a program that does not reports the signals.
    status = executor(
        tmp_path, argv=["/bin/sh", "-c", 'cat /proc/self/status > "$WORK_OUTPUT_DIR/s"']
    )
    inherited = os.open(os.devnull, os.O_RDONLY)  # inheritable, and still not passed on
    os.set_inheritable(inherited, True)
    try:
        result = await ex.run(item({}))
        await status.run(item({}, name="status"))
    finally:
        os.close(inherited)
    await ex.aclose()
    # fd 3 is the probe's own listing of /proc/self/fd, open while it lists it
    assert result == {
        "group": True,
        "session": os.getsid(0),  # a session of its own would be a share of the CPUs of its own
        "autogroup": _autogroup(),
        "cwd": str(tmp_path / "jobs"),
        "stdin": "/dev/null",
        "fds": [0, 1, 2, 3],
    }
    [report] = (tmp_path / "work" / "outputs").glob("*/status-*/s")
    signals = dict(line.split(":\t") for line in report.read_text().splitlines())
    standard = (1 << 31) - 1  # 1-31; glibc's posix_spawn ignores its own 32 and 33
    # What chute's own parent ignored (nohup's SIGHUP) is passed on, as a shell
    # would; what Python ignored for itself is not.
    pythons = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
    inherited_ignored = _ignored_here() & ~pythons
    assert int(signals["SigBlk"], 16) == 0
    assert int(signals["SigIgn"], 16) & standard == inherited_ignored & standard


def test_stdout_and_stderr_may_be_any_descriptor() -> None:
    """Even one of 0-2 (when a daemon closed its own): the child's three stay apart."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    spawner = _spawn.spawner(b"/", "/usr/bin:/bin", devnull)
    read_end, write_end = os.pipe()
    try:
        pid = spawner.spawn(
            _spawn.Launch([b"sh", b"-c", b"echo out; echo err >&2"], (), (), 2, write_end)
        )
        os.close(write_end)
        assert spawner.reap(pid) == 0
        assert os.read(read_end, 100) == b"err\n"
    finally:
        os.close(read_end)
        os.close(devnull)
        spawner.close()


async def test_programs_are_looked_up_on_the_childs_path(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    tool = tools / "say-hello"
    tool.write_text('#!/bin/sh\necho hello from "$1" > "$WORK_OUTPUT_DIR/said"\n')
    tool.chmod(0o755)
    ex = executor(tmp_path, argv=["{program}", "{who}"], env={"PATH": f"{tools}:/usr/bin:/bin"})
    await ex.run(item({"program": "say-hello", "who": "a; b"}, name="one"))
    with pytest.raises(ItemFailed) as info:
        await ex.run(item({"program": "no-such-tool", "who": "x"}))
    await ex.aclose()
    [said] = (tmp_path / "work" / "outputs").glob("*/one-*/said")
    assert said.read_text() == "hello from a; b\n"
    assert info.value.reason.startswith("cannot start 'no-such-tool'")
    assert not info.value.permanent


async def test_a_nul_byte_in_an_argument_is_a_permanent_failure(tmp_path: Path) -> None:
    ex = executor(tmp_path, argv=["/bin/echo", "{name}"])
    with pytest.raises(ItemFailed) as info:
        await ex.run(item({"name": "cut\u0000here"}))
    assert info.value.permanent and "NUL" in info.value.reason


async def test_exit_codes_decide_retry_or_dead(tmp_path: Path) -> None:
    fails = script(tmp_path, """
        import sys
        print("something went wrong", file=sys.stderr)
        sys.exit(int(sys.argv[1]))
    """)  # fmt: skip
    ex = executor(tmp_path, argv=[PY, fails, "{code}"])
    with pytest.raises(ItemFailed) as retryable:
        await ex.run(item({"code": 3}))
    assert not retryable.value.permanent
    assert retryable.value.reason == "exit 3: something went wrong"
    assert "something went wrong" in retryable.value.output
    with pytest.raises(ItemFailed) as permanent:
        await ex.run(item({"code": 65}))
    assert permanent.value.permanent


async def test_a_signal_is_a_retryable_failure(tmp_path: Path) -> None:
    ex = executor(
        tmp_path, argv=[PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    )
    with pytest.raises(ItemFailed) as info:
        await ex.run(item({}))
    assert info.value.reason.startswith("killed by SIGSEGV") and not info.value.permanent


async def test_a_missing_field_is_a_permanent_failure(tmp_path: Path) -> None:
    ex = executor(tmp_path, argv=["/bin/true", "{path}"])
    with pytest.raises(ItemFailed) as info:
        await ex.run(item({"other": 1}))
    assert info.value.permanent and "'path'" in info.value.reason


async def test_an_executor_that_deletes_its_item_file(tmp_path: Path) -> None:
    rm = script(tmp_path, "import os; os.unlink(os.environ['WORK_ITEM_FILE'])\n")
    ex = executor(tmp_path, argv=[PY, rm])
    assert await ex.run(item({"n": 1})) is None
    assert await ex.run(item({"n": 2})) is None  # its folder is fine for the next item


async def test_a_reused_folder_gives_each_item_only_its_own_data(tmp_path: Path) -> None:
    """Folders are reused and their item file rewritten, never through what a child left."""
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    probe = script(tmp_path, f"""
        import json, os, stat
        path = os.environ["WORK_ITEM_FILE"]
        data = json.load(open(path))
        json.dump({{"data": data, "mode": oct(stat.S_IMODE(os.stat(path).st_mode))}},
                  open(os.environ["WORK_RESULT_FILE"], "w"))
        trick = data.get("trick")
        if trick == "chmod":
            os.chmod(path, 0o644)
        elif trick == "symlink":
            os.unlink(path)
            os.symlink({str(outside)!r}, path)
        elif trick == "hardlink":
            os.link(path, {str(tmp_path / "kept")!r})
    """)  # fmt: skip
    ex = executor(tmp_path, argv=[PY, probe])
    sequence = [
        {"long": "x" * 1000},
        {"n": 1},  # shorter than the last one: nothing of it may remain
        {"trick": "chmod"},
        {"n": 2},
        {"trick": "symlink"},
        {"n": 3},
        {"trick": "hardlink"},
        {"n": 4},
    ]
    for data in sequence:
        assert await ex.run(item(data)) == {"data": data, "mode": "0o600"}
    assert outside.read_text() == "untouched"
    assert msgspec.json.decode((tmp_path / "kept").read_bytes()) == {"trick": "hardlink"}
    await ex.aclose()


async def test_doubled_braces_are_literal_with_or_without_fields(tmp_path: Path) -> None:
    # A shell one-liner writing JSON: the braces must reach sh as single braces
    # whether or not another argument holds a {field}.
    write = 'printf \'{{"ok": %s}}\' "$1" > "$WORK_RESULT_FILE"'
    fixed = executor(tmp_path, argv=["sh", "-c", write, "sh", "1"])
    templated = executor(tmp_path, argv=["sh", "-c", write, "sh", "{n}"])
    assert await fixed.run(item({})) == {"ok": 1}
    assert await templated.run(item({"n": 2})) == {"ok": 2}
    await fixed.aclose()
    await templated.aclose()


async def test_a_bad_result_file_is_a_failure(tmp_path: Path) -> None:
    bad = script(tmp_path, "import os; open(os.environ['WORK_RESULT_FILE'], 'w').write('{nope')\n")
    with pytest.raises(ItemFailed, match="WORK_RESULT_FILE is not valid JSON"):
        await executor(tmp_path, argv=[PY, bad]).run(item({}))


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_timeout_kills_the_whole_group_even_a_grandchild_ignoring_sigterm(
    tmp_path: Path,
) -> None:
    pids = tmp_path / "pids"
    hang = script(tmp_path, f"""
        import os, signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(600)
    """)  # fmt: skip
    ex = executor(tmp_path, argv=[PY, hang], grace="500ms")
    started = time.monotonic()
    with pytest.raises(TimeoutError), anyio.fail_after(1.5):
        await ex.run(item({}))
    parent, grandchild = map(int, pids.read_text().split())
    assert time.monotonic() - started < 1.5 + 0.5 + 1.0  # timeout + grace + reaping
    assert not _alive(parent)
    with pytest.raises(ChildProcessError):
        os.waitpid(parent, os.WNOHANG)  # noqa: ASYNC222 - reaped already: no zombie left
    # SIGKILL was sent to the group; it lands within moments, well inside 5 s.
    with anyio.fail_after(5):
        while _alive(grandchild):  # noqa: ASYNC110 - not our child: only /proc tells
            await anyio.sleep(0.02)


async def test_a_cancel_while_the_child_is_being_started_still_stops_and_reaps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    for spawner in (_spawn.PosixSpawn, _spawn.PopenSpawn):

        def slow(self: Any, *args: Any, spawn: Any = spawner.spawn) -> int:
            time.sleep(0.3)  # the cancel arrives meanwhile
            started.append(spawn(self, *args))
            return started[-1]

        monkeypatch.setattr(spawner, "spawn", slow)
    ex = executor(tmp_path, argv=["sleep", "30"], grace="2s")
    with anyio.move_on_after(0.1) as scope:
        await ex.run(item({}))
    await ex.aclose()
    assert scope.cancelled_caught
    [pid] = started
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - reaped already: no zombie left


async def test_leftovers_of_a_finished_executor_are_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    leave = script(tmp_path, f"""
        import subprocess
        p = subprocess.Popen(["sleep", "600"])
        open({str(pid_file)!r}, "w").write(str(p.pid))
    """)  # fmt: skip
    with anyio.fail_after(5):  # the stray sleep holds our pipes: we must not wait for it
        await executor(tmp_path, argv=[PY, leave]).run(item({}))
    pid = int(pid_file.read_text())
    for _ in range(50):
        if not _alive(pid):
            break
        await anyio.sleep(0.02)
    assert not _alive(pid)


async def test_output_of_a_grandchild_that_escaped_reaches_no_later_item(tmp_path: Path) -> None:
    """Pipes serve child after child; one a straggler writes into between them is dropped."""
    tool = script(tmp_path, """
        import subprocess, sys
        if sys.argv[1] == "escape":  # a new session: the leftover kill misses it
            later = "import time; time.sleep(0.3); print('straggler', flush=True); time.sleep(5)"
            subprocess.Popen([sys.executable, "-c", later], start_new_session=True)
        else:
            print("own output")
            sys.exit(3)
    """)  # fmt: skip
    ex = executor(tmp_path, argv=[PY, tool, "{mode}"])
    await ex.run(item({"mode": "escape"}))
    await anyio.sleep(1.0)  # it has written by now, into pipes no child owns
    with pytest.raises(ItemFailed) as info:
        await ex.run(item({"mode": "fail"}))
    await ex.aclose()
    assert "own output" in info.value.output
    assert "straggler" not in info.value.output


async def test_100_mib_of_stdout_costs_no_memory(tmp_path: Path) -> None:
    chatty = script(tmp_path, """
        import sys
        block = b"x" * 1048575 + b"\\n"
        for _ in range(int(sys.argv[1])):
            sys.stdout.buffer.write(block)
    """)  # fmt: skip
    ex = executor(tmp_path, argv=[PY, chatty, "{mib}"])  # the default cap: 1 MiB each
    await ex.run(item({"mib": 2}))  # warm up: buffers, imports
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await ex.run(item({"mib": 100}))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50


async def test_output_is_capped_and_keeps_the_tail(tmp_path: Path) -> None:
    chatty = script(tmp_path, """
        import sys
        for i in range(200000):
            print(f"line {i}")
        print("the last words", file=sys.stderr)
        sys.exit(1)
    """)  # fmt: skip
    with pytest.raises(ItemFailed) as info:
        await executor(tmp_path, argv=[PY, chatty], max_output="4KiB").run(item({}))
    out = info.value.output
    assert "line 199999" in out and "line 0\n" not in out and "bytes dropped" in out
    assert info.value.reason == "exit 1: the last words"
    assert len(out) < 3 * 4096


@pytest.mark.parametrize("size", [10, 300_000])
async def test_a_quick_childs_output_is_read_whole(tmp_path: Path, size: int) -> None:
    """Its pipes are read at its exit, and one writing more than a pipe holds is not stuck."""
    writes = f"head -c {size} /dev/zero | tr '\\0' x; echo 'the last words' >&2; exit 3"
    with anyio.fail_after(10), pytest.raises(ItemFailed) as info:
        await executor(tmp_path, argv=["/bin/sh", "-c", writes]).run(item({}))
    assert info.value.reason == "exit 3: the last words"
    assert info.value.output.count("x") == size


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"argv": []}, "argv: empty"),
        ({"argv": ["no-such-program-here"]}, "argv[0]: program 'no-such-program-here' not found"),
        ({"argv": ["/bin/true", "{unclosed"]}, "argv[1]: unmatched '{'"),
        ({"argv": ["/bin/true", "{}"]}, "argv[1]: empty field name"),
        (
            {"argv": ["awk", "{print $1}", "{path}"]},
            "argv[1]: {print $1} is not an item field: for braces in the argument itself "
            "(awk, a shell snippet) write {{print $1}}",
        ),
        ({"argv": ["/bin/sh", "-c", 'echo {"n": 1}']}, 'argv[2]: {"n": 1} is not an item field'),
        ({"argv": ["/bin/true"], "cwd": "missing"}, "cwd:"),
        ({"argv": ["/bin/true"], "env": {"A=B": "x"}}, "env: 'A=B'"),
        ({"argv": ["/bin/echo", "cut\u0000here"]}, "argv[1]: holds a NUL byte"),
    ],
)
def test_bad_options_are_config_errors(
    tmp_path: Path, options: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        executor(tmp_path, **options)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


async def test_in_a_pool_failures_retry_then_dead_letter_and_others_go_on(tmp_path: Path) -> None:
    tool = script(tmp_path, """
        import json, os, sys
        data = json.load(open(os.environ["WORK_ITEM_FILE"]))
        if data["kind"] == "flaky" and os.environ["WORK_ITEM_ATTEMPT"] == "1":
            sys.exit(1)
        if data["kind"] == "broken":
            sys.exit(2)
        if data["kind"] == "bad-data":
            sys.exit(65)
    """)  # fmt: skip
    config = config_from_dict(
        {
            "workdir": str(tmp_path / "work"),
            "topics": {"jobs": {}},
            "pools": {
                "work": {
                    "topic": "jobs",
                    "concurrency": 4,
                    "retry": {"attempts": 3, "backoff": "10ms"},
                    "executor": {"type": "command", "argv": [PY, tool]},
                }
            },
        },
        path="test.toml",
        base_dir=str(tmp_path),
    )
    kinds = ["fine", "flaky", "broken", "bad-data", "fine"]
    async with Runtime(config) as rt:
        await rt.broker.ensure_group("work.dead", "inspect", visibility_timeout=60)
        for i, kind in enumerate(kinds):
            await rt.publish("jobs", {"kind": kind}, key=f"{kind}-{i}")
        with anyio.fail_after(30):
            outcomes = {
                f"{k}-{i}": await rt.wait_for("work", f"{k}-{i}") for i, k in enumerate(kinds)
            }
        dead = await rt.broker.read("work.dead", "inspect", "t", count=10, block=0.1)
    assert {k: o.status for k, o in outcomes.items()} == {
        "fine-0": ItemStatus.DONE, "flaky-1": ItemStatus.DONE, "broken-2": ItemStatus.DEAD,
        "bad-data-3": ItemStatus.DEAD, "fine-4": ItemStatus.DONE,
    }  # fmt: skip
    attempts = {m.key: m.headers["chute-attempts"] for m in dead}
    assert attempts == {"broken-2": "3", "bad-data-3": "1"}  # exit 65 skips the retries
    assert all(m.headers["chute-error"].startswith("exit ") for m in dead)
