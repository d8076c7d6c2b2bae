"""Config files (TOML or YAML) decoded into msgspec Structs.

Every table is decoded on its own so ``chute check`` reports every broken
table, not just the first; unknown fields are errors (a typo must not become a
silent default). Each problem is one line: ``FILE: [TABLE] KEY: what is wrong``.
"""

from __future__ import annotations

import difflib
import math
import random
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from .errors import ConfigError


class Duration(float):
    """Seconds; written as a number or a string such as ``"250ms"``, ``"30s"``, ``"2m"``."""


class Size(int):
    """Bytes; written as a number or a string such as ``"64KiB"``, ``"1MiB"``, ``"2GB"``."""


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}  # fmt: skip
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: object) -> Duration:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '30s', got a boolean")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _NUMBER_UNIT.match(value)):
        unit = m.group(2).lower() or "s"
        if unit not in _DURATION_UNITS:
            raise ValueError(f"unknown duration unit {m.group(2)!r} (use ms, s, m, h or d)")
        seconds = float(m.group(1)) * _DURATION_UNITS[unit]
    else:
        raise ValueError(f"expected a duration such as '30s' or '250ms', got {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return Duration(seconds)


def parse_size(value: object) -> Size:
    if isinstance(value, bool):
        raise ValueError("expected a size such as '1MiB', got a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _NUMBER_UNIT.match(value)):
        unit = m.group(2).lower()
        if unit not in _SIZE_UNITS:
            raise ValueError(f"unknown size unit {m.group(2)!r} (use B, KiB, MiB, GiB, kB, MB, GB)")
        size = int(float(m.group(1)) * _SIZE_UNITS[unit])
    else:
        raise ValueError(f"expected a size such as '1MiB', got {value!r}")
    if size < 0:
        raise ValueError(f"a size cannot be negative, got {value!r}")
    return Size(size)


def dec_hook(tp: type, value: object) -> object:
    if tp is Duration:
        return parse_duration(value)
    if tp is Size:
        return parse_size(value)
    raise NotImplementedError(f"no decoder for {tp!r}")


class Strict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for config tables: unknown keys are errors."""


class TopicConfig(Strict):
    """Optional: declare a topic fed or read from outside, or change its limits."""

    capacity: int = 100_000
    """Unacknowledged entries the topic holds before publishers wait."""
    visibility_timeout: Duration = Duration(300.0)
    """A delivery pending longer than this is handed to another consumer."""


class RetryConfig(Strict):
    """How a failing item is retried before it is dead-lettered to ``<pool>.dead``."""

    attempts: int = 3
    """Deliveries before an item is dead-lettered (1 = no retry)."""
    backoff: Duration = Duration(1.0)
    """Delay before the first retry; doubles with each further attempt."""
    max_backoff: Duration = Duration(300.0)
    """The longest delay between two attempts."""
    jitter: float = 0.2
    """Random fraction added to each backoff, so retries of a burst spread out."""

    def delay(self, attempt: int) -> float:
        """Seconds before retrying after ``attempt`` failed: exponential, with jitter."""
        base = min(self.max_backoff, self.backoff * math.pow(2, max(0, attempt - 1)))
        return base * (1.0 + random.uniform(0.0, max(0.0, self.jitter)))


class ScaleConfig(Strict):
    """Autoscaling: c = ceil(λ·S / utilization) plus enough to drain the backlog."""

    min: int = 1
    """Fewest workers the autoscaler keeps."""
    max: int = 1
    """Most workers the autoscaler starts."""
    utilization: float = 0.9
    """Target fraction of time workers are busy, in (0, 1]."""
    cooldown: Duration = Duration(30.0)
    """A lower target must hold this long before the pool shrinks."""
    drain_within: Duration = Duration(60.0)
    """Add workers so the backlog drains within this horizon."""
    half_life: Duration = Duration(10.0)
    """Half-life of the arrival-rate and service-time averages."""
    interval: Duration = Duration(1.0)
    """How often the controller looks at the statistics."""


class PoolConfig(Strict):
    """A worker pool: consumes a topic and runs its executor on each message."""

    topic: str
    """The topic the pool consumes (with its own consumer group)."""
    executor: dict[str, Any]
    """``{ type = "command" | "python" | "chain" | "module:Class", ...options }``."""
    concurrency: int | None = None
    """A fixed pool size; shorthand for ``scale = { min = N, max = N }``."""
    scale: ScaleConfig | None = None
    """Autoscaling bounds and tuning (``[pools.NAME.scale]``); instead of ``concurrency``."""
    output: str = ""
    """Topic that receives each item's result (a pipeline's next stage)."""
    group: str = ""
    """Consumer group name; defaults to the pool's name."""
    start: Literal["earliest", "latest"] = "earliest"
    """Where the group starts when it is new: ``earliest``, what the topic holds
    (messages published before the pool first ran are not skipped), or ``latest``,
    only messages published from then on. An existing group keeps its place."""
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    """Attempts and backoff (``[pools.NAME.retry]``)."""
    timeout: Duration | None = None
    """Per-attempt time limit."""
    track: bool = True
    """Remember each item's status in the state store (skip finished work on restart)."""
    batch: int = 256
    """Most deliveries fetched from the broker at once."""

    def scale_or_fixed(self) -> ScaleConfig:
        if self.scale is not None:
            return self.scale
        n = self.concurrency if self.concurrency is not None else 1
        return ScaleConfig(min=n, max=n)


class ShardHealth(Strict):
    """When a shard counts as unhealthy."""

    error_rate: float = 0.5
    """A shard whose pool fails more than this fraction of items is unhealthy."""
    stall: Duration = Duration(60.0)
    """A shard whose oldest pending delivery is older than this is unhealthy."""
    interval: Duration = Duration(1.0)
    """How often shard health is evaluated."""


class OperatorBase(Strict, tag_field="type", kw_only=True):
    group: str = ""
    """Consumer group name on the input topic(s); defaults to the operator's name."""
    start: Literal["earliest", "latest"] = "earliest"
    """Where a new group starts on each input: ``earliest`` or ``latest`` (as for pools)."""
    batch: int = 512
    """Most messages read from an input at once."""


class CopyOperator(OperatorBase, tag="copy", kw_only=True):
    """Every message of ``input`` to every topic in ``outputs``."""

    input: str
    """The topic read."""
    outputs: list[str]
    """The topics each message is published to."""


class FilterOperator(OperatorBase, tag="filter", kw_only=True):
    """Messages of ``input`` that match ``where`` go to ``output``."""

    input: str
    """The topic read."""
    output: str
    """The topic matching messages go to."""
    where: str
    """JMESPath over the message; a truthy result keeps it."""
    rejected: str = ""
    """Optional topic for messages that do not match."""


class Route(Strict):
    """One route of a split operator."""

    when: str
    """JMESPath over the message; a truthy result selects this route."""
    output: str
    """The topic the route's messages go to."""


class SplitOperator(OperatorBase, tag="split", kw_only=True):
    """Route each message of ``input`` by predicates."""

    input: str
    """The topic read."""
    routes: list[Route]
    """Predicates and their topics (``[[operators.NAME.routes]]``), tried in order."""
    mode: Literal["first", "all"] = "first"
    """``first``: the first matching route only; ``all``: every matching route."""
    default: str = ""
    """Topic for messages matching no route; without it they are counted and dropped."""
    dead_letter_unmatched: bool = False
    """Send messages matching no route to ``<name>.dead`` instead of dropping them."""


class ShardOperator(OperatorBase, tag="shard", kw_only=True):
    """A stable hash of the key picks one of N shard topics; an unhealthy shard's keys
    move to healthy shards (as few as possible) and back when it recovers."""

    input: str
    """The topic read."""
    outputs: list[str] = []
    """Shard topics; or give ``shards`` and ``prefix`` for ``prefix-0 .. prefix-N-1``."""
    shards: int = 0
    """Number of shard topics named ``<prefix>-0`` .. ``<prefix>-<N-1>``."""
    prefix: str = ""
    """Name prefix of the shard topics when ``shards`` is given."""
    key: str = ""
    """JMESPath for the shard key; defaults to the message key."""
    health: ShardHealth = msgspec.field(default_factory=ShardHealth)
    """When a shard counts as unhealthy (``[operators.NAME.health]``)."""

    def shard_topics(self) -> list[str]:
        if self.outputs:
            return list(self.outputs)
        return [f"{self.prefix}-{i}" for i in range(self.shards)]


class MergeOperator(OperatorBase, tag="merge", kw_only=True):
    """Many input topics into one, fairly."""

    inputs: list[str]
    """Topics merged, read fairly (round robin)."""
    output: str
    """The topic every message goes to."""


OperatorConfig = CopyOperator | FilterOperator | SplitOperator | ShardOperator | MergeOperator


class ApiConfig(Strict):
    """The HTTP API: publishing, status, metrics, dead letters, the dashboard, and the book's
    ``/v1/items`` source API for a topic (``chute serve-items`` serves one for a folder)."""

    enabled: bool = False
    """Serve the HTTP API (publish, status, shards, dead letters) while running."""
    host: str = "127.0.0.1"
    """Address to listen on; anything but loopback requires ``token``."""
    port: int = 8765
    """TCP port of the API."""
    token: str = ""
    """Bearer token the API requires (``Authorization: Bearer <token>``)."""
    items: str = ""
    """A topic whose messages ``GET /v1/items`` offers as the book's items, so another
    node's ``http`` source can work on them (say a pool's ``output``); none by default."""


class Settings(Strict):
    """Top-level keys."""

    broker: str = "local"
    """``local`` (durable, ``WORKDIR/broker.db``; ``local?durability=power`` survives a
    power cut too), ``memory`` (fast, lost at exit) or a URL such as
    ``redis://127.0.0.1:6379/0``."""
    state: str = "sqlite"
    """``sqlite`` (file under ``workdir``), ``sqlite:///path.db``, ``redis://...`` or ``memory``."""
    workdir: str = ""
    """Folder for the broker and state databases and executors' private folders, relative
    to the config's folder; default ``.chute/<config file name without suffix>``, so two
    configs in one folder never share state."""
    node: str = ""
    """This node's name in consumer names and leases; defaults to host and pid."""
    log_level: str = "info"
    """debug, info, warning, error or critical; ``--log-level`` overrides it."""
    log_format: str = "text"
    """``text`` or ``json`` (one object per line); ``--log-format`` overrides it."""
    summary_every: Duration = Duration(60.0)
    """How often a running graph logs its summary line (0: only at exit)."""
    shutdown_grace: Duration = Duration(30.0)
    """How long in-flight items may finish after SIGINT/SIGTERM."""


class Config(msgspec.Struct, kw_only=True):
    """A whole graph, after decoding. ``path`` names the file for error messages."""

    settings: Settings = msgspec.field(default_factory=Settings)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    topics: dict[str, TopicConfig] = {}
    sources: dict[str, dict[str, Any]] = {}
    sinks: dict[str, dict[str, Any]] = {}
    """``[sinks.NAME]`` tables, checked by the graph (see ``sink.py``)."""
    pools: dict[str, PoolConfig] = {}
    operators: dict[str, OperatorConfig] = {}
    path: str = "<config>"
    base_dir: str = "."

    def workdir(self) -> Path:
        """The working folder, absolute: ``settings.workdir`` or ``.chute/<config name>``."""
        relative = self.settings.workdir
        if not relative:
            stem = Path(self.path).stem if self.path != "<config>" else ""
            relative = f".chute/{stem}" if stem else ".chute"
        return (Path(self.base_dir) / relative).resolve()


_TABLES = ("topics", "sources", "sinks", "pools", "operators", "api")
_TABLE_TYPES: dict[str, Any] = {
    "topics": TopicConfig,
    "pools": PoolConfig,
    "operators": OperatorConfig,
}


def where(path: str, table: str, key: str) -> str:
    """The prefix of every config problem: ``FILE: [TABLE] KEY``."""
    return f"{path}: [{table}] {key}".rstrip()


def _field_names(tp: Any) -> set[str]:
    """Every key any table nested in ``tp`` accepts (for "did you mean")."""
    names: set[str] = set()
    todo = [msgspec.inspect.type_info(tp)]
    while todo:
        info = todo.pop()
        if isinstance(info, msgspec.inspect.StructType):
            names.update(f.encode_name for f in info.fields)
            todo.extend(f.type for f in info.fields)
        elif isinstance(info, msgspec.inspect.UnionType):
            todo.extend(info.types)
        elif isinstance(info, msgspec.inspect.ListType | msgspec.inspect.DictType):
            todo.append(info.value_type if isinstance(info, msgspec.inspect.DictType)
                        else info.item_type)  # fmt: skip
    return names


def describe_validation_error(err: msgspec.ValidationError, within: Any = None) -> tuple[str, str]:
    """Split msgspec's ``msg - at `$.a.b` `` into (key path, message).

    ``within``: the type decoded, so an unknown key gets "did you mean" its nearest neighbour.
    """
    text = str(err)
    m = re.match(r"^(.*) - at `\$\.?(.*)`$", text, re.S)
    if m:
        msg, key = m.group(1), m.group(2)
    else:
        msg, key = text, ""
    unknown = re.match(r"Object contains unknown field `(.*)`", msg)
    missing = re.match(r"Object missing required field `(.*)`", msg)
    if unknown:
        key = f"{key}.{unknown.group(1)}" if key else unknown.group(1)
        msg = "unknown key (check the spelling; see the docs for this table)"
        if within is not None:
            near = difflib.get_close_matches(unknown.group(1), sorted(_field_names(within)), n=1)
            if near:
                msg = f"unknown key; did you mean {near[0]!r}?"
    elif missing:
        key = f"{key}.{missing.group(1)}" if key else missing.group(1)
        msg = "missing: this key is required"
    return key, msg[:1].lower() + msg[1:]


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config: {exc.strerror}"]) from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml  # only YAML users pay for the import

            doc = yaml.safe_load(text) or {}
        else:
            doc = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: the config is not UTF-8 text ({exc.reason})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except Exception as exc:  # yaml.YAMLError, without importing yaml up front
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    if not isinstance(doc, dict):
        raise ConfigError([f"{path}: the config must be a table of keys, not {type(doc).__name__}"])
    return doc


def load_config(path: str | Path) -> Config:
    """Read and decode a config file; raises ConfigError listing every broken table."""
    file = Path(path)
    return config_from_dict(_read_document(file), path=str(file), base_dir=str(file.parent))


def config_from_dict(doc: dict[str, Any], *, path: str = "<config>", base_dir: str = ".") -> Config:
    """Decode a config document (already parsed); the embedded API calls this directly."""
    problems: list[str] = []
    top = {k: v for k, v in doc.items() if k not in _TABLES}
    settings = Settings()
    try:
        settings = msgspec.convert(top, Settings, dec_hook=dec_hook)
    except msgspec.ValidationError as err:
        key, msg = describe_validation_error(err, Settings)
        problems.append(f"{path}: {key}: {msg}")

    api = ApiConfig()
    if "api" in doc:
        try:
            api = msgspec.convert(doc["api"], ApiConfig, dec_hook=dec_hook)
        except msgspec.ValidationError as err:
            key, msg = describe_validation_error(err, ApiConfig)
            problems.append(f"{where(path, 'api', key)}: {msg}")

    decoded: dict[str, dict[str, Any]] = {}
    for table in ("topics", "sources", "sinks", "pools", "operators"):
        entries = doc.get(table, {})
        decoded[table] = {}
        if not isinstance(entries, dict):
            problems.append(f"{path}: [{table}]: expected a table of named entries")
            continue
        for name, body in entries.items():
            label = f"{table}.{name}"
            if not isinstance(body, dict):
                problems.append(f"{where(path, label, '')}: expected a table")
                continue
            if table in ("sources", "sinks"):  # their plugins' options: checked by the graph
                decoded[table][name] = body
                continue
            try:
                decoded[table][name] = msgspec.convert(body, _TABLE_TYPES[table], dec_hook=dec_hook)
            except msgspec.ValidationError as err:
                key, msg = describe_validation_error(err, _TABLE_TYPES[table])
                if table == "operators" and "type" not in body:
                    key, msg = "type", "missing: one of copy, filter, split, shard, merge"
                elif table == "operators" and key == "type":
                    msg = (
                        f"unknown operator {body.get('type')!r} (copy, filter, split, shard, merge)"
                    )
                problems.append(f"{where(path, label, key)}: {msg}")
    if problems:
        raise ConfigError(problems)
    return Config(
        settings=settings,
        api=api,
        topics=decoded["topics"],
        sources=decoded["sources"],
        sinks=decoded["sinks"],
        pools=decoded["pools"],
        operators=decoded["operators"],
        path=path,
        base_dir=base_dir,
    )
