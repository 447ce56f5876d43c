"""Secondary indexes: defined by events, folded live, replayed, checkpointed, ingested;
used by eq, in and comparison filters; never change a result."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
from _query_model import KEYS, NS, answer, documents, expected, queries
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock
from koru import F, Query, Row
from koru.events import IndexEvent, encode_event
from koru.projections._indexes import Indexes, pack_entry, unpack_entry

INDEXED = ["a", "b", "n.x", "l.0", "l"]

# Few values, so equality and ranges on indexed fields match several documents.
small = st.sampled_from([0, 1, 1.0, 2, "a", "b", None, True, [1], {"x": 1}])
small = small | st.sampled_from([1, "a"])  # two common values
small_docs = st.fixed_dictionaries(
    {},
    optional={
        "a": small,
        "b": small,
        "n": st.fixed_dictionaries({"x": small}),
        "l": st.lists(small, max_size=2),
    },
)
indexable = st.one_of(
    st.tuples(
        st.sampled_from(["eq", "gt", "gte", "lt", "lte", "ne"]), st.sampled_from(INDEXED), small
    ).map(list),
    st.tuples(st.just("in"), st.sampled_from(INDEXED), st.lists(small, max_size=3)).map(list),
)
index_queries = st.one_of(
    queries(),
    st.lists(indexable, min_size=1, max_size=3).map(lambda ls: {"where": ["and", *ls]}),
    st.tuples(indexable, st.sampled_from(["count", "sum", "min"]), st.sampled_from(INDEXED)).map(
        lambda t: {"where": t[0], "aggregate": ["count"] if t[1] == "count" else [t[1], t[2]]}
    ),
)

KINDS = ["put"] * 6 + ["delete", "create_index", "create_index", "drop_index"]
KINDS += ["reopen", "checkpoint", "replay"]


@st.composite
def step(draw: st.DrawFn) -> tuple[str, Any, Any]:
    kind = draw(st.sampled_from(KINDS))
    if kind == "put":
        return kind, draw(st.sampled_from(KEYS)), draw(small_docs | small_docs | documents())
    if kind == "delete":
        return kind, draw(st.sampled_from(KEYS)), None
    if kind in ("create_index", "drop_index"):
        return kind, draw(st.sampled_from(INDEXED)), None
    return kind, None, None


steps = st.lists(step(), min_size=8, max_size=40)


@settings(max_examples=60)
@given(steps, st.lists(index_queries, min_size=1, max_size=5))
def test_indexes_never_change_a_result(
    ops: list[tuple[str, Any, Any]], qs: list[dict[str, Any]]
) -> None:
    """With indexes created and dropped at random points, across reopens (checkpoint
    restore) and full replays (pending indexes filled on first use), every query equals
    the naive evaluation."""

    async def main(path: Path) -> None:
        clock = StepClock()
        state: dict[str, Any] = {}
        indexed: set[str] = set()
        db_cm = koru.open(path, sync="never", clock=clock)
        db = await db_cm.__aenter__()
        try:
            for i, (op, arg, doc) in enumerate(ops):
                if op == "put":
                    await db.put(NS, arg, doc)
                    state[arg] = doc
                elif op == "delete" and arg in state:
                    await db.delete(NS, arg)
                    del state[arg]
                elif op == "create_index":
                    assert await db.create_index(NS, arg) is (arg not in indexed)
                    indexed.add(arg)
                elif op == "drop_index" and arg in indexed:
                    await db.drop_index(NS, arg)
                    indexed.discard(arg)
                elif op == "checkpoint":
                    await db.checkpoint()
                elif op in ("reopen", "replay"):
                    await db_cm.__aexit__(None, None, None)
                    if op == "replay":
                        (path / "checkpoint").unlink(missing_ok=True)
                    db_cm = koru.open(path, sync="never", clock=clock)
                    db = await db_cm.__aenter__()
                assert {i.field for i in await db.list_indexes(NS)} == indexed
                q = qs[i % len(qs)]
                assert await answer(db, q) == expected(q, state), q
            for q in qs:
                assert await answer(db, q) == expected(q, state), q
        finally:
            await db_cm.__aexit__(None, None, None)

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, Path(tmp) / "db")


async def test_equality_in_and_ranges_use_the_index(db: koru.Database) -> None:
    for i in range(200):
        await db.put(NS, f"k{i:03}", {"n": i, "g": i % 10, "s": f"s{i % 7}"})
    await db.put(NS, "odd", {"n": "text", "g": [1, 2]})
    q_eq = Query().where(F("g") == 3, F("n") < 100)
    plan = await db.explain(NS, q_eq)
    assert not plan.uses_index and plan.candidates is None and "full scan" in plan.reason
    before = await db.query(NS, q_eq)
    assert await db.create_index(NS, "g") is True
    assert await db.create_index(NS, "g") is False  # exists: nothing written
    plan = await db.explain(NS, q_eq)
    assert plan.indexes == (("g", "eq"),) and plan.candidates == 20
    assert await db.query(NS, q_eq) == before and len(before) == 10
    await db.create_index(NS, "n")
    plan = await db.explain(NS, q_eq)
    assert set(plan.indexes) == {("g", "eq"), ("n", "lt")} and plan.candidates == 10
    # Ranges are bracketed by kind: the string "text" is not > 150.
    q_range = Query().where(F("n") > 150).count()
    assert (await db.explain(NS, q_range)).candidates == 49
    assert await db.query(NS, q_range) == 49
    assert await db.query(NS, Query().where(F("n") >= "a").select("n")) == [
        Row("odd", {"n": "text"})
    ]
    q_in = Query().where(F("g").is_in([1, [1, 2], 9.0]))
    assert (await db.explain(NS, q_in)).candidates == 41
    assert len(await db.query(NS, q_in)) == 41
    # Or at the top, negations and past times do not use an index.
    assert not (await db.explain(NS, Query().where((F("g") == 1) | (F("g") == 2)))).uses_index
    assert not (await db.explain(NS, Query().where(F("g") != 1))).uses_index
    v = await db.put(NS, "k000", {"n": 0, "g": 3})
    assert not (await db.explain(NS, q_eq, at=v.timestamp)).uses_index
    assert len(await db.query(NS, q_eq)) == 11
    await db.delete(NS, "k000")
    assert len(await db.query(NS, q_eq)) == 10
    infos = await db.list_indexes()
    assert [(i.namespace, i.field, i.building) for i in infos] == [
        (NS, "g", False),
        (NS, "n", False),
    ]
    assert infos[0].entries == 200  # every key with a "g" (k000 is deleted)
    await db.drop_index(NS, "g")
    assert [i.field for i in await db.list_indexes(NS)] == ["n"]
    with pytest.raises(koru.NotFoundError, match="no index"):
        await db.drop_index(NS, "g")


async def test_an_index_on_an_empty_namespace_fills_as_data_arrives(db: koru.Database) -> None:
    assert await db.create_index("later", "x") is True
    assert (await db.list_indexes("later"))[0].entries == 0
    await db.put_batch([("later", "a", {"x": 1}), ("later", "b", {"x": 2})])
    assert await db.query("later", Query().where(F("x") == 2)) == [Row("b", {"x": 2})]
    assert (await db.explain("later", Query().where(F("x") == 2))).candidates == 1


async def test_bad_index_calls_are_refused_before_anything_is_written(db: koru.Database) -> None:
    with pytest.raises(koru.InvalidQueryError, match="field"):
        await db.create_index(NS, "a..b")
    with pytest.raises(koru.InvalidQueryError, match="field"):
        await db.create_index(NS, 3)  # type: ignore[arg-type]
    with pytest.raises(koru.InvalidDataError, match="namespace"):
        await db.create_index("", "a")
    with pytest.raises(koru.InvalidDataError, match="namespace"):
        await db.list_indexes(5)  # type: ignore[arg-type]
    assert (await db.feed_heads()) == {}


async def test_an_ingested_definition_is_filled_before_first_use() -> None:
    async with (
        koru.open(":memory:", clock=StepClock()) as a,
        koru.open(":memory:", clock=StepClock()) as b,
    ):
        for i in range(30):
            await b.put(NS, f"k{i}", {"v": i % 3})
        await a.create_index(NS, "v")
        events = await a.feed_events(a.node_id, "perspective")
        assert (await b.ingest(events)).accepted == 1
        [info] = await b.list_indexes()
        assert info.building  # a pure fold cannot read the values written before it
        assert len(await b.query(NS, Query().where(F("v") == 1))) == 10
        assert not (await b.list_indexes())[0].building
        assert (await b.explain(NS, Query().where(F("v") == 1))).candidates == 10


def test_the_index_fold_is_order_independent_and_idempotent() -> None:
    """Writes from two origins in either order (and twice) give the same index."""
    from koru.events import PutEvent, event_id

    create = IndexEvent(b"\x01" * 16, "perspective", 1, None, 5, "create", NS, "v")
    puts = [
        PutEvent(b"\x02" * 16, "storage", 1, None, 10, NS, "k", cbor2.dumps({"v": 1}), None),
        PutEvent(b"\x03" * 16, "storage", 1, None, 20, NS, "k", cbor2.dumps({"v": 2}), None),
        PutEvent(b"\x03" * 16, "storage", 2, b"\x00" * 32, 30, NS, "j", cbor2.dumps({}), None),
    ]

    def fold(order: list[Any]) -> Any:
        state = Indexes()
        for ev in order:
            state.apply(ev, event_id(encode_event(ev)), 0)
        index = state.get(NS, "v")
        assert index is not None
        index.pending = False  # as filled from an empty namespace
        for ev in [e for e in order if e is not create] * 2:
            state.apply(ev, event_id(encode_event(ev)), 0)
        captured = state.capture()
        for index in captured["indexes"]:
            index[3] = sorted(index[3])
        return captured

    first = fold([create, *puts])
    assert fold([create, *reversed(puts)]) == first
    entries = {e[0]: e[2:] for e in first["indexes"][0][3]}
    assert entries == {"k": [2], "j": []}  # the later write wins; j has no "v"


async def test_a_crafted_definition_does_not_stop_a_replay(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, clock=StepClock()) as db:
        await db.put(NS, "a", {"x": 1})
        db._writer.emit("perspective", lambda h: IndexEvent(*h, "create", NS, "a..b"))
        db._writer.emit("perspective", lambda h: IndexEvent(*h, "create", NS, "x"))
        await db._writer.acknowledge()
    (path / "checkpoint").unlink()
    async with koru.open(path) as db:
        assert [i.field for i in await db.list_indexes()] == ["x"]
        assert await db.query(NS, Query().where(F("x") == 1)) == [Row("a", {"x": 1})]


async def test_an_indexed_value_past_its_time_to_live_is_absent(clock: Any) -> None:
    async with koru.open(":memory:", clock=clock) as db:
        await db.create_index(NS, "v")
        await db.put(NS, "keep", {"v": 1})
        await db.put(NS, "short", {"v": 1}, ttl=1.0)
        q = Query().where(F("v") == 1)
        assert (await db.explain(NS, q)).candidates == 2
        clock.now += 2 * 10**9  # expired; no expiry event written yet
        assert [r.key for r in await db.query(NS, q)] == ["keep"]


def test_the_audit_agrees_with_a_checkpoint_of_filled_indexes(tmp_path: Path) -> None:
    """``kdelta check`` audits a checkpoint against a replay of the log. A replay leaves
    indexes pending (the database fills them after open), so every checkpoint of a
    filled index was reported as "section 'indexes' disagrees with a replay of the
    log" (found by the s-capture branch). The audit fills the replayed index as the
    database does; an index entry a buggy build got wrong is still reported."""
    from koru._audit import audit_checkpoint
    from koru.events import FileStore

    async def write(corrupt: bool) -> None:
        async with koru.open(tmp_path / str(corrupt), processes=False) as db:
            await db.put("ns", "before", {"v": 0})  # in the namespace before the index
            await db.create_index("ns", "v")
            for i in range(40):
                await db.put("ns", f"k{i}", {"v": i % 7, "w": i})
            await db.put("ns", "k3", {"v": "changed"})
            await db.put("ns", "novalue", {"w": 1})  # the field missing
            await db.delete("ns", "k5")
            await db.create_index("ns", "w")
            if corrupt:  # a build that recorded the wrong value for one key
                index = db.projection("indexes").get("ns", "v")  # type: ignore[attr-defined]
                order, _ = unpack_entry(index.entries["k8"])
                index.entries["k8"] = pack_entry(order, index.extract({"v": 99}))
            await db.checkpoint()

    for corrupt in (False, True):
        trio.run(write, corrupt)
        store = FileStore(tmp_path / str(corrupt), readonly=True)
        try:
            problems, _ = audit_checkpoint(store)
        finally:
            store.close()
        if corrupt:
            assert problems == ["section 'indexes' disagrees with a replay of the log"]
        else:
            assert problems == []


def test_lists_and_maps_equal_in_the_order_share_a_bucket() -> None:
    """A list's or map's bucket is keyed by its bytes with numbers that equal an int
    written as that int: ``[1]`` and ``[1.0]``, ``{"a": 0.0}`` and ``{"a": -0.0}`` are
    one value of the order (one bucket), ``[1]`` and ``[True]`` or ``[1.5]`` are not."""
    from conftest import new_index
    from koru.projections._order import order_key

    _, index = new_index("docs", "v")
    writes = {
        "a": [1, [2.0]],
        "b": [1.0, [2]],
        "c": {"x": 0.0, "y": [float(2**70)]},
        "d": {"x": -0.0, "y": [2**70]},
        "e": [True, [2]],
        "f": [1.5, [2]],
    }
    for i, (key, value) in enumerate(writes.items()):
        index.put(key, (i + 1).to_bytes(56, "big"), order_key(value))
    assert sorted(index.equal(order_key([1, [2]]))) == ["a", "b"]
    assert sorted(index.equal(order_key({"y": [2.0**70], "x": 0}))) == ["c", "d"]
    assert list(index.equal(order_key([True, [2.0]]))) == ["e"]
    index.put("a", (10).to_bytes(56, "big"), None)  # a's value gone: b keeps the bucket
    assert list(index.equal(order_key([1.0, [2.0]]))) == ["b"]
    ranged = [k for b in index.between((6,), False, (7,), True) for k in b]
    assert sorted(ranged) == ["b", "e", "f"]
