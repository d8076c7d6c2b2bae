"""What `chute run` says at start, per item at debug, and at the end; log options are checked."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import pkgutil
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def chute(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chute", *args],
        capture_output=True, text=True, timeout=60, cwd=cwd,
    )  # fmt: skip


def demo(tmp_path: Path) -> Path:
    for name in ("demo.toml", "demo_tasks.py"):
        shutil.copy(REPO / "configs" / name, tmp_path / name)
    return tmp_path / "demo.toml"


def test_a_run_says_what_it_runs_and_what_happened_and_a_second_run_says_all_was_done(
    tmp_path: Path,
) -> None:
    config = demo(tmp_path)
    first = chute("run", str(config), "--until-idle")
    assert first.returncode == 0, first.stderr
    assert "source numbers (generate) generating 20 items -> topic jobs" in first.stderr
    assert "pool summarize (python) reads jobs -> summaries, concurrency 4" in first.stderr
    assert "pool report (python) reads summaries, concurrency 1" in first.stderr
    assert re.search(
        r"finished: done 40, failed \d+, dead 0, skipped 0 \(already done\), queued 0, workers 5",
        first.stderr,
    ), first.stderr

    second = chute("run", str(config), "--until-idle")
    assert second.returncode == 0, second.stderr
    assert "finished: done 0, failed 0, dead 0, skipped 20 (already done)" in second.stderr


def test_json_logs_at_debug_have_one_object_per_line_and_a_line_per_item(tmp_path: Path) -> None:
    config = demo(tmp_path)
    run = chute("--log-format", "json", "--log-level", "debug", "run", str(config), "--until-idle")
    assert run.returncode == 0, run.stderr
    docs = [json.loads(line) for line in run.stderr.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(d) for d in docs)
    starts = [d for d in docs if d["logger"] == "chute.pool" and " start " in d["msg"]]
    finishes = [d for d in docs if d["logger"] == "chute.pool" and " finish " in d["msg"]]
    assert len(starts) >= 40 and len(finishes) >= 40
    assert {"pool", "key", "attempt", "duration"} <= set(finishes[0])
    assert all(
        re.fullmatch(r"pool \w+: finish '.+' \(attempt \d\) in \d+\.\d+s", d["msg"])
        for d in finishes
    )


def test_a_summary_line_comes_every_summary_every_while_running(tmp_path: Path) -> None:
    config = demo(tmp_path)
    config.write_text(
        'summary_every = "200ms"\n'
        + config.read_text().replace("count = 20", "count = 20\nrate = 20.0")
    )
    run = chute("run", str(config), "--until-idle")
    assert run.returncode == 0, run.stderr
    periodic = [
        line for line in run.stderr.splitlines()
        if re.search(r"chute: done \d+, failed \d+, dead \d+, skipped", line)
    ]  # fmt: skip
    assert len(periodic) >= 3, run.stderr


def test_until_idle_on_a_terminal_shows_progress(tmp_path: Path) -> None:
    config = demo(tmp_path)
    config.write_text(config.read_text().replace("count = 20", "count = 20\nrate = 10.0"))
    parent, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chute", "run", str(config), "--until-idle"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=child, cwd=tmp_path,
    )  # fmt: skip
    os.close(child)
    seen = b""
    with contextlib.suppress(OSError):  # EIO once the child side closes
        while chunk := os.read(parent, 4096):
            seen += chunk
    os.close(parent)
    assert proc.wait(timeout=60) == 0, seen
    text = seen.decode(errors="replace")
    progress = re.findall(r"\r(\d+) of (\d+) items done, [\d.]+/s, ETA \S+", text)
    assert len(progress) >= 2, text
    assert progress[-1][0] != progress[0][0]  # it moved


def test_plain_output_has_no_progress_line(tmp_path: Path) -> None:
    run = chute("run", str(demo(tmp_path)), "--until-idle")
    assert run.returncode == 0 and "items done" not in run.stderr


def test_unknown_log_levels_and_formats_are_errors(tmp_path: Path) -> None:
    config = demo(tmp_path)
    verbose = chute("--log-level", "verbose", "run", str(config), "--until-idle")
    assert verbose.returncode == 2
    assert "unknown log level 'verbose'" in verbose.stderr
    typo = chute("--log-level", "debgu", "check", str(config))
    assert typo.returncode == 2 and "did you mean 'debug'?" in typo.stderr
    assert chute("--log-format", "xml", "check", str(config)).returncode == 2

    loud = tmp_path / "loud.toml"
    loud.write_text('log_level = "loud"\nlog_format = "jsn"\n' + config.read_text())
    checked = chute("check", str(loud))
    assert checked.returncode == 2
    assert "log_level: unknown log level 'loud'" in checked.stderr
    assert "log_format: unknown log format 'jsn'" in checked.stderr
    assert "did you mean 'json'?" in checked.stderr


def test_logger_names_are_chute_area_with_plural_plugin_folders() -> None:
    import chute
    import chute_plugins

    for package in (chute, chute_plugins):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if module.name.endswith("__main__"):
                continue
            try:
                importlib.import_module(module.name)
            except ImportError:  # an optional extra that is not installed
                continue
    names = [n for n in logging.Logger.manager.loggerDict if n.startswith("chute")]
    assert names
    for name in names:
        assert re.fullmatch(
            r"chute(\.(sources|brokers|stores|executors|sinks)\.\w+|\.[a-z_]+)?", name
        ), name
    assert "chute.sources.redis" in names and "chute.brokers.redis" in names
