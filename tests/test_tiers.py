"""The tiers of the key/value state: memory (what changed since the last checkpoint),
warm (written lately), hot (read lately from tables), cold (tables on disk, merged by
the consolidation process); every read answers the same whichever tier holds the key."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

import koru
from conftest import eventually, full_replay
from koru._lifecycle import Lifecycle
from koru.events import (
    SLEEP,
    ConsolidationEvent,
    OsDisk,
    PutEvent,
    Table,
    decode_event,
    encode_event,
    encode_table,
    encode_value,
    put_value,
    table_name,
)
from koru.events._frame import RECORD_HEADER_SIZE, encode_record, parse_record
from koru.events._store import unpack_location
from koru.nursery._checkpointer import LAG, VERSION_SHARE
from koru.projections import KvState
from koru.projections._kv import LAST_PLACE, PLACE, RECORD_SIZE
from koru.projections._merging import merge_tables

names = st.sampled_from(["a", "b", "c", "d"])
tables_st = st.lists(
    st.dictionaries(st.tuples(names, names), st.binary(min_size=1, max_size=8), max_size=8),
    min_size=1,
    max_size=5,
)


def table_of(model: dict[tuple[str, str], bytes]) -> Table:
    pieces = encode_table((ns, k, v) for (ns, k), v in model.items())
    return Table(b"".join(pieces), table_name(pieces))


@settings(max_examples=200)
@given(tables=tables_st)
def test_a_merge_keeps_the_newest_tables_entry_for_each_key(
    tables: list[dict[tuple[str, str], bytes]],
) -> None:
    expected: dict[tuple[str, str], bytes] = {}
    for model in reversed(tables):  # oldest first: newer ones overwrite
        expected.update(model)
    merged = list(merge_tables([table_of(m) for m in tables]))
    assert {(ns, k): v for ns, k, v in merged} == expected
    assert [(ns, k) for ns, k, _ in merged] == sorted(
        expected, key=lambda s: (s[0].encode(), s[1].encode())
    )


async def test_every_read_of_a_key_counts_once_toward_its_fitness(tmp_path: Path) -> None:
    """A get counts one read of its key, whichever tier answers (a cold search that
    promotes the key, the hot tier, a deleted key's record there), and only a get:
    the lookups of a put's fold count nothing. Distillation ranks keys by it."""
    path = tmp_path / "db"
    async with koru.open(path, sync="os", processes=False) as db:
        for i in range(20):
            await db.put("users", f"u{i}", {"i": i})
        await db.delete("users", "u5")
        await db.checkpoint()
    async with koru.open(path, sync="os", processes=False) as db:
        assert await db.get("users", "u3") == {"i": 3}  # cold, promoted, counted
        assert db._kv.fitness() == {("users", "u3"): 1}
        for _ in range(4):
            assert await db.get("users", "u3") == {"i": 3}  # hot
        for _ in range(3):
            with pytest.raises(koru.KeyNotFoundError):
                await db.get("users", "u5")  # its tombstone: cold once, then hot
        assert db._kv.fitness() == {("users", "u3"): 5, ("users", "u5"): 3}
        await db.put("users", "u4", "new")  # the fold's lookups: not a read
        assert db._kv.fitness() == {("users", "u3"): 5, ("users", "u5"): 3}


async def test_each_tier_answers_and_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, sync="os", processes=False) as db:
        for i in range(200):
            await db.put("users", f"u{i}", {"i": i})
        tiers = (await db.stats()).tiers
        assert tiers.memory_bytes > 0 and tiers.cold_tables == 0
        await db.checkpoint()  # memory becomes a table, still readable from memory
        tiers = (await db.stats()).tiers
        assert (tiers.memory_bytes, tiers.cold_tables) == (0, 1) and tiers.warm_bytes > 0
        assert await db.get("users", "u7") == {"i": 7}
        assert (await db.stats()).tiers.warm_hits >= 1
    async with koru.open(path, sync="os", processes=False) as db:
        tiers = (await db.stats()).tiers
        assert (tiers.memory_bytes, tiers.warm_bytes, tiers.cold_tables) == (0, 0, 1)
        assert await db.get("users", "u9") == {"i": 9}  # cold: searched, then promoted
        assert await db.get("users", "u9") == {"i": 9}  # hot
        tiers = (await db.stats()).tiers
        assert tiers.cold_reads == 1 and tiers.hot_hits >= 1 and tiers.hot_bytes > 0
        await db.put("users", "u9", "changed")  # copied up to memory, dropped from hot
        assert await db.get("users", "u9") == "changed"
        assert (await db.stats()).tiers.hot_bytes == 0
        assert len(await db.keys("users")) == 200
        assert await db.namespaces() == ["users"]


