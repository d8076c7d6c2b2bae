"""Two ``chute run`` nodes on one Redis while Redis misbehaves: nothing published is lost.

Each case publishes the work first, starts two nodes (``--until-idle``),
lets a quarter of the work finish, then does one thing to Redis: writes a
binary entry among the messages (every tenth item fails its first run, so
delayed retries are waiting too), restarts it (SIGTERM, then start again on
its append-only file), kills every client connection, pauses every client,
or freezes the server (SIGSTOP) for a few seconds. Both nodes must exit 0 and
every published item must have run at least once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from chute.message import Message
from chute_plugins.brokers.redis_streams import RedisBroker

from tests.multinode import Node, done_count, events, wait_until, write_config
from tests.redis_server import RedisServer, unique_prefix

pytestmark = [pytest.mark.slow, pytest.mark.redis]

N = 400


def publish(url: str) -> None:
    """The work, before any node runs; every tenth item fails once (a delayed retry)."""

    async def go() -> None:
        broker = RedisBroker(url)
        await broker.start()
        try:
            await broker.publish("jobs", [
                Message(key=f"item-{i}", data={"n": i, "sleep": 0.05, "fail_first": i % 10 == 0})
                for i in range(N)
            ])  # fmt: skip
        finally:
            await broker.aclose()

    asyncio.run(go())


def admin(server: RedisServer, *args: str) -> None:
    client = redis.Redis(port=server.port)
    try:
        client.execute_command(*args)
    finally:
        client.close()


def hidden_entry(server: RedisServer, prefix: str) -> None:
    subprocess.run(["redis-cli", "-p", str(server.port), "-x", "XADD", f"{prefix}jobs", "*", "m"],
                   input=b"\xff\xfe\x00\x01", check=True, capture_output=True, timeout=10)  # fmt: skip


def restart(server: RedisServer, prefix: str) -> None:
    server.stop()  # SIGTERM: Redis flushes its append-only file and exits
    time.sleep(1.0)  # away for a second
    server.start()


def client_kill(server: RedisServer, prefix: str) -> None:
    for _ in range(3):
        admin(server, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        time.sleep(0.3)


def client_pause(server: RedisServer, prefix: str) -> None:
    admin(server, "CLIENT", "PAUSE", "3000", "ALL")
    time.sleep(3.0)


def sigstop(server: RedisServer, prefix: str) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(4.0)  # longer than a blocking read, shorter than the socket timeout
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


FAULTS: dict[str, Callable[[RedisServer, str], None]] = {
    "hidden-entry": hidden_entry,
    "restart": restart,
    "client-kill": client_kill,
    "client-pause": client_pause,
    "sigstop": sigstop,
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_two_nodes_process_every_message_through_a_redis_fault(
    tmp_path: Path, redis_server: RedisServer, fault: str
) -> None:
    prefix = unique_prefix()
    url = f"{redis_server.url}?prefix={prefix}"
    config = write_config(tmp_path, url, track=True)
    log = tmp_path / "work.log"
    publish(url)
    nodes = [Node("a", config, log), Node("b", config, log)]
    try:
        wait_until(lambda: done_count(log) >= N // 4, 60, "a quarter of the work is done")
        FAULTS[fault](redis_server, prefix)
        for node in nodes:
            node.wait(120)
    finally:
        for node in nodes:
            node.kill()
    done = Counter(key for event, _, key, _ in events(log) if event == "done")
    missing = {f"item-{i}" for i in range(N)} - set(done)
    assert not missing, f"{len(missing)} published items never ran: {sorted(missing)[:5]}"
    assert {node for event, node, _, _ in events(log) if event == "done"} == {"a", "b"}
    failed = {key for event, _, key, _ in events(log) if event == "failed"}
    assert failed == {f"item-{i}" for i in range(0, N, 10)}, "the retries did not run"
    if fault == "hidden-entry":
        client = redis.Redis(port=redis_server.port)
        try:
            [(_, fields)] = client.xrange(f"{prefix}jobs:dead")
            assert fields[b"m"] == b"\xff\xfe\x00\x01"
        finally:
            client.close()
