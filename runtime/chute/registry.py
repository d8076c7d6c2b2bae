"""Find plugins by entry point name, or ``module:attr`` for a one-off.

The built-in plugins register through the same entry points a third-party
package would use, so ``runtime`` never imports ``plugins``.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from functools import cache
from importlib.metadata import EntryPoints, entry_points
from typing import Any

from .errors import PluginNotFound

GROUPS = {
    "broker": "chute.brokers",
    "source": "chute.sources",
    "executor": "chute.executors",
    "store": "chute.stores",
    "sink": "chute.sinks",
}

# Plugins whose dependencies live in an extra, so a missing import says what to install.
_EXTRAS = {"redis": "redis", "redis_streams": "redis", "mqtt": "mqtt", "nats": "nats"}


@cache
def _installed() -> dict[str, EntryPoints]:
    """Each kind's entry points, all read at once: each ``entry_points(group=...)`` reads
    every installed package's metadata again, 3 to 5 ms a call with a few dozen packages,
    and a start looks up a broker, a store, executors and sources."""
    everything = entry_points()
    return {kind: everything.select(group=group) for kind, group in GROUPS.items()}


@cache
def available(kind: str) -> tuple[str, ...]:
    return tuple(sorted(ep.name for ep in _installed()[kind]))


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""`` when none is close."""
    near = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else ""


def import_object(spec: str) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PluginNotFound(f"{spec!r} is not of the form 'module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginNotFound(f"cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            hint = did_you_mean(part, [n for n in dir(obj) if not n.startswith("_")])
            raise PluginNotFound(
                f"module {module_name!r} has no attribute {attr!r}{hint}"
            ) from None
    return obj


@cache
def load_plugin(kind: str, name: str) -> Any:
    """The class registered as ``name`` in the entry-point group for ``kind``."""
    if ":" in name:
        return import_object(name)
    matches = [ep for ep in _installed()[kind] if ep.name == name]
    if not matches:
        known = ", ".join(available(kind)) or "none installed"
        hint = did_you_mean(name, available(kind))
        raise PluginNotFound(f"unknown {kind} {name!r} (known: {known}){hint}")
    try:
        return matches[0].load()
    except ImportError as exc:
        extra = next((e for mod, e in _EXTRAS.items() if mod in matches[0].value), None)
        hint = f"; install it with: pip install 'chute[{extra}]'" if extra else ""
        raise PluginNotFound(
            f"the {kind} plugin {name!r} cannot be imported: {exc}{hint}"
        ) from None
