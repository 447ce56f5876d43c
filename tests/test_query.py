"""Queries: results equal a naive evaluation, now and at past times; the data form
round-trips; bad queries are refused before any work, naming the field.

The naive model below shares no code with the engine: it walks the filter's data
form, compares with a comparator written from the documented total order (not
``order_key``), matches patterns with Python's ``re``, and sums with ``Fraction``.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from fractions import Fraction
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock
from koru import F, Group, InvalidQueryError, Query, Row

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
    ordered = sorted(values, key=functools.cmp_to_key(cmp))
    if op == "min":
        return ordered[0] if ordered else None
    if op == "max":
        return ordered[-1] if ordered else None
    out: list[Any] = []
    for v in ordered:
        if not out or cmp(out[-1], v) != 0:
            out.append(v)
    return out


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
        results = [(g, naive_aggregate(op, path, members)) for g, members in groups]
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
values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from("xyz"), c, max_size=2),
    max_leaves=4,
)
PATHS = ["a", "b", "n.x", "l.0", "l", "zz", "n"]
paths = st.sampled_from(PATHS)
PATTERNS = ["a", "^a", "b$", "a.*b", "(?i)ab", "^$", "[ab]+", r"\w\n", "a|^b"]


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
    min_size=1,
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


# -- properties -----------------------------------------------------------------------------


@settings(max_examples=150)
@given(operations, st.lists(queries(), min_size=1, max_size=6), st.data())
def test_results_equal_a_naive_evaluation_now_and_at_past_times(
    ops: list[tuple[str, str, Any]], qs: list[dict[str, Any]], data: st.DataObject
) -> None:
    async def main() -> None:
        async with koru.open(":memory:", clock=StepClock()) as db:
            state: dict[str, Any] = {}
            past: list[tuple[int, dict[str, Any]]] = []
            for i, (op, key, doc) in enumerate(ops):
                if op == "put":
                    version = await db.put(NS, key, doc)
                    state[key] = doc
                elif key in state:
                    version = await db.delete(NS, key)
                    del state[key]
                else:
                    continue
                past.append((version.timestamp, dict(state)))
                if i % 5 == 4:  # queries between writes keep the document cache honest
                    q = qs[i % len(qs)]
                    assert await answer(db, q) == expected(q, state), q
            for q in qs:
                assert await answer(db, q) == expected(q, state), q
                if not past:
                    continue
                stamp, then = data.draw(st.sampled_from(past))
                assert await answer(db, q, at=stamp) == expected(q, then), (q, stamp)
                # Between two writes, and before the first: the state then.
                assert await answer(db, q, at=stamp + 1) == expected(q, then)
                assert await answer(db, q, at=past[0][0] - 1) == expected(q, {})

    trio.run(main)


@given(queries())
def test_the_data_form_round_trips_exactly(data: dict[str, Any]) -> None:
    # The data form leaves defaults out (offset 0 is the same query as none, and so is
    # an empty order).
    canonical = {k: v for k, v in data.items() if (k, v) not in (("offset", 0), ("order_by", []))}
    q = Query.from_data(data)
    assert typed(q.to_data()) == typed(canonical)
    assert Query.from_data(q.to_data()) == q


@given(filters)
def test_python_operators_build_the_same_filter_as_the_data_form(f: list[Any]) -> None:
    def build(d: list[Any]) -> koru.Filter:
        op = d[0]
        if op in ("and", "or"):
            parts = [build(p) for p in d[1:]]
            out = Query().where(*parts).filter if op == "and" else None
            if op == "or":
                out = functools.reduce(lambda a, b: a | b, parts) if parts else None
            return out if out is not None else koru.Query.from_data({"where": d}).filter  # type: ignore[return-value]
        if op == "not":
            return ~build(d[1])
        field = F(d[1])
        return {
            "eq": lambda: field == d[2],
            "ne": lambda: field != d[2],
            "gt": lambda: field > d[2],
            "gte": lambda: field >= d[2],
            "lt": lambda: field < d[2],
            "lte": lambda: field <= d[2],
            "in": lambda: field.is_in(d[2]),
            "contains": lambda: field.contains(d[2]),
            "exists": lambda: field.exists(d[2]),
            "matches": lambda: field.matches(d[2]),
        }[op]()

    built = build(f)
    # Python's & and | flatten nested and/or; the data form keeps what it was given, so
    # compare what the two select.
    docs = [{}, {"a": 1}, {"a": "ab", "b": [1, "a"]}, {"n": {"x": None}, "l": [True]}]
    for doc in docs:
        assert naive_match(built.to_data(), doc) == naive_match(f, doc)


# -- examples and errors --------------------------------------------------------------------


async def test_rows_sort_select_and_paging(db: koru.Database) -> None:
    await db.put_batch(
        [
            (NS, "a", {"age": 30, "city": "Paris", "address": {"zip": "75001"}}),
            (NS, "b", {"age": 41.5, "city": "Rome"}),
            (NS, "c", {"city": "Paris"}),
            (NS, "d", {"age": "unknown", "city": "Oslo"}),
            (NS, "e", [1, 2]),
        ]
    )
    q = (
        Query()
        .where(F("city").is_in(["Paris", "Rome"]))
        .order_by("-age")
        .select("age", "address.zip")
    )
    rows = await db.query(NS, q)
    # Descending: numbers before missing (missing is least); ties by key.
    assert rows == [
        Row("b", {"age": 41.5}),
        Row("a", {"age": 30, "address.zip": "75001"}),
        Row("c", {}),
    ]
    assert [r.key for r in await db.query(NS, Query().order_by("age"))] == list("ceabd")
    assert [r.key for r in await db.query(NS, Query().offset(1).limit(2))] == ["b", "c"]
    assert await db.query(NS, Query().where(F("age") > 100)) == []
    assert await db.query(NS, Query().where(F("0") == 1)) == [Row("e", [1, 2])]
    assert await db.query("nowhere", Query()) == []


async def test_aggregations_and_groups(db: koru.Database) -> None:
    for i in range(10):
        await db.put(NS, f"k{i}", {"n": i, "g": "odd" if i % 2 else "even", "f": i / 4})
    assert await db.query(NS, Query().count()) == 10
    assert await db.query(NS, Query().where(F("n") >= 5).sum("n")) == 35
    assert await db.query(NS, Query().sum("f")) == 11.25
    assert await db.query(NS, Query().avg("n")) == 4.5
    assert await db.query(NS, Query().where(F("n") > 99).avg("n")) is None
    assert await db.query(NS, Query().min("n")) == 0
    assert await db.query(NS, Query().max("g")) == "odd"
    assert await db.query(NS, Query().distinct("g")) == ["even", "odd"]
    assert await db.query(NS, Query().group_by("g").sum("n")) == [
        Group("even", 20),
        Group("odd", 25),
    ]
    assert await db.query(NS, Query().group_by("g").limit(1)) == [Group("even", 5)]
    # Through the data form, as the command line sends it.
    assert await db.query(NS, {"aggregate": ["count", "g"], "where": ["lt", "n", 3]}) == 3


async def test_results_never_alias_what_the_database_holds(db: koru.Database) -> None:
    await db.put(NS, "a", {"tags": ["x"], "m": {"k": 1}})
    rows = await db.query(NS, Query())
    rows[0].value["tags"].append("mutated")
    (await db.query(NS, Query().select("m")))[0].value["m"]["k"] = 2
    (await db.query(NS, Query().distinct("tags")))[0].append("y")
    assert await db.query(NS, Query()) == [Row("a", {"tags": ["x"], "m": {"k": 1}})]
    assert await db.query(NS, Query().distinct("tags")) == [["x"]]


async def test_the_document_cache_follows_every_write(db: koru.Database) -> None:
    q = Query().where(F("v") >= 1)
    assert await db.query(NS, q) == []
    await db.put(NS, "a", {"v": 1})
    await db.put_batch([(NS, "b", {"v": 2}), (NS, "c", {"v": 0})])
    assert [r.key for r in await db.query(NS, q)] == ["a", "b"]
    await db.put(NS, "a", {"v": 0})
    await db.delete(NS, "b")
    await db.put(NS, "0", {"v": 5})
    assert [r.key for r in await db.query(NS, q)] == ["0"]
    # Events from another node take the same write path.
    async with koru.open(":memory:", clock=StepClock()) as other:
        await other.put(NS, "z", {"v": 9})
        assert (await db.ingest(await other.feed_events(other.node_id))).accepted == 1
    assert [r.key for r in await db.query(NS, q)] == ["0", "z"]


async def test_a_namespace_over_the_cache_budget_is_scanned_without_caching(
    db: koru.Database,
) -> None:
    db._queries.documents.budget = 100
    for i in range(20):
        await db.put(NS, f"k{i:02}", {"v": i, "pad": "x" * 10})
    assert await db.query(NS, Query().where(F("v") < 3).count()) == 3
    assert db._queries.documents.by_namespace == {}
    await db.put(NS, "k00", {"v": 99})
    assert await db.query(NS, Query().where(F("v") < 3).count()) == 2


async def test_queries_at_a_past_time_take_every_time_form(db: koru.Database) -> None:
    v1 = await db.put(NS, "a", {"v": 1})
    await db.put(NS, "a", {"v": 2})
    q = Query().sum("v")
    assert await db.query(NS, q, at=v1.timestamp) == 1
    assert await db.query(NS, q, at=v1.datetime) == 1
    assert await db.query(NS, q, at=v1.datetime.isoformat()) == 1
    assert await db.query(NS, q, at=v1.timestamp - 1) == 0
    with pytest.raises(koru.InvalidDataError, match="UTC offset"):
        await db.query(NS, q, at=dt.datetime(2020, 1, 1))


@pytest.mark.parametrize(
    ("build", "field", "reason"),
    [
        (lambda: Query.from_data({"where": ["gtx", "a", 1]}), "where[0]", "unknown operator"),
        (lambda: Query.from_data({"where": ["eq", 5, 1]}), "where[1]", "must be a str"),
        (lambda: Query.from_data({"where": ["eq", "a..b", 1]}), "where[1]", "empty segment"),
        (lambda: Query.from_data({"where": ["matches", "a", "("]}), "where[2]", "invalid regular"),
        (lambda: Query.from_data({"where": ["matches", "a", r"(a)\1"]}), "where[2]", "backref"),
        (lambda: Query.from_data({"where": ["in", "a", 1]}), "where[2]", "list of values"),
        (lambda: Query.from_data({"where": ["eq", "a", {1: 2}]}), "where[2]", "storable"),
        (lambda: Query.from_data({"where": ["eq", "a", math.nan]}), "where[2]", "NaN"),
        (lambda: Query.from_data({"where": ["exists", "a", 1]}), "where[2]", "true or false"),
        (lambda: Query.from_data({"where": ["not", ["eq", "a", 1], 2]}), "where", "one filter"),
        (lambda: Query.from_data({"where": []}), "where", "non-empty list"),
        (lambda: Query.from_data({"where": ["and", ["or", "x"]]}), "where[1][1]", "non-empty"),
        (lambda: Query.from_data({"wher": 1}), "wher", "unknown query entry"),
        (lambda: Query.from_data([]), "query", "is a map"),
        (lambda: Query.from_data({"limit": -1}), "limit", "non-negative"),
        (lambda: Query.from_data({"limit": None}), "limit", "non-negative"),
        (lambda: Query.from_data({"offset": True}), "offset", "non-negative"),
        (lambda: Query.from_data({"order_by": [["a", "up"]]}), "order_by[0]", "a sort is"),
        (lambda: Query.from_data({"order_by": "a"}), "order_by", "list of"),
        (lambda: Query.from_data({"aggregate": ["median", "a"]}), "aggregate", "op in"),
        (lambda: Query.from_data({"aggregate": ["sum"]}), "aggregate", "needs a path"),
        (lambda: Query().sum("a").select("b").validate(), "select", "no rows"),
        (lambda: Query().order_by("a").count().validate(), "order_by", "no rows to order"),
        (lambda: Query().count().limit(3).validate(), "limit", "one value"),
        (lambda: Query().select("a").group_by("b").validate(), "group_by", "not rows"),
        (lambda: Query().sum(None), "aggregate", "needs a path"),  # type: ignore[arg-type]
        (lambda: F(3), "path", "must be a str"),
        (lambda: F("a").matches("((((a{9}){9}){9}){9}){9}"), "pattern", "automaton states"),
        (lambda: F("a").is_in("abc"), "values", "list of values"),
        (lambda: Query().where("a"), "where[0]", "must be a filter"),
        (lambda: (F("a") == 1) & 2, "&", "combines with a filter"),  # type: ignore[operator]
    ],
)
def test_bad_queries_name_the_field_and_the_reason(build: Any, field: str, reason: str) -> None:
    with pytest.raises(InvalidQueryError) as info:
        build()
    assert info.value.field == field
    assert reason in info.value.reason
    assert isinstance(info.value, koru.KoruError)


def test_deep_and_wide_filters_are_refused_not_recursed_into() -> None:
    f = F("a") == 1
    for _ in range(10_000):
        f = ~f
    with pytest.raises(InvalidQueryError, match="nest deeper"):
        Query().where(f)
    deep: list[Any] = ["eq", "a", 1]
    for _ in range(5_000):
        deep = ["not", deep]
    with pytest.raises(InvalidQueryError, match="nest deeper"):
        Query.from_data({"where": deep})
    wide = ["or", *(["eq", "a", i] for i in range(10_001))]
    with pytest.raises(InvalidQueryError, match="at most 10000"):
        Query.from_data({"where": wide})
    # The largest accepted ones compile and run.
    ok: list[Any] = ["eq", "a", 1]
    for _ in range(64):
        ok = ["not", ok]
    Query.from_data({"where": ok})


async def test_bad_calls_fail_before_any_work(db: koru.Database) -> None:
    await db.put(NS, "a", {"v": "text"})
    with pytest.raises(InvalidQueryError, match="must be a Query"):
        await db.query(NS, "age > 3")  # type: ignore[arg-type]
    with pytest.raises(koru.InvalidDataError, match="namespace"):
        await db.query(3, Query())  # type: ignore[arg-type]
    with pytest.raises(koru.InvalidDataError, match="time"):
        await db.query(NS, Query(), at=[1])
    with pytest.raises(InvalidQueryError, match="limit"):
        await db.query(NS, Query().count().limit(1))
    assert db._queries.documents.by_namespace == {}  # nothing was read
    with pytest.raises(InvalidQueryError, match="over a non-number: key 'a' holds str"):
        await db.query(NS, Query().sum("v"))


async def test_values_past_their_time_to_live_are_absent(clock: Any) -> None:
    async with koru.open(":memory:", clock=clock) as db:
        await db.put(NS, "keep", {"v": 1})
        short = await db.put(NS, "short", {"v": 2}, ttl=1.0)
        q = Query().where(F("v") >= 1)
        assert [r.key for r in await db.query(NS, q)] == ["keep", "short"]
        clock.now += 2 * 10**9  # past the expiry, before any expiry event is written
        assert [r.key for r in await db.query(NS, q)] == ["keep"]
        assert await db.query(NS, Query().sum("v")) == 1
        # As things were while it lived:
        assert await db.query(NS, Query().sum("v"), at=short.timestamp) == 3
        assert await db.query(NS, Query().sum("v"), at=clock.now) == 1
