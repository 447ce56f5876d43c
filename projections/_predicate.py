"""Filters compiled into one Python function per query: pure, no I/O.

Why generated source: a filter is compiled once per query into one function (inline
field lookups and type-bracketed comparisons; every operand, path segment and helper is
passed in as a named constant, never spliced into the source), which is several times
faster per document than a tree of closures: a full scan of 100,000 documents is
dominated by this call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._filters import And, Compare, Contains, Exists, Filter, In, Matches, Not, Or
from ._order import MISSING, order_key, rank
from ._paths import get_path, split_path

__all__ = ["NUMBERS", "Doc", "Predicate", "compile_filter"]

Doc = Any
Predicate = Callable[[Doc], bool]
#: The number types (a bool is not one): comparisons and sums take these.
NUMBERS = frozenset((int, float))
_NUM = NUMBERS


def _contains(v: Any, key: tuple[Any, ...]) -> bool:
    return type(v) is list and any(order_key(e) == key for e in v)


def _compare(v: Any, op: str, key: tuple[Any, ...], r: int) -> bool:
    if v is MISSING or rank(v) != r:
        return False
    k = order_key(v)
    if op == "gt":
        return k > key
    if op == "gte":
        return k >= key
    if op == "lt":
        return k < key
    return k <= key


_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


class _Gen:
    """Generates the source of one predicate."""

    def __init__(self) -> None:
        self.env: dict[str, Any] = {
            "M": MISSING,
            "G": get_path,
            "K": order_key,
            "NUM": _NUM,
            "CT": _contains,
            "CMP": _compare,
            "dict": dict,
            "type": type,
            "bool": bool,
            "str": str,
            "list": list,
        }
        self.vars = 0

    def const(self, value: Any) -> str:
        name = f"c{len(self.env)}"
        self.env[name] = value
        return name

    def var(self) -> str:
        self.vars += 1
        return f"v{self.vars}"

    def get(self, path: str) -> str:
        segs = split_path(path)
        if len(segs) == 1 and not segs[0].isdecimal():
            k = self.const(segs[0])
            return f"(d.get({k}, M) if type(d) is dict else M)"
        return f"G(d, {self.const(segs)})"

    def expr(self, f: Filter) -> str:
        t = type(f)
        if t is And:
            parts = [self.expr(p) for p in f.parts]  # type: ignore[attr-defined]
            return "(" + " and ".join(parts) + ")" if parts else "True"
        if t is Or:
            parts = [self.expr(p) for p in f.parts]  # type: ignore[attr-defined]
            return "(" + " or ".join(parts) + ")" if parts else "False"
        if t is Not:
            return f"(not {self.expr(f.part)})"  # type: ignore[attr-defined]
        get = self.get(f.path)  # type: ignore[attr-defined]
        v = self.var()
        if t is Compare:
            assert isinstance(f, Compare)
            if f.op in ("eq", "ne"):
                e = self.eq(get, v, f.value)
                return e if f.op == "eq" else f"(not {e})"
            x = f.value
            op = _OPS[f.op]
            if type(x) in _NUM:
                return f"(type({v} := {get}) in NUM and {v} {op} {self.const(x)})"
            if type(x) in (str, bytes):
                return f"(type({v} := {get}) is {self.const(type(x))} and {v} {op} {self.const(x)})"
            key, r = self.const(order_key(x)), self.const(rank(x))
            return f"CMP({get}, {self.const(f.op)}, {key}, {r})"
        if t is In:
            assert isinstance(f, In)
            kinds = {type(x) for x in f.values}
            if kinds and kinds <= {str}:
                return f"(type({v} := {get}) is str and {v} in {self.const(frozenset(f.values))})"
            if kinds and kinds <= _NUM:
                s = self.const(frozenset(f.values))
                return f"(type({v} := {get}) in NUM and {v} in {s})"
            keys = self.const(frozenset(order_key(x) for x in f.values))
            return f"(K({get}) in {keys})"
        if t is Contains:
            assert isinstance(f, Contains)
            if type(f.value) is str:
                c = self.const(f.value)
                return f"((type({v} := {get}) is str or type({v}) is list) and {c} in {v})"
            return f"CT({get}, {self.const(order_key(f.value))})"
        if t is Exists:
            assert isinstance(f, Exists)
            return f"({get} is {'not ' if f.present else ''}M)"
        assert isinstance(f, Matches)
        search = self.const(f.pattern.search)
        return f"(type({v} := {get}) is str and {search}({v}))"

    def eq(self, get: str, v: str, x: Any) -> str:
        t = type(x)
        if t is str or t is bytes:
            # Only a str equals a str (only bytes equal bytes): no type test needed.
            return f"({get} == {self.const(x)})"
        if t in _NUM:
            return f"(({v} := {get}) == {self.const(x)} and type({v}) is not bool)"
        if t is bool or x is None:
            return f"({get} is {self.const(x)})"
        return f"(K({get}) == {self.const(order_key(x))})"


def compile_filter(f: Filter | None) -> Predicate:
    """One function ``doc -> bool`` for the filter (None matches everything)."""
    if f is None:
        return lambda d: True
    gen = _Gen()
    body = gen.expr(f)
    source = f"def predicate(d):\n    return bool({body})\n"
    code = compile(source, "<koru query>", "exec")
    exec(code, gen.env)  # the source holds generated names only; values are in env
    predicate: Predicate = gen.env["predicate"]
    return predicate
