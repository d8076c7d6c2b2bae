"""The redis source across restarts: one stable consumer per node, dead consumers tidied."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec
import pytest
import redis.asyncio as aioredis
from chute.config import config_from_dict, dec_hook
from chute.context import PluginContext
from chute.engine import Runtime
from chute.message import Message
from chute_plugins.brokers.memory import MemoryBroker
from chute_plugins.sources.redis_stream import RedisStreamOptions, RedisStreamSource

from .conftest import until_caught_up

pytestmark = pytest.mark.redis

GROUP = "chute-orders"


def source(
    url: str, stream: str, tmp_path: Path, *, pid: int, **options: object
) -> RedisStreamSource:
    """The source of node ``edge-1`` as the runtime of process ``pid`` builds it."""
    opts = msgspec.convert({"url": url, "stream": stream, **options}, RedisStreamOptions,
                           dec_hook=dec_hook)  # fmt: skip
    ctx = PluginContext(name="orders", topic="orders", base_dir=tmp_path, workdir=tmp_path,
                        node=f"edge-1-{pid}", broker=MemoryBroker(), stable_node="edge-1")  # fmt: skip
    return RedisStreamSource(opts, ctx)


class Gate:
    """An ``emit`` that takes messages only once opened (closed: the topic is full)."""

    def __init__(self, open_: bool) -> None:
        self.messages: list[Message] = []
        self.opened = anyio.Event()
        if open_:
            self.opened.set()
        self.called = anyio.Event()

    async def __call__(self, messages: Sequence[Message]) -> list[str]:
        self.called.set()
        await self.opened.wait()
        self.messages.extend(messages)
        return [str(i) for i in range(len(messages))]


async def test_a_restarted_node_rereads_its_own_pending_entries_at_once(
    base_url: str, stream: str, raw: aioredis.Redis, tmp_path: Path
) -> None:
    for n in range(3):
        await raw.xadd(stream, {"n": str(n)})
    first = source(base_url, stream, tmp_path, pid=100)
    stuck = Gate(open_=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(first.run, stuck)
        with anyio.fail_after(10):
            await stuck.called.wait()
        tg.cancel_scope.cancel()  # the process dies holding three entries
    await first.aclose()

    # The node comes back as another process; claim_after is long, so only
    # reading its own pending entries at start gets them back now.
    again = source(base_url, stream, tmp_path, pid=200, claim_after="10m")
    out = Gate(open_=True)
    await until_caught_up(again, out)
    assert [m.data["n"] for m in out.messages] == ["0", "1", "2"]
    consumers = await raw.xinfo_consumers(stream, GROUP)
    assert [c["name"] for c in consumers] == ["edge-1"]
    assert (await raw.xpending(stream, GROUP))["pending"] == 0


async def test_consumers_long_idle_with_nothing_pending_are_removed(
    base_url: str, stream: str, raw: aioredis.Redis, tmp_path: Path
) -> None:
    await raw.xgroup_create(stream, GROUP, "0", mkstream=True)
    await raw.xadd(stream, {"n": "0"})
    await raw.xreadgroup(GROUP, "holding-1234", {stream: ">"})  # pending: must stay
    for name in ("gone-1", "gone-2"):
        await raw.execute_command("XGROUP", "CREATECONSUMER", stream, GROUP, name)
    await asyncio.sleep(0.3)
    src = source(base_url, stream, tmp_path, pid=300, forget_after="200ms", claim_after="10m")
    out = Gate(open_=True)
    await until_caught_up(src, out)
    names = {c["name"] for c in await raw.xinfo_consumers(stream, GROUP)}
    assert names == {"holding-1234", "edge-1"}


def test_the_runtime_gives_plugins_a_node_name_that_survives_a_restart(tmp_path: Path) -> None:
    def context_of(doc: dict[str, object]) -> PluginContext:
        doc = {"broker": "memory", "workdir": str(tmp_path), "topics": {"t": {}}, **doc}
        rt = Runtime(config_from_dict(doc, path="c.toml", base_dir=str(tmp_path)))
        return rt._context("orders", "t")

    assert context_of({"node": "edge-7"}).stable_node == "edge-7"
    assert context_of({}).stable_node == socket.gethostname()
