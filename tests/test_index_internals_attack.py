"""Attacks on the secondary indexes' packed entries, split buckets and layered maps (the
s-gc rewrite): randomized models against plain-Python references. These held when
written (the h-index review); they stay as regressions.

What must hold: an index lookup (``equal``, ``between``, ``db.query`` with ``eq``,
``in``, ranges and ``order_by``) gives exactly what a full scan gives, for values of
every stored type (-0.0, 1 against 1.0 and True, the 64-bit ends, infinities, empty and
control-character strings, bytes, lists, nested maps, mixed types in one field), across
overwrites, deletes, older writes arriving after newer ones, time to live, batches,
ingest from two peers, index drop and re-create, checkpoints, reopens and replays; the
checkpoint's indexes agree with a rebuild (``kdelta check``); a :class:`PairKeyed` map
agrees with a dict for awkward namespaces and keys, across snapshots and settles."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
from _query_model import cmp, kind

import koru
import koru.projections._layered as layered
from conftest import StepClock
from koru import Query
from koru.projections._filters import Compare, Filter, In, Or
from koru.projections._indexes import Index, Indexes, unpack_entry, write_order
from koru.projections._layered import PairKeyed, Snapshot, pair_of
from koru.projections._order import order_key
from koru.projections._planner import _keys

VALUES: list[Any] = [
    0, -0.0, 0.0, 1, 1.0, True, False, None, 2**64 - 1, -(2**64), 2**63, float(2**64),
    1e308, -1e308, float("inf"), float("-inf"), 2**53 + 1, float(2**53), 0.5, 5, -3,
    "", "a", "b", "é", "\x00", "\U0001f600", "10", "9",
    b"", b"\x00", b"a",
    [], [1], [1.0], [True], [None], [[]], [1, "a"], [2], [{"x": -0.0}],
    {}, {"x": 1}, {"x": 1.0}, {"x": True}, {"a": [1, {"b": None}]}, {"": 0}, {"y": 0},
]  # fmt: skip
OPS = {
    "gt": lambda c: c > 0,
    "gte": lambda c: c >= 0,
    "lt": lambda c: c < 0,
    "lte": lambda c: c <= 0,
}


def _check_index(index: Index, ref: dict[str, tuple[bytes, Any]]) -> None:
    live = {k: v for k, (_, v) in ref.items() if v is not None}
    for k, (order, v) in ref.items():
        got_order, got = unpack_entry(index.entries[k])
        assert got_order == order
        assert got == (None if v is None else order_key(v))
    assert len(index) == len(live)
    for q in VALUES:
        want = {k for k, v in live.items() if kind(v) == kind(q) and cmp(v, q) == 0}
        assert set(index.equal(order_key(q))) == want, q
        for op, holds in OPS.items():
            want = {k for k, v in live.items() if kind(v) == kind(q) and holds(cmp(v, q))}
            assert _keys(index, Compare(op, "v", q)) == want, (op, q)


@pytest.mark.parametrize("seed", range(12))
def test_index_lookups_equal_a_reference_for_every_type(seed: int) -> None:
    """Writes in random order (older ones after newer, from several origins), deletes,
    the same value in another type (1 then 1.0, 0 then -0.0), snapshots and settles of
    the entries between: every lookup equals a plain-Python reference, and so does the
    index restored from its checkpoint."""
    r = random.Random(seed)
    index = Index("ns", "v", pending=False)
    ref: dict[str, tuple[bytes, Any]] = {}
    keys = [f"k{i}" for i in range(12)] + ["0", "9z", "\x00", "\x1f"]
    hlc = 1000
    for step in range(300):
        op, key = r.random(), r.choice(keys)
        if op < 0.05:
            index.entries.snapshot()
            continue
        if op < 0.08:
            index.entries.settle()
            continue
        hlc += 1
        origin, wid = bytes([r.randrange(3)]) * 16, bytes([r.randrange(256)]) * 32
        order = write_order(hlc - r.choice([0, 0, 0, 5, 50]), origin, wid)
        value = None if op < 0.25 else r.choice(VALUES)
        if key not in ref or order > ref[key][0]:
            ref[key] = (order, value)
        index.put(key, order, None if value is None else order_key(value))
        if step % 25 == 0:
            _check_index(index, ref)
    _check_index(index, ref)
    state = Indexes()
    state.definitions[("ns", "v")] = (bytes(56), True)
    state.by_namespace["ns"] = {"v": index}
    captured = state.capture()
    for entry in captured["indexes"]:
        entry[3] = list(entry[3])
    restored = Indexes.restore(cbor2.loads(cbor2.dumps(captured)))
    again = restored.get("ns", "v")
    assert again is not None
    _check_index(again, ref)


NS = "ns"
KEYS = [f"k{i}" for i in range(8)] + ["0", "9", "\x01x"]
FIELDS = ["v", "n.x", "l.0"]


def _doc(r: random.Random) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if r.random() < 0.8:
        doc["v"] = r.choice(VALUES)
    if r.random() < 0.5:
        doc["n"] = {"x": r.choice(VALUES)}
    if r.random() < 0.4:
        doc["l"] = [r.choice(VALUES)]
    return doc


async def _compare(db: koru.Database, r: random.Random, clock: StepClock) -> None:
    """Queries the planner answers from an index against the same filter under a
    one-part ``or`` (which reads every document). The clock stands still meanwhile:
    a key whose time to live passes between the two queries is not a difference."""
    step, clock.step = clock.step, 0
    try:
        for _ in range(12):
            field, q = r.choice(FIELDS), r.choice(VALUES)
            op = r.choice([*OPS, "eq", "in"])
            leaf: Filter = In(field, (q, r.choice(VALUES))) if op == "in" else Compare(op, field, q)
            by = r.choice([None, field, "v"])
            indexed, scanned = Query().where(leaf), Query().where(Or((leaf,)))
            if by is not None:
                indexed, scanned = indexed.order_by(by), scanned.order_by(by)
            a = [(row.key, repr(row.value)) for row in await db.query(NS, indexed)]
            b = [(row.key, repr(row.value)) for row in await db.query(NS, scanned)]
            if by is None:
                a, b = sorted(a), sorted(b)
            assert a == b, (field, op, q, by)
    finally:
        clock.step = step


async def _events(db: koru.Database) -> list[bytes]:
    out: list[bytes] = []
    for origin, agent in await db.feed_heads():
        out += await db.feed_events(origin, agent)
    return out


async def _run(seed: int, path: Path) -> None:
    r = random.Random(seed)
    clock = StepClock(step=10**7)
    peers = []
    for i in range(2):
        cm = koru.open(":memory:", clock=StepClock(step=10**7 + i), seed=100 + i)
        peers.append((cm, await cm.__aenter__()))
    cm = koru.open(path, clock=clock, sync="never")
    db = await cm.__aenter__()
    try:
        for _ in range(120):
            x = r.random()
            if x < 0.35:
                who = r.choice([None, 0, 1])
                target = db if who is None else peers[who][1]
                ttl = r.choice([None, None, None, 0.05, 0.5])
                key = r.choice(KEYS)
                if r.random() < 0.15 and await target.contains(NS, key):
                    await target.delete(NS, key)
                elif r.random() < 0.4:
                    picked = r.sample(KEYS, r.randrange(1, 4))
                    await target.put_batch([(NS, k, _doc(r)) for k in picked], ttl=ttl)
                else:
                    await target.put(NS, key, _doc(r), ttl=ttl)
            elif x < 0.5:
                events = await _events(peers[r.randrange(2)][1])
                r.shuffle(events)
                await db.ingest(events[: r.randrange(len(events) + 1)])
            elif x < 0.6:
                field = r.choice(FIELDS)
                if {i.field for i in await db.list_indexes(NS)} >= {field} and r.random() < 0.5:
                    await db.drop_index(NS, field)
                else:
                    await db.create_index(NS, field)
            elif x < 0.65:
                await db.checkpoint()
            elif x < 0.7:
                await cm.__aexit__(None, None, None)
                if r.random() < 0.3:
                    (path / "checkpoint").unlink(missing_ok=True)
                cm = koru.open(path, clock=clock, sync="never")
                db = await cm.__aenter__()
            elif x < 0.75:
                clock.now += r.choice([10**8, 10**9])
            else:
                await _compare(db, r, clock)
        for _, peer in peers:
            events = await _events(peer)
            r.shuffle(events)
            await db.ingest(events)
        await _compare(db, r, clock)
        await db.checkpoint()
    finally:
        await cm.__aexit__(None, None, None)
        for peer_cm, _ in reversed(peers):
            await peer_cm.__aexit__(None, None, None)


@pytest.mark.parametrize("seed", range(10))
def test_indexed_queries_equal_full_scans_across_peers_ttl_and_reopens(
    seed: int, tmp_path: Path
) -> None:
    """Three nodes write every type of value to the same keys (puts, batches, deletes,
    times to live); one ingests the others' events shuffled and in parts, creates and
    drops indexes, checkpoints, reopens and replays. Every indexed query equals the same
    query read by a full scan, and ``kdelta check`` finds the checkpoint's indexes equal
    to a rebuild."""
    from koru._audit import audit_checkpoint
    from koru.events import FileStore

    trio.run(_run, seed, tmp_path / "db")
    store = FileStore(tmp_path / "db", readonly=True)
    try:
        problems, _ = audit_checkpoint(store)
    finally:
        store.close()
    assert problems == []


NAMES = ["a", "ab", "0", "1a", "\x00", "\x01", "\x1f", "\x00\x00", "a\x00", "\x02ab", "n", "s"]
NAMES += ["x" * 1024, "x" * 1023, "é", "\U0001f600"]


@pytest.mark.parametrize("seed", range(40))
def test_pair_keyed_equals_a_dict(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pairs whose joined form could be confused (a namespace that is a prefix of
    another's joined form, control characters, digits first, the longest names), set,
    popped (missing ones too), deleted, snapshotted and settled (with the settle bound
    at 0, 3 and its default): lookups, listing, ``at_most`` and each snapshot taken
    since the last settle agree with a plain dict."""
    r = random.Random(seed)
    monkeypatch.setattr(layered, "SETTLE_MAX", r.choice([0, 3, 4096]))
    pk: PairKeyed[int] = PairKeyed()
    ref: dict[tuple[str, str], int] = {}
    snaps: list[tuple[Snapshot[Any, int], dict[tuple[str, str], int]]] = []
    for _ in range(500):
        op, key = r.random(), (r.choice(NAMES), r.choice(NAMES))
        if op < 0.35:
            value = r.randrange(100)
            if r.random() < 0.5:
                pk[key] = value
            else:
                pk.put_known(key, value, key in pk)
            ref[key] = value
        elif op < 0.5:
            assert pk.pop(key, None) == ref.pop(key, None)
        elif op < 0.6:
            if key in ref:
                assert pk.pop(key) == ref.pop(key)
            else:
                with pytest.raises(KeyError):
                    pk.pop(key)
                with pytest.raises(KeyError):
                    del pk[key]
        elif op < 0.67:
            snaps.append((pk.snapshot(), dict(ref)))
        elif op < 0.72 and snaps:
            snap, want = r.choice(snaps)
            assert {pair_of(j): v for j, v in snap.items()} == want
            assert len(snap) == len(want)
        elif op < 0.77:
            pk.settle()  # (the last snapshot is spent: older ones are not read again)
            snaps.clear()
        elif op < 0.85:
            bound = r.randrange(100)
            want_due = sorted((k, v) for k, v in ref.items() if v <= bound)
            assert sorted(pk.at_most(bound)) == want_due
        else:
            assert pk.get(key) == ref.get(key)
            assert (key in pk) == (key in ref)
            assert len(pk) == len(ref)
            assert sorted(pk.items()) == sorted(ref.items())
    for snap, want in snaps:
        assert {pair_of(j): v for j, v in snap.items()} == want