async def test_consolidation_merges_tables_and_records_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "db"
    # Built without processes: under the mock clock, time jumps while a checkpoint is
    # written in a worker thread, and the process would run in the middle of this.
    async with koru.open(path, sync="os", processes=False) as db:
        for round_ in range(8):
            await db.put_batch([("ns", f"k{i}", [round_, i]) for i in range(50)])
            await db.checkpoint()
    clock = koru.TrioClock()
    async with koru.open(path, sync="os", clock=clock, processes={"consolidation": 60}) as db:
        db._kv.max_tables = 3
        before = (await db.stats()).tiers.cold_tables
        assert before >= 4
        await trio.sleep(61)
        # The merge runs in a worker thread, while which the mock clock may jump on.
        for _ in range(100_000):
            [info] = [p for p in await db.processes() if p.name == "consolidation"]
            if info.runs:
                break
            await trio.sleep(0.001)
        tiers = (await db.stats()).tiers
        assert tiers.compactions >= 1 and tiers.cold_tables <= 3
        recorded = [decode_event(e) for e in await db.feed_events(db.node_id, SLEEP)]
        assert recorded and all(isinstance(e, ConsolidationEvent) for e in recorded)
        assert recorded[-1].tables == tiers.cold_tables
        assert await db.get("ns", "k3") == [7, 3]
        expected = {f"k{i}": [7, i] for i in range(50)}
    names = {p.stem for p in (path / "tables").glob("*.tab")}
    async with koru.open(path, sync="os", processes=False) as db:
        assert {t.name for t in db._kv.tables} == names  # and nothing else on disk
        assert {k: await db.get("ns", k) for k in await db.keys("ns")} == expected


async def test_orphan_tables_are_removed_when_opened_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, processes=False) as db:
        await db.put("a", "b", 1)
    orphan = path / "tables" / ("0" * 32 + ".tab")
    orphan.write_bytes(b"left by a crash between a table and its checkpoint")
    async with koru.open(path, readonly=True) as db:  # a reader changes nothing
        assert await db.get("a", "b") == 1
    assert orphan.exists()
    async with koru.open(path, processes=False) as db:
        assert await db.get("a", "b") == 1
    assert not orphan.exists()


async def test_a_missing_table_rebuilds_from_the_log(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, processes=False) as db:
        for i in range(20):
            await db.put("a", f"k{i}", i)
        digest = await db.digest()
    for table in (path / "tables").glob("*.tab"):
        os.unlink(table)
    async with koru.open(path, processes=False) as db:
        stats = await db.stats()
        assert "kv" in stats.projections_rebuilt
        assert await db.digest() == digest and await db.get("a", "k5") == 5


@pytest.mark.parametrize("capacity", [0, 600])
async def test_tiny_tiers_still_answer_everything(tmp_path: Path, capacity: int) -> None:
    async with koru.open(tmp_path / "db", sync="os", processes=False) as db:
        db._kv.warm_capacity = db._kv.hot_capacity = capacity
        model = {}
        for round_ in range(5):
            for i in range(30):
                if (i + round_) % 7:
                    await db.put("n", f"k{i}", [round_, i])
                    model[f"k{i}"] = [round_, i]
            await db.checkpoint()
        for key, value in model.items():
            assert await db.get("n", key) == value
            assert (await db.history("n", key))[-1].value == value
        assert await db.keys("n") == sorted(model)


