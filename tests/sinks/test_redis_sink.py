"""The redis sink against a real redis-server: every message in the stream, across an outage."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
import redis

from tests.redis_server import RedisServer

from .conftest import dead_letters, drained, running, sink_config

pytestmark = pytest.mark.redis

RETRY = {"attempts": 100, "backoff": "50ms", "max_backoff": "200ms"}


def entries(server: RedisServer, stream: str) -> list[dict[str, str]]:
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        return [fields for _, fields in client.xrange(stream)]
    finally:
        client.close()


async def test_each_message_is_one_stream_entry(tmp_path: Path, redis_server: RedisServer) -> None:
    doc = sink_config(tmp_path, {"type": "redis", "url": redis_server.url, "stream": "results"})
    async with running(doc, tmp_path) as rt:
        for i in range(300):
            await rt.publish("in", {"n": i}, key=f"k{i}")
        await drained(rt)
    got = entries(redis_server, "results")
    assert [json.loads(e["data"])["n"] for e in got] == list(range(300))
    assert got[7]["key"] == "k7" and got[7]["chute-id"]


async def test_redis_down_then_back_loses_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    doc = sink_config(
        tmp_path,
        {"type": "redis", "url": redis_server.url, "stream": "results", "retry": RETRY},
    )
    async with running(doc, tmp_path) as rt:
        for i in range(100):
            await rt.publish("in", i)
        await drained(rt)
        redis_server.stop()
        for i in range(100, 200):
            await rt.publish("in", i)
        await anyio.sleep(0.5)  # let the sink meet the outage
        assert rt.sinks["out"].stats().retried > 0
        redis_server.start()
        await drained(rt)
        assert await dead_letters(rt) == []
    numbers = [json.loads(e["data"]) for e in entries(redis_server, "results")]
    assert sorted(set(numbers)) == list(range(200))
