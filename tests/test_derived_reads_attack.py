"""Attacks on the derived read paths (queries, indexes, views, subscriptions): each
must agree, at every moment, with what ``get`` of each key says, whatever arrived
before and in whatever order."""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from _query_model import Bad, answer, expected, shape, typed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock, expire_due

NS = "docs"


async def _fold(sub: koru.Subscription) -> tuple[dict[str, Any], list[koru.KeyChange]]:
    """What a consumer that mirrors the stream holds once it is drained."""
    mirror: dict[str, Any] = {}
    seen = []
    with trio.move_on_after(0.5):
        async for change in sub:
            seen.append(change)
            if change.kind == "put":
                mirror[change.key] = change.value
            else:
                mirror.pop(change.key, None)
    return mirror, seen


async def test_a_late_older_version_from_a_peer_does_not_overwrite_the_stream() -> None:
    """Attack: a peer's older writes (an earlier timestamp) arrive after this node's
    newer ones to the same keys (a put over a put, a delete under a put). The version
    order decides the current value, not arrival, so ``get`` keeps this node's values;
    the subscription stream must agree: a consumer mirroring it ends with what ``get``
    says, each change's ``old`` is the version that was current before it, and a
    resume from position 0 gives the same changes as the live stream."""
    late = StepClock(start=1_900_000_000 * 10**9)
    async with (
        koru.open(":memory:", clock=StepClock(start=2_000_000_000 * 10**9), seed=1) as a,
        koru.open(":memory:", clock=late, seed=2) as b,
    ):
        await b.put(NS, "k", "old-from-b")
        await b.put(NS, "j", "j-from-b")
        await b.delete(NS, "j")
        async with a.subscribe(NS) as live:
            await a.put(NS, "j", "j-from-a")
            first = await a.put(NS, "k", "new-from-a")
            await a.ingest(await b.feed_events(b.node_id))
            truth = {k: await a.get(NS, k) for k in await a.keys(NS)}
            assert truth == {"k": "new-from-a", "j": "j-from-a"}
            mirror, seen = await _fold(live)
        assert mirror == truth
        # The version current before a's put of k: none (b's arrived after it).
        assert seen[1].new == first
        assert seen[1].old is None
        async with a.subscribe(NS, from_position=0) as replayed:
            mirror_all, seen_all = await _fold(replayed)
        assert mirror_all == truth
        assert seen_all[-len(seen) :] == seen


async def _next_cancelled(sub: koru.Subscription) -> koru.KeyChange | None:
    """A consumer's ``__anext__`` under a deadline that has already passed: the change
    if it came without a wait, else None."""
    with trio.CancelScope() as scope:
        scope.cancel()
        return await sub.__anext__()
    return None


async def _keys_through_cancelled_nexts(sub: koru.Subscription, n: int) -> list[str]:
    """The keys of ``n`` changes taken by ``n`` cancelled ``__anext__`` calls, then by
    plain ones for those the cancelled calls did not return."""
    keys = []
    for _ in range(n):
        change = await _next_cancelled(sub)
        if change is not None:
            keys.append(change.key)
    with trio.move_on_after(1):
        while len(keys) < n:
            keys.append((await sub.__anext__()).key)
    return keys


async def test_a_cancelled_next_loses_no_change() -> None:
    """Attack: a consumer waits for the next change under a deadline (``move_on_after``)
    and the deadline fires while the subscription yields to the scheduler after taking
    an event (the replay of ``from_position`` yields on every event, the live queue on
    every 64th). Nothing was returned, so nothing may be lost: iterating on gives every
    change, each once, in order."""
    async with koru.open(":memory:", clock=StepClock()) as db:
        for i in range(3):
            await db.put(NS, f"r{i}", i)
        async with db.subscribe(NS, from_position=0) as sub:
            assert await _keys_through_cancelled_nexts(sub, 3) == ["r0", "r1", "r2"]
        async with db.subscribe(NS) as sub:
            for i in range(130):
                await db.put(NS, f"l{i}", i)
            keys = await _keys_through_cancelled_nexts(sub, 130)
            assert keys == [f"l{i}" for i in range(130)]


async def test_a_view_checkpointed_past_an_expiry_agrees_with_get_after_a_crash(
    tmp_path: Path,
) -> None:
    """Attack: a value with a time to live is read as expired by a view (the clock
    passed its expiry, no tombstone written yet), the views are checkpointed, the
    database crashes (a copy of its directory mid-run: no read floor saved) and opens
    with its clock behind the expiry again. ``get`` and queries then give the value
    (judged by the floor the log gives); the view must too, not keep the expiry it
    judged by a reading the crash forgot."""
    clock = StepClock()
    path, copy = tmp_path / "db", tmp_path / "copy"
    async with koru.open(path, clock=clock, processes=False) as db:
        await db.create_view("v", NS, {})
        await db.put(NS, "k", {"a": 1}, ttl=1.0)
        await db.put(NS, "other", {"a": 2})
        clock.now += 2 * 10**9
        assert [r.key for r in await db.view("v")] == ["other"]
        await db.checkpoint()
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns("*.tmp"))
    clock.now -= 2 * 10**9
    async with koru.open(copy, clock=clock, processes=False) as db:
        rows = [(r.key, r.value) for r in await db.query(NS, {})]
        assert rows == [(k, await db.get(NS, k)) for k in await db.keys(NS)]
        assert [(r.key, r.value) for r in await db.view("v")] == rows


