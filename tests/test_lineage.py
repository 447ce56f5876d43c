"""Lineage: puts that name their parents, the derivation graph they fold into, and its
walks. The graph equals a naive model after any writes, reopens, checkpoints (tables)
and replays; it is the same for any delivery order; bad parents are refused before
anything is written."""

from __future__ import annotations

import itertools
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock
from koru import MAX_PARENTS, InvalidArgumentError, InvalidParentError
from koru._audit import audit_checkpoint
from koru.events import STORAGE, FileStore, LinkedPutEvent, decode_event, workspace_prefix
from koru.projections._lineage import LineageState

NS = "docs"
KEYS = [f"k{i}" for i in range(8)]
Node = tuple[str, str]


# -- a naive model ----------------------------------------------------------------------------


def naive_reach(edges: set[tuple[Node, Node]], start: Node, up: bool) -> list[Node]:
    """Breadth-first, nearest first, each level sorted: the documented order."""
    step = {}
    for parent, child in edges:
        a, b = (child, parent) if up else (parent, child)
        step.setdefault(a, set()).add(b)
    seen, level, out = {start}, [start], []
    while level:
        following = sorted({n for x in level for n in step.get(x, ()) if n not in seen})
        seen.update(following)
        out += following
        level = following
    return out


def naive_distance(edges: set[tuple[Node, Node]], a: Node, b: Node) -> int | None:
    """Fewest links from a down to b, or from a up to b."""
    best = None
    for up in (False, True):
        step: dict[Node, set[Node]] = {}
        for parent, child in edges:
            x, y = (child, parent) if up else (parent, child)
            step.setdefault(x, set()).add(y)
        dist, level, d = {a: 0}, [a], 0
        while level and b not in dist:
            d += 1
            level = [n for x in level for n in step.get(x, ()) if n not in dist]
            for n in level:
                dist.setdefault(n, d)
        if b in dist and (best is None or dist[b] < best):
            best = dist[b]
    return best


@st.composite
def steps(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    kind = draw(st.sampled_from(["put"] * 6 + ["delete", "checkpoint", "reopen", "replay"]))
    key = draw(st.sampled_from(KEYS))
    parents = draw(st.lists(st.sampled_from(KEYS), max_size=3))
    return kind, key, parents


@settings(max_examples=60, deadline=None)
@given(st.lists(steps(), min_size=5, max_size=40), st.booleans())
def test_the_graph_equals_a_naive_model(ops: list[tuple[str, str, list[str]]], ws: bool) -> None:
    async def main(path: Path) -> None:
        clock = StepClock()
        live: set[str] = set()
        edges: set[tuple[Node, Node]] = set()
        cm = koru.open(path, sync="never", clock=clock)
        db = await cm.__aenter__()
        # Checkpoints write the graph to tables; merge them often.
        db.projection("lineage").max_tables = 2  # type: ignore[attr-defined]
        try:
            for kind, key, parents in ops:
                s = db.workspace("w") if ws else db
                if kind == "put":
                    usable = [p for p in dict.fromkeys(parents) if p in live and p != key]
                    await s.put(NS, key, {"k": key}, parents=usable or None)
                    live.add(key)
                    edges |= {((NS, p), (NS, key)) for p in usable}
                elif kind == "delete" and key in live:
                    await s.delete(NS, key)  # a deletion keeps the record of derivations
                    live.discard(key)
                elif kind == "checkpoint":
                    await db.checkpoint()
                    await db._checkpointer.compact()
                elif kind in ("reopen", "replay"):
                    await cm.__aexit__(None, None, None)
                    if kind == "replay":
                        (path / "checkpoint").unlink(missing_ok=True)
                    cm = koru.open(path, sync="never", clock=clock)
                    db = await cm.__aenter__()
                    db.projection("lineage").max_tables = 2  # type: ignore[attr-defined]
            s = db.workspace("w") if ws else db
            for key in KEYS:
                node = (NS, key)
                assert await s.ancestors(node) == naive_reach(edges, node, up=True)
                assert await s.descendants(node) == naive_reach(edges, node, up=False)
                assert await s.ancestors(node, 1) == sorted(p for p, c in edges if c == node)
                for other in KEYS:
                    path_found = await s.connection_path(node, (NS, other))
                    distance = naive_distance(edges, node, (NS, other))
                    assert (path_found is None) == (distance is None)
                    assert await s.are_connected(node, (NS, other)) == (distance is not None)
                    if path_found is not None:
                        assert len(path_found) == distance + 1  # type: ignore[operator]
                        assert path_found[0] == node and path_found[-1] == (NS, other)
                        hops = list(itertools.pairwise(path_found))
                        assert all((x, y) in edges for x, y in hops) or all(
                            (y, x) in edges for x, y in hops
                        )
            degree = {k: 0 for k in KEYS}
            for (_, p), (_, c) in edges:
                degree[p] += 1
                degree[c] += 1
            ranked = sorted((-d, k) for k, d in degree.items() if d)
            top = [(c.key, c.links) for c in await s.most_connected(NS, 3)]
            assert top == [(k, -d) for d, k in ranked[:3]]
            if not ws:
                assert await db.workspace("w").ancestors((NS, "k0")) == []
            else:
                assert await db.most_connected(NS, 3) == []
            await db.checkpoint()
            store = FileStore(path, readonly=True)
            try:
                problems, _ = audit_checkpoint(store)
            finally:
                store.close()
            assert problems == []
        finally:
            await cm.__aexit__(None, None, None)

    with tempfile.TemporaryDirectory() as d:
        trio.run(main, Path(d) / "db")


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False))
def test_any_delivery_order_gives_the_same_graph(rng: random.Random) -> None:
    origin = b"o" * 16
    events = []
    for seq in range(1, 30):
        key = f"k{rng.randrange(10)}"
        choices = [f"k{i}" for i in range(10) if f"k{i}" != key]
        parents = tuple((NS, p) for p in rng.sample(choices, rng.randrange(1, 4)))
        e = LinkedPutEvent(origin, STORAGE, seq, None, seq, NS, key, b"\x01", None, None, parents)
        events.append((e, seq.to_bytes(32, "big")))
    one, two = LineageState(), LineageState()
    for e, eid in events:
        one.apply(e, eid, 0)
    shuffled = events + rng.sample(events, 10)  # and duplicates
    rng.shuffle(shuffled)
    for e, eid in shuffled:
        two.apply(e, eid, 0)
    assert one.content() == two.content() and one.edges == two.edges


