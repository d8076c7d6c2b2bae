"""The runtime's HTTP API (aiohttp, imported only when the API is enabled).

Loopback only unless a token is set (the graph validator refuses a
non-loopback host without one). Mutating routes always need
``Authorization: Bearer <token>``; with a token in the config, reads need it
too (``/healthz``, ``/readyz`` and the dashboard page excepted). See
``api_guard`` for the rules that keep web pages out. ``/v1/items`` serves a
topic's messages as the book's items (``served_items``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from aiohttp import web
from anyio.abc import TaskStatus

from . import dashboard, dead
from .api_guard import (
    HEADER_TIMEOUT,
    MAX_BODY,
    ensure_token,
    guard,
    is_loopback,
    listen,
    read_body,
)
from .broker import Browsable
from .errors import InvalidMessage, Unavailable
from .graph import DEAD_SUFFIX, scheme_of
from .items_server import struct_response
from .message import Item, ItemList, Message, new_message
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import Metrics
from .served_items import ServedItems
from .tap import Taps

if TYPE_CHECKING:
    from .engine import Runtime

log = logging.getLogger("chute.api")

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in published data."""

_BROWSE_WAIT = 5.0
"""Seconds ``/v1/items`` waits for the broker before it answers 503."""

_PARSE_INLINE = 64 * 1024
"""Bodies up to this size are parsed on the event loop; larger ones in a thread."""


def _depth_problem(doc: Any) -> str | None:
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, dict | list))
    return None


def _decode(text: bytes) -> Any:
    try:
        return msgspec.json.decode(text)
    except RecursionError:
        raise InvalidMessage(f"nested deeper than {MAX_DEPTH} levels") from None


def parse_messages(body: bytes) -> list[Message]:
    """A JSON object, a JSON array of objects, or NDJSON; each ``{"data", "key"?, "headers"?}``.

    A bare JSON value that is not such an object is taken as the data itself.
    Raises InvalidMessage with the reason (not JSON, not UTF-8, too deep).
    """
    text = body.strip()
    if not text:
        raise InvalidMessage("empty body: send a JSON object, an array, or NDJSON lines")
    try:
        docs: list[Any] = [_decode(text)]
    except msgspec.DecodeError:
        try:
            docs = [_decode(line) for line in text.splitlines() if line.strip()]
        except msgspec.DecodeError as exc:
            raise InvalidMessage(f"not JSON or NDJSON: {exc}") from None
    if len(docs) == 1 and isinstance(docs[0], list):
        docs = docs[0]
    out = []
    for doc in docs:
        if (problem := _depth_problem(doc)) is not None:
            raise InvalidMessage(problem)
        if isinstance(doc, dict) and "data" in doc and set(doc) <= {"data", "key", "headers"}:
            key, headers = doc.get("key", ""), doc.get("headers") or {}
            if not isinstance(key, str) or not isinstance(headers, dict):
                raise InvalidMessage("'key' must be a string and 'headers' an object")
            out.append(
                new_message(
                    doc["data"], key=key, headers={str(k): str(v) for k, v in headers.items()}
                )
            )
        else:
            out.append(new_message(doc))
    return out


async def parse_body(body: bytes) -> list[Message]:
    """``parse_messages`` off the event loop when the body is large enough to stall it."""
    if len(body) <= _PARSE_INLINE:
        return parse_messages(body)
    return await anyio.to_thread.run_sync(parse_messages, body)


class _MarkShard(msgspec.Struct, forbid_unknown_fields=True):
    down: bool


class _Keys(msgspec.Struct, forbid_unknown_fields=True):
    keys: list[str] = []