async def test_feed_locations_move_to_tables_and_serve_every_event(tmp_path: Path) -> None:
    """Past a few thousand events, a feed's locations live in tables: every event is
    still served by its seq, after checkpoints, a reopen and a merge, and a different
    event claiming an old seq is still told from a duplicate."""
    from koru.projections import CHUNK, FeedState

    path = tmp_path / "db"
    n = 2 * CHUNK + 100
    async with koru.open(path, sync="never", processes=False) as db:
        for i in range(n):
            await db.put("n", f"k{i % 50}", i)
            if i in (CHUNK + 10, n - 5):
                await db.checkpoint()
        exported = await db.feed_events(db.node_id)
        node = db.node_id
        content = db.projection("feeds").content()
    assert len(exported) == n
    async with koru.open(path, sync="os", processes=False) as db:
        feeds = db.projection("feeds")
        assert isinstance(feeds, FeedState)
        assert feeds.written[(bytes.fromhex(node), "storage")] == 2 * CHUNK
        assert len(feeds.tables) == 2 and sum(len(a) for a in feeds.recent.values()) == 100
        # The same content wherever it is held: each event's location, by seq.
        assert feeds.content() == content
        ((feed, seq, _, locations),) = [c for c in content if c[0][1] == "storage"]
        assert seq == n and locations == [feeds.location(*feed, s) for s in range(1, n + 1)]
        assert len(set(locations)) == n
        assert await db.feed_events(node) == exported
        assert (
            await db.feed_events(node, after=CHUNK - 2, limit=5) == exported[CHUNK - 2 : CHUNK + 3]
        )
        feeds.max_tables = 1
        await db._checkpointer.compact()
        assert len(feeds.tables) == 1
        assert await db.feed_events(node) == exported
        # Another node's copy takes them all; an altered early event is a fork.
    async with koru.open(":memory:", processes=False) as other:
        assert (await other.ingest(exported)).accepted == n
        early = decode_event(exported[10])
        assert isinstance(early, PutEvent)
        forged = encode_event(early._replace(value=encode_value("forged")))
        result = await other.ingest([forged, exported[10]])
        assert result.duplicates == 1 and [r.fork for r in result.refused] == [True]


