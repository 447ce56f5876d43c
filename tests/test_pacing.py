"""Background work that gives way to the event loop: the pacer of worker threads,
freeing retired layers in slices, sorted tables and checkpoints written in pieces, and
the background writeback of a segment's last part (tiers latency)."""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import cbor2
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import eventually
from koru.events import Table, TableEncoder, encode_table, key_probe
from koru.nursery import Pacer, _checkpointer
from koru.nursery._pacer import dismantle
from koru.projections import encode_captured

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6)


async def test_a_paced_worker_thread_waits_for_the_loop_each_time_its_budget_is_spent() -> None:
    ticks = 0
    seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    pacer = Pacer(budget=0.0)

    def work() -> None:
        for _ in range(20):
            pacer()
            seen.append(ticks)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.to_thread.run_sync(work)
        nursery.cancel_scope.cancel()
    assert pacer.pauses == 20
    # The loop ran between the thread's slices: the ticker moved on meanwhile.
    assert seen[-1] > seen[0]


async def test_a_pacer_called_from_the_loop_itself_does_not_wait() -> None:
    pacer = Pacer(budget=0.0)
    for _ in range(5):
        pacer()  # would deadlock if it waited for the loop it runs on
    assert pacer.pauses == 0


async def test_dismantle_frees_nested_dicts_in_slices_and_lets_others_run() -> None:
    layers = [{"a": {f"k{i}": bytearray(3) for i in range(50)}, "b": {"x": b"1"}}, {"c": {}}]
    inner = layers[0]["a"]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.lowlevel.checkpoint()
        before = ticks
        await dismantle(layers, step=8)
        nursery.cancel_scope.cancel()
    assert layers == [] and inner == {}
    assert ticks > before + 3  # yielded between slices of 8 of the 53 entries


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.tuples(names, names), st.binary(max_size=20), max_size=60))
def test_a_paced_table_encoder_writes_the_bytes_of_an_unpaced_one(
    model: dict[tuple[str, str], bytes],
) -> None:
    calls = 0

    def pace() -> None:
        nonlocal calls
        calls += 1

    items = [(ns, key, value) for (ns, key), value in model.items()]
    encoder = TableEncoder(reversed(items), pace=pace)
    entries = b"".join(encoder.chunks(size=64))
    pieces = encode_table(items)
    assert [encoder.header(), entries, encoder.index()] == [
        pieces[0],
        b"".join(pieces[1:-1]),
        pieces[-1],
    ]
    assert calls >= 1 or not model


def test_an_unsorted_table_encoder_still_refuses_a_key_twice() -> None:
    encoder = TableEncoder([("n", "k", b"1"), ("n", "j", b"2"), ("n", "k", b"3")])
    try:
        list(encoder.entries())
    except ValueError as exc:
        assert "twice" in str(exc)
    else:
        raise AssertionError("a key given twice was accepted")


def test_a_probe_is_what_a_lookup_by_name_uses() -> None:
    from koru.events import Table

    pieces = encode_table([("n", f"k{i}", b"v%d" % i) for i in range(100)])
    table = Table(b"".join(pieces), "t")
    for i in range(100):
        probe = key_probe("n", f"k{i}")
        assert probe is not None and table.lookup(probe) == table.get("n", f"k{i}") == b"v%d" % i
    probe = key_probe("n", "absent")
    assert probe is not None and table.lookup(probe) is None
    assert key_probe("n", "\ud800") is None  # not valid Unicode: in no table


def test_a_checkpoint_encoded_in_paced_pieces_is_the_same_bytes() -> None:
    captured = {
        "flat": {f"k{i}": i for i in range(2500)},
        "list": [[i, b"x"] for i in range(10)] + [{"a": list(range(3000))}],
        "long": list(range(2999)),
    }
    calls = 0

    def pace() -> None:
        nonlocal calls
        calls += 1

    paced, _ = encode_captured(captured, chunk=100, pace=pace)
    plain, _ = encode_captured(captured)
    body = b"".join(bytes(p) for p in paced[2:])
    assert body == b"".join(bytes(p) for p in plain[2:]) == cbor2.dumps(captured)
    assert calls >= 25 + 30 + 30


async def test_a_checkpoint_written_in_slices_opens_to_what_a_replay_gives(
    tmp_path: Path,
) -> None:
    """More keys than one sorted run, several checkpoints, warm layers retired and
    freed in slices: the state opened from the checkpoint equals a full replay."""
    path = tmp_path / "db"
    async with koru.open(path, sync="os", processes=False) as db:
        db._kv.warm_capacity = 0  # every written layer is retired at once
        for round_ in range(3):
            await db.put_batch([("a", f"k{i}", [round_, i]) for i in range(round_, 9000, 2)])
            await db.put_batch([("b", f"k{i}", i) for i in range(round_ * 100)])
            await db.checkpoint()
        assert db._kv.retired == [] and len(db._kv.tables) >= 1
        live = list(db._kv.all_items())
        digest = await db.digest()
    async with koru.open(path, processes=False) as db:
        assert (await db.stats()).replayed_events == 0
        assert list(db._kv.all_items()) == live and await db.digest() == digest
    os.unlink(path / "checkpoint")
    async with koru.open(path, processes=False) as db:
        assert (await db.stats()).replayed_events > 0
        assert list(db._kv.all_items()) == live and await db.digest() == digest
        assert await db.get("a", "k8999") == [1, 8999]


