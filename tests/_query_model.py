"""The naive query model shared by the query, index and view tests: it shares no code
with the engine. It walks a filter's data form, compares with a comparator written
from the documented total order (not ``order_key``), matches patterns with Python's
``re`` and sums with ``Fraction``. Also the hypothesis strategies for documents and
queries."""

from __future__ import annotations

import functools
import math
import re
from fractions import Fraction
from typing import Any

import cbor2
from hypothesis import strategies as st

import koru
from koru import Group, InvalidQueryError, Query, Row

NS = "docs"
KEYS = [f"k{i}" for i in range(7)]
MISSING = object()

# -- the naive model ------------------------------------------------------------------------


def naive_get(doc: Any, path: str) -> Any:
    for seg in path.split("."):
        if isinstance(doc, dict) and seg in doc:
            doc = doc[seg]
        elif type(doc) is list and re.fullmatch(r"0|[1-9][0-9]*", seg) and int(seg) < len(doc):
            doc = doc[int(seg)]
        else:
            return MISSING
    return doc


def kind(v: Any) -> int:
    if v is MISSING:
        return 0
    if v is None:
        return 1
    if type(v) is bool:
        return 2
    if type(v) in (int, float):
        return 3
    return {str: 4, bytes: 5, list: 6, dict: 7}[type(v)]


def sign(x: Any) -> int:
    return (x > 0) - (x < 0)


def cmp(a: Any, b: Any) -> int:
    ka, kb = kind(a), kind(b)
    if ka != kb:
        return sign(ka - kb)
    if ka in (0, 1):
        return 0
    if ka in (2, 3, 4, 5):
        return (a > b) - (a < b)
    if ka == 6:
        for x, y in zip(a, b):  # noqa: B905
            c = cmp(x, y)
            if c:
                return c
        return sign(len(a) - len(b))
    ia, ib = sorted(a.items()), sorted(b.items())
    for (xa, va), (xb, vb) in zip(ia, ib):  # noqa: B905
        if xa != xb:
            return -1 if xa < xb else 1
        c = cmp(va, vb)
        if c:
            return c
    return sign(len(ia) - len(ib))


def naive_match(f: list[Any], doc: Any) -> bool:
    op = f[0]
    if op == "and":
        return all(naive_match(p, doc) for p in f[1:])
    if op == "or":
        return any(naive_match(p, doc) for p in f[1:])
    if op == "not":
        return not naive_match(f[1], doc)
    v, x = naive_get(doc, f[1]), f[2]
    if op == "eq":
        return v is not MISSING and cmp(v, x) == 0
    if op == "ne":
        return not (v is not MISSING and cmp(v, x) == 0)
    if op in ("gt", "gte", "lt", "lte"):
        if v is MISSING or kind(v) != kind(x):
            return False
        c = cmp(v, x)
        return {"gt": c > 0, "gte": c >= 0, "lt": c < 0, "lte": c <= 0}[op]
    if op == "in":
        return v is not MISSING and any(cmp(v, y) == 0 for y in x)
    if op == "contains":
        if type(v) is str and type(x) is str:
            return x in v
        return type(v) is list and any(cmp(e, x) == 0 for e in v)
    if op == "exists":
        return (v is not MISSING) == x
    assert op == "matches"
    return type(v) is str and re.search(x, v) is not None


class Bad(Exception):
    """The naive model's "the query must fail"."""


def naive_sum(values: list[Any], avg: bool) -> Any:
    if any(type(v) not in (int, float) for v in values):
        raise Bad
    if not values:
        return None if avg else 0
    floats = [v for v in values if type(v) is float]
    if not floats:
        total = sum(values)
        return total / len(values) if avg else total
    pinf, ninf = math.inf in floats, -math.inf in floats
    if pinf and ninf:
        return math.nan
    if pinf or ninf:
        return math.inf if pinf else -math.inf
    exact = sum((Fraction(v) for v in values), Fraction(0))
    if avg:
        exact /= len(values)
    try:
        return float(exact)
    except OverflowError:
        return math.inf if exact > 0 else -math.inf