async def test_distillation_pins_the_fittest_keys_and_a_replay_keeps_them(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    from koru.events import LIFECYCLE, TieringEvent
    from koru.projections import TierState

    path = tmp_path / "db"
    async with koru.open(path, sync="os", processes=False) as db:
        await db.put_batch([("n", f"k{i}", i) for i in range(100)])
    clock = koru.TrioClock()
    async with koru.open(path, sync="os", clock=clock, processes={"distillation": 3600}) as db:
        node = bytes.fromhex(db.node_id)
        for _ in range(5):
            for i in range(10):  # read often: fit
                await db.get("n", f"k{i}")
        for i in range(10, 40):  # read once: not
            await db.get("n", f"k{i}")
        await trio.sleep(3601)
        fittest = {("n", f"k{i}") for i in range(10)}
        tiers = db.projection("tiers")
        assert isinstance(tiers, TierState) and tiers.of(node) == fittest
        assert db._kv.pinned is tiers.of(node)
        [recorded] = [decode_event(e) for e in await db.feed_events(db.node_id, LIFECYCLE)]
        assert isinstance(recorded, TieringEvent) and set(recorded.promoted) == fittest
        # Pinned keys stay hot whatever else is read.
        db._kv.hot_capacity = 30 * 300
        for i in range(40, 100):
            await db.get("n", f"k{i}")
        assert fittest <= set(db._kv.hot)
        # An hour with no reads: their fitness decays, they are unpinned.
        await trio.sleep(2 * 3600 + 1)
        assert tiers.of(node) == set()
        assert len(await db.feed_events(db.node_id, LIFECYCLE)) == 2
        live = {o: set(k) for o, k in tiers.hot.items()}
    for drop_checkpoint in (False, True):
        if drop_checkpoint:
            (path / "checkpoint").unlink()
        async with koru.open(path, sync="os", processes=False) as db:
            replayed = db.projection("tiers")
            assert isinstance(replayed, TierState) and replayed.hot == live


@pytest.mark.parametrize("fmt", [4, 5])
async def test_a_table_rewritten_whole_is_caught_by_the_scrub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: int
) -> None:
    """Alice's records swapped with Bob's, the table re-encoded with fresh checksums and
    put back under its old name: per-entry checks pass, the name (a hash of the
    content) does not. Format 4 (its index unchanged: the records have one length): the
    scrub after the open stops the database, and verify says so. Format 5 (its index
    holds the blocks' digests, which changed): the open already refuses the table, the
    key/value state is rebuilt from the log, and every answer is the log's."""
    import sys

    from koru.events import _table

    monkeypatch.setattr(_table, "_FORMAT", fmt)
    path = tmp_path / "db"
    async with koru.open(path, processes=False) as db:
        await db.put("users", "alice", {"name": "Alice"})
        await db.put("users", "bob", {"name": "Bob"})
    [file] = (path / "tables").glob("*.tab")
    entries = {(ns, k): v for ns, k, v in Table(file.read_bytes(), file.stem).entries()}
    alice, bob = entries[("users", "alice")], entries[("users", "bob")]
    entries[("users", "alice")], entries[("users", "bob")] = bob, alice
    file.write_bytes(b"".join(encode_table((ns, k, v) for (ns, k), v in entries.items())))
    async with koru.open(path) as db:
        if fmt == 5:
            problem = (await db.stats()).projections_rebuilt.get("kv", "")
            assert file.stem in problem and "not the one the checkpoint names" in problem
            assert await db.get("users", "alice") == {"name": "Alice"}
            assert await db.get("users", "bob") == {"name": "Bob"}
            return
        with trio.fail_after(10):
            while True:
                try:
                    await db.contains("users", "x")
                except koru.DatabaseClosedError as exc:
                    assert isinstance(exc.__cause__, koru.CorruptCheckpointError)
                    assert file.stem in str(exc.__cause__)
                    break
                await trio.sleep(0.01)
    kdelta = str(Path(sys.executable).parent / "kdelta")
    done = await trio.run_process(
        [kdelta, "--db", str(path), "verify"], capture_stdout=True, check=False
    )
    assert done.returncode == 3 and b"not the one its name hashes" in done.stdout


async def test_a_put_of_a_new_key_searches_the_tables_once_and_a_miss_never_hides_a_key(
    tmp_path: Path,
) -> None:
    """The put learns the key has no current version by searching the layers below
    memory; its fold does not search them again. The remembered miss holds only until
    the next fold: a key written after it (here, or through another path) is found."""
    async with koru.open(tmp_path / "db", sync="os", processes=False) as db:
        await db.put_batch([("ns", f"k{i}", i) for i in range(50)])
        await db.checkpoint()
        kv = db._kv
        assert kv.tables and not kv.namespaces.get("ns")
        searched = kv.table_reads
        counts = (kv.key_total, kv.live, kv.ns_live.get("ns", 0), kv.versions)
        await db.put("ns", "new", 1)
        assert kv.table_reads == searched + 1
        # Its fold (the new key inlined in apply_put) counted it as _insert would.
        assert (kv.key_total, kv.live, kv.ns_live["ns"], kv.versions) == tuple(
            n + 1 for n in counts
        )
        assert len(kv.namespaces["ns"]["new"]) == RECORD_SIZE
        # A key only in the tables is still copied up (its history keeps both versions).
        await db.put("ns", "k3", 33)
        assert [h.value for h in await db.history("ns", "k3")] == [3, 33]
        # A read that misses, then a write of that key by another path, a checkpoint
        # that moves it below memory, and a write on top: every version is kept.
        assert not await db.contains("ns", "later")
        await db.put_batch([("ns", "later", "a")])
        await db.checkpoint()
        assert await db.get("ns", "later") == "a"
        assert not await db.contains("ns", "absent")
        await db.put("ns", "later", "b")
        assert [h.value for h in await db.history("ns", "later")] == ["a", "b"]
        assert (await db.stats()).keys == 52
    async with koru.open(tmp_path / "db", processes=False) as db:
        assert [h.value for h in await db.history("ns", "later")] == ["a", "b"]
        assert await db.get("ns", "new") == 1 and await db.get("ns", "k3") == 33


