"""The config reference and JSON Schema, made from the config Structs themselves.

Both come from one place, the Structs that decode a config (and each plugin's
``Options``), so the documentation cannot drift from what parsing accepts:
``docs/reference/config.md`` is this module's output, and a test compares them.
A field's description is the docstring written under it in the class body.
"""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from collections.abc import Iterator
from functools import cache
from typing import Any

import msgspec
import msgspec.inspect as mi

from . import config as cfg
from .registry import available, load_plugin
from .sink import SINK_KEYS, SinkSettings


class Key(msgspec.Struct, frozen=True):
    name: str
    type: str
    default: str
    """Empty when the key is required."""
    doc: str


class Table(msgspec.Struct, frozen=True):
    title: str
    """How the table is written in a config, e.g. ``[pools.NAME]``."""
    intro: str
    keys: list[Key]


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstrings under each field of ``cls`` and its bases (PEP 257 attribute docstrings)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass in (object, msgspec.Struct) or klass.__module__ == "builtins":
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        if not isinstance(body, ast.ClassDef):
            continue
        statements = body.body
        for stmt, after in zip(statements, [*statements[1:], None], strict=True):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            if (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def type_name(t: mi.Type) -> str:
    """A config-level name for a msgspec type: what a user writes, not the Python class."""
    match t:
        case mi.CustomType(cls=c) if issubclass(c, cfg.Duration):
            return "duration"
        case mi.CustomType(cls=c) if issubclass(c, cfg.Size):
            return "size"
        case mi.StrType():
            return "string"
        case mi.BoolType():
            return "bool"
        case mi.IntType():
            return "integer"
        case mi.FloatType():
            return "number"
        case mi.NoneType():
            return "none"
        case mi.ListType(item_type=item):
            return f"list of {type_name(item)}"
        case mi.DictType(value_type=value):
            return "table" if isinstance(value, mi.AnyType) else f"table of {type_name(value)}"
        case mi.LiteralType(values=values):
            return " | ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values)
        case mi.UnionType(types=types):
            return " | ".join(type_name(x) for x in types if not isinstance(x, mi.NoneType))
        case mi.StructType(cls=c):
            return "table" if c is not cfg.ScaleConfig else "table ([scale])"
        case _:
            return "any"


def _toml(value: Any) -> str:
    if isinstance(value, cfg.Duration):
        seconds = float(value)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size and seconds % size == 0:
                return f'"{int(seconds // size)}{unit}"'
        return f'"{seconds:g}s"' if seconds >= 1 or seconds == 0 else f'"{seconds * 1000:g}ms"'
    if isinstance(value, cfg.Size):
        for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if value >= size and value % size == 0:
                return f'"{value // size}{unit}"'
        return str(int(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, msgspec.Struct):
        return "(see its table)"
    if value is None:
        return "(none)"
    return msgspec.json.encode(value).decode()


def keys_of(cls: type[msgspec.Struct], *, skip: tuple[str, ...] = ()) -> list[Key]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    docs = field_docs(cls)
    keys = []
    for f in info.fields:
        if f.name in skip:
            continue
        if f.required:
            default = ""
        elif f.default is not msgspec.NODEFAULT:
            default = _toml(f.default)
        else:
            default = _toml(f.default_factory())
        keys.append(Key(f.encode_name, type_name(f.type), default, docs.get(f.name, "")))
    return keys


def _doc(obj: Any) -> str:
    """The first paragraph of a class's docstring, else of its module's."""
    text = obj.__doc__ or getattr(sys.modules.get(obj.__module__), "__doc__", None) or ""
    return " ".join(inspect.cleandoc(text).split("\n\n")[0].split())


def _plugin_tables(kind: str, table: str, runtime_keys: tuple[str, ...]) -> Iterator[Table]:
    for name in available(kind):
        plugin = load_plugin(kind, name)
        options = getattr(plugin, "Options", None)
        if options is None:
            continue
        fixed = [Key("type", f'"{name}"', "", f"Selects the {name} {kind}.")]
        fixed += [Key(k, "string", "", "The topic it publishes to.") for k in runtime_keys]
        yield Table(f'{table} type = "{name}"', _doc(plugin), fixed + keys_of(options))


def tables() -> list[Table]:
    """Every table a config may hold, in the order the reference lists them."""
    out = [
        Table("top level", _doc(cfg.Settings), keys_of(cfg.Settings)),
        Table("[api]", _doc(cfg.ApiConfig), keys_of(cfg.ApiConfig)),
        Table("[topics.NAME]", _doc(cfg.TopicConfig), keys_of(cfg.TopicConfig)),
        Table("[pools.NAME]", _doc(cfg.PoolConfig), keys_of(cfg.PoolConfig)),
        Table("[pools.NAME.retry]", _doc(cfg.RetryConfig), keys_of(cfg.RetryConfig)),
        Table("[pools.NAME.scale]", _doc(cfg.ScaleConfig), keys_of(cfg.ScaleConfig)),
    ]
    out += _plugin_tables("executor", "[pools.NAME.executor]", ())
    out += _plugin_tables("source", "[sources.NAME]", ("topic",))
    out.append(Table("[sinks.NAME]", _doc(SinkSettings), keys_of(SinkSettings)))
    out += _plugin_tables("sink", "[sinks.NAME]", ())
    for op in cfg.OperatorConfig.__args__:
        tag = op.__struct_config__.tag
        fixed = [Key("type", f'"{tag}"', "", f"Selects the {tag} operator.")]
        out.append(Table(f'[operators.NAME] type = "{tag}"', _doc(op), fixed + keys_of(op)))
    out.append(Table("[operators.NAME.routes]", _doc(cfg.Route), keys_of(cfg.Route)))
    out.append(Table("[operators.NAME.health]", _doc(cfg.ShardHealth), keys_of(cfg.ShardHealth)))
    return out


def reference_markdown() -> str:
    lines = [
        "# Config reference",
        "",
        "<!-- Generated by `chute reference` from the config Structs: edit the docstrings",
        "     in runtime/chute/config.py and the plugins' Options, then regenerate. -->",
        "",
        'Durations are numbers of seconds or strings such as `"250ms"`, `"30s"`, `"5m"`,',
        '`"2h"`, `"1d"`. Sizes are numbers of bytes or strings such as `"64KiB"`, `"1MiB"`,',
        '`"2GB"`. Every table refuses keys it does not know. A key without a default is',
        "required.",
    ]
    for table in tables():
        lines += ["", f"## `{table.title}`", ""]
        if table.intro:
            lines += [table.intro, ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key in table.keys:
            default = f"`{key.default}`" if key.default else "required"
            cell = key.doc.replace("|", "\\|")
            lines.append(f"| `{key.name}` | {key.type.replace('|', 'or')} | {default} | {cell} |")
    return "\n".join(lines) + "\n"


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*[0-9]*\.?[0-9]+\s*(ms|s|m|h|d)?\s*$"},
    ],
    "description": "seconds, or a string such as '250ms', '30s', '5m'",
}
_SIZE_SCHEMA = {
    "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
    "description": "bytes, or a string such as '64KiB', '1MiB'",
}


def type_schema(t: mi.Type) -> dict[str, Any]:
    """JSON Schema of one msgspec type, with config durations and sizes as users write them.

    msgspec's own generator cannot encode the float and int subclasses that hold
    durations and sizes, so the few types configs use are mapped here.
    """
    match t:
        case mi.CustomType(cls=c) if issubclass(c, cfg.Duration):
            return dict(_DURATION_SCHEMA)
        case mi.CustomType(cls=c) if issubclass(c, cfg.Size):
            return dict(_SIZE_SCHEMA)
        case mi.StrType():
            return {"type": "string"}
        case mi.BoolType():
            return {"type": "boolean"}
        case mi.IntType():
            return {"type": "integer"}
        case mi.FloatType():
            return {"type": "number"}
        case mi.NoneType():
            return {"type": "null"}
        case mi.ListType(item_type=item):
            return {"type": "array", "items": type_schema(item)}
        case mi.DictType(value_type=value):
            return {"type": "object", "additionalProperties": type_schema(value)}
        case mi.LiteralType(values=values):
            return {"enum": list(values)}
        case mi.UnionType(types=types):
            return {"anyOf": [type_schema(x) for x in types]}
        case mi.StructType(cls=c):
            return struct_schema(c)
        case _:
            return {}


def struct_schema(cls: type[msgspec.Struct], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    docs = field_docs(cls)
    properties: dict[str, Any] = dict(extra or {})
    if info.tag_field is not None:
        properties[info.tag_field] = {"const": info.tag}
    required = [*properties]
    for f in info.fields:
        schema = type_schema(f.type)
        if f.name in docs:
            schema["description"] = docs[f.name]
        if f.required:
            required.append(f.encode_name)
        elif f.default is not msgspec.NODEFAULT and isinstance(f.default, str | int | float | bool):
            schema["default"] = (
                f.default
                if isinstance(f.default, bool | str)
                else (float(f.default) if isinstance(f.default, float) else int(f.default))
            )
        properties[f.encode_name] = schema
    return {
        "title": cls.__name__,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": not info.forbid_unknown_fields,
    }


def _plugin_schemas(kind: str, runtime_keys: tuple[str, ...]) -> dict[str, Any]:
    choices = []
    for name in available(kind):
        options = getattr(load_plugin(kind, name), "Options", None)
        if options is not None:
            extra = {"type": {"const": name}, **{k: {"type": "string"} for k in runtime_keys}}
            choices.append(struct_schema(options, extra))
    return {"anyOf": choices}


def _sink_schemas() -> dict[str, Any]:
    """Each sink's options with the runtime's keys of the table (``SinkSettings``)."""
    settings = struct_schema(SinkSettings)
    schemas = _plugin_schemas("sink", ())
    for choice in schemas["anyOf"]:
        for key in SINK_KEYS[1:]:  # "type" is each choice's own constant
            choice["properties"][key] = settings["properties"][key]
        choice["required"] = [*choice["required"], "topic"]
    return schemas


def config_schema() -> dict[str, Any]:
    """A JSON Schema of a whole config, for editors checking TOML and YAML files."""
    pool = struct_schema(cfg.PoolConfig)
    pool["properties"]["executor"] = _plugin_schemas("executor", ())
    operators = {"anyOf": [struct_schema(op) for op in cfg.OperatorConfig.__args__]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "chute config",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **struct_schema(cfg.Settings)["properties"],
            "api": struct_schema(cfg.ApiConfig),
            "topics": {"type": "object", "additionalProperties": struct_schema(cfg.TopicConfig)},
            "pools": {"type": "object", "additionalProperties": pool},
            "operators": {"type": "object", "additionalProperties": operators},
            "sources": {
                "type": "object",
                "additionalProperties": _plugin_schemas("source", ("topic",)),
            },
            "sinks": {"type": "object", "additionalProperties": _sink_schemas()},
        },
    }
