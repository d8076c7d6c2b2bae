"""The local broker's file stays bounded under steady load (slow: a million messages)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from chute.message import Message
from chute_plugins.brokers.local import LocalBroker

TOTAL = 1_000_000
BATCH = 1000
LIMIT = 32 * 2**20
"""The stated bound: database and WAL together, with a 10,000-message backlog."""

PAYLOAD = {"path": "inbox/video-000000.mp4", "size": 1048576, "note": "x" * 40}


def _size(work: Path) -> int:
    return sum(p.stat().st_size for p in work.glob("broker.db*"))


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_million_messages_keep_the_file_under_32_mib(tmp_path: Path) -> None:
    broker = LocalBroker("local", workdir=tmp_path)
    await broker.start()
    largest = 0
    try:
        await broker.declare_topic("t", capacity=10_000)
        await broker.ensure_group("t", "g", visibility_timeout=60)

        async def produce() -> None:
            for _ in range(TOTAL // BATCH):
                await broker.publish("t", [Message(key="k", data=PAYLOAD) for _ in range(BATCH)])

        async def consume() -> None:
            nonlocal largest
            seen = 0
            while seen < TOTAL:
                got = await broker.read("t", "g", "c", count=BATCH, block=5.0)
                assert got, "the consumer starved"
                await broker.ack("t", "g", [m.id for m in got])
                seen += len(got)
                if seen % 50_000 < BATCH:
                    largest = max(largest, _size(tmp_path))

        await asyncio.gather(produce(), consume())
        stats = await broker.stats("t")
        assert stats.group("g").acked == TOTAL and stats.length == 0
    finally:
        await broker.aclose()
    print(f"\nlargest file during the run: {largest / 2**20:.1f} MiB")
    assert 0 < largest < LIMIT
