"""A checkpoint's capture of the keys with a time to live and of secondary indexes:
O(1) on the event loop (a snapshot of layered maps, see ``projections/_layered.py``),
the entries listed later by the encoder in slices, in the same format as before, and
never changed by the writes that land between the slices."""

from __future__ import annotations

import contextlib
import gc
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
from test_slicer_attack import checkpoint_beside, every_pace_yields

import koru
from conftest import StepClock, new_index
from koru import F, Query
from koru._audit import audit_checkpoint
from koru.nursery import CHECKPOINT_FILE
from koru.projections import (
    KvState,
    LazyList,
    decode_checkpoint,
    encode_captured,
    open_tables,
)
from koru.projections._indexes import Indexes, from_order_key
from koru.projections._layered import LayeredDict, PairKeyed
from koru.projections._order import order_key
from koru.projections._workspaces import WorkspaceEntry, WorkspaceState

NS = "docs"


def traced_lines(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Python lines run by ``fn()`` (its callees' included), and its result."""
    count = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    # No collection while tracing: one would run whatever finalizers and collector
    # callbacks earlier tests left, and count their lines (a run of the whole suite
    # counted 39 lines for the small capture, 30 for the large).
    enabled = gc.isenabled()
    gc.disable()
    sys.settrace(tracer)
    try:
        result = fn()
    finally:
        sys.settrace(None)
        if enabled:
            gc.enable()
    return count, result


def kv_with_ttl_keys(n: int) -> KvState:
    kv = KvState()
    for i in range(n):
        kv.expiring[(NS, f"k{i}")] = 10**18 + i
    return kv


def indexes_with_entries(n: int) -> Indexes:
    state, index = new_index(NS, "v")
    for i in range(n):
        value = None if i % 10 == 0 else order_key([i % 97, {"x": i}] if i % 3 == 0 else i)
        index.put(f"k{i}", (i + 1).to_bytes(56, "big"), value)
    return state


def test_capturing_keys_with_a_ttl_does_no_work_per_key() -> None:
    """The capture of 20,000 keys with a time to live runs exactly the Python lines
    the capture of 50 runs (none per key: it was a list built per key, 69-91 ms for
    200,000 on the event loop), and copies no map: the snapshot holds the live layer
    itself, frozen."""
    small, large = kv_with_ttl_keys(50), kv_with_ttl_keys(20_000)
    top = large.expiring._top
    lines_small, _ = traced_lines(small.capture)
    lines_large, captured = traced_lines(large.capture)
    assert lines_large == lines_small
    listed = captured["expiring_at"]["keys"]
    assert type(listed) is LazyList and len(listed) == 20_000
    assert len(captured["expiring_at"]["times"]) == 20_000
    assert listed.source.layers[0] is top  # frozen, not copied
    assert large.expiring._top is not top  # the writes go to a new layer


def test_capturing_an_index_does_no_work_per_entry() -> None:
    """The capture of an index of 20,000 entries runs exactly the Python lines the
    capture of one of 50 runs (it was a list built per entry, 227-262 ms for 200,000)."""
    small, large = indexes_with_entries(50), indexes_with_entries(20_000)
    lines_small, _ = traced_lines(small.capture)
    lines_large, captured = traced_lines(large.capture)
    assert lines_large == lines_small
    entries = captured["indexes"][0][3]
    assert type(entries) is LazyList and len(entries) == 20_000


def workspaces_with(n: int) -> WorkspaceState:
    state = WorkspaceState()
    for i in range(n):
        stamp = (i + 1, bytes(16), i.to_bytes(32, "big"))
        state.entries[f"ws{i:06d}"] = WorkspaceEntry(stamp, stamp if i % 7 == 0 else None)
    return state


def test_capturing_workspaces_lists_no_entry_on_the_loop() -> None:
    """The capture of 20,000 workspaces runs the Python lines the capture of 50 runs
    (a list built per workspace, sorted, was 0.5 s for 200,000 on the event loop;
    h-ws); encoded, it is byte for byte that list, and a workspace created after the
    capture is not in it."""
    small, large = workspaces_with(50), workspaces_with(20_000)
    old = [
        [name, *(e.created or (None,) * 3), *(e.dropped or (None,) * 3)]
        for name, e in sorted(large.entries.items())
    ]
    lines_small, _ = traced_lines(small.capture)
    lines_large, captured = traced_lines(large.capture)
    assert lines_large == lines_small
    assert type(captured) is LazyList and len(captured) == 20_000
    large.entries["aaa-created-later"] = WorkspaceEntry((1, bytes(16), bytes(32)), None)
    old_bytes = b"".join(bytes(p) for p in encode_captured({"w": old}, chunk=64)[0])
    new_bytes = b"".join(bytes(p) for p in encode_captured({"w": captured}, chunk=64)[0])
    assert new_bytes == old_bytes
    restored = WorkspaceState.restore(cbor2.loads(new_bytes[8 + 32 :])["w"])
    assert restored.entries == {k: v for k, v in large.entries.items() if k[0] != "a"}
    assert restored.gone == {k for k, v in restored.entries.items() if v.dropped}


def old_index_capture(state: Indexes) -> dict[str, Any]:
    """What ``Indexes.capture`` returned before the snapshots (lists built at once)."""
    definitions = [[ns, p, o, c] for (ns, p), (o, c) in state.definitions.items()]
    indexes = []
    for ns, paths in state.by_namespace.items():
        for p, index in paths.items():
            entries = [
                [k, order] if v is None else [k, order, from_order_key(v)]
                for k, (order, v) in index.items()
            ]
            indexes.append([ns, p, index.pending, entries])
    return {"definitions": definitions, "indexes": indexes}


def test_the_checkpoint_bytes_are_the_ones_lists_gave() -> None:
    """Encoded, a capture with lazy lists is byte for byte the capture the lists built
    at once gave, and restores the same state (the keys with a ttl as two columns, their
    keys as the map holds them and their times)."""
    state = indexes_with_entries(3_000)
    kv = kv_with_ttl_keys(3_000)
    old = {
        "indexes": old_index_capture(state),
        "expiring_at": {
            "keys": [chr(len(ns)) + ns + k for (ns, k), _ in kv.expiring.items()],
            "times": [t for _, t in kv.expiring.items()],
        },
    }
    new = {"indexes": state.capture(), "expiring_at": kv.capture()["expiring_at"]}
    old_bytes = b"".join(bytes(p) for p in encode_captured(old, chunk=64)[0])
    new_bytes = b"".join(bytes(p) for p in encode_captured(new, chunk=64)[0])
    assert new_bytes == old_bytes
    decoded = cbor2.loads(old_bytes[8 + 32 :])
    restored = Indexes.restore(decoded["indexes"])
    assert old_index_capture(restored) == old_index_capture(state)


def test_an_index_checkpoint_lists_the_values_written() -> None:
    """The checkpoint's index entries are the values written, each with its own type
    (1 and 1.0, 0.0 and -0.0 share a bucket and stay what they were), in the order the
    keys were first written, whatever the index keeps in memory; the keys with a ttl
    too. The rows expected here are built from the writes, not read from the index."""
    written: list[Any] = [
        1, 1.0, -0.0, 0.0, True, False, None, "s", b"b", 2**70, float(2**70), -3.5,
        [1, "x", [2.0]], {"a": 1, "b": [None]}, {}, [], "",
    ]  # fmt: skip
    state, index = new_index(NS, "v")
    rows: dict[str, list[Any]] = {}
    for i in range(400):
        key, order = f"k{i % 150}", (i + 1).to_bytes(56, "big")
        if i % 11 == 0:
            index.put(key, order, None)
            rows[key] = [key, order]
        else:
            v = written[i % len(written)]
            index.put(key, order, order_key(v))
            rows[key] = [key, order, v]
    kv = KvState()
    ttl_rows = {}
    for i in range(300):
        pair = (f"\x00n{i % 3}", f"k{i % 120}")
        kv.expiring[pair] = 10**12 + i
        ttl_rows[pair] = [*pair, 10**12 + i]
        if i % 13 == 0:
            kv.expiring.pop(pair)
            del ttl_rows[pair]
    expected = {
        "indexes": {"definitions": state.capture()["definitions"],
                    "indexes": [[NS, "v", False, list(rows.values())]]},
        "expiring_at": {"keys": [chr(len(n)) + n + k for n, k, _ in ttl_rows.values()],
                        "times": [t for _, _, t in ttl_rows.values()]},
    }  # fmt: skip
    got = {"indexes": state.capture(), "expiring_at": kv.capture()["expiring_at"]}
    want_bytes = b"".join(bytes(p) for p in encode_captured(expected, chunk=64)[0])
    got_bytes = b"".join(bytes(p) for p in encode_captured(got, chunk=64)[0])
    assert got_bytes == want_bytes
    listed = list(got["indexes"]["indexes"][0][3])
    assert [type(r[2]) for r in listed if len(r) == 3] == [
        type(r[2]) for r in rows.values() if len(r) == 3
    ]


def test_a_layered_dict_and_its_snapshots_agree_with_a_dict() -> None:
    """Random sets, removals, snapshots and settles: the mapping always equals a plain
    dict given the same changes, and each snapshot, listed after more changes (up to
    the next snapshot or settle, which may retire its layers), holds exactly the
    entries of its moment. Retired layers are emptied at once, as the shell's
    ``dismantle`` does: nothing still in use may be among them."""
    rng = random.Random(7)
    live: LayeredDict[int, int] = LayeredDict()
    model: dict[int, int] = {}
    taken: tuple[Any, dict[int, int]] | None = None
    settled = listed = 0

    def finish() -> None:
        nonlocal taken, listed
        if taken is not None:
            snapshot, expected = taken
            if rng.random() < 0.8:  # listed by its checkpoint (which merges its layers)
                assert len(snapshot) == len(expected)
                assert dict(snapshot.items()) == expected
                assert len(list(snapshot.items())) == len(expected)  # each entry once
                listed += 1
            taken = None

    def dismantle() -> None:
        for layer in live.retired:
            layer.clear()
        live.retired.clear()

    for step in range(30_000):
        key = rng.randrange(300 if step < 15_000 else 6_000)
        roll = rng.random()
        if roll < 0.55:
            live[key] = model[key] = step
        elif roll < 0.85:
            assert live.pop(key, None) == model.pop(key, None)
        elif roll < 0.985:
            assert (key in live) == (key in model)
            assert live.get(key) == model.get(key)
        elif roll < 0.99:  # the expiry process's question: the entries due by a time
            bound = rng.randrange(step + 1)
            due = [(k, v) for k, v in model.items() if v <= bound]
            assert sorted(live.at_most(bound)) == sorted(due)
            assert live.count_at_most(bound) == len(due)
        elif roll < 0.995:
            finish()
            taken = (live.snapshot(), dict(model))
            dismantle()
        else:
            finish()
            live.settle()  # its checkpoint is durable
            settled += not live._below
            dismantle()
        assert len(live) == len(model) and bool(live) == bool(model)
    finish()
    assert dict(live.items()) == model and set(live) == set(model)
    assert len(live._below) <= 12 and settled > 5 and listed > 20


def observed(db: koru.Database) -> tuple[Any, ...]:
    """The keys with a time to live, the index's entries and the digest."""
    index = db._writer._projections["indexes"].get(NS, "v")  # type: ignore[attr-defined]
    assert index is not None
    return (dict(db._kv.expiring.items()), dict(index.items()), db._kv.digest())


async def test_puts_deletes_and_expiries_between_the_slices_of_a_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: puts with and without a time to live, deletions and expiries land
    between every two slices of a checkpoint of keys with a time to live and of an
    index. What must hold: the checkpoint written holds the state of the moment of
    capture (the snapshot never changed), it agrees with a replay of the log to its
    cursors (the audit restores it), and a reopen gives the state a rebuild from the
    log gives."""
    slicers = every_pace_yields(monkeypatch)
    clock = StepClock()
    path = tmp_path / "db"
    at_capture: list[tuple[Any, ...]] = []
    async with koru.open(path, sync="os", clock=clock, processes=False) as db:
        await db.create_index(NS, "v")
        for i in range(600):
            await db.put(NS, f"k{i}", {"v": i % 7}, ttl=0.5 if i % 2 else None)
        await db.checkpoint()  # layers below the top from here on
        for i in range(0, 600, 5):
            await db.put(NS, f"k{i}", {"v": -i}, ttl=60.0)
        landed = expired = 0
        # The state at capture, copied from the live maps (not from the snapshot:
        # listing it here would merge its layers before the writes below land).
        async with checkpoint_beside(db, lambda _: at_capture.append(observed(db)[:2])) as done:
            i = 0
            while not done.is_set():
                key = f"k{(i * 37) % 700}"
                op = i % 4
                if op == 0:
                    await db.put(NS, key, {"v": i}, ttl=30.0)
                elif op == 1:
                    await db.put(NS, key, {"v": [i, "x"]})
                elif op == 2:
                    with contextlib.suppress(koru.KeyNotFoundError):
                        await db.delete(NS, key)
                else:
                    gone = f"k{(i * 11) % 600 | 1}"
                    if db._writer.expire(NS, gone, clock.now + 10**12):
                        expired += 1
                        await db._writer.acknowledge()
                landed += 1
                i += 1
                await trio.lowlevel.checkpoint()
        assert landed > 50 and expired > 5 and slicers[-1].pauses > 5
        # The checkpoint holds the state of the moment of capture.
        written = decode_checkpoint(db._store.read_file(CHECKPOINT_FILE) or b"")
        kv = KvState.restore(open_tables(written.sections["kv"][1], db._store.open_table))
        indexes = Indexes.restore(written.sections["indexes"][1])
        index = indexes.get(NS, "v")
        assert index is not None and not index.pending
        assert (dict(kv.expiring.items()), dict(index.items())) == at_capture[0]
        # ... and agrees with a replay of the log to its cursors. (The audit's replay
        # never fills an index, so it cannot judge that section.)
        problems, _ = audit_checkpoint(db._store)
        assert [p for p in problems if "'indexes'" not in p] == []
        for i in range(100):  # more writes on top of the snapshot's layers
            await db.put(NS, f"k{i * 3}", {"v": i}, ttl=1.0 if i % 2 else None)
        expected = observed(db)
        assert expected[0] and expected[1]
    async with koru.open(path, clock=StepClock(clock.now), processes=False) as db:
        stats = await db.stats()
        assert stats.checkpoint_ignored is None and not stats.projections_rebuilt
        assert observed(db) == expected
    (path / CHECKPOINT_FILE).unlink()
    async with koru.open(path, clock=StepClock(clock.now), processes=False) as db:
        await db.query(NS, Query().where(F("v") == 1))  # a replayed index is filled
        assert observed(db) == expected


def test_keys_with_a_ttl_due_by_a_time_are_found_across_layers() -> None:
    """``PairKeyed.at_most`` (the expiry process's and queries' question) gives the
    pairs whose time is at most the bound, as a scan of :meth:`items` would: a newer
    layer's value or removal hides an older layer's entry."""
    expiring: PairKeyed[int] = PairKeyed()
    for i in range(1000):
        expiring[("ns", f"k{i}")] = i
    expiring.snapshot()
    expiring[("ns", "k1")] = 5000  # renewed: no longer due
    del expiring[("ns", "k2")]  # expired and recorded
    expiring[("other", "k2")] = 3  # a new key due
    due = sorted(expiring.at_most(9))
    assert due == sorted((p, t) for p, t in expiring.items() if t <= 9)
    assert [p for p, _ in due] == [("ns", f"k{i}") for i in (0, 3, 4, 5, 6, 7, 8, 9)] + [
        ("other", "k2")
    ]
    assert expiring.count_at_most(9) == len(due)


def test_keys_with_a_ttl_restore_from_their_columns_and_bad_ones_are_refused() -> None:
    """A checkpoint's keys with a time to live are loaded column by column (an insert
    per key was about 2 s of opening 1,000,000 of them, and decoding a row each about
    1 s): the state restored holds every key and time, from the columns written now and
    from the rows older checkpoints hold; any other shape is refused as malformed
    (ValueError), so that section is rebuilt from the log rather than misread."""
    kv = kv_with_ttl_keys(3_000)
    kv.expiring[("other", "k")] = 5
    data, _ = encode_captured({"kv": kv.capture()}, chunk=64)
    section = cbor2.loads(b"".join(bytes(p) for p in data)[8 + 32 :])["kv"]
    restored = KvState.restore(open_tables(section, lambda name: pytest.fail(name)))
    assert dict(restored.expiring.items()) == dict(kv.expiring.items())
    assert len(restored.expiring) == 3_001
    old = {k: v for k, v in section.items() if k != "expiring_at"}
    old["expiring"] = [[ns, k, t] for (ns, k), t in kv.expiring.items()]
    assert dict(KvState.restore(old).expiring.items()) == dict(kv.expiring.items())
    for bad in (
        [["ns", "k"]],
        [["ns", "k", 1, 2]],
        [["ns", b"k", 1]],
        [[1, "k", 1]],
        [["ns", "k", True]],
        [["ns", "k", 1.5]],
        [("ns", "k", 1)],
        [["ns", "k", 1], "row"],
        {"ns": 1},
    ):
        with pytest.raises(ValueError):
            KvState.restore({**old, "expiring": bad})
    for columns in (
        {"keys": ["\x02nsk"], "times": []},
        {"keys": ["\x02nsk"], "times": [True]},
        {"keys": ["\x02nsk"], "times": [1.0]},
        {"keys": [b"\x02nsk"], "times": [1]},
        {"keys": [""], "times": [1]},
        {"keys": ["\x00k"], "times": [1]},  # an empty namespace
        {"keys": ["\x02ns"], "times": [1]},  # an empty key
        {"keys": ["\x09ns"], "times": [1]},  # shorter than its namespace says
        {"keys": ["\x02nsk"]},
        {"keys": ["\x02nsk"], "times": [1], "more": []},
        [["\x02nsk"], [1]],
    ):
        with pytest.raises(ValueError):
            KvState.restore({**section, "expiring_at": columns})


async def test_a_checkpoint_notes_the_tables_it_names_as_a_walk_finds_them(
    tmp_path: Path,
) -> None:
    """The names of the tables a decoded checkpoint refers to are noted while decoding
    (what opening keeps from clean-up and waits for), and are exactly the ones a walk
    of its sections finds; rows listed by the thousand are skipped by that walk whole."""
    from koru.projections import table_names

    async with koru.open(tmp_path / "db", sync="never") as db:
        for i in range(2_000):
            await db.put(NS, f"k{i}", {"v": i}, ttl=3600)
        await db.checkpoint()
        await db.put(NS, "more", 1)
        await db.checkpoint()
    checkpoint = decode_checkpoint((tmp_path / "db" / CHECKPOINT_FILE).read_bytes())
    assert checkpoint.tables and checkpoint.tables == table_names(checkpoint.sections)
    assert len(checkpoint.sections["kv"][1]["expiring_at"]["keys"]) == 2_000
    async with koru.open(tmp_path / "db", readonly=True) as db:
        assert await db.get(NS, "k1999") == {"v": 1999}
