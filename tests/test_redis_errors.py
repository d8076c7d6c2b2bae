"""Redis errors that are not "unreachable": those that pass are ridden out and shown,
those that do not stop chute at once with one line (exit 3), and no password is printed."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import anyio
import pytest
import redis
from chute.config import config_from_dict
from chute.engine import Runtime
from chute.errors import StoreUnavailable, Unavailable
from chute.message import Message
from chute_plugins.brokers.redis_streams import RedisBroker
from chute_plugins.stores.redis import RedisStore

from tests.redis_server import RedisServer
from tests.servers import free_port

pytestmark = pytest.mark.redis

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "s3cretpw"


def msgs(n: int, start: int = 0) -> list[Message]:
    return [Message(key=f"k{i}", data={"n": i}) for i in range(start, start + n)]


def admin(server: RedisServer, *args: str, password: str | None = None) -> None:
    client = redis.Redis(port=server.port, password=password)
    try:
        client.execute_command(*args)
    finally:
        client.close()


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    # Redis is another process: there is no event to wait on.
    deadline = time.monotonic() + 10
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)


async def test_out_of_memory_is_ridden_out_and_shown_in_healthz_and_status(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    doc = {
        "broker": redis_server.url,
        "workdir": str(tmp_path / "work"),
        "api": {"enabled": True, "port": 0},
        "topics": {"jobs": {}},
        "pools": {"work": {"topic": "jobs", "track": False,
                           "executor": {"type": "python", "function": "tests.helpers.tasks:double",
                                        "path": [str(REPO)]}}},
    }  # fmt: skip
    config = config_from_dict(doc, path="test.toml", base_dir=str(tmp_path))
    async with Runtime(config) as rt, aiohttp.ClientSession() as http:
        api = f"http://127.0.0.1:{rt.api_port}"
        admin(redis_server, "CONFIG", "SET", "maxmemory", "1")
        publishing = asyncio.create_task(rt.publish("jobs", {"n": 21}, key="during-oom"))
        await eventually(lambda: not rt.broker.healthy, "the broker reports the OOM")
        async with http.get(f"{api}/healthz") as resp:
            assert resp.status == 503
            assert "OOM" in (await resp.json())["broker"]
        async with http.get(f"{api}/v1/status") as resp:
            status = await resp.json()
            assert status["broker_healthy"] is False and "OOM" in status["broker_problem"]
        # ``chute status`` asks the same API (the runtime is in this event loop: no blocking).
        status_config = tmp_path / "status.toml"
        status_config.write_text(f'workdir = "{tmp_path / "work"}"\n[topics.jobs]\n')
        shown = await anyio.run_process(
            [sys.executable, "-m", "chute", "status", str(status_config), "--url", api],
            env={**os.environ, "PYTHONPATH": str(REPO)}, check=False,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        assert f"broker {redis_server.url}: unhealthy, answers OOM" in shown.stdout.decode()
        assert not publishing.done()
        admin(redis_server, "CONFIG", "SET", "maxmemory", "0")
        await asyncio.wait_for(publishing, 10)
        outcome = await asyncio.wait_for(rt.wait_for("work", "during-oom"), 10)
        assert outcome.status.value == "done"
        async with http.get(f"{api}/healthz") as resp:
            assert resp.status == 200


async def test_a_replica_answering_readonly_is_ridden_out(redis_server: RedisServer) -> None:
    b = RedisBroker(redis_server.url)
    await b.start()
    try:
        await b.declare_topic("t", capacity=100)
        await b.ensure_group("t", "g", visibility_timeout=30)
        await b.publish("t", msgs(3))
        # A failover in progress: this server now follows a master that is not there.
        admin(redis_server, "REPLICAOF", "127.0.0.1", str(free_port()))
        publishing = asyncio.create_task(b.publish("t", msgs(2, 3)))
        await eventually(lambda: "READONLY" in b.problem, "the broker reports READONLY")
        assert not b.healthy and not publishing.done()
        admin(redis_server, "REPLICAOF", "NO", "ONE")
        await asyncio.wait_for(publishing, 10)
        assert b.healthy and b.problem == ""
        got = await b.read("t", "g", "c", count=10, block=None)
        assert [m.data["n"] for m in got] == [0, 1, 2, 3, 4]
    finally:
        await b.aclose()


@pytest.mark.parametrize("password", [None, "wrong"], ids=["NOAUTH", "WRONGPASS"])
async def test_refused_credentials_fail_at_once_in_one_line(
    redis_server: RedisServer, password: str | None
) -> None:
    admin(redis_server, "CONFIG", "SET", "requirepass", PASSWORD)
    auth = f":{password}@" if password else ""
    b = RedisBroker(f"redis://{auth}127.0.0.1:{redis_server.port}/0", connect_timeout=60)
    with pytest.raises(Unavailable) as caught:
        await asyncio.wait_for(b.start(), 5)  # not retried until the connect deadline
    await b.aclose()
    message = str(caught.value)
    assert "\n" not in message and f"127.0.0.1:{redis_server.port}" in message
    assert ("NOAUTH" if password is None else "WRONGPASS") in message.upper()
    assert "wrong" not in message.replace("WRONGPASS", "")


async def test_a_topic_key_of_another_type_fails_a_publish_at_once(redis_url: str) -> None:
    b = RedisBroker(redis_url)
    await b.start()
    try:
        client = redis.Redis.from_url(redis_url.partition("?")[0])
        client.set(b.prefix + "jobs", "someone else's string")
        client.close()
        with pytest.raises(Unavailable, match="WRONGTYPE"):
            await asyncio.wait_for(b.publish("jobs", msgs(1)), 5)
    finally:
        await b.aclose()


async def test_an_unreachable_state_store_gives_up_at_its_deadline() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", Path("."), connect_timeout=0.5)
    with pytest.raises(StoreUnavailable, match="cannot reach redis"):
        await asyncio.wait_for(store.open(), 10)
    await store.aclose()


async def test_the_store_refusing_our_password_fails_at_once(redis_server: RedisServer) -> None:
    admin(redis_server, "CONFIG", "SET", "requirepass", PASSWORD)
    store = RedisStore(f"redis://:nope@127.0.0.1:{redis_server.port}/0", Path("."))
    with pytest.raises(Unavailable, match="WRONGPASS"):
        await asyncio.wait_for(store.open(), 5)
    await store.aclose()


async def test_status_and_logs_never_show_the_password(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    admin(redis_server, "CONFIG", "SET", "requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    doc = {
        "broker": url,
        "workdir": str(tmp_path / "work"),
        "topics": {"jobs": {}},
    }
    config = config_from_dict(doc, path="test.toml", base_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        async with Runtime(config) as rt:
            status = await rt.status()
            assert status.broker == f"redis://:***@127.0.0.1:{redis_server.port}/0"
            redis_server.stop()
            publishing = asyncio.create_task(rt.publish("jobs", {"n": 1}))
            await eventually(lambda: not rt.broker.healthy, "the broker sees the outage")
            redis_server.start()
            admin(redis_server, "CONFIG", "SET", "requirepass", PASSWORD)
            await asyncio.wait_for(publishing, 15)
    assert any("unreachable" in r.getMessage() for r in caplog.records)
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


def chute(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "chute", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def write_config(tmp_path: Path, broker: str, state: str = "") -> Path:
    path = tmp_path / "c.toml"
    state_line = f'state = "{state}"' if state else ""
    path.write_text(f"""
