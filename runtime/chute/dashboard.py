"""The live dashboard: ``GET /`` (one self-contained page) and ``GET /v1/dashboard`` (its data).

The page polls once a second and keeps its own short history for the
charts, so the runtime keeps no extra books and pays only while someone
looks. The data is the same statistics ``/v1/status`` and ``/metrics`` read.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import msgspec

from .config import Config
from .graph import operator_topics

if TYPE_CHECKING:
    from .engine import Runtime

_RECENT = 20


@cache
def page() -> bytes:
    return files("chute").joinpath("dashboard.html").read_bytes()


def pipeline_graph(config: Config) -> dict[str, list[Any]]:
    """Nodes (sources, topics, operators, pools) and the edges between them, dead letters aside."""
    nodes: list[dict[str, str]] = []
    edges: list[tuple[str, str]] = []
    topics: set[str] = set()

    def node(kind: str, name: str) -> str:
        nodes.append({"id": f"{kind}:{name}", "kind": kind, "label": name})
        return f"{kind}:{name}"

    def topic(name: str) -> str:
        if name not in topics:
            topics.add(name)
            node("topic", name)
        return f"topic:{name}"

    for name, spec in config.sources.items():
        edges.append((node("source", name), topic(str(spec.get("topic")))))
    for name, op in config.operators.items():
        me = node("operator", name)
        inputs, outputs = operator_topics(op)
        edges += [(topic(t), me) for t in inputs]
        edges += [(me, topic(t)) for t in outputs]
    for name, pool in config.pools.items():
        me = node("pool", name)
        edges.append((topic(pool.topic), me))
        if pool.output:
            edges.append((me, topic(pool.output)))
    return {"nodes": nodes, "edges": edges}


async def snapshot(rt: Runtime) -> dict[str, Any]:
    status = msgspec.to_builtins(await rt.status())
    failures: list[dict[str, Any]] = []
    if rt.store is not None:
        failures = [
            {"pool": r.pool, "key": r.key, "status": str(r.status), "attempts": r.attempts,
             "at": r.updated_at, "error": r.last_error}
            for r in await rt.store.failures(_RECENT)
        ]  # fmt: skip
    seen = {(f["pool"], f["key"]) for f in failures}
    for letter in list(rt.dead_letters.values())[-_RECENT:]:
        if (letter.pool, letter.key) not in seen:
            failures.append({"pool": letter.pool, "key": letter.key, "status": "dead",
                             "attempts": letter.attempts, "at": letter.at,
                             "error": letter.error})  # fmt: skip
    failures.sort(key=lambda f: f["at"], reverse=True)
    shards = []
    for name, op in rt.operators.items():
        healthy, outputs = getattr(op, "healthy", None), getattr(op, "outputs", None)
        if isinstance(healthy, list) and isinstance(outputs, list):
            shards += [{"operator": name, "shard": str(t), "healthy": bool(ok)}
                       for t, ok in zip(outputs, healthy, strict=False)]  # fmt: skip
    reasons = rt.unready_reasons()
    return {
        "node": status["node"],
        "broker": status["broker"],
        "ready": not reasons,
        "unready": reasons,
        "topics": [t for t in status["topics"] if not t["topic"].endswith(".dead")],
        "pools": status["pools"],
        "shards": shards,
        "failures": failures[:_RECENT],
        "graph": pipeline_graph(rt.config),
    }
