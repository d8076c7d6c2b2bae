"""`chute check` finds what `chute run` would, all in one pass, with "did you mean"."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chute", "check", str(config)],
        capture_output=True, text=True, timeout=60, cwd=config.parent,
    )  # fmt: skip


def demo(tmp_path: Path, replace: dict[str, str], extra: str = "") -> Path:
    shutil.copy(REPO / "configs" / "demo_tasks.py", tmp_path / "demo_tasks.py")
    text = (REPO / "configs" / "demo.toml").read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "demo.toml"
    config.write_text(extra + text)
    return config


def test_a_config_with_three_typos_prints_three_lines(tmp_path: Path) -> None:
    config = demo(
        tmp_path,
        {
            '"demo_tasks:summarize"': '"demo_tasks:sumarize"',
            'track = false\nexecutor = { type = "python"': 'track = false\nexecutor = { type = "pyhton"',
        },
        extra='log_level = "inof"\n',
    )
    result = check(config)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    assert any(
        "function: module 'demo_tasks' has no attribute 'sumarize'; did you mean 'summarize'?"
        in line
        for line in lines
    )
    assert any(
        "[pools.report] executor.type: unknown executor 'pyhton'" in line
        and "did you mean 'python'?" in line
        for line in lines
    )
    assert any(
        "log_level: unknown log level 'inof'" in line and "did you mean 'info'?" in line
        for line in lines
    )


def test_a_missing_program_fails_check_as_it_fails_run(tmp_path: Path) -> None:
    config = demo(
        tmp_path,
        {'executor = { type = "python", function = "demo_tasks:report", path = ["."] }':
         'executor = { type = "command", argv = ["no-such-program-xyz", "{n}"] }'},
    )  # fmt: skip
    result = check(config)
    assert result.returncode == 2
    assert (
        "[pools.report] executor.argv[0]: program 'no-such-program-xyz' not found on PATH"
        in result.stderr
    )
    run = subprocess.run([sys.executable, "-m", "chute", "run", str(config), "--until-idle"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2 and "no-such-program-xyz" in run.stderr


def test_unknown_keys_in_several_tables_each_get_a_suggestion(tmp_path: Path) -> None:
    config = demo(
        tmp_path,
        {
            "concurrency = 1": "concurency = 1",
            'output = "summaries"': 'output = "summaries"\ntimout = 3',
        },
        extra='brokr = "memory"\n',
    )
    result = check(config)
    assert result.returncode == 2
    assert "brokr: unknown key; did you mean 'broker'?" in result.stderr
    assert "[pools.report] concurency: unknown key; did you mean 'concurrency'?" in result.stderr
    assert "[pools.summarize] timout: unknown key; did you mean 'timeout'?" in result.stderr


def test_an_argv_field_the_source_never_emits_is_a_warning(tmp_path: Path) -> None:
    config = tmp_path / "watch.toml"
    config.write_text(
        '[sources.inbox]\ntype = "watch"\ntopic = "files"\npath = "inbox"\n'
        '[pools.convert]\ntopic = "files"\n'
        'executor = { type = "command", argv = ["true", "{path}", "{filename}"] }\n'
    )
    result = check(config)
    assert result.returncode == 0, result.stderr
    [warning] = result.stderr.splitlines()
    assert warning.startswith("warning: ")
    assert "{filename} is not a field source 'inbox' emits" in warning
    assert "did you mean 'name'?" in warning
    assert "{path}" not in warning


def test_dangling_topics_suggest_the_near_name(tmp_path: Path) -> None:
    config = demo(tmp_path, {'topic = "summaries"': 'topic = "sumaries"'})
    result = check(config)
    assert result.returncode == 2
    assert "nothing publishes to topic 'sumaries'; did you mean 'summaries'?" in result.stderr