broker = "{broker}"
{state_line}
[topics.jobs]
[pools.work]
topic = "jobs"
executor = {{ type = "python", function = "tests.helpers.tasks:double", path = ["{REPO}"] }}
""")
    return path


def test_chute_run_with_a_wrong_password_exits_3_in_one_line(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    admin(redis_server, "CONFIG", "SET", "requirepass", PASSWORD)
    config = write_config(tmp_path, f"redis://:wrongpw@127.0.0.1:{redis_server.port}/0")
    ran = chute("run", str(config), "--until-idle", cwd=tmp_path, timeout=30)
    assert ran.returncode == 3, ran.stderr
    [line] = ran.stderr.strip().splitlines()
    assert line.startswith("chute: ") and "WRONGPASS" in line and "wrongpw" not in line


@pytest.mark.slow
@pytest.mark.parametrize("command", ["status", "run"])
def test_an_unreachable_redis_state_store_exits_3_within_the_deadline(
    tmp_path: Path, command: str
) -> None:
    port = free_port()
    config = write_config(tmp_path, "memory", state=f"redis://:pw@127.0.0.1:{port}/0")
    start = time.monotonic()
    done = chute(command, str(config), cwd=tmp_path, timeout=40)
    assert time.monotonic() - start < 30, "it waited far past its 10 s deadline"
    assert done.returncode == 3, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line == f"chute: cannot reach redis at redis://:***@127.0.0.1:{port}/0 (the state store)"


def test_a_redis_that_starts_refusing_us_mid_run_ends_chute_run_with_exit_3(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    config = write_config(tmp_path, redis_server.url)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "chute", "run", str(config)], cwd=tmp_path,
                            env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        client = redis.Redis(port=redis_server.port)
        try:
            deadline = time.monotonic() + 20
            while not client.exists("chute:jobs"):  # the pool's group made it: it runs
                assert time.monotonic() < deadline and proc.poll() is None, "did not start"
                time.sleep(0.05)
            # Redis comes back with a password the config does not know.
            client.execute_command("CONFIG", "SET", "requirepass", PASSWORD)
            client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        finally:
            client.close()
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 3, stderr
    assert stderr.strip().splitlines()[-1].startswith("chute: redis broker: redis at ")
    assert "Traceback" not in stderr
