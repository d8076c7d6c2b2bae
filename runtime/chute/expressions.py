"""Predicates and keys: JMESPath over a message, compiled once, never ``eval``.

An expression sees the message as ``{"key", "data", "headers", "id",
"attempt"}``: ``data.channel == 'sms'``, ``headers.tenant``, ``key``.

JMESPath's tree interpreter costs several microseconds per search, which is
more than a whole trip through the memory broker. So the common shapes (field
paths, indexes, comparisons with ``==``/``!=``/``<``..., ``&&``, ``||``, ``!``
and literals) are compiled here into plain closures that implement
JMESPath's own rules (its truthiness, where ``0`` is true; its equality, where
``1 == true`` is false; ordering only between numbers or strings). Anything
else (functions, projections, filters, pipes, ``@`` at the top) falls back to
``jmespath`` itself. ``tests/test_expressions.py`` checks both paths give the
same results, exceptions included, over generated messages.

Lazy: a compiled path reads only the message fields it names, so an
expression over ``key`` or ``headers`` never touches ``data``; data that
arrived still encoded (``bytes`` or ``msgspec.Raw``) is decoded only when an
expression reads it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import lru_cache
from numbers import Number
from typing import Any, cast

import jmespath
import msgspec
from jmespath import exceptions as jexc
from jmespath import functions as jfunctions

from .errors import ConfigError
from .message import Message

Fn = Callable[[Any], Any]
"""A compiled node: value -> value (at the top, the value is a Message)."""

_ENCODED = (bytes, msgspec.Raw)
_ROOT_FIELDS = ("key", "data", "headers", "id", "attempt")
_FUNCTIONS = jfunctions.Functions().FUNCTION_TABLE
_ORDERING = {"lt": operator.lt, "gt": operator.gt, "lte": operator.le, "gte": operator.ge}


class _Unsupported(Exception):
    """A node the fast path does not compile; the whole expression falls back."""


def data_of(message: Message) -> Any:
    """The message's data, decoding it first if it is still encoded JSON."""
    data = message.data
    if isinstance(data, _ENCODED):
        data = msgspec.json.decode(data)
    return data


def message_view(message: Message) -> dict[str, Any]:
    """The document an expression searches."""
    return {
        "key": message.key,
        "data": data_of(message),
        "headers": message.headers,
        "id": message.id,
        "attempt": message.attempt,
    }


def truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null, "", [] and {} are false; 0 is true."""
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict):
        return len(value) > 0
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def _equals(x: Any, y: Any) -> bool:
    """JMESPath equality: Python's, except that 0 and 1 never equal false and true."""
    if _is_number(x) and x in (0, 1):
        if isinstance(y, bool):
            return False
    elif _is_number(y) and y in (0, 1) and isinstance(x, bool):
        return False
    return bool(x == y)


def _comparable(value: Any) -> bool:
    return _is_number(value) or isinstance(value, str)


# -- the fast path --------------------------------------------------------


def _root_field(name: str) -> Fn:
    if name == "data":
        return data_of
    if name in _ROOT_FIELDS:
        return operator.attrgetter(name)
    return lambda _m: None


def _field(name: str) -> Fn:
    def get(value: Any) -> Any:
        return value.get(name) if isinstance(value, dict) else None

    return get


def _path(nodes: list[dict[str, Any]], root: bool) -> Fn:
    """``a.b.c``: fields looked up in one closure rather than one per step."""
    if all(n["type"] == "field" for n in nodes):
        names = [n["value"] for n in nodes]
        first = _root_field(names[0]) if root else _field(names[0])
        rest = tuple(names[1:])
        if not rest:
            return first
        if len(rest) == 1:
            (second,) = rest

            def two(value: Any) -> Any:
                v = first(value)
                return v.get(second) if isinstance(v, dict) else None

            return two

        def many(value: Any) -> Any:
            v = first(value)
            for name in rest:
                if not isinstance(v, dict):
                    return None
                v = v.get(name)
            return v

        return many
    steps = [_compile(n, root and i == 0) for i, n in enumerate(nodes)]

    def chained(value: Any) -> Any:
        for step in steps:
            value = step(value)
        return value

    return chained


def _index(i: int) -> Fn:
    def get(value: Any) -> Any:
        if not isinstance(value, list):
            return None
        try:
            return value[i]
        except IndexError:
            return None

    return get


def _data_field(node: dict[str, Any], root: bool) -> str | None:
    """``NAME`` when the node is ``data.NAME`` read from the top, else None."""
    if not root or node["type"] != "subexpression":
        return None
    children = node["children"]
    if (
        len(children) == 2
        and all(c["type"] == "field" for c in children)
        and children[0]["value"] == "data"
    ):
        return str(children[1]["value"])
    return None


