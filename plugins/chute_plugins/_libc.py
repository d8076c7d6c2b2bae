"""The C library through ctypes, for the Linux calls Python's os module lacks."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def load(*needed: str) -> ctypes.CDLL | None:
    """libc, keeping errno, if this is Linux and it has every function in ``needed``.

    Each caller gets its own handle, so the argument types one binding sets
    never reach another.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc if all(hasattr(libc, name) for name in needed) else None
