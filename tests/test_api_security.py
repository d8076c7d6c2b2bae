"""The runtime's API against a hostile web page and careless clients (issue 19's reproductions)."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from chute.config import config_from_dict
from chute.engine import Runtime

from tests.servers import free_port, wait_for_port

REPO = Path(__file__).resolve().parent.parent
POOL = {
    "topic": "jobs",
    "executor": {"type": "python", "function": "tests.helpers.tasks:double"},
    "track": False,
}


def make_config(tmp_path: Path, **api: Any) -> Any:
    doc = {
        "workdir": str(tmp_path / "work"),
        "api": {"enabled": True, "port": 0, **api},
        "topics": {"jobs": {}},
        "pools": {"work": POOL},
    }
    return config_from_dict(doc, path="test.toml", base_dir=str(tmp_path))


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[Runtime, str, str]]:
    """A runtime with its API on loopback and no token in the config: (runtime, url, token)."""
    async with Runtime(make_config(tmp_path)) as rt:
        token_file = tmp_path / "work" / "api.token"
        token = token_file.read_text().strip() if token_file.exists() else ""
        yield rt, f"http://127.0.0.1:{rt.api_port}", token


def auth(token: str, content_type: str = "application/json") -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": content_type}


async def test_without_a_configured_token_one_is_made_private_in_the_working_folder(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (_, _, token):
        path = tmp_path / "work" / "api.token"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(token) >= 32


async def test_the_csrf_reproduction_is_refused_and_runs_nothing(
    tmp_path: Path,
) -> None:
    """The issue's curl: text/plain, a foreign Origin and Host, no token."""
    async with serving(tmp_path) as (rt, url, _):
        port = rt.api_port
        headers = {
            "Content-Type": "text/plain",
            "Origin": "http://evil.example",
            "Host": f"evil.example:{port}",
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/v1/topics/jobs/messages", data=b'{"data":{"n":1}}', headers=headers
            ) as resp,
        ):
            assert resp.status in (403, 421), await resp.text()
        assert rt.pools["work"].counters.succeeded == 0


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({}, 401, "bearer token"),
        ({"Authorization": "Bearer wrong"}, 401, "bearer token"),
        ({"Host": "evil.example"}, 421, "loopback"),
        ({"Host": "attacker.example:80"}, 421, "loopback"),
        ({"Origin": "http://evil.example"}, 403, "cross-origin"),
        ({"Origin": "null"}, 403, "cross-origin"),
    ],
)
async def test_publishing_needs_a_token_a_loopback_host_and_no_foreign_origin(
    tmp_path: Path, headers: dict[str, str], status: int, reason: str
) -> None:
    async with serving(tmp_path) as (rt, url, token):
        sent = {**auth(token), **headers} if "Authorization" not in headers else headers
        if not headers:
            sent = {"Content-Type": "application/json"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/v1/topics/jobs/messages", data=b'{"n": 1}', headers=sent) as resp,
        ):
            assert resp.status == status
            assert reason in (await resp.json())["error"]
        assert rt.pools["work"].counters.succeeded == 0


async def test_status_is_refused_to_a_rebound_dns_name(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (_, url, _), aiohttp.ClientSession() as http:
        async with http.get(f"{url}/v1/status", headers={"Host": "rebind.example"}) as resp:
            assert resp.status == 421
        async with http.get(f"{url}/v1/status", headers={"Host": "localhost"}) as resp:
            assert resp.status == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_publishing_takes_only_json_or_ndjson(tmp_path: Path, content_type: str) -> None:
    async with serving(tmp_path) as (_, url, token):
        headers = {"Authorization": f"Bearer {token}"}
        if content_type:
            headers["Content-Type"] = content_type
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/v1/topics/jobs/messages", data=b'{"n": 1}', headers=headers) as resp,
        ):
            assert resp.status == 415


