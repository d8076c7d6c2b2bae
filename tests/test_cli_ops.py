"""The operator's commands through the real CLI: one-line operational failures, status, dead, tail."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import free_port, wait_for_port

from .test_cli import REPO, chute, start, write_config


def test_api_port_in_use_is_one_line_and_exit_3(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path, port)
        result = chute("run", str(config))
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("chute:")]
    assert errors == [f"chute: the API cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_serve_items_port_in_use_is_one_line_and_exit_3(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = chute("serve-items", str(tmp_path), "--port", str(port))
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"chute: serve-items cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_publish_with_redis_down_is_one_line_and_exit_3(tmp_path: Path) -> None:
    config = tmp_path / "redis.toml"
    config.write_text(
        f'broker = "redis://127.0.0.1:{free_port()}/0"\n[topics.jobs]\n[pools.work]\n'
        'topic = "jobs"\ntrack = false\n'
        f'executor = {{ type = "python", function = "tests.helpers.tasks:double", path = ["{REPO}"] }}\n'
    )
    result = chute("publish", "--config", str(config), "jobs", '{"n": 1}')
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("chute: cannot reach redis at")


def test_publish_without_a_runtime_is_exit_3(tmp_path: Path) -> None:
    result = chute("publish", "--url", f"http://127.0.0.1:{free_port()}", "jobs", '{"n": 1}')
    assert result.returncode == 3
    assert result.stderr.startswith("chute: no runtime answers")
    assert "Traceback" not in result.stderr


def test_status_of_a_config_that_never_ran_says_so_and_creates_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port())
    result = chute("status", str(config))
    assert result.returncode == 0, result.stderr
    assert "has not run here yet" in result.stdout
    assert not (tmp_path / ".chute").exists()


def test_status_watch_redraws_until_interrupted(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    proc = start(config)
    try:
        wait_for_port(port, proc)
        watch = subprocess.Popen(
            [sys.executable, "-m", "chute", "status", str(config), "--watch", "--interval", "0.2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert watch.stdout is not None
        frames, seen = 0, []
        while frames < 2:
            line = watch.stdout.readline()
            assert line, watch.communicate(timeout=20)
            seen.append(line)
            frames += "(Ctrl-C to stop)" in line
        watch.send_signal(signal.SIGINT)
        rest, err = watch.communicate(timeout=20)
        out = "".join(seen) + rest
        assert watch.returncode == 0, err
        assert "live pool work: concurrency 2" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


FIXABLE = """
import os, pathlib
def run(data):
    if not os.path.exists(os.environ["FIXED_FLAG"]):
        from chute.errors import ItemFailed
        raise ItemFailed("cannot read " + data["path"], permanent=True)
    return {"ok": data["path"]}
"""


def watch_config(tmp_path: Path) -> Path:
    (tmp_path / "fixable.py").write_text(FIXABLE)
    config = tmp_path / "watch.toml"
    config.write_text(
        '[sources.inbox]\ntype = "watch"\ntopic = "files"\npath = "inbox"\n'
        'on_dead = "move"\ndead_dir = "rejected"\non_done = "move"\ndone_dir = "done"\n'
        '[pools.work]\ntopic = "files"\n'
        'executor = { type = "python", function = "fixable:run", path = ["."] }\n'
    )
    (tmp_path / "inbox").mkdir()
    return config


def test_a_rejected_watch_file_requeued_and_moved_back_runs_again(tmp_path: Path) -> None:
    config = watch_config(tmp_path)
    (tmp_path / "inbox" / "a.txt").write_text("hello")
    env = {**os.environ, "FIXED_FLAG": str(tmp_path / "fixed")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chute", *args], capture_output=True, text=True,
            timeout=60, env=env, cwd=tmp_path,
        )  # fmt: skip

    first = cli("run", str(config), "--until-idle")
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "rejected" / "a.txt").exists()

    listed = cli("dead", "list", "work", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    key = line.split("\t")[0]
    assert key.startswith("a.txt@") and "cannot read" in line
    shown = cli("dead", "show", "work", key, "--config", str(config))
    assert json.loads(shown.stdout)["key"] == key

    (tmp_path / "fixed").touch()  # the fix
    (tmp_path / "rejected" / "a.txt").rename(tmp_path / "inbox" / "a.txt")
    requeued = cli("dead", "requeue", "work", key, "--config", str(config))
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == f"requeued {key}"

    second = cli("run", str(config), "--until-idle")
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "done" / "a.txt").exists()
    assert cli("dead", "list", "work", "--config", str(config)).stdout.strip() == (
        "pool work: no dead items"
    )


def test_dead_purge_forgets_and_an_unknown_key_is_an_error(tmp_path: Path) -> None:
    config = watch_config(tmp_path)
    (tmp_path / "inbox" / "b.txt").write_text("x")
    env = {**os.environ, "FIXED_FLAG": str(tmp_path / "never")}
    subprocess.run([sys.executable, "-m", "chute", "run", str(config), "--until-idle"],
                   env=env, cwd=tmp_path, check=True, capture_output=True, timeout=60)  # fmt: skip
    purged = chute("dead", "purge", "work", "--config", str(config))
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.startswith("purged b.txt@")
    assert chute("dead", "list", "work", "--config", str(config)).stdout.strip() == (
        "pool work: no dead items"
    )
    unknown = chute("dead", "requeue", "work", "nope", "--config", str(config))
    assert unknown.returncode == 1 and "not dead in pool work: nope" in unknown.stderr
    typo = chute("dead", "list", "wrok", "--config", str(config))
    assert typo.returncode == 2 and "did you mean 'work'?" in typo.stderr


@pytest.mark.skipif(not hasattr(os, "getpgid"), reason="POSIX only")
def test_tail_prints_messages_as_they_are_published(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    proc = start(config)
    try:
        wait_for_port(port, proc)
        tail = subprocess.Popen(
            [sys.executable, "-m", "chute", "tail", "jobs", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.0)  # the tail is connected
        log = tmp_path / "ran.log"
        for n in (1, 2):
            data = json.dumps({"n": n, "log": str(log)})
            published = chute("publish", "--config", str(config), "jobs", data, "--key", f"k{n}")
            assert published.returncode == 0, published.stderr
        assert tail.stdout is not None
        lines = [json.loads(tail.stdout.readline()) for _ in range(2)]
        assert [(m["key"], m["data"]["n"]) for m in lines] == [("k1", 1), ("k2", 2)]
        tail.send_signal(signal.SIGINT)
        tail.communicate(timeout=20)
        assert tail.returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
