"""POST each message as JSON to a URL (a webhook, an ingest API).

2xx is accepted. 4xx other than 408 and 429 is permanent (the request itself
is wrong; sending it again cannot help): the message goes to the dead
letters with the status and the start of the reply. 408, 429, 5xx and
connection failures are retried with backoff. A ``Retry-After`` is not
honoured beyond the sink's own backoff.

The body is the whole message (``{"id", "key", "data", "headers",
"created_at"}``) or, with ``body = "data"``, only its data. Headers
``Idempotency-Key`` (the message id) and ``X-Chute-Key`` let the far side
drop a redelivered duplicate.

```toml
[sinks.hook]
type = "http"
topic = "results"
url = "https://example.com/hooks/results"
headers = { Authorization = "Bearer ..." }
timeout = "10s"
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import aiohttp
import anyio
from chute.config import Duration, Strict
from chute.context import PluginContext
from chute.errors import ConfigError
from chute.message import Message
from chute.sink import Outcome, Refused

from ._body import Body, encode_body

_RETRYABLE_4XX = frozenset({408, 429})


class HttpOptions(Strict):
    url: str
    """Where each message is POSTed (http:// or https://)."""
    headers: dict[str, str] = {}
    """Extra request headers, such as ``Authorization``."""
    timeout: Duration = Duration(10.0)
    """Longest wait for one request's answer; a timeout is retried."""
    body: Body = "message"
    """The JSON body: the whole message (id, key, data, headers, created_at), or its data."""
    concurrency: int = 8
    """Requests in flight at once within a batch."""


class HttpSink:
    Options: ClassVar[type[Strict]] = HttpOptions

    def __init__(self, options: HttpOptions, ctx: PluginContext) -> None:
        if not options.url.startswith(("http://", "https://")):
            raise ConfigError([f"url: expected an http:// or https:// URL, got {options.url!r}"])
        if options.concurrency < 1:
            raise ConfigError([f"concurrency: must be at least 1, got {options.concurrency}"])
        self.options = options
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=float(self.options.timeout)),
                connector=aiohttp.TCPConnector(limit=self.options.concurrency),
            )
        return self._session

    async def send(self, messages: Sequence[Message]) -> Sequence[Outcome]:
        outcomes: list[Outcome] = [None] * len(messages)
        limit = anyio.Semaphore(self.options.concurrency)

        async def post(i: int, message: Message) -> None:
            async with limit:
                outcomes[i] = await self._post(message)

        async with anyio.create_task_group() as tg:
            for i, message in enumerate(messages):
                tg.start_soon(post, i, message)
        return outcomes

    async def _post(self, message: Message) -> Outcome:
        o = self.options
        headers = {"Content-Type": "application/json", "Idempotency-Key": message.id,
                   "X-Chute-Key": message.key, **o.headers}  # fmt: skip
        try:
            async with self._client().post(
                o.url, data=encode_body(message, o.body), headers=headers
            ) as reply:
                if 200 <= reply.status < 300:
                    return None
                text = (await reply.text(errors="replace"))[:300]
        except (aiohttp.ClientError, TimeoutError) as exc:
            return Refused(f"POST {o.url}: {type(exc).__name__}: {exc}")
        permanent = 400 <= reply.status < 500 and reply.status not in _RETRYABLE_4XX
        return Refused(f"POST {o.url}: HTTP {reply.status}: {text}", permanent=permanent)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
