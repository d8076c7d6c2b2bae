"""The mqtt source over TLS with a user name and password, against a Mosquitto that requires both."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from chute import Runtime
from chute.config import config_from_dict

from tests.mqtt_server import MosquittoServer
from tests.servers import require_program

from .test_mqtt import until_lines


def _certificates(folder: Path) -> None:
    """A CA, and a server certificate for 127.0.0.1 signed by it."""
    openssl = require_program("openssl", "openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (folder / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt")  # fmt: skip


@pytest.fixture
def secure_mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    certs = tmp_path / "certs"
    certs.mkdir()
    _certificates(certs)
    passwd = require_program("mosquitto_passwd", "mosquitto")
    subprocess.run([passwd, "-c", "-b", str(certs / "passwords"), "camera", "s3cret"],
                   check=True, timeout=30)  # fmt: skip
    listener = (
        f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\n"
        f"keyfile {certs / 'server.key'}\nallow_anonymous false\n"
        f"password_file {certs / 'passwords'}\n"
    )
    with MosquittoServer(listener=listener) as server:
        yield server


def _config(tmp_path: Path, server: MosquittoServer, password_env: str) -> Any:
    doc = {
        "workdir": str(tmp_path / "work"),
        "topics": {"cams.dead": {}},
        "sources": {"cams": {
            "type": "mqtt", "topic": "frames", "port": server.port, "topics": ["cams/#"],
            "client_id": "chute-secure", "ca_file": "certs/ca.crt", "username": "camera",
            "password_env": password_env, "max_backoff": "200ms",
        }},
        "sinks": {"frames": {"type": "file", "topic": "frames", "path": "frames.ndjson"}},
    }  # fmt: skip
    return config_from_dict(doc, path="t.toml", base_dir=str(tmp_path))


def _publish(server: MosquittoServer, certs: Path, *payloads: str) -> None:
    pub = require_program("mosquitto_pub", "mosquitto-clients")
    subprocess.run(
        [pub, "-h", "127.0.0.1", "-p", str(server.port), "--cafile", str(certs / "ca.crt"),
         "-u", "camera", "-P", "s3cret", "-q", "1", "-t", "cams/a", "-l"],
        input="".join(p + "\n" for p in payloads).encode(), check=True, timeout=30,
    )  # fmt: skip


async def test_tls_and_password_from_the_environment(
    tmp_path: Path, secure_mosquitto: MosquittoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHUTE_TEST_MQTT_PASSWORD", "s3cret")
    async with Runtime(_config(tmp_path, secure_mosquitto, "CHUTE_TEST_MQTT_PASSWORD")) as rt:
        with anyio.fail_after(10):
            await rt.sources["cams"][0].subscribed.wait()  # type: ignore[attr-defined]
        payloads = [json.dumps({"n": i}) for i in range(20)]
        await anyio.to_thread.run_sync(
            lambda: _publish(secure_mosquitto, tmp_path / "certs", *payloads)
        )
        got = await until_lines(tmp_path / "frames.ndjson", 20)
    assert [m["data"]["n"] for m in got] == list(range(20))


async def test_a_wrong_password_is_refused_and_retried_not_fatal(
    tmp_path: Path, secure_mosquitto: MosquittoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHUTE_TEST_MQTT_PASSWORD", "wrong")
    async with Runtime(_config(tmp_path, secure_mosquitto, "CHUTE_TEST_MQTT_PASSWORD")) as rt:
        source: Any = rt.sources["cams"][0]
        with anyio.move_on_after(1.5):
            await source.subscribed.wait()
        assert not source.subscribed.is_set() and not source.healthy
