"""chute: topics, sources, operators and autoscaled worker pools in one process.

Embed it with :class:`chute.Runtime` and :func:`chute.load_config`. The names
are resolved on first use so that ``chute --help`` does not import the engine.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config, load_config
    from .engine import Runtime
    from .message import Message

try:
    __version__ = version("chute")
except PackageNotFoundError:  # a checkout on sys.path without an install
    __version__ = "0+unknown"

__all__ = ["Config", "Message", "Runtime", "__version__", "load_config"]

_LAZY = {
    "Config": ".config",
    "load_config": ".config",
    "Runtime": ".engine",
    "Message": ".message",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'chute' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module, __name__), name)
