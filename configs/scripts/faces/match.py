"""Step 2, identity matching: name each detected face from a table of known people.

``known`` in the photo (or the ``KNOWN`` table below) maps fingerprints to
names and whether the person agreed to appear in published photos.
"""

from __future__ import annotations

from typing import Any

from common import main


def match(photo: dict[str, Any]) -> dict[str, Any]:
    known: dict[str, dict[str, Any]] = photo.get("known", {})
    faces = []
    for face in photo["faces"]:
        person = known.get(face["fingerprint"])
        faces.append(
            {
                **face,
                "identity": person["name"] if person else None,
                "consent": bool(person and person.get("consent")),
            }
        )
    return {**photo, "faces": faces}


if __name__ == "__main__":
    main(match)
