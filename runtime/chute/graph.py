"""Validate a config as one graph before anything starts, and draw it as text.

Every problem is one line naming the file, the table and the key, so
``chute check`` can print them all and a user can fix them in one pass.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from typing import Any

import msgspec

from .autoscale import validate_scale
from .config import (
    Config,
    CopyOperator,
    FilterOperator,
    MergeOperator,
    OperatorConfig,
    ShardOperator,
    SplitOperator,
    dec_hook,
    describe_validation_error,
    where,
)
from .errors import ConfigError, PluginNotFound
from .operators import operator_problems
from .registry import load_plugin

DEAD_SUFFIX = ".dead"


def scheme_of(url: str) -> str:
    """``redis://host`` -> ``redis``; ``sqlite:///x.db`` -> ``sqlite``; ``memory`` -> ``memory``;
    ``local?durability=power`` -> ``local``."""
    return url.split("?", 1)[0].split(":", 1)[0]


def plugin_options(kind: str, spec: dict[str, Any], runtime_keys: tuple[str, ...]) -> Any:
    """The plugin class for ``spec['type']`` and its decoded options.

    Raises ConfigError with problems of the form ``KEY: message`` (key relative
    to ``spec``), for the caller to prefix with file and table.
    """
    kind_name = spec.get("type")
    if not isinstance(kind_name, str) or not kind_name:
        raise ConfigError([f"type: missing: which {kind} to use"])
    try:
        cls = load_plugin(kind, kind_name)
    except PluginNotFound as exc:
        raise ConfigError([f"type: {exc}"]) from None
    body = {k: v for k, v in spec.items() if k not in ("type", *runtime_keys)}
    options_type = getattr(cls, "Options", None)
    if options_type is None:
        return cls, None
    try:
        return cls, msgspec.convert(body, options_type, dec_hook=dec_hook)
    except msgspec.ValidationError as err:
        key, msg = describe_validation_error(err)
        raise ConfigError([f"{key}: {msg}"]) from None


def operator_topics(op: OperatorConfig) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of an operator."""
    if isinstance(op, CopyOperator):
        return [op.input], list(op.outputs)
    if isinstance(op, FilterOperator):
        return [op.input], [op.output] + ([op.rejected] if op.rejected else [])
    if isinstance(op, SplitOperator):
        outs = [r.output for r in op.routes] + ([op.default] if op.default else [])
        return [op.input], outs
    if isinstance(op, ShardOperator):
        return [op.input], op.shard_topics()
    assert isinstance(op, MergeOperator)
    return list(op.inputs), [op.output]


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def problems_of(config: Config) -> list[str]:
    path = config.path
    problems: list[str] = []

    def add(table: str, key: str, msg: str) -> None:
        problems.append(f"{where(path, table, key)}: {msg}")

    settings = config.settings
    needed = [("broker", settings.broker, "broker")]
    if any(pool.track for pool in config.pools.values()):
        needed.append(("state", settings.state, "store"))
    for key, url, kind in needed:
        try:
            cls = load_plugin(kind, scheme_of(url))
        except PluginNotFound as exc:
            problems.append(f"{path}: {key}: {exc}")
            continue
        # A plugin may check its own URL (the local broker's options, for one).
        url_problems = getattr(cls, "url_problems", None)
        if url_problems is not None:
            problems.extend(f"{path}: {key}: {p}" for p in url_problems(url))
    if not _is_loopback(config.api.host) and config.api.enabled and not config.api.token:
        add("api", "token", f"required to listen on {config.api.host!r} (not loopback)")
    if not 0 <= config.api.port <= 65535:
        add("api", "port", f"must be between 0 and 65535, got {config.api.port}")

    produced: dict[str, list[str]] = defaultdict(list)
    consumed: dict[str, list[str]] = defaultdict(list)
    groups: dict[tuple[str, str], str] = {}

    for name, topic_cfg in config.topics.items():
        if topic_cfg.capacity < 1:
            add(f"topics.{name}", "capacity", f"must be at least 1, got {topic_cfg.capacity}")
        if topic_cfg.visibility_timeout <= 0:
            add(f"topics.{name}", "visibility_timeout", "must be more than 0")

    for name, spec in config.sources.items():
        label = f"sources.{name}"
        topic = spec.get("topic")
        if not isinstance(topic, str) or not topic:
            add(label, "topic", "missing: the topic this source publishes to")
        else:
            produced[topic].append(label)
        try:
            plugin_options("source", spec, ("topic",))
        except ConfigError as exc:
            problems.extend(f"{where(path, label, p)}" for p in exc.problems)

    for name, pool in config.pools.items():
        label = f"pools.{name}"
        consumed[pool.topic].append(label)
        if pool.output:
            produced[pool.output].append(label)
        produced[name + DEAD_SUFFIX].append(label)
        group_key = (pool.topic, pool.group or name)
        if group_key in groups:
            add(
                label,
                "group",
                f"{group_key[1]!r} already reads {pool.topic!r} in [{groups[group_key]}]",
            )
        groups[group_key] = label
        try:
            executor_cls, options = plugin_options("executor", pool.executor, ())
        except ConfigError as exc:
            problems.extend(f"{where(path, label, 'executor.' + p)}" for p in exc.problems)
        else:
            # An executor may refuse pool settings it cannot honour (see executor.py).
            refuse = getattr(executor_cls, "pool_problems", None)
            for key, msg in refuse(options, pool) if refuse is not None else []:
                add(label, key, msg)
        if pool.concurrency is not None and pool.scale is not None:
            add(label, "concurrency", "give either concurrency or scale, not both")
        if pool.concurrency is not None and pool.concurrency < 1:
            add(label, "concurrency", f"must be at least 1, got {pool.concurrency}")
        if pool.scale is not None:
            for key, msg in validate_scale(pool.scale):
                add(label, key, msg)
        if pool.retry.attempts < 1:
            add(label, "retry.attempts", f"must be at least 1, got {pool.retry.attempts}")
        if pool.retry.jitter < 0:
            add(label, "retry.jitter", "cannot be negative")
        if pool.timeout is not None and pool.timeout <= 0:
            add(label, "timeout", "must be more than 0 (leave it out for no limit)")
        if pool.batch < 1:
            add(label, "batch", f"must be at least 1, got {pool.batch}")

    for name, op in config.operators.items():
        label = f"operators.{name}"
        inputs, outputs = operator_topics(op)
        for t in inputs:
            consumed[t].append(label)
            group_key = (t, op.group or name)
            if group_key in groups:
                add(
                    label, "group", f"{group_key[1]!r} already reads {t!r} in [{groups[group_key]}]"
                )
            groups[group_key] = label
        for t in outputs:
            produced[t].append(label)
        produced[name + DEAD_SUFFIX].append(label)
        if op.batch < 1:
            add(label, "batch", f"must be at least 1, got {op.batch}")
        if isinstance(op, ShardOperator) and not 0 < op.health.error_rate <= 1:
            add(label, "health.error_rate", "must be in (0, 1]")
        for key, msg in operator_problems(name, op):
            add(label, key, msg)

    declared = set(config.topics)
    for topic, readers in consumed.items():
        if topic not in produced and topic not in declared:
            first = readers[0]
            add(first, "topic" if first.startswith("pools.") else "input",
                f"nothing publishes to topic {topic!r} (declare it under [topics.{topic}] "
                "if it is fed from outside)")  # fmt: skip
    for topic, writers in produced.items():
        if topic.endswith(DEAD_SUFFIX) or topic in consumed or topic in declared:
            continue
        first = writers[0]
        key = "output" if first.startswith("pools.") else "topic"
        if first.startswith("operators."):
            key = "outputs"
        add(first, key, f"nothing reads topic {topic!r} (declare it under [topics.{topic}] "
            "if it is read from outside)")  # fmt: skip
    return problems


