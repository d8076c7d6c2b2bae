"""End-to-end throughput over NATS JetStream, against a hand-written nats-py loop.

chute: one node (an embedded ``Runtime``) with the nats broker; the benchmark
publishes N messages of about 100 bytes in batches of 500; a pool reads them
in batches of 500, runs a python no-op executor on each, and acks.
Figure: messages per second from the first publish to the last ack.

Baseline, in the same run, against the same server: a hand-written nats-py
loop doing the same publish/fetch/ack with the client's own idioms:
``publish_async`` in batches of 500, a durable pull consumer, ``fetch(500)``
and ``msg.ack()`` on each.

    python bench/nats_throughput.py [--count 20000] [--url nats://127.0.0.1:4222]

Without ``--url`` it starts a private ``nats-server -js`` (file storage in a
temporary folder) on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chute.config import config_from_dict
from chute.engine import Runtime
from chute.message import Message, encode_message
from chute_plugins.brokers.nats_jetstream import JetStreamBroker
from topic_throughput import PAYLOAD, drain

from bench._procs import free_port, wait_listening

BATCH = 500


def noop(data: Any) -> None:
    return None


async def baseline(url: str, count: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.x"],
                                     retention=RetentionPolicy.INTEREST))  # fmt: skip
    await js.add_consumer(name, ConsumerConfig(durable_name="g", ack_policy=AckPolicy.EXPLICIT,
                                               max_ack_pending=-1))  # fmt: skip
    psub = await js.pull_subscribe_bind("g", name)
    payload = encode_message(Message(key="k", data=PAYLOAD, created_at=time.time()))

    async def produce() -> None:
        for start in range(0, count, BATCH):
            for _ in range(min(BATCH, count - start)):
                await js.publish_async(f"{name}.x", payload)
            await js.publish_async_completed()

    async def consume() -> None:
        seen = 0
        while seen < count:
            try:
                msgs = await psub.fetch(BATCH, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                noop(msg.data)
                await msg.ack()
            seen += len(msgs)

    begin = time.perf_counter()
    await asyncio.gather(produce(), consume())
    await nc.flush()
    elapsed = time.perf_counter() - begin
    await js.delete_stream(name)
    await nc.close()
    return count / elapsed


async def chute(url: str, count: int) -> float:
    broker_url = f"{url}?prefix=b{uuid.uuid4().hex[:8]}"
    doc = {
        "broker": broker_url,
        "log_level": "warning",
        "topics": {"jobs": {"capacity": 100_000}},
        "pools": {
            "work": {
                "topic": "jobs", "concurrency": BATCH, "batch": BATCH, "track": False,
                "executor": {"type": "python", "function": "nats_throughput:noop",
                             "path": [str(Path(__file__).parent)]},
            }
        },
    }  # fmt: skip
    async with Runtime(config_from_dict(doc, base_dir=tempfile.gettempdir())) as rt:
        rate = await drain(rt, count, BATCH)
    cleaner = JetStreamBroker(broker_url)
    await cleaner.start()
    await cleaner.delete_all()
    await cleaner.aclose()
    return rate


def start_server() -> tuple[subprocess.Popen[bytes], str, tempfile.TemporaryDirectory[str]]:
    binary = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    if binary is None:
        sys.exit("nats-server is not installed (apt-get install nats-server)")
    port = free_port()
    folder = tempfile.TemporaryDirectory(prefix="bench-nats-")
    proc = subprocess.Popen([binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", folder.name],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_listening(port)
    return proc, f"nats://127.0.0.1:{port}", folder


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--url", default="")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    proc = folder = None
    url = args.url
    if not url:
        proc, url, folder = start_server()
    try:
        base, ours = [], []
        for _ in range(args.rounds):  # interleaved: both see the same machine load
            base.append(await baseline(url, args.count))
            ours.append(await chute(url, args.count))
        b, c = max(base), max(ours)
        print(
            f"JetStream end to end, {args.count} messages, batches of {BATCH}, best of {args.rounds}"
        )
        print(f"  hand-written nats-py loop : {b:10.0f} msg/s")
        print(f"  chute (pool + no-op)      : {c:10.0f} msg/s   ({c / b:.2f}x, floor 1.0x)")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        if folder is not None:
            folder.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
