"""Every config mistake is one line naming the file, the table and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from chute.config import load_config
from chute.errors import ConfigError
from chute.graph import validate

GOOD_POOL = """
[pools.work]
topic = "jobs"
executor = { type = "python", function = "json:dumps" }
"""
GOOD = GOOD_POOL + "\n[topics.jobs]\n"

CASES = [
    # (name, config text, expected fragment of the one error line)
    ("unknown top-level key", 'brokr = "memory"\n' + GOOD, ": brokr: unknown key"),
    ("unknown pool key", GOOD.replace('topic = "jobs"', 'topic = "jobs"\nconcurency = 3'),
     "[pools.work] concurency: unknown key"),
    ("wrong type", GOOD.replace('topic = "jobs"', 'topic = "jobs"\nconcurrency = "four"'),
     "[pools.work] concurrency: expected `int | null`, got `str`"),
    ("bad duration", GOOD.replace('topic = "jobs"', 'topic = "jobs"\ntimeout = "10 parsecs"'),
     "[pools.work] timeout: unknown duration unit 'parsecs'"),
    ("negative duration", GOOD + 'visibility_timeout = "-5s"\n',
     "[topics.jobs] visibility_timeout: expected a duration"),
    ("bad size", GOOD + "capacity = 0\n", "[topics.jobs] capacity: must be at least 1"),
    ("unknown executor", GOOD.replace('type = "python"', 'type = "pyhton"'),
     "[pools.work] executor.type: unknown executor 'pyhton'"),
    ("unknown executor option", GOOD.replace('function = "json:dumps"', 'function = "json:dumps", fn = 1'),
     "[pools.work] executor.fn: unknown key"),
    ("missing executor option", GOOD.replace(', function = "json:dumps"', ""),
     "[pools.work] executor.function: missing: this key is required"),
    ("unknown source", GOOD + '[sources.in]\ntype = "ftp"\ntopic = "jobs"\n',
     "[sources.in] type: unknown source 'ftp'"),
    ("source without topic", GOOD + '[sources.in]\ntype = "generate"\n',
     "[sources.in] topic: missing"),
    ("dangling input topic", GOOD_POOL, "[pools.work] topic: nothing publishes to topic 'jobs'"),
    ("dangling output topic", GOOD.replace('topic = "jobs"', 'topic = "jobs"\noutput = "done"'),
     "[pools.work] output: nothing reads topic 'done'"),
    ("min above max", GOOD.replace('topic = "jobs"', 'topic = "jobs"\nscale = { min = 5, max = 2 }'),
     "[pools.work] scale.min: is more than max (5 > 2)"),
    ("utilization out of range",
     GOOD.replace('topic = "jobs"', 'topic = "jobs"\nscale = { max = 4, utilization = 1.5 }'),
     "[pools.work] scale.utilization: must be in (0, 1]"),
    ("zero concurrency", GOOD.replace('topic = "jobs"', 'topic = "jobs"\nconcurrency = 0'),
     "[pools.work] concurrency: must be at least 1"),
    ("unknown operator", GOOD + '[operators.x]\ntype = "teleport"\ninput = "jobs"\n',
     "[operators.x] type: unknown operator 'teleport'"),
    ("operator without type", GOOD + '[operators.x]\ninput = "jobs"\n',
     "[operators.x] type: missing"),
    ("unknown broker", 'broker = "kafka://x"\n' + GOOD, ": broker: unknown broker 'kafka'"),
    ("api beyond loopback without token", GOOD + '[api]\nenabled = true\nhost = "0.0.0.0"\n',
     "[api] token: required to listen on '0.0.0.0'"),
    ("two readers in one group", GOOD + GOOD_POOL.replace("pools.work", "pools.other")
     .replace('type = "python"', 'type = "python"') + 'group = "work"\n',
     "[pools.other] group: 'work' already reads 'jobs'"),
    ("not toml", "this is = = not toml", "not valid TOML"),
    ("a timeout on a python function in a thread",
     GOOD.replace('function = "json:dumps"', 'function = "json:dumps", thread = true')
     .replace('topic = "jobs"', 'topic = "jobs"\ntimeout = "5s"'),
     "[pools.work] timeout: cannot stop a python function running in a thread"),
    ("retry attempts zero", GOOD.replace('topic = "jobs"', 'topic = "jobs"\nretry = { attempts = 0 }'),
     "[pools.work] retry.attempts: must be at least 1"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_mistake_is_one_clear_line(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        validate(load_config(path))
    problems = info.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(str(path)), problems[0]
    assert expected in problems[0], problems[0]
    assert "\n" not in problems[0]


def test_yaml_configs_get_the_same_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "pools:\n  work:\n    topic: jobs\n    executor: {type: python}\n    colour: red\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: [pools.work] colour: unknown key (check the spelling; see the docs for this table)"
    ]


def test_every_broken_table_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[pools.a]\ntopic = "x"\nexecutor = { type = "python", function = "json:dumps" }\nbatch = "many"\n'
        '[pools.b]\ntopic = "y"\nexecutor = { type = "nope" }\n'
        "[topics.x]\ncapacity = -1\n[topics.y]\n"
    )
    with pytest.raises(ConfigError) as info:
        validate(load_config(path))
    assert len(info.value.problems) == 1  # decoding fails first: [pools.a] batch
    path.write_text(path.read_text().replace('batch = "many"\n', ""))
    with pytest.raises(ConfigError) as info:
        validate(load_config(path))
    keys = sorted(p.split("] ")[1].split(":")[0] for p in info.value.problems)
    assert keys == ["capacity", "executor.type"]


def test_chute_check_prints_all_problems_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD_POOL + "concurrency = 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "chute", "check", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in proc.stderr
    assert any("concurrency: must be at least 1" in line for line in lines)
    assert any("nothing publishes to topic 'jobs'" in line for line in lines)


def test_chute_run_refuses_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace('type = "python"', 'type = "pyhton"'))
    proc = subprocess.run(
        [sys.executable, "-m", "chute", "run", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "unknown executor 'pyhton'" in proc.stderr and "Traceback" not in proc.stderr


def test_chute_check_prints_the_graph(tmp_path: Path) -> None:
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    proc = subprocess.run(
        [sys.executable, "-m", "chute", "check", str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "jobs -> pool work (python x1) -> (no output); dead letters -> work.dead" in proc.stdout
