"""A model-based test: random operation lists against a dict model of the database.

Hypothesis generates a list of operations (writes over a small key space so keys
collide, reads, checkpoints, reopens, audits); one ``trio.run`` executes it against a
real on-disk database. After every operation the database must match the model; at
checkpoints, reopens and audits the live database, a full replay of the log and a
checkpoint plus log tail must agree on the digest and on every version of every key.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import koru
from conftest import digest_of
from koru._loader import Loaded, load
from koru.events import FileStore
from koru.projections import KvState

# Non-ASCII names too (two- and four-byte UTF-8), which take the slow name check.
NAMESPACES = ("a", "ñandú")
KEYS = ("x", "ключ", "🔑")
SPACE = [(ns, key) for ns in NAMESPACES for key in KEYS]
EPOCH = 1_767_225_600 * 10**9


class StepClock:
    """Wall time that advances 1 µs per reading. Each open gets a fresh one, so the
    clock jumps back at every reopen and the restored hybrid logical clock must cover it."""

    def __init__(self) -> None:
        self.now = EPOCH

    def now_ns(self) -> int:
        self.now += 1_000
        return self.now


# -- operations ----------------------------------------------------------------------------

slots = st.sampled_from(SPACE)
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.sampled_from([0, 1, -1, 0.0, -0.0, 1.0, True, False, math.inf, -math.inf])
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.text(min_size=100, max_size=3000)  # values past a 4 KiB read, and across sectors
    | st.binary(max_size=6)
    | st.binary(min_size=1000, max_size=6000),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=6,
)


def typed(value: Any) -> Any:
    """``value`` with every scalar's type made explicit, for exact comparisons: ``==``
    lets 1, 1.0 and True (and 0.0 and -0.0) pass for one another."""
    if type(value) is dict:
        return ("dict", sorted((k, typed(v)) for k, v in value.items()))
    if type(value) is list:
        return ("list", [typed(v) for v in value])
    if type(value) is float:
        return ("float", value.hex())
    return (type(value).__name__, value)


ops = st.one_of(
    st.tuples(st.just("put"), slots, values),
    st.tuples(st.just("put"), slots, values),
    st.tuples(st.just("delete"), slots),
    st.tuples(st.just("batch"), st.lists(st.tuples(slots, values), max_size=4)),
    st.tuples(st.just("bad_put"), slots, st.sampled_from([math.nan, {1, 2}, (1,), 2**64])),
    st.tuples(st.just("get"), slots),
    st.tuples(st.just("checkpoint")),
    st.tuples(st.just("compact")),
    st.tuples(st.just("squeeze")),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("audit")),
)


@attrs.define
class Model:
    """What the database should hold: live values, and every write per key in order."""

    live: dict[tuple[str, str], Any] = attrs.field(factory=dict)
    writes: dict[tuple[str, str], list[tuple[Any, bool]]] = attrs.field(factory=dict)
    #: write id (hex), timestamp and event number of every acknowledged write, in order.
    acks: list[tuple[str, int, int]] = attrs.field(factory=list)
    events: int = 0

    def write(self, slot: tuple[str, str], value: Any, deleted: bool, v: koru.Version) -> None:
        if deleted:
            self.live.pop(slot)
        else:
            self.live[slot] = value
        self.writes.setdefault(slot, []).append((value, deleted))
        self.acks.append((v.write_id, v.timestamp, self.events))


# -- checks --------------------------------------------------------------------------------


async def check_matches_model(db: koru.Database, model: Model) -> None:
    for ns, key in SPACE:
        live = (ns, key) in model.live
        assert await db.contains(ns, key) is live
        if live:
            assert typed(await db.get(ns, key)) == typed(model.live[ns, key])
        else:
            with pytest.raises(koru.KeyNotFoundError):
                await db.get(ns, key)
        history = await db.history(ns, key)
        expected = model.writes.get((ns, key), [])
        assert [(typed(h.value), h.deleted) for h in history] == [
            (typed(v), deleted) for v, deleted in expected
        ]
    for ns in NAMESPACES:
        assert await db.keys(ns) == sorted(k for n, k in model.live if n == ns)
    assert await db.namespaces() == sorted({n for n, _ in model.live})
    stats = await db.stats()
    assert stats.keys == len(model.live)
    assert stats.deleted_keys == len(model.writes) - len(model.live)
    assert stats.versions == sum(len(w) for w in model.writes.values())
    assert stats.events == model.events


async def check_versions(db: koru.Database, model: Model) -> None:
    """Causal links, ids and timestamps of every version; time travel to each of them."""
    by_id = {}
    for ns, key in SPACE:
        previous = None
        for v in await db.history(ns, key):
            assert v.previous == previous
            assert (v.content_id is None) is v.deleted
            previous = v.write_id
            by_id[v.write_id] = v
            if v.deleted:
                with pytest.raises(koru.NoValueAtTimeError):
                    await db.get_at(ns, key, v.timestamp)
            else:
                at = await db.get_at(ns, key, v.timestamp)
                assert (at.write_id, typed(at.value)) == (v.write_id, typed(v.value))
    assert sorted(by_id) == sorted(wid for wid, _, _ in model.acks)
    assert all(by_id[wid].timestamp == ts for wid, ts, _ in model.acks)
    # One writer: timestamps strictly increase from event to event, across reopens too
    # (the writes of one batch share their event's timestamp).
    for (_, ts0, ev0), (_, ts1, ev1) in itertools.pairwise(model.acks):
        assert ts1 > ts0 if ev1 != ev0 else ts1 == ts0


def kv_state(kv: KvState) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    return {(ns, key): [tuple(r) for r in kv.history(ns, key)] for ns, key, _ in kv.all_items()}


def public_state(kv: KvState) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """The projection's versions in the form ``Database.history`` reports them."""

    def hx(b: bytes | None) -> str | None:
        return None if b is None else b.hex()

    return {
        slot: [(hx(r[2]), hx(r[3]), r[0], hx(r[4]), hx(r[1]), r[7]) for r in recs]
        for slot, recs in kv_state(kv).items()
    }


