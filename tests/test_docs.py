"""The reference can't drift from the config Structs; the schema accepts what chute does."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import msgspec.inspect as mi
import pytest
from chute.config import Config, load_config
from chute.reference import config_schema, reference_markdown, tables
from chute.registry import available, load_plugin

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "docs" / "reference" / "config.md"
EXAMPLES = sorted((REPO / "configs").glob("*.toml"))


def test_the_committed_reference_is_what_the_structs_say() -> None:
    assert REFERENCE.read_text() == reference_markdown(), (
        "docs/reference/config.md is stale: run `chute reference > docs/reference/config.md`"
    )


def test_every_key_and_table_is_explained() -> None:
    undocumented = [f"{t.title} {k.name}" for t in tables() for k in t.keys if not k.doc]
    assert undocumented == [], "give these fields a docstring: " + ", ".join(undocumented)
    assert [t.title for t in tables() if not t.intro] == []


def _structs(t: mi.Type) -> list[type]:
    """Every config Struct reachable from a type: the tables parsing will accept."""
    match t:
        case mi.StructType(cls=cls, fields=fields):
            return [cls, *(s for f in fields for s in _structs(f.type))]
        case mi.UnionType(types=types):
            return [s for x in types for s in _structs(x)]
        case mi.ListType(item_type=item) | mi.DictType(value_type=item):
            return _structs(item)
        case _:
            return []


def test_every_key_that_parsing_accepts_is_in_the_reference() -> None:
    text = REFERENCE.read_text()
    accepted = _structs(mi.type_info(Config))
    for kind in ("source", "executor"):
        accepted += [load_plugin(kind, name).Options for name in available(kind)]
    missing = [
        f"{cls.__name__}.{f.encode_name}"
        for cls in accepted
        for f in mi.type_info(cls).fields  # type: ignore[attr-defined]
        if cls is not Config and f"| `{f.encode_name}` |" not in text
    ]
    assert missing == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_examples_validate_against_the_schema(path: Path) -> None:
    load_config(path)  # chute itself accepts it
    jsonschema.validate(tomllib.loads(path.read_text()), config_schema())


def test_the_schema_refuses_what_chute_refuses() -> None:
    schema = config_schema()
    good = {"pools": {"p": {"topic": "t", "executor": {"type": "python", "function": "m:f"}}}}
    jsonschema.validate(good, schema)
    for bad in (
        {"pools": {"p": {"topic": "t", "executor": {"type": "python", "fucntion": "m:f"}}}},
        {"pools": {"p": {"topic": "t", "executor": {"type": "python", "function": "m:f"}},
                   "timeout": "soon"}},
        {"shutdown_grace": "10 parsecs"},
        {"sources": {"s": {"type": "watch", "topic": "t"}}},  # path is required
        {"brokr": "memory"},
    ):  # fmt: skip
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_chute_schema_prints_the_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "chute", "schema"], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == config_schema()


def test_the_docs_site_builds_in_strict_mode(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