async def test_a_segment_filling_up_is_synced_in_the_background_before_it_is_sealed(
    tmp_path: Path,
) -> None:
    async with koru.open(
        tmp_path / "db", sync="os", processes=False, segment_size=16 * 1024 * 1024
    ) as db:
        checkpointer = db._checkpointer
        syncs = db._committer.syncs
        value = "x" * 60_000
        for i in range(150):  # past the last 8 MiB of the first segment
            await db.put("n", f"k{i % 10}", value)
        for _ in range(1000):  # the sync runs in a worker thread: wait for it
            await trio.sleep(0.01)
            if checkpointer.writebacks:
                break
        assert checkpointer.writebacks >= 1
        assert db._committer.syncs > syncs


async def test_no_background_writeback_under_sync_always(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db", processes=False, segment_size=16 * 1024 * 1024) as db:
        for i in range(150):
            await db.put("n", f"k{i % 10}", "x" * 60_000)
        await trio.sleep(0.05)
        assert db._checkpointer.writebacks == 0


def test_an_index_read_ahead_paces_itself_and_answers_as_a_lazy_one() -> None:
    """A table's writer reads its index in its worker thread (Table.load_index), giving
    way every 1,024 blocks of each pass; the table then answers every lookup as one whose first
    lookup read the index."""
    rows = [("ns", f"k{i:06}", str(i).encode()) for i in range(20_000)]
    pieces = encode_table(rows)
    ahead, lazy = Table(b"".join(pieces), "t"), Table(b"".join(pieces), "t")
    calls = 0

    def pace() -> None:
        nonlocal calls
        calls += 1

    assert not ahead.indexed
    ahead.load_index(pace)
    assert ahead.indexed and not lazy.indexed
    # Every 1,024 blocks, in each of its two passes (the blocks' starts, their first keys).
    assert calls == 2 * (20_000 // 8 // 1024)
    for ns, key in [("ns", f"k{i:06}") for i in range(0, 20_000, 7)] + [("ns", "k"), ("x", "k1")]:
        assert ahead.get(ns, key) == lazy.get(ns, key)
    assert lazy.indexed


async def test_checkpoints_and_merges_hand_over_tables_whose_index_is_read(
    tmp_path: Path,
) -> None:
    """No put reads a table's index on the event loop: the checkpoint (or merge) that
    wrote the table read it already."""
    async with koru.open(tmp_path / "db", sync="os", processes=False) as db:
        db._kv.max_tables = 2  # merges soon
        merges = 0
        for round_ in range(5):
            await db.put_batch([("a", f"k{i}", round_) for i in range(round_, 3000, 3)])
            await db.checkpoint()
            merges += await db._checkpointer.compact()
            assert db._kv.tables and all(t.indexed for t in db._kv.tables)
        assert merges >= 1
        assert await db.get("a", "k2998") == 4


async def test_a_long_lived_writer_imports_what_checkpoints_need_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in a checkpoint's worker thread amid the puts (numpy's import held the GIL
    for milliseconds, and its objects started a full collection amid the puts), even
    for a database small today: it may grow past the size whose checkpoints need it.
    A read-only handle or one without background processes (a one-shot command) does
    not import it."""
    (tmp_path / "koru_needed_probe.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_checkpointer, "_NEEDED", ("koru_needed_probe",))
    monkeypatch.delitem(sys.modules, "koru_needed_probe", raising=False)
    async with koru.open(tmp_path / "db", processes=False) as db:
        await db.put_batch([("a", f"k{i}", i) for i in range(5000)])
    async with koru.open(tmp_path / "db", readonly=True) as db:
        assert await db.get("a", "k4999") == 4999
    assert "koru_needed_probe" not in sys.modules
    async with koru.open(tmp_path / "new") as db:  # one key: imported all the same
        assert "koru_needed_probe" in sys.modules
        await db.put("a", "k", 2)
    sys.modules.pop("koru_needed_probe")


async def test_the_collector_never_traverses_a_keys_versions(tmp_path: Path) -> None:
    """What grows with the keys (their records, in memory and in warm layers) stays
    untracked by the cyclic collector, whose full collections stall every task for as
    long as they visit."""
    async with koru.open(tmp_path / "db", sync="os", processes=False) as db:
        await db.put_batch([("a", f"k{i}", i) for i in range(500)])
        await db.checkpoint()
        for i in range(300):
            await db.put("a", f"k{i}", -i)
            await db.put("b", f"k{i}", i)
        gc.collect()
        kv = db._kv
        layers = [kv.namespaces] + [layer for layer, _ in kv.warm]
        assert len(layers) == 2 and kv.tables
        for layer in layers:
            for keys in layer.values():
                assert len(keys) >= 300 and not gc.is_tracked(keys)
                assert not any(gc.is_tracked(blob) for blob in keys.values())


async def test_the_tables_of_an_opened_checkpoint_have_their_index_read_in_the_background(
    tmp_path: Path,
) -> None:
    """The scrub after an open reads every table's index in a worker thread first: the
    first put or get of a key in the tables read it on the event loop otherwise (145 ms
    for a million keys). A handle without background processes reads it lazily."""
    async with koru.open(tmp_path / "db", processes=False) as db:
        await db.put_batch([("a", f"k{i}", i) for i in range(3000)])
    async with koru.open(tmp_path / "db", processes=False) as db:
        assert db._kv.tables and not any(t.indexed for t in db._kv.tables)
    async with koru.open(tmp_path / "db") as db:
        await eventually(lambda: all(t.indexed for t in db._kv.tables))
        assert await db.get("a", "k2999") == 2999