# -- the model test: every derived read against get, whatever happened before ---------

EPOCH = 1_767_225_600 * 10**9
KEYS = ["k0", "k1", "k2", "é", "日本", "a.b", "k\u0001"]
X = [0, 1, -0.0, 0.0, 1.0, 2, math.inf, -math.inf, 10**19, "a", "é", "", None, True, [1]]
xs = st.sampled_from([*X, {"y": 1}])
values = st.one_of(
    st.fixed_dictionaries({"x": xs, "g": st.sampled_from(["p", "q", 1])}),
    st.fixed_dictionaries({"g": st.sampled_from(["p", "q"])}),
    xs,  # not a map at all
)
key = st.sampled_from(KEYS)
who = st.sampled_from("AB")
entries = st.lists(st.tuples(key, values), min_size=1, max_size=3, unique_by=lambda t: t[0])
VIEWS = {
    "rows": {"where": ["gte", "x", 0], "order_by": [["x", "desc"]]},
    "all": {"order_by": [["x", "asc"], ["g", "desc"]]},
    "count": {"aggregate": ["count", "x"], "group_by": "g"},
    "max": {"aggregate": ["max", "x"]},
    "distinct": {"aggregate": ["distinct", "x"], "where": ["ne", "g", "q"]},
}
view_name = st.sampled_from(sorted(VIEWS))
QUERIES: list[dict[str, Any]] = [
    {},
    {"where": ["eq", "x", 0]},
    {"where": ["gte", "x", 0]},
    {"where": ["lt", "x", "b"]},
    {"where": ["in", "x", [1, "a", None]]},
    {"where": ["eq", "g", "p"]},
    {"where": ["and", ["eq", "g", "q"], ["gt", "x", -1]]},
    {"where": ["ne", "x", 1]},
    {"order_by": [["x", "desc"]], "limit": 3},
]
operations = st.one_of(
    st.tuples(st.just("put"), who, key, values),
    st.tuples(st.just("put"), who, key, values),
    st.tuples(st.just("ttl"), who, key, values, st.sampled_from([0.001, 1.0])),
    st.tuples(st.just("batch"), who, entries),
    st.tuples(st.just("batch-ttl"), who, entries, st.sampled_from([0.001, 1.0])),
    st.tuples(st.just("delete"), who, key),
    st.tuples(st.just("sync"), st.sampled_from(["AtoB", "BtoA", "BtoA-reversed"])),
    st.tuples(st.just("index"), who, st.sampled_from(["x", "g"])),
    st.tuples(st.just("drop-index"), st.sampled_from(["x", "g"])),
    st.tuples(st.just("view"), view_name, who, view_name),
    st.tuples(st.just("drop-view"), view_name, who),
    st.tuples(st.just("checkpoint"), who),
    st.tuples(st.just("advance"), who, st.sampled_from([10**6, 2 * 10**9, -(10**9)])),
    st.tuples(st.just("expire"), who),
    st.tuples(st.just("tiers"), st.sampled_from([0, 141, 1 << 30])),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("crash")),
)


async def _drain(sub: koru.Subscription, mirror: dict[str, Any]) -> None:
    """Fold every change delivered so far into ``mirror`` (the clock is trio's mock:
    the deadline passes as soon as every task waits)."""
    while True:
        with trio.move_on_after(1):
            change = await sub.__anext__()
            if change.kind == "put":
                mirror[change.key] = change.value
            else:
                mirror.pop(change.key, None)
            continue
        return


async def _check(db: koru.Database, live: list[Any], label: Any) -> None:
    """Queries, index lookups, views and both streams (replayed from 0, and the live
    one of buffer 2, resumed after each lag) against ``get`` of every key."""
    clock = db._writer._clock  # type: ignore[attr-defined]
    clock.step = 0  # no value expires between the reads compared
    try:
        state = {}
        for k in KEYS:
            with contextlib.suppress(koru.KeyNotFoundError):
                state[k] = await db.get(NS, k)
        assert sorted(await db.keys(NS)) == sorted(state), label
        for q in QUERIES:
            assert await answer(db, q) == expected(q, state), (label, q)
        for info in await db.list_views():
            try:
                got = typed(shape(await db.view(info.name)))
            except koru.InvalidQueryError:
                got = Bad
            assert got == expected(info.query, state), (label, info.name)
        # A stream learns of an expiry only from its tombstone (the expiry process).
        now = db._writer.read_time()
        gone = {k for (ns, k), t in db._kv.expiring.items() if ns == NS and now >= t}
        replayed: dict[str, Any] = {}
        async with db.subscribe(NS, from_position=0) as sub:
            await _drain(sub, replayed)
        try:
            await _drain(live[0], live[1])
        except koru.LaggedError as lag:
            await live[2].__aexit__(None, None, None)
            live[2] = db.subscribe(NS, from_position=lag.position, buffer=2)
            live[0] = await live[2].__aenter__()
            await _drain(live[0], live[1])
        for mirror in (replayed, live[1]):
            assert {k: v for k, v in mirror.items() if k not in gone} == state, label
    finally:
        clock.step = 1000


