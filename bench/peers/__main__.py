"""Install the Python peers into their own environments: ``python -m bench.peers [NAME ...]``."""

from __future__ import annotations

import sys

from bench.peers import PEERS, install

if __name__ == "__main__":
    wanted = sys.argv[1:] or list(PEERS)
    unknown = [n for n in wanted if n not in PEERS]
    if unknown:
        sys.exit(f"unknown peer {unknown[0]!r}; known: {', '.join(PEERS)}")
    install(wanted)
