"""The merge example's worker: one pool for uploads from every origin."""

from __future__ import annotations

from typing import Any


def process(upload: dict[str, Any]) -> dict[str, Any]:
    print(f"{upload['origin']}-{upload['n']} processed", flush=True)
    return upload
