"""Queries: results equal a naive evaluation, now and at past times; the data form
round-trips; bad queries are refused before any work, naming the field.

The naive model (``_query_model.py``) shares no code with the engine: it walks the
filter's data form, compares with a comparator written from the documented total order
(not ``order_key``), matches patterns with Python's ``re``, and sums with ``Fraction``.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from typing import Any

import cbor2
import pytest
import trio
from _query_model import (
    NS,
    answer,
    expected,
    filters,
    naive_match,
    operations,
    queries,
    typed,
    values,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock
from koru import F, Group, InvalidQueryError, Query, Row
from koru.projections import MISSING as MISSING_

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
    # Before any query the write path does not call the query engine (nothing is
    # cached to mark dirty); from the first query on it does, first of its observers.
    observers = db._writer.observers  # type: ignore[attr-defined]
    engine = db._queries  # type: ignore[attr-defined]
    await db.put(NS, "early", {"v": 0})
    assert engine.observe not in observers
    assert await db.query(NS, q) == []
    assert observers[0] == engine.observe
    await db.delete(NS, "early")
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


def test_too_many_selected_or_sorting_paths_are_refused() -> None:
    """Each selected or sorting path is looked up in every row: 100,000 of them held
    the loop for seconds over 200 documents (h-views review). At most MAX_FIELDS, from
    Python and from a query's data (a remote client's) alike."""
    from koru.projections._query import MAX_FIELDS

    paths = [f"f{i}" for i in range(MAX_FIELDS + 1)]
    for build in (
        lambda: Query().select(*paths),
        lambda: Query().order_by(*paths),
        lambda: Query.from_data({"select": paths}),
        lambda: Query.from_data({"order_by": [[p, "asc"] for p in paths]}),
    ):
        with pytest.raises(InvalidQueryError, match=f"at most {MAX_FIELDS} paths"):
            build()
    allowed = paths[:MAX_FIELDS]
    assert len(Query().select(*allowed).order_by(*allowed).fields or ()) == MAX_FIELDS


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


@given(values)
def test_order_keys_survive_a_checkpoint(value: Any) -> None:
    from koru.projections._order import key_from_plain, order_key, plain_key

    key = order_key(value)
    assert key_from_plain(cbor2.loads(cbor2.dumps(plain_key(key)))) == key
    assert key_from_plain(plain_key(order_key(MISSING_))) == order_key(MISSING_)
