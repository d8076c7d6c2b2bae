"""MQTT message -> executor start latency, against ``mosquitto_sub`` receiving the same messages.

A private Mosquitto on a free port. chute (an embedded ``Runtime``, memory
broker) subscribes with the ``mqtt`` source (QoS 1, manual PUBACK after the
topic accepted the message); a pool of 4 runs a python executor that records
when it starts. ``mosquitto_sub -q 1`` subscribes to the same topic as a
subprocess; the benchmark timestamps each line as it arrives. One message is
published every 5 ms (QoS 1); each latency is from just before the publish to
the executor's first line (chute) or to the line's arrival (mosquitto_sub).

    python bench/mqtt_latency.py [--samples 1000]

Floor: chute's p50 and p99 within 2 ms of mosquitto_sub's.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chute.config import config_from_dict
from chute.engine import Runtime

from bench._procs import free_port, percentile, wait_listening

TOPIC = "bench/latency"
started: dict[int, float] = {}
"""Executor start times by message number."""


def mark_start(data: Any) -> None:
    started[int(data["n"])] = time.perf_counter()


def start_mosquitto(folder: str) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    if binary is None or shutil.which("mosquitto_sub") is None:
        sys.exit(
            "mosquitto and mosquitto_sub are needed (apt-get install mosquitto mosquitto-clients)"
        )
    port = free_port()
    conf = Path(folder) / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    wait_listening(port)
    return proc, port


async def run(port: int, samples: int) -> tuple[list[float], list[float]]:
    doc = {
        "broker": "memory",
        "log_level": "warning",
        "sources": {"sensors": {"type": "mqtt", "topic": "readings", "port": port,
                                "topics": [TOPIC], "key_field": "n", "persistent": False,
                                "client_id": "chute-bench"}},
        "pools": {"work": {"topic": "readings", "concurrency": 4, "track": False,
                           "executor": {"type": "python", "function": "mqtt_latency:mark_start",
                                        "path": [str(Path(__file__).parent)]}}},
    }  # fmt: skip
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-p", str(port), "-q", "1", "-t", TOPIC, stdout=asyncio.subprocess.PIPE
    )
    received: dict[int, float] = {}

    async def read_sub() -> None:
        assert sub.stdout is not None
        while len(received) < samples + 20:
            line = await sub.stdout.readline()
            if not line:
                return
            received[json.loads(line)["n"]] = time.perf_counter()

    sent: dict[int, float] = {}
    async with Runtime(config_from_dict(doc, base_dir=tempfile.gettempdir())) as rt:
        # The executor imported this file as a module of its own (not __main__).
        marks: dict[int, float] = importlib.import_module("mqtt_latency").started
        source: Any = rt.sources["sensors"][0]
        await source.subscribed.wait()
        reader = asyncio.create_task(read_sub())
        await asyncio.sleep(0.5)  # mosquitto_sub has subscribed (it says nothing when it has)
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-pub") as client:
            for n in range(-20, samples):  # 20 to warm up, not counted
                payload = json.dumps({"n": n}).encode()
                sent[n] = time.perf_counter()
                await client.publish(TOPIC, payload, qos=1)
                await asyncio.sleep(0.005)
        pool = rt.pools["work"]
        while pool.counters.succeeded < samples + 20:
            await pool.changed.wait()
        await asyncio.wait_for(reader, 10)
    sub.terminate()
    await sub.wait()
    ours = [marks[n] - sent[n] for n in range(samples)]
    theirs = [received[n] - sent[n] for n in range(samples)]
    return ours, theirs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as folder:
        proc, port = start_mosquitto(folder)
        try:
            ours, theirs = await run(port, args.samples)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"MQTT message -> start, {args.samples} messages, one every 5 ms, QoS 1")
    for name, values in (("mosquitto_sub (line read)", theirs), ("chute (executor start)", ours)):
        p50, p99 = percentile(values, 50) * 1e3, percentile(values, 99) * 1e3
        print(f"  {name:26}: p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    d50 = (percentile(ours, 50) - percentile(theirs, 50)) * 1e3
    d99 = (percentile(ours, 99) - percentile(theirs, 99)) * 1e3
    print(
        f"  chute - mosquitto_sub     : p50 {d50:+6.2f} ms   p99 {d99:+6.2f} ms   (floor: within 2 ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
