"""URLs as chute prints them: never with a password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from chute.urls import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cretpw@127.0.0.1:16399/0", "redis://:***@127.0.0.1:16399/0"),
        ("redis://app:s3cretpw@h:6379/2?prefix=x:", "redis://app:***@h:6379/2?prefix=x:"),
        ("redis://h:6379/0?password=s3cretpw&prefix=a:", "redis://h:6379/0?password=***&prefix=a:"),
        ("rediss://app@h/0", "rediss://app@h/0"),  # a user name alone is no secret
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("memory", "memory"),
    ],
)
def test_credentials_are_replaced_and_the_rest_kept(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_chute_check_prints_the_broker_and_state_without_their_passwords(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("""
broker = "redis://:s3cretpw@127.0.0.1:6399/0"
state = "redis://app:0therpw@127.0.0.1:6399/1"
[topics.jobs]
""")
    checked = subprocess.run([sys.executable, "-m", "chute", "check", str(config)],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "redis://:***@127.0.0.1:6399/0" in checked.stdout
    assert "s3cretpw" not in checked.stdout and "0therpw" not in checked.stdout


def test_the_lines_a_run_starts_with_hide_a_source_s_password(tmp_path: Path) -> None:
    from chute.config import config_from_dict
    from chute.logs import start_lines

    doc = {
        "broker": "memory",
        "sources": {"orders": {"type": "redis", "topic": "orders", "stream": "shop:orders",
                               "url": "redis://:s3cretpw@10.0.0.5:6379/0"}},
        "topics": {"orders": {}},
    }  # fmt: skip
    lines = start_lines(config_from_dict(doc, path="c.toml", base_dir=str(tmp_path)))
    assert lines == ["source orders (redis) reading stream shop:orders at "
                     "redis://:***@10.0.0.5:6379/0 -> topic orders"]  # fmt: skip