def _unreplayable_feeds(config: Config) -> dict[str, list[str]]:
    """Topic -> what publishes to it and cannot offer those messages again after a loss."""
    feeds: dict[str, list[str]] = defaultdict(list)
    for name, spec in config.sources.items():
        kind = spec.get("type")
        try:
            replays = getattr(load_plugin("source", str(kind)), "replays", False)
        except PluginNotFound:
            continue  # reported by problems_of
        if not replays:
            feeds[str(spec.get("topic"))].append(f"source {name} ({kind})")
    for name, pool in config.pools.items():
        if pool.output:
            feeds[pool.output].append(f"pool {name}'s output")
    for name, op in config.operators.items():
        for topic in operator_topics(op)[1]:
            feeds[topic].append(f"operator {name}")
    return feeds


def warnings_of(config: Config) -> list[str]:
    """What may lose work without being wrong: memory topics fed by what cannot replay."""
    if scheme_of(config.settings.broker) != "memory":
        return []
    path = config.path
    out = [
        f"{path}: broker: warning: memory topic {topic!r} is fed by {', '.join(sorted(set(who)))}, "
        "which cannot offer its messages again: what waits there is lost at exit or on a "
        "crash (the default broker, local, keeps it)"
        for topic, who in sorted(_unreplayable_feeds(config).items())
    ]
    if config.api.enabled:
        out.append(
            f"{path}: broker: warning: messages published through the API into memory topics "
            "are lost at exit or on a crash until they are processed (the default broker, "
            "local, keeps them)"
        )
    return out


def validate(config: Config) -> None:
    problems = problems_of(config)
    if problems:
        raise ConfigError(problems)


def describe(config: Config) -> str:
    """The graph as text: sources -> topics -> operators/pools -> topics."""
    lines = [f"broker {config.settings.broker}, state {config.settings.state}"]
    for name, spec in config.sources.items():
        lines.append(f"source {name} ({spec.get('type')}) -> {spec.get('topic')}")
    for name, op in config.operators.items():
        inputs, outputs = operator_topics(op)
        lines.append(
            f"{', '.join(inputs)} -> {op.__struct_config__.tag} {name} -> {', '.join(outputs)}"
        )
    for name, pool in config.pools.items():
        scale = pool.scale_or_fixed()
        size = str(scale.min) if scale.min == scale.max else f"{scale.min}..{scale.max}"
        out = pool.output or "(no output)"
        lines.append(
            f"{pool.topic} -> pool {name} ({pool.executor.get('type')} x{size}) -> {out}"
            f"; dead letters -> {name}{DEAD_SUFFIX}"
        )
    return "\n".join(lines)
