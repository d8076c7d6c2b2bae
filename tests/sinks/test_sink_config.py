"""A [sinks.NAME] table is checked with the graph: every problem names file, table and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from chute.config import config_from_dict
from chute.errors import ConfigError
from chute.graph import describe, validate


def problems(sinks: dict[str, object], topics: dict[str, object] | None = None) -> list[str]:
    doc = {"topics": topics if topics is not None else {"in": {}}, "sinks": sinks}
    with pytest.raises(ConfigError) as err:
        validate(config_from_dict(doc, path="c.toml"))
    return err.value.problems


def test_every_problem_of_a_sink_is_reported_at_once() -> None:
    got = problems(
        {
            "a": {"type": "carrier-pigeon", "topic": "in"},
            "b": {"type": "file", "topic": "in"},
            "c": {"type": "file", "topic": "nowhere", "path": "x", "batch": 0},
            "d": {"type": "http", "topic": "in", "url": "ftp://x", "colour": "red"},
        }
    )
    assert any(p.startswith("c.toml: [sinks.a] type: unknown sink 'carrier-pigeon'") for p in got)
    assert "c.toml: [sinks.b] path: missing: this key is required" in got
    assert "c.toml: [sinks.c] batch: must be at least 1, got 0" in got
    assert any(p.startswith("c.toml: [sinks.c] topic: nothing publishes to topic 'nowhere'")
               for p in got)  # fmt: skip
    assert (
        "c.toml: [sinks.d] colour: unknown key (check the spelling; see the docs for this table)"
        in got
    )


def test_a_valid_sink_is_drawn_in_the_graph() -> None:
    cfg = config_from_dict(
        {"topics": {"in": {}}, "sinks": {"out": {"type": "file", "topic": "in", "path": "o"}}}
    )
    validate(cfg)
    assert "in -> sink out (file)" in describe(cfg)


def test_check_finds_what_building_the_sink_refuses(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[topics.jobs]\n[sinks.out]\ntype = "mqtt"\ntopic = "jobs"\nmqtt_topic = "x/{nope}"\n'
    )
    done = subprocess.run([sys.executable, "-m", "chute", "check", str(config)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert f"{config}: [sinks.out] mqtt_topic: unknown field {{nope}}" in done.stderr
