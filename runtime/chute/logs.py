"""Logging set-up, and the lines that say what a run runs and what became of it.

Loggers are named ``chute.<area>`` (``chute.pool``, ``chute.sources.watch``,
``chute.brokers.redis``): plural folder names for plugins. ``--log-format
json`` writes one object per line with ``ts``, ``level``, ``logger``, ``msg``
and any fields a call passed in ``extra``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import anyio

from .config import Config
from .urls import redact_url

if TYPE_CHECKING:
    from .engine import Runtime

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")

_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def choice_problem(what: str, value: str, choices: tuple[str, ...]) -> str | None:
    """None when ``value`` is one of ``choices``; else the problem, with a near miss."""
    if value.lower() in choices:
        return None
    near = difflib.get_close_matches(value.lower(), choices, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"unknown {what} {value!r} (one of {', '.join(choices)}){hint}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str, fmt: str = "text") -> None:
    """The root handler on stderr; ``level`` and ``fmt`` were checked by the caller."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def _source_line(name: str, spec: dict[str, Any]) -> str:
    kind = spec.get("type", "?")
    detail = ""
    if "path" in spec:
        detail = f" watching {spec['path']}/{spec.get('glob', '*')}"
        if spec.get("recursive"):
            detail += " (recursive)"
    elif "stream" in spec:
        url = redact_url(str(spec.get("url", "redis://127.0.0.1:6379/0")))
        detail = f" reading stream {spec['stream']} at {url}"
    elif "url" in spec:
        detail = f" polling {redact_url(str(spec['url']))} every {spec.get('interval', '5s')}"
    elif kind == "generate":
        detail = f" generating {spec.get('count', 10)} items"
    return f"source {name} ({kind}){detail} -> topic {spec.get('topic')}"


def start_lines(config: Config) -> list[str]:
    """What a run runs: one line per source, operator and pool."""
    lines = [_source_line(name, spec) for name, spec in config.sources.items()]
    for name, op in config.operators.items():
        from .graph import operator_topics

        inputs, outputs = operator_topics(op)
        tag = op.__struct_config__.tag
        lines.append(f"operator {name} ({tag}) {', '.join(inputs)} -> {', '.join(outputs)}")
    for name, pool in config.pools.items():
        scale = pool.scale_or_fixed()
        size = (
            f"{scale.min}" if scale.min == scale.max else f"{scale.min}..{scale.max} (autoscaled)"
        )
        out = f" -> {pool.output}" if pool.output else ""
        lines.append(
            f"pool {name} ({pool.executor.get('type')}) reads {pool.topic}{out}, concurrency {size}"
        )
    return lines


async def _queued(rt: Runtime, within: float = 0.5) -> int | None:
    """Items waiting in the pools' topics; None when the broker does not answer in time.

    Bounded: a summary never holds a stop (a frozen Redis must not add to it).
    """
    queued = 0
    with anyio.move_on_after(within):
        for pool in rt.pools.values():
            # A summary never stops the run; the broker logs its own trouble.
            with contextlib.suppress(Exception):
                queued += (await rt.broker.stats(pool.topic)).backlog(pool.group)
        return queued
    return None


async def show_progress(rt: Runtime, stream: TextIO, every: float = 0.5) -> None:
    """One line on a terminal, redrawn in place: items done of those known, rate, ETA.

    "Known" grows while sources still emit; the ETA is the rest at the rate so far.
    """
    started = time.monotonic()
    try:
        while True:
            await anyio.sleep(every)
            pools = list(rt.pools.values())
            done = sum(p.counters.succeeded + p.counters.dead + p.counters.skipped for p in pools)
            total = done + (await _queued(rt) or 0)
            rate = done / max(time.monotonic() - started, 1e-9)
            eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
            stream.write(f"\r{done} of {total} items done, {rate:.1f}/s, ETA {eta}\x1b[K")
            stream.flush()
    finally:
        stream.write("\n")
        stream.flush()


async def summary_line(rt: Runtime) -> str:
    """Done, failed, dead, skipped (already done), queued and workers, over every pool."""
    pools = list(rt.pools.values())
    done = sum(p.counters.succeeded for p in pools)
    failed = sum(p.counters.failed for p in pools)
    dead = sum(p.counters.dead for p in pools)
    skipped = sum(p.counters.skipped for p in pools)
    workers = sum(p.counters.concurrency for p in pools)
    queued = await _queued(rt)
    parts = [f"done {done}", f"failed {failed}", f"dead {dead}"]
    parts.append(f"skipped {skipped} (already done)")
    parts += [f"queued {'?' if queued is None else queued}", f"workers {workers}"]
    return ", ".join(parts)
