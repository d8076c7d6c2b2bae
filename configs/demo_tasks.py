"""The demo's work: a few lines of real processing per item."""

from __future__ import annotations

import hashlib
from typing import Any

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Make a sentence for item n, and report its words and checksum."""
    n = int(data["n"])
    sentence = " ".join(WORDS[(n + i) % len(WORDS)] for i in range(3 + n % 5))
    return {
        "n": n,
        "sentence": sentence,
        "words": len(sentence.split()),
        "sha256": hashlib.sha256(sentence.encode()).hexdigest()[:16],
    }


def report(data: dict[str, Any]) -> None:
    print(
        f"item {data['n']:>3}: {data['words']} words, sha256 {data['sha256']}  {data['sentence']!r}",
        flush=True,  # shown as it happens, also through a pipe (| tee, a supervisor)
    )
