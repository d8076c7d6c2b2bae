"""Expressions: the fast path agrees with jmespath; bad expressions are reported, not run."""

from __future__ import annotations

import json
from typing import Any

import jmespath
import msgspec
import pytest
from chute.errors import ConfigError
from chute.expressions import (
    check_expression,
    compile_expression,
    expression,
    message_view,
    truthy,
)
from chute.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

NAMES = ["a", "b", "data", "key", "headers", "id", "attempt", "n"]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, -1, 2, 0.0, 1.0, 2.5]),
    st.sampled_from(["", "a", "b", "email", "0"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(NAMES), inner, max_size=4),
    ),
    max_leaves=8,
)
messages = st.builds(
    Message,
    key=st.sampled_from(["", "k", "photo-1"]),
    data=json_values,
    headers=st.dictionaries(st.sampled_from(["a", "tenant"]), st.sampled_from(["", "x"])),
    id=st.sampled_from(["", "1-0"]),
    attempt=st.integers(1, 3),
)

literals = st.sampled_from(
    [
        "`0`",
        "`1`",
        "`2`",
        "`true`",
        "`false`",
        "`null`",
        "'a'",
        "''",
        "`[0]`",
        "`[]`",
        "`{}`",
        "`1.0`",
    ]
)


def _path(draw: Any) -> str:
    parts = [draw(st.sampled_from(NAMES))]
    for _ in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            parts.append("." + draw(st.sampled_from(NAMES)))
        else:
            parts.append(f"[{draw(st.integers(-2, 2))}]")
    return "".join(parts)


@st.composite
def expressions(draw: Any, depth: int = 0) -> str:
    choice = draw(st.integers(0, 6 if depth < 2 else 1))
    if choice == 0:
        return _path(draw)
    if choice == 1:
        literal: str = draw(literals)
        return literal
    if choice in (2, 3):
        op = draw(st.sampled_from(["==", "!=", "<", ">", "<=", ">="]))
        return f"{draw(expressions(depth + 1))} {op} {draw(expressions(depth + 1))}"
    if choice == 4:
        return f"!({draw(expressions(depth + 1))})"
    op = "&&" if choice == 5 else "||"
    return f"({draw(expressions(depth + 1))}) {op} ({draw(expressions(depth + 1))})"


def _outcome(fn: Any, arg: Any) -> tuple[str, Any]:
    try:
        return "value", fn(arg)
    except Exception as exc:
        return "raises", type(exc).__name__


def _same(a: Any, b: Any) -> bool:
    # 1 == 1.0 == True in Python: compare the JSON text, which keeps them apart.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@settings(max_examples=600, deadline=None)
@given(text=expressions(), message=messages)
def test_fast_path_agrees_with_jmespath(text: str, message: Message) -> None:
    compiled = compile_expression(text)
    assert compiled.fast, text
    reference = jmespath.compile(text)
    want = _outcome(reference.search, message_view(message))
    got = _outcome(compiled.search, message)
    assert _same(got, want), (text, message)
    if want[0] == "value":
        assert compiled.test(message) is truthy(want[1])


@pytest.mark.parametrize(
    "text",
    [
        "contains(data.tags, 'x')",
        "data.items[?n > `1`].n",
        "length(data.tags) > `1`",
        "@.key",
        "data.tags[*]",
        "data | keys(@)",
    ],
)
def test_slow_path_is_jmespath_over_the_message_view(text: str) -> None:
    compiled = compile_expression(text)
    assert not compiled.fast
    message = Message(id="1-0", key="k", data={"tags": ["x", "y"], "items": [{"n": 1}, {"n": 2}]})
    assert compiled.search(message) == jmespath.search(text, message_view(message))


def test_jmespath_truthiness_not_pythons() -> None:
    zero = Message(data={"n": 0, "s": "", "flag": False})
    assert compile_expression("data.n").test(zero)  # 0 is true in JMESPath
    assert not compile_expression("data.s").test(zero)
    assert not compile_expression("data.flag").test(zero)
    assert not compile_expression("data.n == `false`").test(zero)  # and 0 is not false
    assert compile_expression("data.flag == `false`").test(zero)


def test_data_still_encoded_is_decoded_only_when_read() -> None:
    raw = msgspec.Raw(b'{"channel": "sms"}')
    message = Message(key="u1", data=raw)
    assert compile_expression("data.channel == 'sms'").test(message)
    broken = Message(key="u1", data=b"{not json")
    assert compile_expression("key == 'u1'").test(broken)  # data never decoded
    with pytest.raises(msgspec.DecodeError):
        compile_expression("data.channel").search(broken)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("data.", "at column 5"),
        ("data.channel ==", "incomplete expression"),
        ("`bad", "not a valid JMESPath expression"),
        ("nosuch(data)", "unknown function nosuch()"),
        ("length(data, key)", "Expected 1 argument for function length()"),
        ("not_null()", "Expected at least 1 argument"),
        ("  ", "an expression is required"),
    ],
)
def test_bad_expressions_are_reported_with_a_reason(text: str, reason: str) -> None:
    problem = check_expression(text)
    assert problem is not None and reason in problem, problem
    with pytest.raises(ConfigError) as err:
        expression(text, "chute.toml: [operators.route] where")
    assert err.value.problems == [f"chute.toml: [operators.route] where: {problem}"]


def test_good_expressions_pass_the_check() -> None:
    for text in ["data.channel == 'sms'", "not_null(data.a, key)", 'headers."x-tenant"']:
        assert check_expression(text) is None