class _TableCloses(OsDisk):
    """The operating system's disk, noting which thread closes each table's descriptor."""

    def __init__(self) -> None:
        self.tables: dict[int, str] = {}
        self.closed_by: dict[str, int] = {}

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        if path.endswith(".tab") and flags == os.O_RDONLY:
            self.tables[fd] = os.path.basename(path)
        return fd

    def close(self, fd: int) -> None:
        name = self.tables.pop(fd, None)
        if name is not None:
            self.closed_by[name] = threading.get_ident()
        super().close(fd)


async def test_tables_merged_away_are_closed_off_the_event_loop(tmp_path: Path) -> None:
    """The last close of a removed table's file frees its blocks (tens of milliseconds
    for a big one): the merge lets go of the tables it replaced in a worker thread."""
    path = tmp_path / "db"
    async with koru.open(path, sync="os", processes=False) as db:
        for round_ in range(6):
            await db.put_batch([("ns", f"k{i}", [round_, i]) for i in range(50)])
            await db.checkpoint()
    disk = _TableCloses()
    async with koru.open(path, sync="os", processes=False, disk=disk) as db:
        db._kv.max_tables = 2
        before = {t.name for t in db._kv.tables}
        assert len(before) >= 3
        assert await db._checkpointer.compact() >= 1
        after = {t.name for t in db._kv.tables}
        merged_away = before - after
        assert merged_away and not (path / "tables" / f"{next(iter(merged_away))}.tab").exists()
        loop = threading.get_ident()
        assert {f"{n}.tab" for n in merged_away} <= set(disk.closed_by)
        assert all(disk.closed_by[f"{n}.tab"] != loop for n in merged_away)
        assert await db.get("ns", "k3") == [5, 3]


