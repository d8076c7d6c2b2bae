"""The face-chain example's ends: make a JSON photo for item n, publish the result."""

from __future__ import annotations

import hashlib
from typing import Any

# Each person's face is a 3x3 patch of brightness values.
PEOPLE = {
    "ada": ([[9, 8, 9], [7, 1, 7], [9, 3, 9]], True),
    "bo": ([[2, 4, 2], [4, 8, 4], [2, 6, 2]], False),
    "cy": ([[5, 5, 1], [5, 9, 5], [1, 5, 5]], True),
}
STRANGER = [[6, 6, 6], [6, 2, 6], [6, 6, 0]]


def fingerprint(patch: list[list[int]]) -> str:
    """The same digest detect.py takes of a face's pixels."""
    return hashlib.sha256(repr(patch).encode()).hexdigest()[:12]


def take_photo(item: dict[str, Any]) -> dict[str, Any]:
    """An 8x8 photo with two faces and a tree; which faces depends on n."""
    n = int(item["n"])
    names = list(PEOPLE)
    first, second = names[n % 3], names[(n + 1) % 3]
    patches = [PEOPLE[first][0], PEOPLE[second][0] if n % 4 else STRANGER]
    pixels = [[0] * 8 for _ in range(8)]
    regions = []
    for (x, y), patch in zip([(0, 0), (4, 4)], patches, strict=True):
        for dy, row in enumerate(patch):
            pixels[y + dy][x : x + 3] = row
        regions.append({"box": [x, y, 3, 3], "kind": "face"})
    regions.append({"box": [5, 0, 2, 3], "kind": "tree"})
    known = {fingerprint(p): {"name": name, "consent": ok} for name, (p, ok) in PEOPLE.items()}
    return {"name": f"photo-{n}.json", "pixels": pixels, "regions": regions, "known": known}


def publish(result: dict[str, Any]) -> None:
    blurred = ", ".join(result["blurred"]) or "nobody"
    print(f"{result['name']}: blurred {blurred}; kept {', '.join(result['kept']) or 'nobody'}",
          flush=True)  # fmt: skip
