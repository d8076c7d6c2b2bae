"""Rows of the comparison, the printed table and the JSON, with the machine they came from."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    scenario: str
    """a, b, c, d or e."""
    what: str
    chute: float
    peer: str
    """Who chute is compared with in this row ("" when the row has no peer)."""
    peer_value: float
    unit: str
    floor: str = ""
    """The floor in words; empty when the row has none."""
    met: bool | None = None
    """Whether chute met the floor (None: no floor on this row)."""
    note: str = ""
    paired: float | None = None
    """Where chute and the peer took turns round by round: the median of the rounds' own
    ratios, which stands for chute / peer (a slow minute moves the two medians apart,
    not a round's ratio)."""

    @property
    def ratio(self) -> float:
        if self.paired is not None:
            return self.paired
        if not self.peer or not self.peer_value or math.isnan(self.peer_value):
            return float("nan")
        return self.chute / self.peer_value

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = None if math.isnan(self.ratio) else round(self.ratio, 4)
        for key in ("chute", "peer_value"):
            if isinstance(out[key], float) and math.isnan(out[key]):
                out[key] = None
        return out


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """Per scenario: the raw figures (every sample, every round) behind the rows."""

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def fmt(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit in ("/s", "jobs/s", "items/s", "msgs/s", "files/s"):
        if value >= 1e6:
            return f"{value / 1e6:.2f} M"
        return f"{value / 1e3:.2f} k" if value >= 1000 else f"{value:.0f}"
    if unit == "ms":
        return f"{value:.2f}" if value < 10 else f"{value:.0f}"
    if unit == "us":
        return f"{value:.0f}"
    return f"{value:.3g}"


def render(rows: Sequence[Row]) -> str:
    header = ["", "what", "unit", "chute", "peer", "peer's", "chute/peer", "floor", "met"]
    lines = [header]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        ratio = "" if math.isnan(r.ratio) else f"{r.ratio:.2f}x"
        lines.append([r.scenario, r.what, r.unit, fmt(r.chute, r.unit), r.peer,
                      fmt(r.peer_value, r.unit) if r.peer else "", ratio, r.floor, met])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append(" | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


def markdown(rows: Sequence[Row]) -> str:
    """The same table for bench/README.md."""
    out = ["| | what | unit | chute | peer | peer's | chute / peer | floor | met |",
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        ratio = "" if math.isnan(r.ratio) else f"{r.ratio:.2f}x"
        out.append(f"| {r.scenario} | {r.what} | {r.unit} | {fmt(r.chute, r.unit)} | {r.peer} | "
                   f"{fmt(r.peer_value, r.unit) if r.peer else ''} | {ratio} | {r.floor} | {met} |")  # fmt: skip
    return "\n".join(out)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(versions: Callable[[], dict[str, str]]) -> dict[str, Any]:
    from bench._procs import redis_version

    chute_version = subprocess.run(
        [sys.executable, "-c", "import chute; print(chute.__version__)"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": redis_version(),
        "chute": chute_version,
        "peers": versions(),
        # other work on the machine moves every figure: the load when the run began
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