async def test_a_cold_read_of_a_tampered_log_answers_right_or_raises(tmp_path: Path) -> None:
    """Every key in a table, read cold after its log was altered: a byte flipped in a
    record, or two records of the same size swapped whole (each with valid checksums).
    Every get answers the value written, or raises a KoruError: never another value."""
    from koru.events._frame import SEGMENT_HEADER_SIZE, parse_record

    path = tmp_path / "db"
    model = {f"k{i:02}": {"v": f"{i:04}"} for i in range(30)}
    async with koru.open(path, processes=False) as db:
        for key, value in model.items():
            await db.put("users", key, value)
    [seg] = (path / "logs").glob("*/00000001.seg")
    original = seg.read_bytes()
    spans, at = [], SEGMENT_HEADER_SIZE
    while at < len(original):
        end = parse_record(original, at)[0]
        spans.append((at, end))
        at = end
    puts = [s for s in spans if b"users" in original[s[0] : s[1]]]
    (a0, a1), (b0, b1) = puts[3], puts[17]
    assert a1 - a0 == b1 - b0
    swapped = bytearray(original)
    swapped[a0:a1], swapped[b0:b1] = original[b0:b1], original[a0:a1]
    flipped = bytearray(original)
    flipped[(a0 + a1) // 2] ^= 0x04
    for damaged in (swapped, flipped):
        seg.write_bytes(bytes(damaged))
        async with koru.open(path, processes=False, readonly=True) as db:
            assert db._kv._blob("users", "nope") is None
            errors = 0
            for key, value in model.items():
                # Where a cold get reads (the blob's last record), as the version says.
                blob = db._kv._blob("users", key)
                assert blob is not None
                assert (
                    PLACE.unpack_from(blob, LAST_PLACE)[0] == db._kv.current("users", key).location
                )
                try:
                    got = await db.get("users", key)
                except koru.KoruError:
                    errors += 1
                    continue
                assert got == value, key
            assert errors >= 1


@pytest.mark.parametrize("fmt", [4, 5])
async def test_a_version_record_swapped_with_another_keys_is_refused_on_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: int
) -> None:
    """Alice's and Bob's records swapped in a table re-encoded with fresh checksums
    (each names a real record and the content id of the value there): before any scrub
    runs, a read of either raises, since the record it names holds no write of its key
    (format 4, whose index the swap leaves as it was); format 5's index changes with
    its blocks, so the open refuses the table and answers from the log."""
    from koru.events import _table

    monkeypatch.setattr(_table, "_FORMAT", fmt)
    path = tmp_path / "db"
    async with koru.open(path, processes=False) as db:
        await db.put("users", "alice", {"name": "Alice"})
        await db.put("users", "bob", {"name": "Bob"})
        await db.put("users", "carol", {"name": "Carol"})
    [file] = (path / "tables").glob("*.tab")
    entries = {(ns, k): v for ns, k, v in Table(file.read_bytes(), file.stem).entries()}
    alice, bob = entries[("users", "alice")], entries[("users", "bob")]
    entries[("users", "alice")], entries[("users", "bob")] = bob, alice
    file.write_bytes(b"".join(encode_table((ns, k, v) for (ns, k), v in entries.items())))
    async with koru.open(path, processes=False, readonly=True) as db:
        for key in ("alice", "bob"):
            if fmt == 5:
                assert await db.get("users", key) == {"name": key.title()}
                continue
            with pytest.raises(koru.CorruptLogError, match="holds no write of the key"):
                await db.get("users", key)
        assert await db.get("users", "carol") == {"name": "Carol"}


async def test_a_cold_get_reads_whole_records_whatever_their_size(tmp_path: Path) -> None:
    """A cold get sizes its read of the log by the value's length: a record longer than
    that (a batch's, holding other values) or a value past the old fixed read (4 KiB),
    under names of several-byte characters, is still read whole and served right."""
    path = tmp_path / "db"
    model: dict[str, object] = {f"plain{i}": {"v": "x" * (i * 997)} for i in range(12)}
    batch = {f"ключ{i}": ("y" * 5000 if i == 3 else i) for i in range(20)}
    model.update(batch)
    async with koru.open(path, processes=False) as db:
        for key, value in model.items():
            if key not in batch:
                await db.put("名前", key, value)
        await db.put_batch([("名前", key, value) for key, value in batch.items()])
    async with koru.open(path, processes=False, readonly=True) as db:
        assert not db._kv.namespaces  # every key is read from a table, every value from the log
        for key, value in model.items():
            assert await db.get("名前", key) == value, key
        assert (await db.stats()).corruptions == 0


