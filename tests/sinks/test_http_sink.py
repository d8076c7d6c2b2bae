"""The http sink against a real aiohttp server: 2xx accepted, 4xx dead, 5xx and 429 retried."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from .conftest import dead_letters, drained, running, sink_config


class Hook:
    """Accepts every key except: ``bad`` (400 always), ``flaky`` (503 twice), ``busy`` (429 once)."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers.get("X-Chute-Key", "")
        self.calls[key] += 1
        self.headers.append(dict(request.headers))
        if key == "bad":
            return web.Response(status=400, text="field n is missing")
        if key == "flaky" and self.calls[key] <= 2:
            return web.Response(status=503)
        if key == "busy" and self.calls[key] == 1:
            return web.Response(status=429)
        self.accepted.append(body)
        return web.json_response({"ok": True}, status=201)


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    h = Hook()
    app = web.Application()
    app.router.add_post("/hook", h.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield h, f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


FAST_RETRY = {"attempts": 4, "backoff": "20ms", "max_backoff": "100ms"}


async def test_posts_each_message_and_sorts_refusals(
    tmp_path: Path, hook: tuple[Hook, str]
) -> None:
    h, url = hook
    doc = sink_config(
        tmp_path,
        {"type": "http", "url": url, "retry": FAST_RETRY, "headers": {"Authorization": "Bearer t"}},
    )
    async with running(doc, tmp_path) as rt:
        for i in range(50):
            await rt.publish("in", {"n": i}, key=f"k{i}")
        for key in ("bad", "flaky", "busy"):
            await rt.publish("in", {"n": key}, key=key)
        await drained(rt)
        dead = await dead_letters(rt)
        stats = rt.sinks["out"].stats()
    accepted = [body["key"] for body in h.accepted]
    assert sorted(accepted) == sorted([f"k{i}" for i in range(50)] + ["flaky", "busy"])
    assert len(set(accepted)) == len(accepted)
    # 400 is the request's own fault: dead at once, with the server's answer.
    assert [m.key for m in dead] == ["bad"]
    assert h.calls["bad"] == 1
    assert "HTTP 400" in dead[0].headers["chute-error"]
    assert "field n is missing" in dead[0].headers["chute-error"]
    assert h.calls["flaky"] == 3 and h.calls["busy"] == 2
    assert stats.delivered == 52 and stats.dead_lettered == 1 and stats.retried == 3
    assert all(hd["Authorization"] == "Bearer t" for hd in h.headers)
    assert all(hd["Idempotency-Key"] for hd in h.headers)


async def test_a_far_side_that_never_answers_well_ends_in_the_dead_letters(
    tmp_path: Path, hook: tuple[Hook, str]
) -> None:
    _, url = hook
    doc = sink_config(tmp_path, {"type": "http", "url": url.replace("/hook", "/nowhere"),
                                 "retry": {**FAST_RETRY, "attempts": 2}})  # fmt: skip
    async with running(doc, tmp_path) as rt:
        await rt.publish("in", {"n": 1}, key="k")
        await drained(rt)
        dead = await dead_letters(rt)
    # 404 is a 4xx: permanent.
    assert [m.key for m in dead] == ["k"] and "HTTP 404" in dead[0].headers["chute-error"]


async def test_an_unreachable_url_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    doc = sink_config(
        tmp_path, {"type": "http", "url": url, "retry": {**FAST_RETRY, "attempts": 3}}
    )
    async with running(doc, tmp_path) as rt:
        await rt.publish("in", {"n": 1}, key="k")
        await drained(rt)
        dead = await dead_letters(rt)
    assert [m.key for m in dead] == ["k"]
    assert dead[0].headers["chute-attempts"] == "3"
    assert "ClientConnectorError" in dead[0].headers["chute-error"]
