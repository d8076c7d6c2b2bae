"""The mqtt sink against a real Mosquitto, read back with mosquitto_sub."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio

from tests.mqtt_server import MosquittoServer
from tests.servers import require_program

from .conftest import dead_letters, drained, running, sink_config

RETRY = {"attempts": 100, "backoff": "50ms", "max_backoff": "200ms"}


def subscribe(server: MosquittoServer, topic: str) -> None:
    """Register a persistent QoS 1 session that keeps what is published from now on."""
    sub = require_program("mosquitto_sub", "mosquitto-clients")
    subprocess.run(
        [sub, "-h", "127.0.0.1", "-p", str(server.port), "-i", "reader", "-c", "-q", "1",
         "-t", topic, "-E"],
        check=True, timeout=10,
    )  # fmt: skip


def received(server: MosquittoServer, topic: str, count: int) -> list[tuple[str, str]]:
    """The ``count`` messages the session kept, as (topic, payload)."""
    sub = require_program("mosquitto_sub", "mosquitto-clients")
    out = subprocess.run(
        [sub, "-h", "127.0.0.1", "-p", str(server.port), "-i", "reader", "-c", "-q", "1",
         "-t", topic, "-v", "-C", str(count), "-W", "20"],
        check=True, timeout=30, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [tuple(line.split(" ", 1)) for line in out.splitlines()]  # type: ignore[misc]


def sink(server: MosquittoServer, **extra: object) -> dict[str, object]:
    return {"type": "mqtt", "host": "127.0.0.1", "port": server.port,
            "mqtt_topic": "cams/{data.camera}/thumbs", "retry": RETRY, **extra}  # fmt: skip


async def test_publishes_each_message_on_its_templated_topic(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    subscribe(mosquitto, "cams/#")
    async with running(sink_config(tmp_path, sink(mosquitto)), tmp_path) as rt:
        for i in range(200):
            await rt.publish("in", {"camera": f"c{i % 3}", "path": f"/t/{i}.jpg"}, key=f"k{i}")
        await rt.publish("in", {"path": "/t/none.jpg"}, key="no-camera")
        await drained(rt)
        dead = await dead_letters(rt)
    got = received(mosquitto, "cams/#", 200)
    assert sorted(json.loads(payload)["path"] for _, payload in got) == sorted(
        f"/t/{i}.jpg" for i in range(200)
    )
    assert all(topic == f"cams/{json.loads(payload)['camera']}/thumbs" for topic, payload in got)
    # No camera: the topic cannot be made, so the message can never be published.
    assert [m.key for m in dead] == ["no-camera"]
    assert "data.camera" in dead[0].headers["chute-error"]


async def test_a_broker_restart_loses_nothing(tmp_path: Path, mosquitto: MosquittoServer) -> None:
    subscribe(mosquitto, "cams/#")
    async with running(sink_config(tmp_path, sink(mosquitto)), tmp_path) as rt:
        for i in range(50):
            await rt.publish("in", {"camera": "a", "n": i})
        await drained(rt)
        mosquitto.stop()
        for i in range(50, 100):
            await rt.publish("in", {"camera": "a", "n": i})
        await anyio.sleep(0.5)  # let the sink meet the outage
        assert rt.sinks["out"].stats().retried > 0
        mosquitto.start()
        await drained(rt)
        assert await dead_letters(rt) == []
    numbers = {json.loads(payload)["n"] for _, payload in received(mosquitto, "cams/#", 100)}
    assert numbers == set(range(100))