# -- what a put's parents may be ------------------------------------------------------------


async def test_bad_parents_are_refused_before_anything_is_written() -> None:
    async with koru.open(koru.MEMORY) as db:
        await db.put(NS, "a", 1)
        await db.put(NS, "gone", 1)
        await db.delete(NS, "gone")
        await db.put(NS, "brief", 1, ttl=0.001)
        await trio.sleep(0.01)
        before = await db.digest()
        cases: list[tuple[Any, str]] = [
            ([(NS, "never")], "no current value"),
            ([(NS, "gone")], "no current value"),
            ([(NS, "brief")], "no current value"),
            (["k"], "its own parent"),
            ([(NS, "k")], "its own parent"),
            ([(NS, "a")] + [(NS, f"p{i}") for i in range(MAX_PARENTS)], "no current value"),
            ("a", "must be a list"),
            ({NS: "a"}, "must be a list"),
            ([(NS,)], "pair or a key"),
            ([3], "pair or a key"),
            ([("", "a")], "empty"),
            ([(NS, 3)], "must be a str"),
            ([(workspace_prefix("w") + NS, "a")], "reserves"),
        ]
        for parents, reason in cases:
            with pytest.raises(InvalidParentError, match=reason):
                await db.put(NS, "k", 2, parents=parents)
        assert await db.digest() == before
        with pytest.raises(InvalidParentError) as caught:
            await db.put(NS, "k", 2, parents=[(NS, "never")])
        assert caught.value.parent == (NS, "never")


async def test_too_many_parents_are_refused() -> None:
    async with koru.open(koru.MEMORY) as db:
        items = [(NS, f"p{i}", i) for i in range(MAX_PARENTS + 1)]
        await db.put_batch(items)
        parents = [(NS, k) for _, k, _ in items]
        with pytest.raises(InvalidParentError, match=f"at most {MAX_PARENTS}"):
            await db.put(NS, "k", 1, parents=parents)
        # The most allowed, and a parent listed twice counts once.
        await db.put(NS, "k", 1, parents=parents[:MAX_PARENTS] + parents[:3])
        assert len(await db.ancestors((NS, "k"))) == MAX_PARENTS
        [top] = await db.most_connected(NS, 1)
        assert (top.key, top.parents, top.children) == ("k", MAX_PARENTS, 0)