async def test_a_cold_get_proves_the_value_it_slices_from_a_put(tmp_path: Path) -> None:
    """A cold get takes a plain put's value straight out of its record (without
    decoding the event), so every byte of that record is changed in turn, with its
    checksums left as they were and made afresh: the first is always reported, the
    second either still serves the right value (a byte outside the value and the
    names: the chain root, the time, the ids) or is reported, never a wrong value."""
    path = tmp_path / "db"
    async with koru.open(path, processes=False) as db:
        await db.put("users", "alice", {"name": "Alice", "bio": "a" * 300})
        await db.put("users", "alice", {"name": "Alicia", "bio": "b" * 300})
        await db.put("users", "bob", {"name": "Bob"})
        blob = db._kv._blob("users", "alice")
        assert blob is not None
        location, size = PLACE.unpack_from(blob, LAST_PLACE)
    _, seg, offset = unpack_location(location)
    [segment] = (path / "logs" / "storage").glob(f"{seg:08d}.seg")
    original = segment.read_bytes()
    end, root, event = parse_record(original, offset)
    assert put_value(event, "users", "alice", size) is not None  # the path under test

    async def read() -> str:
        async with koru.open(path, processes=False, readonly=True) as db:
            assert not db._kv.namespaces  # read from a table, the value from the log
            try:
                got = await db.get("users", "alice")
            except koru.CorruptLogError:
                assert (await db.stats()).corruptions == 1
                return "reported"
            finally:
                assert await db.get("users", "bob") == {"name": "Bob"}
            assert got == {"name": "Alicia", "bio": "b" * 300}
            return "served"

    outcomes = set()
    for at in range(offset, end):
        for fresh in (False, True):
            if fresh:  # the body changed, then framed again with valid checksums
                if at - offset < RECORD_HEADER_SIZE:
                    continue
                body = bytearray(root + event)
                body[at - offset - RECORD_HEADER_SIZE] ^= 0x41
                record = encode_record(bytes(body[: len(root)]), bytes(body[len(root) :]))
            else:
                flipped = bytes((original[at] ^ 0x41,))
                record = original[offset:at] + flipped + original[at + 1 : end]
            segment.write_bytes(original[:offset] + record + original[end:])
            try:
                outcome = await read()
            except koru.CorruptLogError:  # the open walks over a record's length field
                assert not fresh and at - offset < RECORD_HEADER_SIZE, at
                outcome = "reported"
            assert fresh or outcome == "reported", at  # a stale checksum is always caught
            outcomes.add((fresh, outcome))
    assert outcomes == {(False, "reported"), (True, "reported"), (True, "served")}


_tier_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 11)),
        st.tuples(st.just("checkpoint"), st.just(0)),
        st.tuples(st.just("merge"), st.just(0)),
        st.tuples(st.just("warm"), st.sampled_from([0, 300, 1 << 20])),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=_tier_ops)
# A merge of two mirrored tables, then the older one's layer leaves the warm tier.
@example(
    ops=[
        ("put", 0),
        ("checkpoint", 0),
        ("put", 1),
        ("checkpoint", 0),
        ("merge", 0),
        ("warm", 300),
        ("put", 2),
        ("checkpoint", 0),
    ]
)
def test_tables_mirrored_by_warm_layers_are_skipped_only_while_that_proves_absence(
    ops: list[tuple[str, int]],
) -> None:
    """A search skips a table this process wrote from layers still warm (and merges of
    such tables): a key the warm tier lacks is in none of them. Whatever the
    checkpoints, merges and warm budgets, every key's current write id is the model's."""
    kv = KvState()
    model: dict[str, bytes] = {}
    origin = bytes(32)
    for n, (op, arg) in enumerate(ops, 1):
        if op == "put":
            key = f"k{arg}"
            eid = n.to_bytes(32, "big")
            # As the writer does: the current version first (which may note a miss).
            assert kv.current_write_id("ns", key) == model.get(key)
            value = encode_value(n)
            event = PutEvent(origin, "storage", n, None, 1000 + n, "ns", key, value, None)
            kv.apply_put(event, eid, n, bytes(32))
            model[key] = eid
        elif op == "checkpoint":
            new = kv.capture()["new"]
            if new is not None:
                kv.checkpointed({new: table_of({(ns, k): v for ns, k, v in new.items()})})
        elif op == "merge" and len(kv.tables) >= 2:
            inputs = kv.tables[:2]
            merged = table_of({(ns, k): v for ns, k, v in merge_tables(inputs)})
            kv.compacted(inputs, merged)
        elif op == "warm":
            kv.warm_capacity = arg
        for i in range(12):
            assert kv.current_write_id("ns", f"k{i}") == model.get(f"k{i}")
    assert {k: kv.current_write_id("ns", k) for k in model} == model


