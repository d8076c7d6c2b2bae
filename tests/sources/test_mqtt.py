"""The mqtt source against a real Mosquitto, fed by mosquitto_pub."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
from chute import Runtime
from chute.config import config_from_dict

from tests.mqtt_server import MosquittoServer
from tests.servers import require_program


def config(tmp_path: Path, server: MosquittoServer, **source: Any) -> Any:
    doc = {
        "workdir": str(tmp_path / "work"),
        "shutdown_grace": "5s",
        "topics": {"cams.dead": {}},
        "sources": {
            "cams": {"type": "mqtt", "topic": "frames", "port": server.port,
                     "topics": ["cams/+/frames"], "client_id": "chute-test", **source},
        },
        "sinks": {
            "frames": {"type": "file", "topic": "frames", "path": "frames.ndjson"},
            "dead": {"type": "file", "topic": "cams.dead", "path": "dead.ndjson"},
        },
    }  # fmt: skip
    return config_from_dict(doc, path="t.toml", base_dir=str(tmp_path))


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def until_lines(path: Path, count: int) -> list[dict[str, Any]]:
    """The file's lines once it holds ``count`` (the sink writes as messages arrive)."""
    with anyio.fail_after(30):
        while len(got := lines(path)) < count:  # noqa: ASYNC110 (a file: no event to wait on)
            await anyio.sleep(0.05)
    return got


def publish_file(server: MosquittoServer, topic: str, payload: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "payload.bin"
    raw.write_bytes(payload)
    pub = require_program("mosquitto_pub", "mosquitto-clients")
    subprocess.run([pub, "-p", str(server.port), "-q", "1", "-t", topic, "-f", str(raw)],
                   check=True, timeout=10)  # fmt: skip


async def test_each_mqtt_message_becomes_one_chute_message(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    async with Runtime(config(tmp_path, mosquitto, key_field="frame.id")) as rt:
        source = rt.sources["cams"][0]
        with anyio.fail_after(10):
            await source.subscribed.wait()  # type: ignore[attr-defined]
        payloads = [json.dumps({"frame": {"id": f"f{i}"}, "n": i}) for i in range(200)]
        await anyio.to_thread.run_sync(lambda: mosquitto.pub("cams/c1/frames", *payloads))
        got = await until_lines(tmp_path / "frames.ndjson", 200)
    assert [m["data"]["n"] for m in got] == list(range(200))
    assert [m["key"] for m in got] == [f"f{i}" for i in range(200)]
    assert got[0]["headers"]["mqtt-topic"] == "cams/c1/frames"


async def test_bad_payloads_are_dead_lettered_with_their_bytes(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    async with Runtime(config(tmp_path, mosquitto, key_field="id")) as rt:
        with anyio.fail_after(10):
            await rt.sources["cams"][0].subscribed.wait()  # type: ignore[attr-defined]
        bad = [b"not json {", b"\xff\xfe binary", b'{"no_id": 1}', b'{"id": {"nested": 1}}']
        for payload in bad:
            await anyio.to_thread.run_sync(
                publish_file, mosquitto, "cams/c2/frames", payload, tmp_path
            )
        await anyio.to_thread.run_sync(lambda: mosquitto.pub("cams/c2/frames", '{"id": "good"}'))
        good = await until_lines(tmp_path / "frames.ndjson", 1)
        dead = await until_lines(tmp_path / "dead.ndjson", 4)
    import base64

    assert [m["key"] for m in good] == ["good"]
    assert [base64.b64decode(m["data"]["payload_base64"]) for m in dead] == bad
    reasons = [m["headers"]["chute-error"] for m in dead]
    assert "not JSON" in reasons[0] and "not UTF-8" in reasons[1]
    assert "no field 'id'" in reasons[2] and "not a usable key" in reasons[3]


async def test_messages_published_while_chute_is_stopped_arrive_after_it_starts(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    async with Runtime(config(tmp_path, mosquitto, key_field="n")) as rt:
        with anyio.fail_after(10):
            await rt.sources["cams"][0].subscribed.wait()  # type: ignore[attr-defined]
    # chute is stopped: the MQTT broker keeps these for its session.
    payloads = [json.dumps({"n": i}) for i in range(300)]
    await anyio.to_thread.run_sync(lambda: mosquitto.pub("cams/c3/frames", *payloads))
    async with Runtime(config(tmp_path, mosquitto, key_field="n")):
        got = await until_lines(tmp_path / "frames.ndjson", 300)
    assert sorted(m["data"]["n"] for m in got) == list(range(300))


async def test_the_broker_going_away_and_back_is_ridden_out(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    async with Runtime(config(tmp_path, mosquitto, key_field="n", max_backoff="200ms")) as rt:
        source: Any = rt.sources["cams"][0]
        with anyio.fail_after(10):
            await source.subscribed.wait()
        await anyio.to_thread.run_sync(lambda: mosquitto.pub("cams/a/frames", '{"n": 1}'))
        await until_lines(tmp_path / "frames.ndjson", 1)
        mosquitto.restart()
        await anyio.to_thread.run_sync(lambda: mosquitto.pub("cams/a/frames", '{"n": 2}'))
        got = await until_lines(tmp_path / "frames.ndjson", 2)
        assert source.healthy
    assert [m["data"]["n"] for m in got] == [1, 2]


async def test_no_puback_until_the_chute_topic_accepted_the_message(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    """A message whose publish to the chute topic never returned comes again next time."""
    from chute_plugins.sources.mqtt import MqttSource

    from .conftest import build, make_context, running

    options = {"port": mosquitto.port, "topics": ["acks/#"], "client_id": "ack-test",
               "key_field": "n"}  # fmt: skip
    ctx = make_context(tmp_path, "acks")
    await ctx.broker.start()
    accepting = anyio.Event()  # never set: the chute topic never accepts
    handed: list[Any] = []
    handed_over = anyio.Event()

    async def stuck(batch: Any) -> list[str]:
        handed.extend(batch)
        handed_over.set()
        await accepting.wait()
        return []

    first = build(MqttSource, options, ctx)
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run, stuck)
        with anyio.fail_after(10):
            await first.subscribed.wait()
        await anyio.to_thread.run_sync(lambda: mosquitto.pub("acks/x", '{"n": 1}', '{"n": 2}'))
        with anyio.fail_after(10):
            await handed_over.wait()  # received; the publish never returns
        tg.cancel_scope.cancel()  # chute goes away with the PUBACKs unsent

    async with running(build(MqttSource, options, ctx)) as got:
        await got.wait_for(lambda: len(got.messages) >= 2)
    assert sorted(m.key for m in got.messages) == ["1", "2"]
