"""Stub executors for the chain tests, loaded by ``module:Class`` like any one-off plugin."""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

from chute.config import Strict
from chute.context import PluginContext
from chute.errors import ItemFailed
from chute.executor import WorkItem

CALLS: Counter[str] = Counter()
"""Runs per step tag, so tests see which steps ran again."""


class StampOptions(Strict):
    tag: str
    fail_first: int = 0
    """Fail this many runs before succeeding."""
    permanent: bool = False
    crash: bool = False
    """Fail with a plain exception rather than ItemFailed."""


class Stamp:
    """Appends its tag to ``data["trail"]``; can be told to fail its first runs."""

    Options: ClassVar[type[Strict]] = StampOptions

    def __init__(self, options: StampOptions, ctx: PluginContext) -> None:
        self.options = options
        self.closed = False

    async def run(self, item: WorkItem) -> Any:
        o = self.options
        CALLS[o.tag] += 1
        if CALLS[o.tag] <= o.fail_first:
            if o.crash:
                raise RuntimeError(f"{o.tag} fell over")
            raise ItemFailed(f"{o.tag} failed", permanent=o.permanent, output="stderr tail")
        return {**item.data, "trail": [*item.data.get("trail", []), o.tag]}

    async def aclose(self) -> None:
        CALLS["closed"] += 1


class NothingOptions(Strict):
    pass


class Nothing:
    """A step with side effects only: returns None."""

    Options: ClassVar[type[Strict]] = NothingOptions

    def __init__(self, options: NothingOptions, ctx: PluginContext) -> None:
        pass

    async def run(self, item: WorkItem) -> Any:
        CALLS["nothing"] += 1
        return None

    async def aclose(self) -> None:
        return None
