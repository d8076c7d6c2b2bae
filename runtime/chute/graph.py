"""Validate a config as one graph before anything starts, and draw it as text.

Every problem is one line naming the file, the table and the key, so
``chute check`` can print them all and a user can fix them in one pass.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

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
from .context import PluginContext
from .errors import ConfigError, PluginNotFound
from .logs import FORMATS, LEVELS, choice_problem
from .operators import operator_problems
from .registry import did_you_mean, load_plugin
from .sink import SINK_KEYS
from .sink_runner import sink_settings
from .urls import redact_url

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


def sink_problems(spec: dict[str, Any]) -> list[str]:
    """Problems of one ``[sinks.NAME]`` table, as ``KEY: message``."""
    problems: list[str] = []
    for check in (sink_settings, lambda s: plugin_options("sink", s, SINK_KEYS)):
        try:
            check(spec)
        except ConfigError as exc:
            seen = {p.split(":", 1)[0] for p in problems}
            problems.extend(p for p in exc.problems if p.split(":", 1)[0] not in seen)
    return problems


def _sink_topic(name: str, spec: dict[str, Any]) -> tuple[str, str] | None:
    """(topic, group) a sink reads, when its table names a topic."""
    topic = spec.get("topic")
    if not isinstance(topic, str) or not topic:
        return None
    return topic, str(spec.get("group") or name)


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


class Wiring:
    """Who publishes to and who reads each topic: computed once, read by several rules."""

    def __init__(self, config: Config) -> None:
        self.produced: dict[str, list[str]] = defaultdict(list)
        self.consumed: dict[str, list[str]] = defaultdict(list)
        for name, spec in config.sources.items():
            if isinstance(topic := spec.get("topic"), str) and topic:
                self.produced[topic].append(f"sources.{name}")
        for name, pool in config.pools.items():
            label = f"pools.{name}"
            self.consumed[pool.topic].append(label)
            if pool.output:
                self.produced[pool.output].append(label)
            self.produced[name + DEAD_SUFFIX].append(label)
        for name, op in config.operators.items():
            label = f"operators.{name}"
            inputs, outputs = operator_topics(op)
            for t in inputs:
                self.consumed[t].append(label)
            for t in outputs:
                self.produced[t].append(label)
            self.produced[name + DEAD_SUFFIX].append(label)
        for name, spec in config.sinks.items():
            label = f"sinks.{name}"
            if (read := _sink_topic(name, spec)) is not None:
                self.consumed[read[0]].append(label)
            self.produced[name + DEAD_SUFFIX].append(label)
        if config.api.items and config.api.enabled:  # read from outside, through /v1/items
            self.consumed[config.api.items].append("api")


Problem = tuple[str, str, str]
"""(table, key, what is wrong); table "" for top-level keys."""
Rule = Callable[[Config, Wiring], Iterable[Problem]]


def _plugins_installed(config: Config, _: Wiring) -> Iterator[Problem]:
    settings = config.settings
    needed = [("broker", settings.broker, "broker")]
    if any(pool.track for pool in config.pools.values()):
        needed.append(("state", settings.state, "store"))
    for key, url, kind in needed:
        try:
            cls = load_plugin(kind, scheme_of(url))
        except PluginNotFound as exc:
            yield "", key, str(exc)
            continue
        # A plugin may check its own URL (the local broker's options, for one).
        url_problems = getattr(cls, "url_problems", None)
        if url_problems is not None:
            for problem in url_problems(url):
                yield "", key, problem


def _api_settings(config: Config, _: Wiring) -> Iterator[Problem]:
    api = config.api
    if not _is_loopback(api.host) and api.enabled and not api.token:
        yield "api", "token", f"required to listen on {api.host!r} (not loopback)"
    if not 0 <= api.port <= 65535:
        yield "api", "port", f"must be between 0 and 65535, got {api.port}"
    if api.items and not api.enabled:
        yield "api", "items", "serves nothing while the API is off (set enabled = true)"


def _log_settings(config: Config, _: Wiring) -> Iterator[Problem]:
    for key, value, choices in (("log_level", config.settings.log_level, LEVELS),
                                ("log_format", config.settings.log_format, FORMATS)):  # fmt: skip
        if (problem := choice_problem(key.replace("_", " "), value, choices)) is not None:
            yield "", key, problem


def _topic_settings(config: Config, _: Wiring) -> Iterator[Problem]:
    for name, topic in config.topics.items():
        if topic.capacity < 1:
            yield f"topics.{name}", "capacity", f"must be at least 1, got {topic.capacity}"
        if topic.visibility_timeout <= 0:
            yield f"topics.{name}", "visibility_timeout", "must be more than 0"


def _source_tables(config: Config, _: Wiring) -> Iterator[Problem]:
    for name, spec in config.sources.items():
        label = f"sources.{name}"
        topic = spec.get("topic")
        if not isinstance(topic, str) or not topic:
            yield label, "topic", "missing: the topic this source publishes to"
        yield from _plugin_problems("source", label, "", spec, ("topic",))


def _sink_tables(config: Config, _: Wiring) -> Iterator[Problem]:
    for name, spec in config.sinks.items():
        for problem in sink_problems(spec):
            key, _sep, msg = problem.partition(": ")
            yield f"sinks.{name}", key, msg


def _plugin_problems(kind: str, label: str, prefix: str, spec: dict[str, Any],
                     runtime_keys: tuple[str, ...]) -> Iterator[Problem]:  # fmt: skip
    try:
        plugin_options(kind, spec, runtime_keys)
    except ConfigError as exc:
        for problem in exc.problems:
            key, _, msg = problem.partition(": ")
            yield label, prefix + key, msg


def _pool_executors(config: Config, _: Wiring) -> Iterator[Problem]:
    for name, pool in config.pools.items():
        label = f"pools.{name}"
        problems = list(_plugin_problems("executor", label, "executor.", pool.executor, ()))
        yield from problems
        if problems:
            continue
        executor_cls, options = plugin_options("executor", pool.executor, ())
        # An executor may refuse pool settings it cannot honour (see executor.py).
        refuse = getattr(executor_cls, "pool_problems", None)
        for key, msg in refuse(options, pool) if refuse is not None else []:
            yield label, key, msg


def _pool_sizes(config: Config, _: Wiring) -> Iterator[Problem]:
    for name, pool in config.pools.items():
        label = f"pools.{name}"
        if pool.concurrency is not None and pool.scale is not None:
            yield label, "concurrency", "give either concurrency or scale, not both"
        if pool.concurrency is not None and pool.concurrency < 1:
            yield label, "concurrency", f"must be at least 1, got {pool.concurrency}"
        if pool.scale is not None:
            for key, msg in validate_scale(pool.scale):
                yield label, key, msg
        if pool.batch < 1:
            yield label, "batch", f"must be at least 1, got {pool.batch}"


def _pool_retries(config: Config, _: Wiring) -> Iterator[Problem]:
    for name, pool in config.pools.items():
        label = f"pools.{name}"
        if pool.retry.attempts < 1:
            yield label, "retry.attempts", f"must be at least 1, got {pool.retry.attempts}"
        if pool.retry.jitter < 0:
            yield label, "retry.jitter", "cannot be negative"
        if pool.timeout is not None and pool.timeout <= 0:
            yield label, "timeout", "must be more than 0 (leave it out for no limit)"


def _groups_unique(config: Config, _: Wiring) -> Iterator[Problem]:
    """Two readers in one consumer group on one topic would split its messages between them."""
    readers: list[tuple[str, str, str]] = [
        (f"pools.{name}", pool.topic, pool.group or name) for name, pool in config.pools.items()
    ]
    for name, op in config.operators.items():
        readers += [(f"operators.{name}", t, op.group or name) for t in operator_topics(op)[0]]
    for name, spec in config.sinks.items():
        if (read := _sink_topic(name, spec)) is not None:
            readers.append((f"sinks.{name}", *read))
    seen: dict[tuple[str, str], str] = {}
    for label, topic, group in readers:
        if (topic, group) in seen:
            yield label, "group", f"{group!r} already reads {topic!r} in [{seen[(topic, group)]}]"
        seen[(topic, group)] = label


def _operator_tables(config: Config, _: Wiring) -> Iterator[Problem]:
    for name, op in config.operators.items():
        label = f"operators.{name}"
        if op.batch < 1:
            yield label, "batch", f"must be at least 1, got {op.batch}"
        if isinstance(op, ShardOperator) and not 0 < op.health.error_rate <= 1:
            yield label, "health.error_rate", "must be in (0, 1]"
        for key, msg in operator_problems(name, op):
            yield label, key, msg


def _topics_fed(config: Config, wiring: Wiring) -> Iterator[Problem]:
    declared = set(config.topics)
    known = sorted(t for t in set(wiring.produced) | declared if not t.endswith(DEAD_SUFFIX))
    for topic, readers in wiring.consumed.items():
        if topic not in wiring.produced and topic not in declared:
            first = readers[0]
            key = "items" if first == "api" else "input"
            yield (first, "topic" if first.startswith(("pools.", "sinks.")) else key,
                   f"nothing publishes to topic {topic!r}{did_you_mean(topic, known)} (declare "
                   f"it under [topics.{topic}] if it is fed from outside)")  # fmt: skip


def _topics_read(config: Config, wiring: Wiring) -> Iterator[Problem]:
    declared = set(config.topics)
    for topic, writers in wiring.produced.items():
        if topic.endswith(DEAD_SUFFIX) or topic in wiring.consumed or topic in declared:
            continue
        first = writers[0]
        key = "output" if first.startswith("pools.") else "topic"
        if first.startswith("operators."):
            key = "outputs"
        near = did_you_mean(topic, sorted(wiring.consumed))
        yield (first, key, f"nothing reads topic {topic!r}{near} (declare it under "
               f"[topics.{topic}] if it is read from outside)")  # fmt: skip


RULES: tuple[Rule, ...] = (
    _plugins_installed, _api_settings, _log_settings, _topic_settings, _source_tables,
    _sink_tables, _pool_executors, _pool_sizes, _pool_retries, _groups_unique, _operator_tables,
    _topics_fed, _topics_read,
)  # fmt: skip
"""Each rule returns every problem it sees, so one pass reports them all."""


def problems_of(config: Config) -> list[str]:
    wiring = Wiring(config)
    problems = []
    for rule in RULES:
        for table, key, msg in rule(config, wiring):
            prefix = where(config.path, table, key) if table else f"{config.path}: {key}"
            problems.append(f"{prefix}: {msg}")
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
        f"{path}: broker: memory topic {topic!r} is fed by {', '.join(sorted(set(who)))}, "
        "which cannot offer its messages again: what waits there is lost at exit or on a "
        "crash (the default broker, local, keeps it)"
        for topic, who in sorted(_unreplayable_feeds(config).items())
    ]
    if config.api.enabled:
        out.append(
            f"{path}: broker: messages published through the API into memory topics "
            "are lost at exit or on a crash until they are processed (the default broker, "
            "local, keeps them)"
        )
    return out


def validate(config: Config) -> None:
    problems = problems_of(config)
    if problems:
        raise ConfigError(problems)


async def build_problems(config: Config) -> tuple[list[str], list[str]]:
    """(problems, warnings) found by building each executor as ``run`` will.

    ``chute run`` finds a missing program or a misspelled function when it
    builds the pools; ``chute check`` finds them here, every one in one pass.
    The warnings name argv fields the feeding source never emits.
    """
    problems: list[str] = []
    warnings: list[str] = []
    base = Path(config.base_dir)
    for name, pool in config.pools.items():
        label = f"pools.{name}"
        try:
            cls, options = plugin_options("executor", pool.executor, ())
        except ConfigError:
            continue  # problems_of reports it
        try:
            ctx = PluginContext(name=name, topic=pool.topic, base_dir=base,
                                workdir=config.workdir(), node="check",
                                broker=cast(Any, None))  # fmt: skip
            executor = cls(options, ctx)
        except ConfigError as exc:
            problems += [f"{where(config.path, label, 'executor.' + p)}" for p in exc.problems]
            continue
        warnings += _field_warnings(config, label, pool.topic, executor)
        await executor.aclose()
    for name, spec in config.sinks.items():
        problems += await _sink_build_problems(config, name, spec)
    return problems, warnings


async def _sink_build_problems(config: Config, name: str, spec: dict[str, Any]) -> list[str]:
    """What building the sink as ``run`` does refuses (an mqtt_topic's unknown field...)."""
    try:
        cls, options = plugin_options("sink", spec, SINK_KEYS)
    except ConfigError:
        return []  # problems_of reports it
    ctx = PluginContext(name=name, topic=str(spec.get("topic", "")), base_dir=Path(config.base_dir),
                        workdir=config.workdir(), node="check", broker=cast(Any, None))  # fmt: skip
    try:
        sink = cls(options, ctx)
    except ConfigError as exc:
        return [f"{where(config.path, f'sinks.{name}', p)}" for p in exc.problems]
    await sink.aclose()
    return []


def _field_warnings(config: Config, label: str, topic: str, executor: Any) -> list[str]:
    used = getattr(executor, "item_fields", None)
    if used is None:
        return []
    out = []
    for source_name, spec in config.sources.items():
        if spec.get("topic") != topic:
            continue
        try:
            cls, options = plugin_options("source", spec, ("topic",))
        except ConfigError:
            continue
        emitted = getattr(cls, "fields", None)
        if emitted is None:
            continue
        fields = emitted(options)
        for field in sorted(used() - fields):
            hint = did_you_mean(field, sorted(fields))
            out.append(f"{where(config.path, label, 'executor.argv')}: {{{field}}} is not a field "
                       f"source {source_name!r} emits ({', '.join(sorted(fields))}){hint}")  # fmt: skip
    return out


def describe(config: Config) -> str:
    """The graph as text: sources -> topics -> operators/pools -> topics."""
    settings = config.settings
    lines = [f"broker {redact_url(settings.broker)}, state {redact_url(settings.state)}"]
    for name, spec in config.sources.items():
        lines.append(f"source {name} ({spec.get('type')}) -> {spec.get('topic')}")
    for name, spec in config.sinks.items():
        lines.append(f"{spec.get('topic')} -> sink {name} ({spec.get('type')})")
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
