"""The http source against real HTTP servers on 127.0.0.1 that misbehave on purpose."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web
from chute.config import dec_hook
from chute_plugins.sources.http import HttpOptions, HttpSource

from tests.servers import free_port

from .conftest import build, make_context, running

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Calls:
    """Counts requests; ``reach(n)`` waits (on an event, not a poll) until n were made."""

    def __init__(self) -> None:
        self.n = 0
        self._changed = anyio.Event()

    def hit(self) -> int:
        self.n += 1
        self._changed.set()
        self._changed = anyio.Event()
        return self.n

    async def reach(self, n: int) -> None:
        with anyio.fail_after(10):
            while self.n < n:
                await self._changed.wait()


class LogEvents(logging.Handler):
    """Wakes the test when the source logs (it logs every failure with its reason)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.calls = Calls()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.calls.hit()


@pytest.fixture
def source_log() -> Iterator[LogEvents]:
    handler = LogEvents()
    logger = logging.getLogger("chute.sources.http")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def item(data: Any) -> web.Response:
    return web.json_response({"kind": "Item", "apiVersion": "v1", "data": data})


def item_list(names: list[str]) -> web.Response:
    return web.json_response({"kind": "ItemList", "apiVersion": "v1", "items": names})


@asynccontextmanager
async def server(list_handler: Handler, item_handler: Handler, port: int = 0) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/v1/items", list_handler)
    app.router.add_get("/v1/items/{name}", item_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def http_source(tmp: Path, url: str, **options: Any) -> HttpSource:
    opts = {"url": url, "interval": "50ms", "timeout": "500ms", "backoff": "50ms", **options}
    src: HttpSource = build(HttpSource, opts, make_context(tmp, "remote"))
    return src


async def test_each_item_is_emitted_once_with_its_data(tmp_path: Path) -> None:
    names = ["a", "b", "name with space", "quote's \"x\"", "semi;colon", "$(touch CANARY)",
             "slash/inside", "percent%2F", "ünï"]  # fmt: skip
    asked: list[str] = []
    listings = Calls()

    async def get_list(request: web.Request) -> web.Response:
        listings.hit()
        return item_list(names)

    async def get_item(request: web.Request) -> web.Response:
        name = request.match_info["name"]  # aiohttp decodes the %-escapes once
        asked.append(name)
        return item({"name": name, "n": names.index(name)})

    async with server(get_list, get_item) as url:
        src = http_source(tmp_path, url)
        async with running(src) as got:
            await got.wait_for(lambda: len(got.messages) == len(names))
            # Several more listings: nothing is asked for or emitted twice.
            await listings.reach(listings.n + 3)
    assert sorted(got.keys()) == sorted(names)
    for m in got.messages:
        assert m.data == {"name": m.key, "n": names.index(m.key)}
    assert sorted(asked) == sorted(names)


async def test_broken_items_do_not_stop_the_others(tmp_path: Path) -> None:
    names = ["good-1", "slow", "garbage", "wrong-kind", "wrong-version", "flaky", "gone",
             "huge", "good-2"]  # fmt: skip
    calls: dict[str, int] = {}
    retried = Calls()
    release = anyio.Event()

    async def get_list(request: web.Request) -> web.Response:
        return item_list(names)

    async def get_item(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        calls[name] = calls.get(name, 0) + 1
        if name in ("slow", "garbage") and calls[name] == 2:
            retried.hit()
        if name == "slow":
            await release.wait()  # longer than the client's timeout
        if name == "garbage":
            return web.Response(body=b"<html>oops", content_type="text/html")
        if name == "wrong-kind":
            return web.json_response({"kind": "ItemList", "apiVersion": "v1", "items": []})
        if name == "wrong-version":
            return web.json_response({"kind": "Item", "apiVersion": "v2", "data": {}})
        if name == "flaky" and calls[name] < 3:
            return web.Response(status=503, text="try later")
        if name == "gone":
            return web.Response(status=404)
        if name == "huge":
            return web.Response(body=json.dumps({"kind": "Item", "apiVersion": "v1",
                                                 "data": "x" * 5000}).encode())  # fmt: skip
        return item({"name": name})

    async with server(get_list, get_item) as url:
        src = http_source(tmp_path, url, max_body="4KiB")
        async with running(src) as got:
            await got.wait_for(lambda: {"good-1", "good-2", "flaky"} <= set(got.keys()))
            await retried.reach(2)
        release.set()
    assert sorted(got.keys()) == ["flaky", "good-1", "good-2"]
    assert calls["flaky"] == 3
    assert src.stats.item_errors >= 7


async def test_server_down_then_up_and_garbage_listings(
    tmp_path: Path, source_log: LogEvents
) -> None:
    port = free_port()
    phase = {"list": "garbage"}

    async def get_list(request: web.Request) -> web.Response:
        if phase["list"] == "garbage":
            phase["list"] = "wrong-kind"
            return web.Response(body=b"{not json")
        if phase["list"] == "wrong-kind":
            phase["list"] = "500"
            return web.json_response({"kind": "Item", "apiVersion": "v1", "data": {}})
        if phase["list"] == "500":
            phase["list"] = "ok"
            return web.Response(status=500)
        return item_list(["x"])

    async def get_item(request: web.Request) -> web.Response:
        return item({"ok": True})

    src = http_source(tmp_path, f"http://127.0.0.1:{port}")
    async with running(src) as got:
        # Nothing listens yet: connection refused, logged, retried with backoff.
        await source_log.calls.reach(2)
        assert "Connect" in source_log.messages[0]
        async with server(get_list, get_item, port=port):
            await got.wait_for(lambda: got.keys())
    assert got.keys() == ["x"]
    assert src.stats.list_errors >= 5
    assert phase["list"] == "ok"
    reasons = "\n".join(source_log.messages)
    assert "malformed JSON" in reasons and "not a v1 item document" in reasons
    assert "HTTP 500" in reasons


async def test_bearer_token_is_sent(tmp_path: Path) -> None:
    seen: list[str] = []

    async def get_list(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return item_list(["a"])

    async def get_item(request: web.Request) -> web.Response:
        return item(1)

    async with (
        server(get_list, get_item) as url,
        running(http_source(tmp_path, url, token="s3cret")) as got,
    ):
        await got.wait_for(lambda: got.keys())
    assert seen[0] == "Bearer s3cret"


def test_options_are_checked() -> None:
    with pytest.raises(msgspec.ValidationError, match="http://"):
        msgspec.convert({"url": "ftp://x"}, HttpOptions, dec_hook=dec_hook)
    opts = msgspec.convert({"url": "http://x", "interval": "2s"}, HttpOptions, dec_hook=dec_hook)
    assert opts.interval == 2.0
