"""A TCP relay in front of a redis-server that ``CLIENT KILL``s a connection mid-request.

Armed with a byte pattern, the relay holds back the first request that
contains it, has Redis kill that connection (``CLIENT KILL ADDR``, the
relay's own upstream address) and only then lets the request go: it never
reaches Redis, and the client sees its connection drop while it waits for
the replies, exactly as when Redis drops a client in the middle of a
pipeline. The client's own retry must send the whole request again.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis


class KillingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.kills = 0
        self._trigger: bytes | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, path: str = "/0") -> str:
        return f"redis://127.0.0.1:{self.port}{path}"

    def arm(self, trigger: bytes) -> None:
        """Kill the connection carrying the next request that contains ``trigger``."""
        self._trigger = trigger

    async def __aenter__(self) -> KillingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        back = asyncio.create_task(_pump(up_reader, writer))
        self._tasks.add(back)
        try:
            while data := await reader.read(65536):
                if self._trigger is not None and self._trigger in data:
                    self._trigger = None
                    await self._kill(up_writer)
                    break
                up_writer.write(data)
                await up_writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            up_writer.close()
            writer.close()
            back.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await back
            self._tasks.discard(back)
            self._tasks.discard(task)

    async def _kill(self, up_writer: asyncio.StreamWriter) -> None:
        host, port = up_writer.get_extra_info("sockname")[:2]
        admin = aioredis.Redis(port=self.upstream_port)
        try:
            await admin.execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}")  # type: ignore[no-untyped-call]
        finally:
            await admin.aclose()
        self.kills += 1


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