def load_both(path: Path) -> tuple[Loaded, Loaded]:
    store = FileStore(path, readonly=True)
    try:
        full = load(store, use_checkpoint=False)
        tail = load(store, use_checkpoint=True)
    finally:
        store.close()
    return full, tail


def check_loads_agree(full: Loaded, tail: Loaded, model: Model) -> None:
    assert full.from_checkpoint == 0
    assert full.replayed == model.events
    assert tail.from_checkpoint + tail.replayed == model.events
    assert full.kv.digest() == tail.kv.digest()
    assert kv_state(full.kv) == kv_state(tail.kv)
    assert (full.kv.live, full.kv.versions) == (tail.kv.live, tail.kv.versions)
    assert full.feeds.heads == tail.feeds.heads
    assert full.hlc == full.kv.max_hlc
    assert tail.hlc >= full.hlc


async def audit(db: koru.Database, path: Path, model: Model) -> tuple[Loaded, Loaded]:
    """Live state, full replay and checkpoint + tail must agree."""
    full, tail = await trio.to_thread.run_sync(load_both, path)
    check_loads_agree(full, tail, model)
    assert (await db.digest()) == digest_of(full.kv)
    public = {
        (ns, key): [
            (v.write_id, v.content_id, v.timestamp, v.previous, v.origin, v.deleted)
            for v in await db.history(ns, key)
        ]
        for ns, key in SPACE
    }
    assert {slot: h for slot, h in public.items() if h} == public_state(full.kv)
    await check_versions(db, model)
    return full, tail


# -- the runner ----------------------------------------------------------------------------


async def apply(db: koru.Database, op: tuple[Any, ...], model: Model, path: Path) -> None:
    kind = op[0]
    if kind == "put":
        (ns, key), value = op[1], op[2]
        v = await db.put(ns, key, value)
        model.events += 1
        model.write((ns, key), value, False, v)
    elif kind == "delete":
        ns, key = op[1]
        if (ns, key) in model.live:
            v = await db.delete(ns, key)
            assert v.deleted
            model.events += 1
            model.write((ns, key), None, True, v)
        else:
            with pytest.raises(koru.KeyNotFoundError):
                await db.delete(ns, key)
    elif kind == "batch":
        items = [(ns, key, value) for (ns, key), value in op[1]]
        if len({(ns, key) for ns, key, _ in items}) < len(items):
            with pytest.raises(koru.InvalidDataError):
                await db.put_batch(items)
        else:
            versions = await db.put_batch(items)
            assert [(v.namespace, v.key) for v in versions] == [(n, k) for n, k, _ in items]
            assert len({v.timestamp for v in versions}) <= 1
            if items:
                model.events += 1
            for (ns, key, value), v in zip(items, versions, strict=True):
                model.write((ns, key), value, False, v)
    elif kind == "bad_put":
        (ns, key), value = op[1], op[2]
        digest = await db.digest()
        with pytest.raises(koru.InvalidDataError):
            await db.put(ns, key, value)
        assert (await db.digest()) == digest
    elif kind == "get":
        ns, key = op[1]
        if (ns, key) in model.live:
            got = await db.get_versioned(ns, key)
            assert typed(got.value) == typed(model.live[ns, key])
            assert got.write_id == (await db.history(ns, key))[-1].write_id
        else:
            with pytest.raises(koru.KeyNotFoundError):
                await db.get_versioned(ns, key)
    elif kind == "checkpoint":
        await db.checkpoint()
        _, tail = await audit(db, path, model)
        # The checkpoint just written covers everything: nothing is left to replay.
        assert (tail.from_checkpoint, tail.replayed) == (model.events, 0)
    elif kind == "compact":
        # Merge the cold tier's tables (whatever their sizes) and checkpoint: every
        # read must answer as before.
        kv = db._kv
        if len(kv.tables) >= 2:
            kv.max_tables = 1  # merge them all (the background checkpointer may too)
            written = db._checkpointer.written
            await db._checkpointer.compact()
            # The merge, and above it a table for each checkpoint written since it
            # began (its own, and background ones written beside the merge).
            assert len(kv.tables) <= 1 + db._checkpointer.written - written
            kv.max_tables = 12
        await audit(db, path, model)
    elif kind == "squeeze":
        # No warm or hot tier: every read of a key not changed since the last
        # checkpoint searches the tables.
        db._kv.warm_capacity = db._kv.hot_capacity = 0
    elif kind == "audit":
        await audit(db, path, model)
    else:  # pragma: no cover
        raise AssertionError(op)