def _equality(node: dict[str, Any], root: bool) -> Fn:
    left_node, right_node = node["children"]
    negate = node["value"] == "ne"
    if right_node["type"] == "literal" and left_node["type"] != "literal":
        left_node, right_node = right_node, left_node
    if left_node["type"] == "literal":
        lit = left_node["value"]
        other = _compile(right_node, root)
        if isinstance(lit, bool) or (_is_number(lit) and lit in (0, 1)):
            if negate:
                return lambda v: not _equals(other(v), lit)
            return lambda v: _equals(other(v), lit)
        # No bool/0/1 literal: JMESPath equality is Python's (a list literal
        # compares element-wise just as jmespath does).
        general: Fn = (lambda v: other(v) != lit) if negate else (lambda v: other(v) == lit)
        name = _data_field(right_node, root)
        if name is None:
            return general
        # ``data.NAME == LITERAL``, the usual predicate: one call per message.
        if negate:

            def data_ne(message: Message) -> Any:
                data = message.data
                if data.__class__ is dict:
                    return data.get(name) != lit
                return general(message)

            return data_ne

        def data_eq(message: Message) -> Any:
            data = message.data
            if data.__class__ is dict:
                return data.get(name) == lit
            return general(message)

        return data_eq
    left, right = _compile(left_node, root), _compile(right_node, root)
    if negate:
        return lambda v: not _equals(left(v), right(v))
    return lambda v: _equals(left(v), right(v))


def _ordering(node: dict[str, Any], root: bool) -> Fn:
    op = _ORDERING[node["value"]]
    left, right = (_compile(n, root) for n in node["children"])

    def compare(value: Any) -> Any:
        a, b = left(value), right(value)
        if not (_comparable(a) and _comparable(b)):
            return None
        return op(a, b)  # str against number raises TypeError, as in jmespath

    return compare


def _compile(node: dict[str, Any], root: bool) -> Fn:
    kind = node["type"]
    children = node.get("children", [])
    if kind == "field":
        return _root_field(node["value"]) if root else _field(node["value"])
    if kind in ("subexpression", "index_expression"):
        return _path(children, root)
    if kind == "index":
        if root:  # the top-level document is an object: indexing it gives null
            return lambda _m: None
        return _index(node["value"])
    if kind == "literal":
        lit = node["value"]
        return lambda _v: lit
    if kind == "current" and not root:
        return lambda v: v
    if kind == "comparator":
        if node["value"] in ("eq", "ne"):
            return _equality(node, root)
        return _ordering(node, root)
    if kind == "and_expression":
        first, second = (_compile(n, root) for n in children)

        def both(value: Any) -> Any:
            x = first(value)
            return second(value) if truthy(x) else x

        return both
    if kind == "or_expression":
        first, second = (_compile(n, root) for n in children)

        def either(value: Any) -> Any:
            x = first(value)
            return x if truthy(x) else second(value)

        return either
    if kind == "not_expression":
        inner = _compile(children[0], root)

        def negate(value: Any) -> bool:
            x = inner(value)
            if _is_number(x) and x == 0:  # jmespath: !0 is false
                return False
            return not x

        return negate
    raise _Unsupported(kind)


# -- checking and building ------------------------------------------------


def _check_functions(node: dict[str, Any]) -> None:
    """Unknown functions and wrong argument counts, found now rather than per message."""
    if node.get("type") == "function_expression":
        name = node["value"]
        if name not in _FUNCTIONS:
            raise jexc.UnknownFunctionError(f"unknown function {name}()")
        signature = _FUNCTIONS[name]["signature"]
        given = len(node["children"])
        if signature and signature[-1].get("variadic"):
            if given < len(signature):
                raise jexc.VariadictArityError(len(signature), given, name)
        elif given != len(signature):
            raise jexc.ArityError(len(signature), given, name)
    for child in node.get("children", []):
        if isinstance(child, dict):
            _check_functions(child)


def _describe(exc: Exception) -> str:
    if isinstance(exc, jexc.ParseError) and not isinstance(exc, jexc.ArityError):
        msg = exc.msg.splitlines()[0] if exc.msg else "cannot parse"
        if isinstance(exc, jexc.IncompleteExpressionError):
            msg = "incomplete expression"
        return f"not a valid JMESPath expression: {msg} at column {exc.lex_position}"
    return f"not a valid JMESPath expression: {str(exc).splitlines()[0]}"


class Expression:
    """A compiled expression. ``search(message)`` gives its value, ``test`` its truth."""

    __slots__ = ("fast", "search", "test", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        try:
            parsed = jmespath.compile(text)
            tree = cast("dict[str, Any]", parsed.parsed)
            _check_functions(tree)
        except jexc.JMESPathError as exc:
            raise ValueError(_describe(exc)) from None
        search: Fn
        try:
            search = _compile(tree, root=True)
            self.fast = True
        except _Unsupported:
            search = self._fallback(parsed)
            self.fast = False
        self.search: Callable[[Message], Any] = search
        if self.fast and (
            tree["type"] == "not_expression"
            or (tree["type"] == "comparator" and tree["value"] in ("eq", "ne"))
        ):
            self.test: Callable[[Message], bool] = search  # already a bool
        else:
            self.test = lambda m: truthy(search(m))

    @staticmethod
    def _fallback(parsed: Any) -> Fn:
        def search(message: Message) -> Any:
            return parsed.search(message_view(message))

        return search

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"


@lru_cache(maxsize=1024)
def compile_expression(text: str) -> Expression:
    """Compile (once per distinct text); a bad expression raises ValueError with the reason."""
    return Expression(text)


def check_expression(text: str) -> str | None:
    """What is wrong with an expression, or None if it compiles."""
    if not text.strip():
        return "an expression is required (for example: data.kind == 'photo')"
    try:
        compile_expression(text)
    except ValueError as exc:
        return str(exc)
    return None


def expression(text: str, where: str) -> Expression:
    """Compile, or raise ConfigError ``WHERE: reason`` (where names the table and key)."""
    problem = check_expression(text)
    if problem is not None:
        raise ConfigError([f"{where}: {problem}"])
    return compile_expression(text)
