"""The book's executor interface for the face scripts: read the item, write the result."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

EX_DATAERR = 65
"""Exit status for a photo that can never be processed: chute dead-letters it at once."""


def main(step: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    with open(os.environ["WORK_ITEM_FILE"], encoding="utf-8") as f:
        photo = json.load(f)
    try:
        result = step(photo)
    except (KeyError, TypeError, ValueError) as exc:
        print(f"bad photo: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(EX_DATAERR)
    with open(os.environ["WORK_RESULT_FILE"], "w", encoding="utf-8") as f:
        json.dump(result, f)