async def _step(op: tuple[Any, ...], dbs: dict[str, Any], clocks: dict[str, Any]) -> None:
    kind = op[0]
    if kind in ("put", "ttl"):
        await dbs[op[1]].put(NS, op[2], op[3], ttl=op[4] if kind == "ttl" else None)
    elif kind in ("batch", "batch-ttl"):
        ttl = op[3] if kind == "batch-ttl" else None
        await dbs[op[1]].put_batch([(NS, k, v) for k, v in op[2]], ttl=ttl)
    elif kind == "delete":
        if await dbs[op[1]].contains(NS, op[2]):
            await dbs[op[1]].delete(NS, op[2])
    elif kind == "sync":  # key/value events and definitions; reversed: held, released
        s, t = ("A", "B") if op[1] == "AtoB" else ("B", "A")
        events = await dbs[s].feed_events(dbs[s].node_id)
        events += await dbs[s].feed_events(dbs[s].node_id, "perspective")
        if op[1] == "BtoA-reversed":
            events.reverse()
        await dbs[t].ingest(events)
    elif kind == "index":
        await dbs[op[1]].create_index(NS, op[2])
    elif kind == "drop-index":
        with contextlib.suppress(koru.NotFoundError):
            await dbs["A"].drop_index(NS, op[1])
    elif kind == "view":
        await dbs[op[2]].create_view(op[1], NS, VIEWS[op[3]])
    elif kind == "drop-view":
        with contextlib.suppress(koru.NotFoundError):
            await dbs[op[2]].delete_view(op[1])
    elif kind == "checkpoint":
        await dbs[op[1]].checkpoint()
    elif kind == "advance":
        clocks[op[1]].now += op[2]
    elif kind == "expire":  # what the expiry process does, at once
        await expire_due(dbs[op[1]])
    elif kind == "tiers":
        dbs["A"]._kv.warm_capacity = dbs["A"]._kv.hot_capacity = op[1]


async def _run(tmp: Path, ops: list[tuple[Any, ...]]) -> None:
    paths = {"A": tmp / "A", "B": tmp / "B"}
    # One start: equal timestamps on both nodes, the origin breaks the tie.
    clocks = {"A": StepClock(EPOCH), "B": StepClock(EPOCH)}
    sessions: list[list[tuple[Any, ...]]] = [[]]
    for op in ops:
        if op[0] == "crash":  # a copy of the directory mid-run, opened next
            sessions[-1].append(op)
        if op[0] in ("reopen", "crash"):
            sessions.append([])
        else:
            sessions[-1].append(op)
    dbs: dict[str, Any] = {}
    async with koru.open(paths["B"], sync="os", clock=clocks["B"], seed=2, processes=False) as b:
        dbs["B"] = b
        for n, session in enumerate(sessions):
            async with koru.open(
                paths["A"], sync="os", clock=clocks["A"], seed=1, processes=False
            ) as a:
                dbs["A"] = a
                cm = a.subscribe(NS, from_position=0, buffer=2)
                live = [await cm.__aenter__(), {}, cm]
                try:
                    await _check(a, live, ("open", n))
                    for op in session:
                        if op[0] == "crash":
                            copy = tmp / f"crash{n}"
                            shutil.copytree(paths["A"], copy, ignore=_TEMPORARY)
                            paths["A"] = copy
                        else:
                            await _step(op, dbs, clocks)
                            await _check(a, live, op)
                finally:
                    await live[2].__aexit__(None, None, None)


_TEMPORARY = shutil.ignore_patterns("*.tmp")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(operations, min_size=10, max_size=40))
def test_every_derived_read_agrees_with_get(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[Any, ...]]
) -> None:
    """Attack: random puts, ttl puts, batches, deletes and expiries on two nodes, this
    node ingesting the other's events (in order, or reversed: held, then released)
    with equal timestamps on both, index and view definitions from either node created,
    dropped and re-created, checkpoints, tiers squeezed, reopens and crashes (a copy of
    the directory mid-run). After every step: each query (indexed or scanned), each
    view, and each subscription stream (replayed from position 0, and a live one of
    buffer 2 resumed after every lag) agrees with ``get`` of every key."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(_run, tmp_path_factory.mktemp("derived"), ops, clock=clock)
