"""``chute serve-items DIR``: the book's source container for a folder.

::

    GET /v1/items         -> {"kind": "ItemList", "apiVersion": "v1", "items": [names]}
    GET /v1/items/<name>  -> {"kind": "Item", "apiVersion": "v1",
                              "data": {"path": ..., "name": ..., "size": ..., "mtime": ...}}

Names are the regular files directly in the folder that match the glob, minus
hidden and temp names; it serves metadata, never content. A name from a
request is looked up among those same entries, never joined to a path, so
``..``, ``/`` and links cannot reach outside the folder. Symbolic links are not
served. Names that are not UTF-8 cannot travel in JSON: they are left out and
logged once.

Loopback by default; any other address needs a token, sent by clients as
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import logging
import os
import stat
from pathlib import Path
from types import TracebackType

import anyio
from aiohttp import web
from aiohttp.typedefs import Handler

from .errors import ConfigError
from .message import Item, ItemList, json_encoder

log = logging.getLogger("chute.serve_items")

HIDDEN_OR_TEMP = (".*", "*.tmp", "*.part", "*~", "#*#")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


class _Folder:
    def __init__(self, root: Path, glob: str) -> None:
        self.root = root.resolve()
        self.glob = glob
        self._warned: set[bytes] = set()

    def _wanted(self, name: str) -> bool:
        if any(fnmatch.fnmatchcase(name, p) for p in HIDDEN_OR_TEMP):
            return False
        return fnmatch.fnmatchcase(name, self.glob)

    def names(self) -> list[str]:
        found: list[str] = []
        with os.scandir(os.fsencode(self.root)) as entries:
            for entry in entries:
                try:
                    name = entry.name.decode("utf-8")
                except UnicodeDecodeError:
                    if entry.name not in self._warned:
                        self._warned.add(entry.name)
                        log.warning("not serving %r: its name is not UTF-8", entry.name)
                    continue
                if self._wanted(name) and entry.is_file(follow_symlinks=False):
                    found.append(name)
        return sorted(found)

    def item(self, name: str) -> dict[str, object] | None:
        if not name or "/" in name or "\0" in name or name in (".", "..") or not self._wanted(name):
            return None
        path = self.root / name
        try:
            st = os.lstat(path)
        except (OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return {"path": str(path), "name": name, "size": st.st_size, "mtime": st.st_mtime}


def struct_response(body: object, status: int = 200) -> web.Response:
    """JSON of ``body`` (msgspec Structs included), as the item API answers."""
    body_bytes = json_encoder.encode(body)
    return web.Response(body=body_bytes, status=status, content_type="application/json")


def build_app(directory: str | Path, glob: str = "*", token: str = "") -> web.Application:
    folder = _Folder(Path(directory), glob)

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return struct_response({"error": "missing or wrong bearer token"}, 401)
        response: web.StreamResponse = await handler(request)
        return response

    async def list_items(request: web.Request) -> web.Response:
        try:
            names = await anyio.to_thread.run_sync(folder.names)
        except OSError as exc:
            return struct_response({"error": f"cannot list the folder: {exc.strerror}"}, 503)
        return struct_response(ItemList(items=names))

    async def get_item(request: web.Request) -> web.Response:
        data = await anyio.to_thread.run_sync(folder.item, request.match_info["name"])
        if data is None:
            return struct_response({"error": "no such item"}, 404)
        return struct_response(Item(data=data))

    app = web.Application(middlewares=[auth])
    app.router.add_get("/v1/items", list_items)
    app.router.add_get("/v1/items/{name}", get_item)
    return app


class ItemsServer:
    """The server as an async context manager; ``url`` is known once it is listening."""

    def __init__(
        self,
        directory: str | Path,
        *,
        glob: str = "*",
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str = "",
    ) -> None:
        if not is_loopback(host) and not token:
            raise ConfigError(
                [f"serve-items: refusing to listen on {host} without a token (use --token)"]
            )
        if not Path(directory).is_dir():
            raise ConfigError([f"serve-items: {directory} is not a folder"])
        self.app = build_app(directory, glob, token)
        self.host = host
        self.port = port
        self._runner = web.AppRunner(self.app, access_log=None)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> ItemsServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._runner.cleanup()


async def serve_items(
    directory: str | Path,
    glob: str = "*",
    host: str = "127.0.0.1",
    port: int = 8080,
    token: str = "",
) -> None:
    """Serve until cancelled."""
    async with ItemsServer(directory, glob=glob, host=host, port=port, token=token) as server:
        log.info("serving items of %s at %s/v1/items", directory, server.url)
        await anyio.sleep_forever()
