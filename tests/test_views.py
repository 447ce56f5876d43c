"""Materialized views: defined by events, maintained write by write, equal to
re-running their query after any writes, deletes, reopens, checkpoints and replays."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
from _query_model import KEYS, NS, Bad, documents, expected, queries, shape, typed
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock
from koru import F, InvalidQueryError, Query, Row
from koru.events import ViewEvent, encode_value

KINDS = ["put"] * 6 + ["delete", "delete", "create", "drop", "refresh"]
KINDS += ["reopen", "checkpoint", "replay"]
NAMES = ["v1", "v2", "v3"]


@st.composite
def step(draw: st.DrawFn) -> tuple[str, Any, Any]:
    kind = draw(st.sampled_from(KINDS))
    if kind == "put":
        return kind, draw(st.sampled_from(KEYS)), draw(documents())
    if kind == "delete":
        return kind, draw(st.sampled_from(KEYS)), None
    if kind == "create":
        return kind, draw(st.sampled_from(NAMES)), draw(queries())
    if kind in ("drop", "refresh"):
        return kind, draw(st.sampled_from(NAMES)), None
    return kind, None, None


async def view_answer(db: koru.Database, name: str) -> Any:
    try:
        return typed(shape(await db.view(name)))
    except InvalidQueryError as exc:
        assert "over a non-number" in exc.reason, exc
        return Bad


@settings(max_examples=80)
@given(st.lists(step(), min_size=8, max_size=40))
def test_every_view_equals_rerunning_its_query(ops: list[tuple[str, Any, Any]]) -> None:
    async def main(path: Path) -> None:
        clock = StepClock()
        state: dict[str, Any] = {}
        views: dict[str, dict[str, Any]] = {}
        db_cm = koru.open(path, sync="never", clock=clock)
        db = await db_cm.__aenter__()
        try:
            for op, arg, extra in ops:
                if op == "put":
                    await db.put(NS, arg, extra)
                    state[arg] = extra
                elif op == "delete" and arg in state:
                    await db.delete(NS, arg)
                    del state[arg]
                elif op == "create":
                    await db.create_view(arg, NS, extra)
                    views[arg] = extra
                elif op == "drop" and arg in views:
                    await db.delete_view(arg)
                    del views[arg]
                elif op == "refresh" and arg in views:
                    await db.refresh_view(arg)
                elif op == "checkpoint":
                    await db.checkpoint()
                elif op in ("reopen", "replay"):
                    await db_cm.__aexit__(None, None, None)
                    if op == "replay":
                        (path / "checkpoint").unlink(missing_ok=True)
                    db_cm = koru.open(path, sync="never", clock=clock)
                    db = await db_cm.__aenter__()
                assert [v.name for v in await db.list_views()] == sorted(views)
                for name, q in views.items():
                    assert await view_answer(db, name) == expected(q, state), (name, q)
        finally:
            await db_cm.__aexit__(None, None, None)

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, Path(tmp) / "db")


async def test_views_of_rows_and_aggregates(db: koru.Database) -> None:
    for i in range(20):
        await db.put(NS, f"k{i:02}", {"n": i, "g": "odd" if i % 2 else "even"})
    await db.create_view("top", NS, Query().where(F("n") >= 10).order_by("-n").limit(3).select("n"))
    await db.create_view("by_g", NS, Query().group_by("g").sum("n"))
    await db.create_view("max", NS, {"aggregate": ["max", "n"]})
    assert await db.view("top") == [
        Row("k19", {"n": 19}),
        Row("k18", {"n": 18}),
        Row("k17", {"n": 17}),
    ]
    assert await db.view("max") == 19
    await db.delete(NS, "k19")
    await db.put(NS, "k18", {"n": 2, "g": "even"})
    await db.put_batch([(NS, "new", {"n": 50, "g": "odd"}), (NS, "k00", {"n": 0, "g": "odd"})])
    assert await db.view("top") == [
        Row("new", {"n": 50}),
        Row("k17", {"n": 17}),
        Row("k16", {"n": 16}),
    ]
    assert await db.view("max") == 50
    assert await db.view("by_g") == await db.query(NS, Query().group_by("g").sum("n"))
    infos = await db.list_views()
    assert [(v.name, v.namespace, v.building, v.error) for v in infos] == [
        ("by_g", NS, False, None),
        ("max", NS, False, None),
        ("top", NS, False, None),
    ]
    assert infos[1].query == {"aggregate": ["max", "n"]}
    # A view is replaced by a new definition of the same name.
    await db.create_view("max", NS, Query().min("n"))
    assert await db.view("max") == 0
    await db.delete_view("max")
    with pytest.raises(koru.NotFoundError, match="no view"):
        await db.view("max")
    with pytest.raises(koru.NotFoundError, match="no view"):
        await db.delete_view("max")


async def test_bad_view_calls_write_nothing(db: koru.Database) -> None:
    with pytest.raises(InvalidQueryError, match="limit"):
        await db.create_view("v", NS, Query().count().limit(2))
    with pytest.raises(InvalidQueryError, match="unknown operator"):
        await db.create_view("v", NS, {"where": ["nope", "a", 1]})
    with pytest.raises(koru.InvalidDataError, match="view"):
        await db.create_view("", NS, Query())
    with pytest.raises(koru.InvalidDataError, match="namespace"):
        await db.create_view("v", 5, Query())  # type: ignore[arg-type]
    assert await db.feed_heads() == {}


async def test_an_ingested_view_is_computed_before_it_is_read() -> None:
    async with (
        koru.open(":memory:", clock=StepClock()) as a,
        koru.open(":memory:", clock=StepClock()) as b,
    ):
        for i in range(10):
            await b.put(NS, f"k{i}", {"v": i})
        await a.create_view("big", NS, Query().where(F("v") > 6).count())
        assert (await b.ingest(await a.feed_events(a.node_id, "perspective"))).accepted == 1
        assert (await b.list_views())[0].building
        assert await b.view("big") == 3
        await b.put(NS, "k0", {"v": 100})
        assert await b.view("big") == 4


async def test_a_crafted_definition_makes_a_view_that_reports_why(tmp_path: Path) -> None:
    path = tmp_path / "db"
    bad = encode_value({"where": ["eq", "a..b", 1]})
    async with koru.open(path, clock=StepClock()) as db:
        await db.put(NS, "a", 1)
        db._writer.emit("perspective", lambda h: ViewEvent(*h, "create", "bad", NS, bad))
        db._writer.emit(
            "perspective", lambda h: ViewEvent(*h, "create", "worse", NS, encode_value([1]))
        )
        await db._writer.acknowledge()
    (path / "checkpoint").unlink()
    async with koru.open(path) as db:  # replays without failing
        infos = {v.name: v for v in await db.list_views()}
        assert "empty segment" in (infos["bad"].error or "")
        assert "is a map" in (infos["worse"].error or "")
        with pytest.raises(InvalidQueryError, match="empty segment"):
            await db.view("bad")
        await db.put(NS, "b", 2)  # writes fold past broken views
        await db.delete_view("bad")


async def test_a_value_past_its_time_to_live_leaves_the_views(clock: Any) -> None:
    async with koru.open(":memory:", clock=clock) as db:
        await db.create_view("all", NS, Query().order_by("v"))
        await db.create_view("sum", NS, Query().sum("v"))
        await db.put(NS, "keep", {"v": 1})
        await db.put(NS, "short", {"v": 2}, ttl=1.0)
        assert await db.view("sum") == 3
        clock.now += 2 * 10**9  # expired; no expiry event written yet
        assert await db.view("sum") == 1
        assert [r.key for r in await db.view("all")] == ["keep"]
        await db.refresh_view("sum")
        assert await db.view("sum") == 1
        await db.create_view("late", NS, Query().count())
        assert await db.view("late") == 1