async def test_json_and_ndjson_with_the_token_are_published_and_run(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (rt, url, token):
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/v1/topics/jobs/messages", data=b'{"data": {"n": 1}, "key": "a"}',
                headers=auth(token),
            ) as resp:  # fmt: skip
                assert resp.status == 201
            lines = b'{"data": {"n": 2}, "key": "b"}\n{"data": {"n": 3}, "key": "c"}\n'
            async with http.post(
                f"{url}/v1/topics/jobs/messages", data=lines,
                headers=auth(token, "application/x-ndjson"),
            ) as resp:  # fmt: skip
                assert resp.status == 201
                assert len((await resp.json())["ids"]) == 2
        with anyio.fail_after(10):
            assert (await rt.wait_for("work", "c")).result == {"n": 6}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'{"data": ' + b"[" * 100 + b"]" * 100 + b"}", "nested deeper"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"", "empty body"),
    ],
)
async def test_malformed_bodies_get_400_with_a_reason(
    tmp_path: Path, body: bytes, reason: str
) -> None:
    async with (
        serving(tmp_path) as (_, url, token),
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/topics/jobs/messages", data=body, headers=auth(token)) as resp,
    ):
        assert resp.status == 400
        assert reason in (await resp.json())["error"]


async def test_a_body_over_the_limit_is_refused_before_it_is_read(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (_, url, token):
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
            sock.sendall(
                b"POST /v1/topics/jobs/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + token.encode() + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
            )
            sock.settimeout(10)
            answer = await anyio.to_thread.run_sync(sock.recv, 4096)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


async def test_a_chunked_body_over_the_limit_is_refused(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (_, url, token):

        async def chunks() -> AsyncIterator[bytes]:
            block = b"[" + b"1," * (512 * 1024) + b"1]\n"
            for _ in range(40):  # about 40 MiB, over the 16 MiB limit
                yield block

        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/v1/topics/jobs/messages", data=chunks(), headers=auth(token)) as resp,
        ):
            assert resp.status == 413


async def test_publishing_to_dead_letters_is_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as (rt, url, token):
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/v1/topics/work.dead/messages", data=b'{"n":1}', headers=auth(token)
            ) as r,
        ):
            assert r.status == 403
            assert "dead letters" in (await r.json())["error"]
        stats = await rt.broker.stats("work.dead")
        assert stats.length == 0


async def test_marking_a_shard_needs_the_token(tmp_path: Path) -> None:
    async with (
        serving(tmp_path) as (_, url, _),
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/operators/x/shards/0", json={"down": True}) as resp,
    ):
        assert resp.status == 401


async def test_a_connection_that_never_finishes_its_request_is_closed(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (_, url, _):
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
            sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line, ever
            sock.settimeout(60)
            started = time.monotonic()
            closed = await anyio.to_thread.run_sync(sock.recv, 100)
        assert closed == b""
        assert time.monotonic() - started < 59


def test_half_open_connections_under_a_low_descriptor_limit_do_not_stop_the_api(
    tmp_path: Path,
) -> None:
    """The issue's 220 idle connections against a runtime limited to 128 descriptors."""
    port = free_port()
    config = tmp_path / "chute.toml"
    config.write_text(
        f"[api]\nenabled = true\nport = {port}\n[topics.jobs]\n[pools.work]\n"
        'topic = "jobs"\ntrack = false\n'
        'executor = { type = "python", function = "tests.helpers.tasks:double" }\n'
    )

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    proc = subprocess.Popen(
        [sys.executable, "-m", "chute", "run", str(config)], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=low_limit,
    )  # fmt: skip
    idle: list[socket.socket] = []
    try:
        wait_for_port(port, proc)
        for _ in range(220):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the API stopped answering"
                time.sleep(0.2)
    finally:
        for sock in idle:
            sock.close()
        proc.terminate()
        proc.communicate(timeout=30)


async def test_a_configured_token_guards_reads_too(tmp_path: Path) -> None:
    async with Runtime(make_config(tmp_path, token="s3cret")) as rt:
        url = f"http://127.0.0.1:{rt.api_port}"
        assert not (tmp_path / "work" / "api.token").exists()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/v1/status") as resp:
                assert resp.status == 401
            async with http.get(
                f"{url}/v1/status", headers={"Authorization": "Bearer s3cret"}
            ) as resp:
                assert resp.status == 200
            async with http.get(f"{url}/healthz") as resp:
                assert resp.status == 200


def test_token_file_is_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    from chute.api_guard import ensure_token, read_token

    old = os.umask(0)
    try:
        (tmp_path / "api.token").write_text("old")
        os.chmod(tmp_path / "api.token", 0o666)
        token = ensure_token(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "api.token").stat().st_mode) == 0o600
    assert read_token(tmp_path) == token != "old"