async def test_a_linked_put_is_a_put_with_a_time_to_live_and_a_new_event_type() -> None:
    async with koru.open(koru.MEMORY) as db:
        await db.put(NS, "src", {"v": 1})
        plain = await db.put(NS, "plain", 1)
        version = await db.put_with_causal_links(NS, "derived", {"v": 2}, ["src"])
        timed = await db.put(NS, "timed", 3, ttl=60, parents=[(NS, "src")])
        assert timed.expires is not None
        assert await db.get(NS, "derived") == {"v": 2}
        assert (await db.get_versioned(NS, "derived")).write_id == version.write_id
        tags = [decode_event(e).TAG for e in await db.feed_events(db.node_id)]
        # A put without parents keeps its wire form: logs written before lineage read as
        # they did.
        assert tags == ["put", "put", "put-linked", "put-linked"]
        assert plain.write_id
        assert await db.descendants((NS, "src")) == [(NS, "derived"), (NS, "timed")]
        assert [e.key for e in await db.expiring(120)] == ["timed"]
        async with db.subscribe(NS, from_position=2) as changes:
            change = await changes.__anext__()
        assert (change.key, change.value) == ("derived", {"v": 2})


async def test_walks_are_bounded_and_survive_cycles_and_deep_chains() -> None:
    async with koru.open(koru.MEMORY) as db:
        await db.put(NS, "n0", 0)
        for i in range(1, 300):
            await db.put(NS, f"n{i}", i, parents=[f"n{i - 1}"])
        chain = await db.ancestors((NS, "n299"))
        assert chain == [(NS, f"n{i}") for i in range(298, -1, -1)]
        assert await db.ancestors((NS, "n299"), depth=2) == [(NS, "n298"), (NS, "n297")]
        assert await db.connection_path((NS, "n0"), (NS, "n299")) is None  # over 100 links
        found = await db.connection_path((NS, "n0"), (NS, "n299"), max_depth=299)
        assert found is not None and len(found) == 300
        up = await db.connection_path((NS, "n299"), (NS, "n250"))
        assert up == [(NS, f"n{i}") for i in range(299, 249, -1)]
        # A cycle: n0 derived (later) from n299.
        await db.put(NS, "n0", 0, parents=["n299"])
        assert len(await db.ancestors((NS, "n5"))) == 299
        assert await db.are_connected((NS, "n5"), (NS, "n5"))
        assert await db.connection_path((NS, "n5"), (NS, "n5")) == [(NS, "n5")]
        assert await db.are_connected((NS, "n5"), (NS, "nobody")) is False
        assert await db.ancestors((NS, "nobody")) == []
        for bad in ("n1", (NS,), [NS, "k", "x"], None):
            with pytest.raises(InvalidArgumentError):
                await db.ancestors(bad)  # type: ignore[arg-type]
        for depth in (-1, 1.5, "2"):
            with pytest.raises(InvalidArgumentError):
                await db.ancestors((NS, "n1"), depth)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            await db.connection_path((NS, "n1"), (NS, "n2"), max_depth=None)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            await db.most_connected(NS, -1)


async def test_a_workspaces_lineage_stays_in_it() -> None:
    async with koru.open(koru.MEMORY) as db:
        ws = db.workspace("w")
        await db.put(NS, "src", "default's")
        with pytest.raises(InvalidParentError, match="no current value"):
            await ws.put(NS, "k", 1, parents=[(NS, "src")])  # its own docs/src: none
        await ws.put(NS, "src", "w's")
        await ws.put(NS, "k", 1, parents=[(NS, "src")])
        assert await ws.ancestors((NS, "k")) == [(NS, "src")]
        assert await db.descendants((NS, "src")) == []
        assert [c.namespace for c in await ws.most_connected(NS)] == [NS, NS]


async def test_the_graph_lives_in_tables_after_checkpoints(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db", sync="never") as db:
        await db.put(NS, "root", 0)
        for i in range(200):
            await db.put(NS, f"c{i}", i, parents=["root"])
            if i % 50 == 49:
                await db.checkpoint()
        graph = db.projection("lineage")
        assert isinstance(graph, LineageState)
        assert graph.tables and not graph.memory
        assert len(await db.descendants((NS, "root"))) == 200
    async with koru.open(tmp_path / "db", readonly=True) as db:
        graph = db.projection("lineage")
        assert isinstance(graph, LineageState) and graph.tables
        assert await db.ancestors((NS, "c7")) == [(NS, "root")]
        # Each side of a node is an entry of its own: a key's ancestry never decodes
        # the children of a parent that has many.
        assert ((NS, "root"), 1) not in graph.cache and ((NS, "c7"), 0) in graph.cache
        assert len(await db.descendants((NS, "root"))) == 200
        [top] = await db.most_connected(NS, 1)
        assert (top.key, top.children) == ("root", 200)
