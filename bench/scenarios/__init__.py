"""The scenarios of ``python -m bench``, one module each, and the sizes of each mode."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    jobs: int
    """(a) no-op jobs drained."""
    enqueue: int
    """(a) jobs enqueued one per call (and batched)."""
    samples: int
    """(a) enqueue -> start samples."""
    gaps: tuple[float, float]
    """(a) the random idle gap before each sample, seconds."""
    spawns: int
    """(b) /bin/true jobs per run."""
    concurrency: tuple[int, ...]
    rounds: int
    """(b) rounds in which chute and the bare spawn loops take turns."""
    files: int
    """(c) files dropped."""
    starts: int
    """(d) start-ups measured (the median counts)."""


MODES = {
    "full": Mode("full", jobs=10_000, enqueue=10_000, samples=50, gaps=(0.05, 0.6),
                 spawns=2000, concurrency=(2, 8), rounds=5, files=200, starts=5),
    "quick": Mode("quick", jobs=2000, enqueue=1000, samples=15, gaps=(0.02, 0.15),
                  spawns=300, concurrency=(2, 8), rounds=1, files=40, starts=1),
    "smoke": Mode("smoke", jobs=200, enqueue=100, samples=3, gaps=(0.01, 0.03),
                  spawns=40, concurrency=(2,), rounds=1, files=8, starts=1),
}  # fmt: skip
