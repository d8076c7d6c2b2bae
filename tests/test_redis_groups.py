"""Consumer groups on Redis: where a new one starts, and groups a config no longer declares.

A pool renamed or removed leaves its group behind in Redis. It must not hold
back publishers (with nothing logged) nor keep ``--until-idle`` from
returning; ``chute groups list|prune`` shows and deletes it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from chute.message import Message
from chute_plugins.brokers import redis_streams
from chute_plugins.brokers.redis_streams import RedisBroker

pytestmark = pytest.mark.redis

REPO = Path(__file__).resolve().parent.parent


def msgs(n: int, start: int = 0) -> list[Message]:
    return [Message(key=f"k{i}", data={"n": i}) for i in range(start, start + n)]


@pytest.fixture
async def leftover(redis_url: str) -> AsyncIterator[str]:
    """The topic ``jobs`` with a group ``old`` that nobody reads any more, 10 entries behind."""
    b = RedisBroker(redis_url)
    await b.start()
    await b.declare_topic("jobs", capacity=10)
    await b.ensure_group("jobs", "old", visibility_timeout=30)
    await b.publish("jobs", msgs(10))
    await b.aclose()
    yield redis_url


async def test_a_group_left_behind_does_not_block_publishers(
    leftover: str, caplog: pytest.LogCaptureFixture
) -> None:
    b = RedisBroker(leftover)
    await b.start()
    try:
        await b.declare_topic("jobs", capacity=10)
        await b.ensure_group("jobs", "work", visibility_timeout=30)
        got = await b.read("jobs", "work", "c", count=100, block=None)
        await b.ack("jobs", "work", [m.id for m in got])
        with caplog.at_level(logging.WARNING, logger="chute.brokers.redis"):
            await asyncio.wait_for(b.publish("jobs", msgs(5, 10)), 10)
            await asyncio.wait_for(b.publish("jobs", msgs(5, 15)), 10)
        warnings = [r.getMessage() for r in caplog.records if "not declared" in r.getMessage()]
        assert len(warnings) == 1, warnings  # once, not on every measure
        assert "group old" in warnings[0] and "idle" in warnings[0]
        # The declared group still applies back-pressure.
        blocked = asyncio.create_task(b.publish("jobs", msgs(1, 20)))
        await asyncio.sleep(0.3)
        assert not blocked.done()
        got = await b.read("jobs", "work", "c", count=100, block=None)
        await b.ack("jobs", "work", [m.id for m in got])
        await asyncio.wait_for(blocked, 10)
    finally:
        await b.aclose()


async def test_a_publisher_waiting_on_a_full_topic_says_so(
    redis_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_streams, "_SLOW_PUBLISH", 0.3, raising=False)
    b = RedisBroker(redis_url)
    await b.start()
    try:
        await b.declare_topic("jobs", capacity=2)
        await b.ensure_group("jobs", "work", visibility_timeout=30)
        await b.publish("jobs", msgs(2))
        with caplog.at_level(logging.WARNING, logger="chute.brokers.redis"):
            blocked = asyncio.create_task(b.publish("jobs", msgs(1, 2)))
            await asyncio.sleep(1.0)
            assert not blocked.done()
            got = await b.read("jobs", "work", "c", count=10, block=None)
            await b.ack("jobs", "work", [m.id for m in got])
            await asyncio.wait_for(blocked, 10)
        [line] = [r.getMessage() for r in caplog.records if "has waited" in r.getMessage()]
        assert "jobs" in line and "full" in line and "work 2" in line
    finally:
        await b.aclose()


def write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f"""
broker = "{url}"
log_level = "warning"
[topics.jobs]
capacity = 10
[pools.work]
topic = "jobs"
track = false
executor = {{ type = "python", function = "tests.helpers.redis_tasks:work", path = ["{REPO}"] }}
""")
    return path


def chute(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CHUTE_TEST_NODE": "n",
           "CHUTE_TEST_LOG": str(cwd / "work.log")}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "chute", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_messages_published_before_the_first_run_are_run(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path, redis_url)
    published = chute("publish", "jobs", '{"n": 0}', "--key", "pre-0", "--config", str(config),
                      cwd=tmp_path)  # fmt: skip
    assert published.returncode == 0, published.stderr
    ran = chute("run", str(config), "--until-idle", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    log = (tmp_path / "work.log").read_text() if (tmp_path / "work.log").exists() else ""
    assert "done n item-0" in log, "a message published before the group existed was skipped"


def test_until_idle_returns_despite_a_group_left_behind(tmp_path: Path, leftover: str) -> None:
    config = write_config(tmp_path, leftover)
    ran = chute("run", str(config), "--until-idle", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "work.log").read_text().count("done n") == 10
    assert "group old" in ran.stderr and "not declared" in ran.stderr


def test_chute_groups_lists_and_prunes_groups_left_behind(tmp_path: Path, leftover: str) -> None:
    config = write_config(tmp_path, leftover)
    assert chute("run", str(config), "--until-idle", cwd=tmp_path).returncode == 0
    listed = chute("groups", "list", str(config), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert any(line.startswith("jobs old: not declared, lag 10") for line in lines), lines
    assert any(line.startswith("jobs work: declared, lag 0, pending 0") for line in lines), lines
    pruned = chute("groups", "prune", str(config), cwd=tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    assert "jobs old: not declared" in pruned.stdout and "deleted" in pruned.stdout
    url, _, query = leftover.partition("?")
    client = redis.Redis.from_url(url)
    try:
        names = {g["name"] for g in client.xinfo_groups(query.removeprefix("prefix=") + "jobs")}
    finally:
        client.close()
    assert names == {b"work"}
