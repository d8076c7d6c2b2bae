"""Run an in-process callable per item: for embedding, tests and benchmarks.

The function gets the item's data and returns the result (any JSON value, or
None). Coroutine functions are awaited on the event loop; plain functions run
inline (cheapest, but they block the loop while they run) unless ``thread`` is
set, for blocking or CPU-heavy work.

A pool's ``timeout`` stops a coroutine function; a thread cannot be stopped,
so ``chute check`` refuses ``thread = true`` with a ``timeout``. ``SystemExit``
and ``KeyboardInterrupt`` raised by the function (a ``sys.exit()`` in a
library) are that item's failure, never the runtime's end. The function
gets a private copy of the item's data: what it changes in place, no other
consumer, retry or dead letter sees.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import anyio.to_thread
from chute.config import PoolConfig, Strict
from chute.context import PluginContext
from chute.errors import ConfigError, ItemFailed, PluginNotFound
from chute.executor import WorkItem
from chute.message import private_copy
from chute.registry import import_object


class PythonOptions(Strict):
    function: str
    """``module:function``; the module is imported from the working folder or ``path``."""
    thread: bool = False
    """Run a plain function in a worker thread instead of on the event loop."""
    path: list[str] = []
    """Extra folders to import from, relative to the config's folder."""


class PythonExecutor:
    Options: ClassVar[type[Strict]] = PythonOptions

    def __init__(self, options: PythonOptions, ctx: PluginContext) -> None:
        for folder in [*options.path, "."]:
            resolved = str(ctx.resolve(folder))
            if resolved not in sys.path:
                sys.path.append(resolved)
        try:
            fn = import_object(options.function)
        except PluginNotFound as exc:
            raise ConfigError([f"function: {exc}"]) from None
        if not callable(fn):
            raise ConfigError([f"function: {options.function!r} is not callable"])
        self._fn: Callable[[Any], Any] = fn
        self._is_async = inspect.iscoroutinefunction(fn)
        self._thread = options.thread

    @staticmethod
    def pool_problems(options: PythonOptions, pool: PoolConfig) -> list[tuple[str, str]]:
        if options.thread and pool.timeout is not None:
            return [("timeout", "cannot stop a python function running in a thread "
                     "(`thread = true`): make it an `async def` without `thread`, "
                     "or remove `timeout`")]  # fmt: skip
        return []

    async def run(self, item: WorkItem) -> Any:
        # A copy of its own: the function may change it in place, and other
        # groups, the retry and the dead letter must not see that.
        data = private_copy(item.data)
        try:
            if self._is_async:
                return await self._fn(data)
            if self._thread:
                return await anyio.to_thread.run_sync(self._fn, data)
            return self._fn(data)
        except (SystemExit, KeyboardInterrupt) as exc:
            # Only this item asked to stop: a real Ctrl-C reaches chute as a
            # signal, never as an exception raised inside an item.
            raise ItemFailed(f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        return None
