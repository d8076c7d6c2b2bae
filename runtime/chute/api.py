"""The runtime's HTTP API (aiohttp, imported only when the API is enabled).

Loopback only unless a token is set (the graph validator refuses a
non-loopback host without one); with a token every request but ``/healthz``
needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from aiohttp import web
from anyio.abc import TaskStatus

from .errors import InvalidMessage
from .message import Message, new_message

if TYPE_CHECKING:
    from .engine import Runtime

_MAX_BODY = 64 * 1024 * 1024


def parse_messages(body: bytes) -> list[Message]:
    """A JSON object, a JSON array of objects, or NDJSON; each ``{"data", "key"?, "headers"?}``.

    A bare JSON value that is not such an object is taken as the data itself.
    """
    text = body.decode("utf-8", errors="strict").strip()
    if not text:
        raise InvalidMessage("empty body: send a JSON object, an array, or NDJSON lines")
    try:
        docs: list[Any] = [json.loads(text)]
    except json.JSONDecodeError:
        try:
            docs = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise InvalidMessage(f"not JSON or NDJSON: {exc}") from None
    if len(docs) == 1 and isinstance(docs[0], list):
        docs = docs[0]
    out = []
    for doc in docs:
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


class _MarkShard(msgspec.Struct, forbid_unknown_fields=True):
    down: bool


def build_app(rt: Runtime) -> web.Application:
    token = rt.config.api.token

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if token and request.path != "/healthz":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def healthz(_: web.Request) -> web.Response:
        healthy = bool(getattr(rt.broker, "healthy", True))
        return web.json_response({"ok": healthy}, status=200 if healthy else 503)

    async def status(_: web.Request) -> web.Response:
        body = msgspec.json.encode(await rt.status())
        return web.Response(body=body, content_type="application/json")

    async def publish(request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        if topic not in rt.known_topics():
            return web.json_response({"error": f"unknown topic {topic!r}"}, status=404)
        try:
            messages = parse_messages(await request.read())
        except (InvalidMessage, UnicodeDecodeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        ids = await rt.publish_many(topic, messages)
        return web.json_response({"ids": ids}, status=201)

    async def mark_shard(request: web.Request) -> web.Response:
        """``POST /v1/operators/<op>/shards/<shard>`` with ``{"down": true|false}``."""
        name, shard = request.match_info["operator"], request.match_info["shard"]
        op = rt.operators.get(name)
        if op is None or not hasattr(op, "mark_down"):
            return web.json_response({"error": f"no shard operator {name!r}"}, status=404)
        try:
            down = msgspec.json.decode(await request.read(), type=_MarkShard).down
            op.mark_down(int(shard) if shard.isdigit() else shard, down)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return web.json_response({"error": f'expected {{"down": true}}: {exc}'}, status=400)
        except (KeyError, ValueError, IndexError) as exc:
            return web.json_response(
                {"error": f"no shard {shard!r} in {name!r}: {exc}"}, status=404
            )
        return web.json_response({"operator": name, "shard": shard, "down": down})

    app = web.Application(middlewares=[auth], client_max_size=_MAX_BODY)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/status", status)
    app.router.add_post("/v1/topics/{topic}/messages", publish)
    app.router.add_post("/v1/operators/{operator}/shards/{shard}", mark_shard)
    return app


async def serve_api(
    rt: Runtime, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; reports the bound port (useful with ``port = 0``)."""
    runner = web.AppRunner(build_app(rt), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, rt.config.api.host, rt.config.api.port)
        await site.start()
        port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        rt.api_port = port
        logging.getLogger("chute.api").info(
            "API listening on http://%s:%d", rt.config.api.host, port
        )
        task_status.started(port)
        await anyio.sleep_forever()
    finally:
        with anyio.move_on_after(2.0, shield=True):  # open connections never hold a stop
            await runner.cleanup()
