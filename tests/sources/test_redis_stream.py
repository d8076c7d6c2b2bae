"""The redis source: entries written by redis-cli become messages, acked only once published."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis
from chute.config import dec_hook
from chute.context import PluginContext
from chute.errors import ConfigError
from chute.message import Message
from chute_plugins.brokers.memory import MemoryBroker
from chute_plugins.sources.redis_stream import RedisStreamOptions, RedisStreamSource

from .conftest import until_caught_up

pytestmark = pytest.mark.redis


def cli_xadd(url: str, stream: str, *fields: str) -> None:
    """Write an entry the way another program would: redis-cli, argv only."""
    subprocess.run(["redis-cli", "-u", url, "XADD", stream, "*", *fields], check=True,
                   capture_output=True, timeout=10)  # fmt: skip


def source(
    url: str, stream: str, tmp_path: Path, node: str = "n1", **options: object
) -> RedisStreamSource:
    opts = msgspec.convert({"url": url, "stream": stream, **options}, RedisStreamOptions,
                           dec_hook=dec_hook)  # fmt: skip
    ctx = PluginContext(name="orders", topic="orders", base_dir=tmp_path, workdir=tmp_path,
                        node=node, broker=MemoryBroker())  # fmt: skip
    return RedisStreamSource(opts, ctx)


class Collector:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.release = anyio.Event()
        self.release.set()
        self.called = anyio.Event()
        self.want = 0
        self.enough = anyio.Event()

    async def emit(self, messages: Sequence[Message]) -> list[str]:
        self.called.set()
        await self.release.wait()
        self.messages.extend(messages)
        if len(self.messages) >= self.want:
            self.enough.set()
        return [str(i) for i in range(len(messages))]


async def test_entries_from_redis_cli_become_messages_and_bad_ones_are_set_aside(
    base_url: str, stream: str, raw: aioredis.Redis, tmp_path: Path
) -> None:
    cli_xadd(base_url, stream, "order", "o-1", "json", '{"total": 12.5}')
    cli_xadd(base_url, stream, "order", "o-2", "json", "{broken")
    cli_xadd(base_url, stream, "order", "o-3")
    cli_xadd(base_url, stream, "order", "o-4", "json", '{"total": 3}')
    src = source(base_url, stream, tmp_path, data_field="json", key_field="order")
    out = Collector()
    await until_caught_up(src, out.emit)
    assert [(m.key, m.data) for m in out.messages] == [("o-1", {"total": 12.5}),
                                                       ("o-4", {"total": 3})]  # fmt: skip
    assert out.messages[0].headers["redis-stream"] == stream
    assert src.invalid == 2
    dead = await raw.xrange(stream + ":dead")
    assert [(f["order"], f["chute-error"].split(":")[0]) for _, f in dead] == [
        ("o-2", "bad JSON"),
        ("o-3", "no field 'json'"),
    ]
    assert (await raw.xpending(stream, "chute-orders"))["pending"] == 0


async def test_an_entry_is_acked_only_after_the_publish_and_comes_back_after_a_crash(
    base_url: str, stream: str, raw: aioredis.Redis, tmp_path: Path
) -> None:
    cli_xadd(base_url, stream, "n", "1")
    cli_xadd(base_url, stream, "n", "2")
    src = source(base_url, stream, tmp_path)
    stuck = Collector()
    stuck.release = anyio.Event()  # the topic is full: publish does not return
    async with anyio.create_task_group() as tg:
        tg.start_soon(src.run, stuck.emit)
        with anyio.fail_after(10):
            await stuck.called.wait()
        assert (await raw.xpending(stream, "chute-orders"))["pending"] == 2
        tg.cancel_scope.cancel()  # the process dies before the publish is accepted
    await src.aclose()
    assert stuck.messages == []

    again = source(base_url, stream, tmp_path)  # the same node, restarted
    out = Collector()
    await until_caught_up(again, out.emit)
    assert [m.data for m in out.messages] == [{"n": "1"}, {"n": "2"}]
    assert (await raw.xpending(stream, "chute-orders"))["pending"] == 0


async def test_entries_left_by_a_dead_node_are_taken_over(
    base_url: str, stream: str, raw: aioredis.Redis, tmp_path: Path
) -> None:
    await raw.xgroup_create(stream, "chute-orders", "0", mkstream=True)
    cli_xadd(base_url, stream, "n", "1")
    await raw.xreadgroup("chute-orders", "dead-node", {stream: ">"})  # read, never acked
    cli_xadd(base_url, stream, "n", "2")
    src = source(base_url, stream, tmp_path, node="n2", claim_after="200ms")
    out = Collector()
    out.want = 2
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(src.run, out.emit)
            with anyio.fail_after(10):
                await out.enough.wait()
            tg.cancel_scope.cancel()
    finally:
        await src.aclose()
    assert sorted(m.data["n"] for m in out.messages) == ["1", "2"]
    assert (await raw.xpending(stream, "chute-orders"))["pending"] == 0


@pytest.mark.parametrize(
    ("options", "problem"),
    [({"batch": 0}, "batch: must be at least 1"), ({"start": "soon"}, "start: expected")],
)
def test_bad_options_are_config_errors(
    base_url: str, stream: str, tmp_path: Path, options: dict[str, object], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        source(base_url, stream, tmp_path, **options)
