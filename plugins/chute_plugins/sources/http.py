"""The ``http`` source: poll a server speaking the book's item API.

::

    GET /v1/items         -> {"kind": "ItemList", "apiVersion": "v1", "items": ["item-1", ...]}
    GET /v1/items/<name>  -> {"kind": "Item", "apiVersion": "v1", "data": {...}}

Each name is emitted once per process, keyed by the name, with the Item's data.
The source remembers only what it emitted in this process; what is done is
the pool's business (it claims each item in the state store and skips
finished ones), so a restart re-emits the list and the pool filters it.

Failures are per request: an unreachable server, a 5xx, a body that is not
JSON or not the expected ``kind``/``apiVersion`` is logged with its reason and
retried with exponential backoff (the list as a whole, or that one item),
while every other item goes on. Fetches run concurrently under a limit and
are emitted as they arrive, so a slow item delays nobody but itself.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from chute.config import Duration, Size, Strict
from chute.context import PluginContext
from chute.message import Item, ItemList, Message, item_decoder, item_list_decoder, new_message
from chute.source import Emit
from chute.store import ItemStatus

log = logging.getLogger("chute.sources.http")


class HttpOptions(Strict):
    url: str
    """The server's base URL; ``/v1/items`` is appended (e.g. ``http://127.0.0.1:8080``)."""
    interval: Duration = Duration(5.0)
    """Time between two listings."""
    timeout: Duration = Duration(10.0)
    """Per request, connecting included."""
    token: str = ""
    """Sent as ``Authorization: Bearer <token>`` when set."""
    backoff: Duration = Duration(1.0)
    """First retry delay after a failure; doubles per consecutive failure."""
    max_backoff: Duration = Duration(300.0)
    """The longest delay between two retries."""
    concurrency: int = 8
    """Item fetches in flight at once."""
    max_body: Size = Size(16 * 1024 * 1024)
    """A larger response is refused (a server gone wrong must not fill our memory)."""
    batch: int = 256
    """Most messages per publish."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if self.concurrency < 1 or self.batch < 1:
            raise ValueError("concurrency and batch must be at least 1")


class HttpStats(msgspec.Struct, kw_only=True):
    listed: int = 0
    """Names in the last good listing."""
    emitted: int = 0
    list_errors: int = 0
    item_errors: int = 0
    last_error: str = ""


class FetchError(Exception):
    """One request failed; the message says why, for the log."""


@dataclass(slots=True)
class _Retry:
    failures: int = 0
    not_before: float = 0.0


class HttpSource:
    Options = HttpOptions
    replays = True
    """Offers unfinished items again after a restart (the item server lists an item until it is done)."""

    def __init__(self, options: HttpOptions, ctx: PluginContext) -> None:
        self.options = options
        self.ctx = ctx
        self.base = options.url.rstrip("/") + "/v1/items"
        self.stats = HttpStats()
        self._emitted: set[str] = set()
        self._retry: dict[str, _Retry] = {}
        self._in_flight: set[str] = set()
        self._list_retry = _Retry()
        self._listed_once = False
        self._unpublished = 0
        self._progress = anyio.Event()

    async def caught_up(self) -> None:
        """Return once a listing succeeded and all it offered was fetched (or failed) and
        published (``--until-idle``). While the server cannot be reached, this waits."""
        while not (self._listed_once and not self._in_flight and not self._unpublished):
            await self._progress.wait()

    def _moved(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()

    async def run(self, emit: Emit) -> None:
        headers = {"Accept": "application/json"}
        if self.options.token:
            headers["Authorization"] = f"Bearer {self.options.token}"
        timeout = aiohttp.ClientTimeout(total=self.options.timeout)
        send, receive = anyio.create_memory_object_stream[Message](self.options.batch)
        async with (
            aiohttp.ClientSession(headers=headers, timeout=timeout, raise_for_status=False) as http,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(self._emit_loop, receive, emit)
            limiter = anyio.CapacityLimiter(self.options.concurrency)
            async with send:
                while True:
                    names = await self._list(http)
                    now = time.monotonic()
                    for name in names or ():
                        retry = self._retry.get(name)
                        if name in self._in_flight or (retry and retry.not_before > now):
                            continue
                        self._in_flight.add(name)
                        tg.start_soon(self._fetch, http, name, limiter, send.clone())
                    if names is not None:
                        self._listed_once = True
                        self._moved()
                    await anyio.sleep(self._next_listing_delay())

    async def item_finished(self, key: str, status: ItemStatus) -> None:
        """Nothing to do: the server owns its items."""

    async def aclose(self) -> None:
        """The HTTP session is closed when ``run`` returns."""

    # -- listing and fetching ----------------------------------------------------------

    async def _list(self, http: aiohttp.ClientSession) -> list[str] | None:
        """The names not yet emitted (None when the listing failed)."""
        if self._list_retry.not_before > time.monotonic():
            return None
        try:
            listing: ItemList = item_list_decoder.decode(await self._get(http, self.base))
        except (FetchError, msgspec.DecodeError) as exc:
            self.stats.list_errors += 1
            delay = self._failed(self._list_retry)
            self._note(f"listing {self.base} failed: {_reason(exc)}; retrying in {delay:.1f}s")
            return None
        self._list_retry = _Retry()
        self.stats.listed = len(listing.items)
        offered = set(listing.items)
        # Forget names the server no longer lists, so memory follows the server's list.
        self._emitted &= offered
        for gone in [n for n in self._retry if n not in offered]:
            del self._retry[gone]
        return [n for n in dict.fromkeys(listing.items) if n not in self._emitted]

    async def _fetch(
        self,
        http: aiohttp.ClientSession,
        name: str,
        limiter: anyio.CapacityLimiter,
        send: MemoryObjectSendStream[Message],
    ) -> None:
        async with send:
            try:
                async with limiter:
                    raw = await self._get(http, f"{self.base}/{quote(name, safe='')}")
                item: Item = item_decoder.decode(raw)
            except (FetchError, msgspec.DecodeError) as exc:
                self.stats.item_errors += 1
                retry = self._retry.setdefault(name, _Retry())
                delay = self._failed(retry)
                self._note(f"item {name!r} failed: {_reason(exc)}; retrying in {delay:.1f}s")
                return
            finally:
                self._in_flight.discard(name)
                self._moved()
            self._retry.pop(name, None)
            self._emitted.add(name)
            self._unpublished += 1
            await send.send(new_message(item.data, key=name))

    async def _get(self, http: aiohttp.ClientSession, url: str) -> bytes:
        try:
            async with http.get(url) as response:
                if response.status != 200:
                    text = (await response.content.read(200)).decode("utf-8", "replace")
                    raise FetchError(f"HTTP {response.status} {response.reason}: {text!r}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > self.options.max_body:
                        raise FetchError(f"response larger than {self.options.max_body} bytes")
                return bytes(body)
        except TimeoutError:
            raise FetchError(f"no answer within {self.options.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise FetchError(f"{type(exc).__name__}: {exc}") from None

    async def _emit_loop(self, receive: MemoryObjectReceiveStream[Message], emit: Emit) -> None:
        """Publish fetched items in batches: whatever arrived while the last publish ran."""
        async with receive:
            async for first in receive:
                batch = [first]
                while len(batch) < self.options.batch:
                    try:
                        batch.append(receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                await emit(batch)
                self.stats.emitted += len(batch)
                self._unpublished -= len(batch)
                self._moved()

    # -- backoff -----------------------------------------------------------------------

    def _failed(self, retry: _Retry) -> float:
        retry.failures += 1
        growth = 2.0 ** min(retry.failures - 1, 30)
        delay = min(float(self.options.max_backoff), self.options.backoff * growth)
        delay *= 1.0 + random.random() * 0.2  # spread the retries of many items
        retry.not_before = time.monotonic() + delay
        return delay

    def _next_listing_delay(self) -> float:
        wait = self._list_retry.not_before - time.monotonic()
        return max(self.options.interval, wait, 0.0)

    def _note(self, message: str) -> None:
        self.stats.last_error = message
        log.warning("%s: %s", self.ctx.name, message)


def _reason(exc: Exception) -> str:
    if isinstance(exc, msgspec.ValidationError):
        return f"not a v1 item document ({exc})"
    if isinstance(exc, msgspec.DecodeError):
        return f"malformed JSON ({exc})"
    return str(exc)
