"""Step 3, blur: replace every face without consent by its mean brightness."""

from __future__ import annotations

from typing import Any

from common import main


def blur(photo: dict[str, Any]) -> dict[str, Any]:
    pixels = [list(row) for row in photo["pixels"]]
    blurred = []
    for face in photo["faces"]:
        if face["consent"]:
            continue
        x, y, w, h = face["box"]
        values = [v for row in pixels[y : y + h] for v in row[x : x + w]]
        mean = round(sum(values) / len(values))
        for row in pixels[y : y + h]:
            row[x : x + w] = [mean] * w
        blurred.append(face["identity"] or "unknown")
    return {
        "name": photo["name"],
        "pixels": pixels,
        "blurred": blurred,
        "kept": [f["identity"] for f in photo["faces"] if f["consent"]],
    }


if __name__ == "__main__":
    main(blur)
