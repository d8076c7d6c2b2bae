"""The work the multi-node tests give ``chute run`` processes (``tests.helpers.redis_tasks``)."""

from __future__ import annotations

import os
import time
from typing import Any

import anyio


def _log(event: str, key: str) -> None:
    # One short O_APPEND write per line: lines from several processes never interleave.
    line = f"{event} {os.environ['CHUTE_TEST_NODE']} {key} {time.time():.3f}\n"
    fd = os.open(os.environ["CHUTE_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def work(data: Any) -> Any:
    """Logs its start and end; takes ``sleep`` seconds in between.

    With ``fail_first``, the item's first run (on any node) fails, so it is
    retried after the pool's backoff: a delayed retry.
    """
    key = f"item-{data['n']}"
    _log("start", key)
    await anyio.sleep(float(data.get("sleep", 0.05)))
    if data.get("fail_first"):
        marker = f"{os.environ['CHUTE_TEST_LOG']}.{key}.failed"
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        else:
            _log("failed", key)
            raise RuntimeError(f"{key}: the first run fails on purpose")
    _log("done", key)
    return None