def naive_aggregate(op: str, path: str | None, docs: list[tuple[str, Any]]) -> Any:
    if op == "count" and path is None:
        return len(docs)
    values = [naive_get(d, path) for _, d in docs]  # type: ignore[arg-type]
    values = [v for v in values if v is not MISSING and v is not None]
    if op == "count":
        return len(values)
    if op in ("sum", "avg"):
        return naive_sum(values, op == "avg")
    # Of values equal in the order (1 and 1.0), the one of smallest canonical encoding.
    ordered = sorted(values, key=functools.cmp_to_key(cmp))
    groups: list[list[Any]] = []
    for v in ordered:
        if groups and cmp(groups[-1][0], v) == 0:
            groups[-1].append(v)
        else:
            groups.append([v])
    pick = [min(g, key=lambda v: cbor2.dumps(v, canonical=True)) for g in groups]
    if op == "min":
        return pick[0] if pick else None
    if op == "max":
        return pick[-1] if pick else None
    return pick


def naive_query(data: dict[str, Any], state: dict[str, Any]) -> Any:
    docs = sorted(state.items())
    if "where" in data:
        docs = [(k, d) for k, d in docs if naive_match(data["where"], d)]
    skip, take = data.get("offset", 0), data.get("limit")
    end = None if take is None else skip + take
    agg = data.get("aggregate", ["count"])
    op, path = agg[0], (agg[1] if len(agg) > 1 else None)
    if "group_by" in data:
        groups: list[tuple[Any, list[tuple[str, Any]]]] = []
        for k, d in docs:
            g = naive_get(d, data["group_by"])
            g = None if g is MISSING else g
            for entry in groups:
                if cmp(entry[0], g) == 0:
                    entry[1].append((k, d))
                    break
            else:
                groups.append((g, [(k, d)]))
        groups.sort(key=lambda e: functools.cmp_to_key(cmp)(e[0]))

        def shown(members: list[tuple[str, Any]]) -> Any:
            # Of the group's equal values (1 and 1.0), the smallest canonical encoding.
            found = [naive_get(d, data["group_by"]) for _, d in members]
            found = [None if g is MISSING else g for g in found]
            return min(found, key=lambda g: cbor2.dumps(g, canonical=True))

        results = [(shown(members), naive_aggregate(op, path, members)) for _, members in groups]
        return [("group", g, v) for g, v in results[skip:end]]
    if "aggregate" in data:
        return naive_aggregate(op, path, docs)

    def order(a: tuple[str, Any], b: tuple[str, Any]) -> int:
        for p, direction in data.get("order_by", []):
            c = cmp(naive_get(a[1], p), naive_get(b[1], p))
            if c:
                return -c if direction == "desc" else c
        return -1 if a[0] < b[0] else 1

    docs = sorted(docs, key=functools.cmp_to_key(order))[skip:end]
    if "select" in data:
        picked = []
        for k, d in docs:
            fields = {p: naive_get(d, p) for p in data["select"]}
            picked.append((k, {p: v for p, v in fields.items() if v is not MISSING}))
        docs = picked
    return [("row", k, d) for k, d in docs]


def typed(value: Any) -> Any:
    """Exact comparison: ``==`` lets 1, 1.0 and True pass for one another."""
    if type(value) is dict:
        return ("dict", sorted((k, typed(v)) for k, v in value.items()))
    if type(value) in (list, tuple):
        return ("list", [typed(v) for v in value])
    if type(value) is float:
        return ("float", value.hex() if value == value else "nan")
    return (type(value).__name__, value)


def shape(result: Any) -> Any:
    """The engine's result in the naive model's form."""
    if type(result) is list and result and type(result[0]) is Row:
        return [("row", r.key, r.value) for r in result]
    if type(result) is list and result and type(result[0]) is Group:
        return [("group", g.group, g.value) for g in result]
    return result