@pytest.mark.parametrize("batch", [True, False])
async def test_a_key_first_folded_past_a_search_keeps_its_history_when_written_again(
    tmp_path: Path, batch: bool
) -> None:
    """A key new to the database is folded past a search of every layer below memory,
    which notes the miss (``_missed``) so that its put need not search again. That
    note must end with the fold that puts the key in memory: left standing, the key's
    next put, after a checkpoint had moved it below memory, was taken for a new key
    and its earlier versions dropped from history and the sums (found by the model
    test: a batch, a checkpoint, a put of the batch's last key)."""
    async with koru.open(tmp_path, sync="os", processes=False) as db:
        await db.put("a", "x", 1)
        await db.checkpoint()  # a table below memory: new keys search it
        if batch:
            await db.put_batch([("b", "k1", 1), ("b", "k2", 2)])
        else:
            await db.put("b", "k1", 1)
            await db.put("b", "k2", 2)
        await db.checkpoint()
        await db.put("b", "k2", 3)
        assert [h.value for h in await db.history("b", "k2")] == [2, 3]
        assert [h.value for h in await db.history("b", "k1")] == [1]
        digest = await db.digest()
        stats = await db.stats()
    async with koru.open(tmp_path, processes=False) as db:
        assert await db.digest() == digest
    replayed, _ = full_replay(tmp_path)
    assert replayed.versions == stats.versions == 4


async def test_a_bulk_load_of_batches_is_checkpointed_as_it_goes(tmp_path: Path) -> None:
    """Batches count their writes towards the next checkpoint, each yields to the
    background tasks, and a writer of batches waits when checkpoints fall far behind:
    memory holds a bounded number of versions, not the whole load. (Before, 60
    batches of 100 were 60 events, under one interval of 200: no checkpoint ran
    until close, and a large load held every version in memory.)"""
    every = 200
    async with koru.open(tmp_path / "db", checkpoint_every=every, sync="os") as db:
        for b in range(60):
            await db.put_batch([("u", f"k{b}-{i}", i) for i in range(100)])
        ck = db._checkpointer
        assert ck.lag <= LAG * every + 1 + 99 // VERSION_SHARE
        await eventually(lambda: ck.written >= 1)
        assert await db.get("u", "k59-99") == 99
        assert (await db.stats()).keys == 6000
    async with koru.open(tmp_path / "db", readonly=True) as db:
        assert (await db.stats()).keys == 6000


def test_work_owed_by_a_batch_makes_the_next_operation_yield() -> None:
    life = Lifecycle(readonly=False, commit_yields=False)
    assert not life.begin()  # the first operation
    life.owe(5)  # a small batch: still short of the 64th operation
    assert not life.begin()
    life.owe(99)  # a batch of a hundred: past it
    assert life.begin()
    assert not life.begin()


async def test_checkpoints_are_written_while_tables_merge(tmp_path: Path) -> None:
    """A merge no longer holds the checkpoints' lock (a ten-million-key load's merges
    held writers waiting for a checkpoint 43 s), and a checkpoint written while a
    merged table is on disk but not yet named leaves its file in place."""
    path = tmp_path / "db"
    async with koru.open(path, processes=False) as db:
        for r in range(3):
            await db.put_batch([("u", f"k{r}-{i}", i) for i in range(50)])
            await db.checkpoint()
        ck, kv = db._checkpointer, db._kv
        kv.max_tables = 1
        written, merging = threading.Event(), threading.Event()
        merge = ck._write_merged

        def held(encoder: Any, pace: Any) -> Any:  # the merged table written, not named
            table = merge(encoder, pace)
            written.set()
            merging.wait(10)
            return table

        ck._write_merged = held  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ck.compact)
            await trio.to_thread.run_sync(written.wait)
            await db.put("u", "during", 1)
            with trio.fail_after(10):  # it waited for the merge before
                await db.checkpoint()
            merging.set()
        assert ck.compactions == 1 and len(kv.tables) == 2  # the merge, and one on top
        names = {t.name for t in kv.tables}
        assert names == {p.stem for p in (path / "tables").glob("*.tab")}
        assert await db.get("u", "k0-7") == 7 and await db.get("u", "during") == 1
    async with koru.open(path, readonly=True) as db:
        stats = await db.stats()
        assert stats.replayed_events == 0 and stats.keys == 151
        assert await db.get("u", "k1-49") == 49
