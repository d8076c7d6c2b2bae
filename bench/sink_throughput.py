"""Sink throughput for ``file`` and ``mqtt``, against a bare loop doing the same delivery.

chute: an embedded ``Runtime`` (memory broker) with one declared topic and
one sink reading it in batches of 100; the benchmark publishes N messages of
about 100 bytes in batches of 500. Figure: messages per second from the first
publish to the last message the sink settled (acked on the topic).

Baselines, in the same run:
- file: a loop that encodes the same NDJSON lines and appends them to a file,
  fsync per 100 lines (what the file sink does, without chute around it);
- mqtt: an aiomqtt client publishing the same payloads with QoS 1, 100 in
  flight at a time, each batch awaited (PUBACK) before the next.

    python bench/sink_throughput.py [--count 20000]

A private Mosquitto (free port) is started for the mqtt figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chute.config import config_from_dict
from chute.engine import Runtime
from chute.message import Message
from mqtt_latency import start_mosquitto

PAYLOAD = {"path": "thumbnails/video-000000.png", "size": 1048576, "note": "x" * 40}
BATCH = 100
PUBLISH = 500


def lines(count: int) -> list[bytes]:
    encoder = msgspec.json.Encoder()
    return [
        encoder.encode({"id": f"0-{i}", "key": "k", "data": PAYLOAD, "headers": {},
                        "created_at": time.time()}) + b"\n"
        for i in range(count)
    ]  # fmt: skip


async def bare_file(folder: str, count: int) -> float:
    path = Path(folder) / "bare.ndjson"
    begin = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for start in range(0, count, BATCH):
            os.write(fd, b"".join(lines(min(BATCH, count - start))))
            os.fsync(fd)
    finally:
        os.close(fd)
    return count / (time.perf_counter() - begin)


async def bare_mqtt(port: int, count: int) -> float:
    payload = msgspec.json.encode(PAYLOAD)
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-bare") as client:
        client.pending_calls_threshold = 1 << 20
        begin = time.perf_counter()
        for start in range(0, count, BATCH):
            n = min(BATCH, count - start)
            await asyncio.gather(
                *(client.publish(f"bench/out/{i}", payload, qos=1) for i in range(n))
            )
        return count / (time.perf_counter() - begin)


async def chute(sink: dict[str, Any], folder: str, count: int) -> float:
    doc = {
        "broker": "memory",
        "log_level": "warning",
        "topics": {"results": {"capacity": 200_000}},
        "sinks": {"out": {"topic": "results", "batch": BATCH, **sink}},
    }
    async with Runtime(config_from_dict(doc, base_dir=folder)) as rt:
        runner = rt.sinks["out"]
        begin = time.perf_counter()
        for start in range(0, count, PUBLISH):
            n = min(PUBLISH, count - start)
            await rt.publish_many("results", [Message(key="k", data=PAYLOAD) for _ in range(n)])
        while runner.counters.delivered < count:
            await runner.changed.wait()
        return count / (time.perf_counter() - begin)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.count
    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as folder:
        proc, port = start_mosquitto(folder)
        try:
            figures: dict[str, list[float]] = {}
            for r in range(args.rounds):  # interleaved: both see the same machine load
                file_sink = {"type": "file", "path": f"chute-{r}.ndjson", "max_bytes": 0}
                mqtt_sink = {"type": "mqtt", "port": port, "mqtt_topic": "bench/out/{key}"}
                runs = {
                    "file, bare loop": bare_file(folder, n),
                    "file, chute sink": chute(file_sink, folder, n),
                    "mqtt, bare loop": bare_mqtt(port, n),
                    "mqtt, chute sink": chute(mqtt_sink, folder, n),
                }
                for name, run in runs.items():
                    figures.setdefault(name, []).append(await run)
        finally:
            proc.terminate()
            proc.wait(10)
    best = {name: max(values) for name, values in figures.items()}
    print(f"Sink throughput, {n} messages of ~100 bytes, batches of {BATCH}, best of {args.rounds}")
    for kind in ("file", "mqtt"):
        bare, ours = best[f"{kind}, bare loop"], best[f"{kind}, chute sink"]
        print(f"  {kind}: bare loop {bare:9.0f} msg/s   chute sink {ours:9.0f} msg/s   "
              f"({ours / bare:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