# -- strategies -----------------------------------------------------------------------------

SCALARS = [None, True, False, 0, 1, -2, 3, 0.5, -0.0, 2.0, 1.0, math.inf, -math.inf, 10**19]
SCALARS += ["", "a", "ab", "b", "Ab", "ba\n", b"", b"a"]
scalars = st.sampled_from(SCALARS)
any_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from("xyz"), c, max_size=2),
    max_leaves=4,
)
PATHS = ["a", "b", "n.x", "l.0", "l", "zz", "n"]
paths = st.sampled_from(PATHS)
PATTERNS = ["a", "^a", "b$", "a.*b", "(?i)ab", "^$", "[ab]+", r"\w\n", "a|^b"]
# Common values half the time, so filters and documents meet (boundaries included).
values = st.sampled_from([0, 1, 1.0, 2, "a", "ab", None, True, [1], -0.0]) | any_values


@st.composite
def documents(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(values)  # not a map at all
    doc: dict[str, Any] = {}
    for name in ("a", "b"):
        if draw(st.booleans()):
            doc[name] = draw(values)
    if draw(st.booleans()):
        doc["n"] = {"x": draw(values)} if draw(st.booleans()) else draw(values)
    if draw(st.booleans()):
        doc["l"] = draw(st.lists(values, max_size=3))
    return doc


leaves = st.one_of(
    st.tuples(st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]), paths, values).map(list),
    st.tuples(st.just("in"), paths, st.lists(values, max_size=3)).map(list),
    st.tuples(st.just("contains"), paths, values).map(list),
    st.tuples(st.just("exists"), paths, st.booleans()).map(list),
    st.tuples(st.just("matches"), paths, st.sampled_from(PATTERNS)).map(list),
)
filters = st.recursive(
    leaves,
    lambda c: st.one_of(
        st.lists(c, max_size=3).map(lambda ps: ["and", *ps]),
        st.lists(c, max_size=3).map(lambda ps: ["or", *ps]),
        c.map(lambda p: ["not", p]),
    ),
    max_leaves=5,
)


@st.composite
def queries(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if draw(st.booleans()):
        data["where"] = draw(filters)
    shape_ = draw(st.sampled_from(["rows", "rows", "aggregate", "groups"]))
    if shape_ != "rows":
        op = draw(st.sampled_from(["count", "count", "sum", "avg", "min", "max", "distinct"]))
        data["aggregate"] = [op] if op == "count" and draw(st.booleans()) else [op, draw(paths)]
    if shape_ == "groups":
        data["group_by"] = draw(paths)
    if shape_ == "rows":
        if draw(st.booleans()):
            data["select"] = draw(st.lists(paths, max_size=3))
        if draw(st.booleans()):
            specs = draw(st.lists(st.tuples(paths, st.sampled_from(["asc", "desc"])), max_size=3))
            data["order_by"] = [list(s) for s in specs]
    if shape_ != "aggregate":
        if draw(st.booleans()):
            data["offset"] = draw(st.integers(0, 4))
        if draw(st.booleans()):
            data["limit"] = draw(st.integers(0, 5))
    return data


operations = st.lists(
    st.tuples(st.sampled_from(["put", "put", "put", "delete"]), st.sampled_from(KEYS), documents()),
    min_size=6,
    max_size=25,
)


async def answer(db: koru.Database, data: dict[str, Any], at: Any = None) -> Any:
    """The engine's answer, or Bad if it refused (only a sum/avg over a non-number may)."""
    try:
        return typed(shape(await db.query(NS, Query.from_data(data), at=at)))
    except InvalidQueryError as exc:
        assert "over a non-number" in exc.reason, exc
        return Bad


def expected(data: dict[str, Any], state: dict[str, Any]) -> Any:
    try:
        return typed(naive_query(data, state))
    except Bad:
        return Bad
