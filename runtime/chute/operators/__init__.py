"""The routing operators of chapter 11: copy, filter, split, shard, merge.

Each is built from its config table by ``build_operator`` and run by the
engine in its task group; see ``base.py`` for the delivery guarantee.
"""

from __future__ import annotations

from collections.abc import Callable

from ..broker import Broker
from ..config import (
    CopyOperator,
    FilterOperator,
    OperatorConfig,
    ShardOperator,
    SplitOperator,
)
from ..errors import ConfigError
from ..expressions import check_expression
from .base import Operator, OperatorStats
from .health import PoolErrorRates
from .merge import Merge
from .routing import Copy, Filter, Split
from .shard import Shard, ShardRing, no_errors

__all__ = [
    "Copy",
    "Filter",
    "Merge",
    "Operator",
    "OperatorStats",
    "PoolErrorRates",
    "Shard",
    "ShardRing",
    "Split",
    "build_operator",
    "operator_problems",
]


def operator_problems(name: str, cfg: OperatorConfig) -> list[tuple[str, str]]:
    """(key, what is wrong) for each problem a config table has beyond its types.

    Bad expressions, empty route lists, loops back into the input. The graph
    validator prefixes each with ``FILE: [operators.NAME]``.
    """
    problems: list[tuple[str, str]] = []

    def expr(key: str, text: str) -> None:
        if (problem := check_expression(text)) is not None:
            problems.append((key, problem))

    if isinstance(cfg, CopyOperator):
        if not cfg.outputs:
            problems.append(("outputs", "a copy needs at least one output topic"))
        inputs, outputs = [cfg.input], cfg.outputs
    elif isinstance(cfg, FilterOperator):
        expr("where", cfg.where)
        inputs, outputs = [cfg.input], [cfg.output, cfg.rejected]
    elif isinstance(cfg, SplitOperator):
        if not cfg.routes:
            problems.append(("routes", "a split needs at least one route"))
        for i, r in enumerate(cfg.routes):
            expr(f"routes[{i}].when", r.when)
        if cfg.default and cfg.dead_letter_unmatched:
            problems.append(
                (
                    "dead_letter_unmatched",
                    "unmatched messages go to `default`; set one or the other",
                )
            )
        inputs, outputs = [cfg.input], [r.output for r in cfg.routes] + [cfg.default]
    elif isinstance(cfg, ShardOperator):
        if cfg.key:
            expr("key", cfg.key)
        topics = cfg.shard_topics()
        if not topics:
            problems.append(
                ("shards", "give `outputs` (the shard topics) or `shards` and `prefix`")
            )
        elif len(set(topics)) != len(topics):
            problems.append(("outputs", "a shard topic is listed twice"))
        if cfg.shards and not cfg.prefix and not cfg.outputs:
            problems.append(("prefix", "`shards` needs a `prefix` to name the shard topics"))
        inputs, outputs = [cfg.input], topics
    else:
        if not cfg.inputs:
            problems.append(("inputs", "a merge needs at least one input topic"))
        inputs, outputs = cfg.inputs, [cfg.output]
    for topic in set(inputs) & {t for t in outputs if t}:
        problems.append(("outputs", f"topic {topic!r} is both an input and an output (a loop)"))
    return problems


def build_operator(
    name: str,
    cfg: OperatorConfig,
    broker: Broker,
    *,
    node: str,
    error_rate: Callable[[str], float] = no_errors,
) -> Operator:
    """The operator for a config table. Raises ConfigError (``[operators.NAME] KEY: ...``)."""
    problems = operator_problems(name, cfg)
    if problems:
        raise ConfigError([f"[operators.{name}] {key}: {msg}" for key, msg in problems])
    if isinstance(cfg, CopyOperator):
        return Copy(name, cfg, broker, node=node)
    if isinstance(cfg, FilterOperator):
        return Filter(name, cfg, broker, node=node)
    if isinstance(cfg, SplitOperator):
        return Split(name, cfg, broker, node=node)
    if isinstance(cfg, ShardOperator):
        return Shard(name, cfg, broker, node=node, error_rate=error_rate)
    return Merge(name, cfg, broker, node=node)