_PAGE_HEADERS = {
    # Everything the page needs is inline; nothing may load from elsewhere or frame it.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _error(status: int, why: str) -> web.Response:
    return web.json_response({"error": why}, status=status)


def build_app(rt: Runtime, *, token: str) -> web.Application:
    """The routes; ``token`` guards every mutating route (and reads too when configured)."""
    api = rt.config.api

    async def healthz(_: web.Request) -> web.Response:
        """200 while the broker and every pool are healthy; 503 with the broker's problem
        otherwise (``/readyz`` adds whether everything has started)."""
        healthy = bool(getattr(rt.broker, "healthy", True))
        healthy = healthy and all(p.counters.healthy for p in rt.pools.values())
        body: dict[str, Any] = {"ok": healthy}
        if not getattr(rt.broker, "healthy", True):
            body["broker"] = str(getattr(rt.broker, "problem", "")) or "unreachable"
        return web.json_response(body, status=200 if healthy else 503)

    async def readyz(_: web.Request) -> web.Response:
        reasons = rt.unready_reasons()
        body = {"ready": not reasons, "reasons": reasons}
        return web.json_response(body, status=503 if reasons else 200)

    metrics = Metrics(rt)

    async def prometheus(_: web.Request) -> web.Response:
        body = await metrics.render()
        return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})

    async def dashboard_page(_: web.Request) -> web.Response:
        return web.Response(body=dashboard.page(), content_type="text/html", charset="utf-8",
                            headers=_PAGE_HEADERS)  # fmt: skip

    async def dashboard_data(_: web.Request) -> web.Response:
        body = msgspec.json.encode(await dashboard.snapshot(rt))
        return web.Response(body=body, content_type="application/json")

    async def status(_: web.Request) -> web.Response:
        body = msgspec.json.encode(await rt.status())
        return web.Response(body=body, content_type="application/json")

    async def publish(request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        if topic not in rt.known_topics():
            return _error(404, f"unknown topic {topic!r}")
        if topic.endswith(DEAD_SUFFIX):
            return _error(
                403, f"{topic!r} holds dead letters; only its pool writes there "
                "(to run them again: chute dead requeue)",
            )  # fmt: skip
        body = await read_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            messages = await parse_body(body)
        except InvalidMessage as exc:
            return _error(400, str(exc))
        ids = await rt.publish_many(topic, messages)
        return web.json_response({"ids": ids}, status=201)

    async def mark_shard(request: web.Request) -> web.Response:
        """``POST /v1/operators/<op>/shards/<shard>`` with ``{"down": true|false}``."""
        name, shard = request.match_info["operator"], request.match_info["shard"]
        op = rt.operators.get(name)
        if op is None or not hasattr(op, "mark_down"):
            return _error(404, f"no shard operator {name!r}")
        body = await read_body(request, 4096)
        if isinstance(body, web.Response):
            return body
        try:
            down = msgspec.json.decode(body, type=_MarkShard).down
            op.mark_down(int(shard) if shard.isdigit() else shard, down)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error(400, f'expected {{"down": true}}: {exc}')
        except (KeyError, ValueError, IndexError) as exc:
            return _error(404, f"no shard {shard!r} in {name!r}: {exc}")
        return web.json_response({"operator": name, "shard": shard, "down": down})

    taps = Taps(rt.broker)

    async def tail(request: web.Request) -> web.StreamResponse:
        """NDJSON of each message published to the topic from now on, until the client leaves."""
        topic = request.match_info["topic"]
        if topic not in rt.known_topics():
            return _error(404, f"unknown topic {topic!r}")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        async with taps.open(topic) as messages:
            async for message in messages:
                await response.write(msgspec.json.encode(message) + b"\n")
        return response

    async def dead_list(request: web.Request) -> web.Response:
        pool = request.match_info["pool"]
        if pool not in rt.pools:
            return _error(404, f"no pool {pool!r}")
        return web.Response(body=msgspec.json.encode(await dead.list_dead(rt, pool)),
                            content_type="application/json")  # fmt: skip

    async def dead_action(request: web.Request) -> web.Response:
        """``POST /v1/dead/<pool>/requeue|purge`` with ``{"keys": [...]}`` (none: every one)."""
        pool, action = request.match_info["pool"], request.match_info["action"]
        if pool not in rt.pools:
            return _error(404, f"no pool {pool!r}")
        body = await read_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            keys = msgspec.json.decode(body or b"{}", type=_Keys).keys
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error(400, f'expected {{"keys": ["KEY", ...]}}: {exc}')
        if not keys:
            keys = [d.key for d in await dead.list_dead(rt, pool)]
        done = await (dead.requeue if action == "requeue" else dead.purge)(rt, pool, keys)
        return web.json_response({"pool": pool, **done})

    served = (
        ServedItems(rt.broker, api.items)
        if api.items and isinstance(rt.broker, Browsable)
        else None
    )

    async def held_items() -> dict[str, Any] | web.Response:
        """The items by name, or the response that says why there are none."""
        if served is None:
            if not api.items:
                return _error(404, 'this runtime serves no items: set items = "TOPIC" in [api]')
            scheme = scheme_of(rt.config.settings.broker)  # a URL may hold a password
            return _error(501, f"the {scheme} broker cannot list a topic's messages")
        try:
            with anyio.fail_after(_BROWSE_WAIT):
                return await served.look()
        except (TimeoutError, Unavailable) as exc:
            why = str(exc) or f"no answer within {_BROWSE_WAIT:g}s"
            return _error(503, f"cannot list topic {api.items!r}: {why}")

    async def list_items(_: web.Request) -> web.Response:
        held = await held_items()
        if isinstance(held, web.Response):
            return held
        return struct_response(ItemList(items=list(held)))

    async def get_item(request: web.Request) -> web.Response:
        held, name = await held_items(), request.match_info["name"]
        if isinstance(held, web.Response):
            return held
        if name not in held:
            return _error(404, f"topic {api.items!r} holds no item {name!r}")
        return struct_response(Item(data=held[name]))

    middleware = guard(
        token=token, loopback=is_loopback(api.host), reads_need_token=bool(api.token)
    )
    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/", dashboard_page)
    app.router.add_get("/v1/dashboard", dashboard_data)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/items", list_items)
    app.router.add_get("/v1/items/{name}", get_item)
    app.router.add_post("/v1/topics/{topic}/messages", publish)
    app.router.add_post("/v1/operators/{operator}/shards/{shard}", mark_shard)
    app.router.add_get("/v1/topics/{topic}/tail", tail)
    app.router.add_get("/v1/dead/{pool}", dead_list)
    app.router.add_post("/v1/dead/{pool}/{action:requeue|purge}", dead_action)
    return app


async def serve_api(
    rt: Runtime, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; reports the bound port (useful with ``port = 0``).

    With no token in the config, a fresh one goes to ``WORKDIR/api.token``
    (0600), where the CLI finds it.
    """
    api = rt.config.api
    token = api.token or ensure_token(rt.workdir)
    runner = web.AppRunner(
        build_app(rt, token=token), access_log=None, keepalive_timeout=HEADER_TIMEOUT
    )
    await runner.setup()
    server: asyncio.Server | None = None
    try:
        try:
            server = await listen(runner, api.host, api.port)
        except OSError as exc:
            raise Unavailable(
                f"the API cannot listen on {api.host}:{api.port}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}"
            ) from None
        port = int(server.sockets[0].getsockname()[1])
        rt.api_port = port
        log.info("API on http://%s:%d (dashboard at /, metrics at /metrics)", api.host, port)
        task_status.started(port)
        await anyio.sleep_forever()
    finally:
        with anyio.move_on_after(2.0, shield=True):  # open connections never hold a stop
            if server is not None:
                server.close()
            await runner.cleanup()
