"""Step 1, face detection: find the face regions of a photo and fingerprint each.

A "photo" is JSON: ``{"name", "pixels": [[int, ...], ...], "regions": [{"box":
[x, y, w, h], "kind": "face" | ...}]}``. A face's fingerprint is a digest of
its pixels, which the identity step matches against known people.
"""

from __future__ import annotations

import hashlib
from typing import Any

from common import main


def crop(pixels: list[list[int]], box: list[int]) -> list[list[int]]:
    x, y, w, h = box
    if w <= 0 or h <= 0 or y + h > len(pixels) or x + w > len(pixels[0]):
        raise ValueError(f"box {box} is outside the photo")
    return [row[x : x + w] for row in pixels[y : y + h]]


def detect(photo: dict[str, Any]) -> dict[str, Any]:
    faces = []
    for region in photo["regions"]:
        if region["kind"] != "face":
            continue
        pixels = crop(photo["pixels"], region["box"])
        digest = hashlib.sha256(repr(pixels).encode()).hexdigest()[:12]
        faces.append({"box": region["box"], "fingerprint": digest})
    return {**photo, "faces": faces}


if __name__ == "__main__":
    main(detect)