async def run_ops(path: Path, operations: list[tuple[Any, ...]], checkpoint_every: int) -> None:
    model = Model()
    sessions: list[list[tuple[Any, ...]]] = [[]]
    for op in operations:
        if op[0] == "reopen":
            sessions.append([])
        else:
            sessions[-1].append(op)
    node = None
    digest_before = ""
    for i, session in enumerate(sessions):
        async with koru.open(
            path, sync="os", clock=StepClock(), seed=i, checkpoint_every=checkpoint_every
        ) as db:
            # The node id lives in the directory, whatever the seed of this open.
            assert node in (None, db.node_id)
            node = db.node_id
            if i:
                assert (await db.digest()) == digest_before
                stats = await db.stats()
                assert stats.events == stats.checkpoint_events == model.events
                assert stats.replayed_events == 0
            await check_matches_model(db, model)
            for op in session:
                await apply(db, op, model, path)
                await check_matches_model(db, model)
            await audit(db, path, model)
            digest_before = await db.digest()
        # Closing wrote a checkpoint covering every event.
        full, tail = await trio.to_thread.run_sync(load_both, path)
        check_loads_agree(full, tail, model)
        assert (tail.from_checkpoint, tail.replayed) == (model.events, 0)
        assert digest_of(full.kv) == digest_before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=10, max_size=60), st.sampled_from(["explicit", "background"]))
def test_database_matches_model(operations: list[tuple[Any, ...]], checkpoints: str) -> None:
    if checkpoints == "background":
        # The background checkpointer writes every 2 events. Explicit checkpoints are
        # left out of this mode: they race the background writer on the same temporary
        # file (see test_explicit_checkpoints_do_not_race_the_background_checkpointer).
        every = 2
        operations = [("audit",) if op[0] == "checkpoint" else op for op in operations]
    else:
        every = 100_000
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(run_ops, Path(tmp) / "db", operations, every)


async def test_explicit_checkpoints_do_not_race_the_background_checkpointer(
    tmp_path: Path,
) -> None:
    # With checkpoint_every=1 the background checkpointer is due after every put; an
    # explicit checkpoint() then writes the same checkpoint file at the same time.
    path = tmp_path / "db"
    async with koru.open(path, sync="os", clock=StepClock(), checkpoint_every=1) as db:
        for i in range(50):
            await db.put("a", "x", i)
            await db.checkpoint()
    async with koru.open(path, readonly=True) as db:
        assert await db.get("a", "x") == 49
        stats = await db.stats()
        assert (stats.checkpoint_events, stats.replayed_events) == (50, 0)


def test_model_runner_sees_a_wrong_model() -> None:
    # The checks are not vacuous: a model that forgot a write fails them, and so does one
    # holding a value of another type that == the stored one.
    async def main(path: Path) -> None:
        async with koru.open(path, sync="os", clock=StepClock()) as db:
            await db.put("a", "x", 1)
            with pytest.raises(AssertionError):
                await check_matches_model(db, Model())
        cases = [(1, 1.0), (1, True), (0.0, -0.0), ([1], [1.0]), ({"k": 0}, {"k": False})]
        for i, (right, wrong) in enumerate(cases):
            assert wrong == right
            async with koru.open(path.with_name(f"case{i}"), sync="os", clock=StepClock()) as db:
                version = await db.put("a", "x", right)
                for value, ok in ((right, True), (wrong, False)):
                    model = Model(events=1)
                    model.write(("a", "x"), value, False, version)
                    if ok:
                        await check_matches_model(db, model)
                    else:
                        with pytest.raises(AssertionError):
                            await check_matches_model(db, model)

    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, Path(tmp) / "db")
