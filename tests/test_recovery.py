"""Recovery: torn tails, bit flips, zero-filled tails, checkpoints, the lock, fatal fsync.

Each test damages a real database directory the way a crash, a power loss or a bad
disk would, then checks what the next open does: a torn tail is cut back to the last
whole record and nothing acknowledged is lost; corruption in a complete record is
reported (CorruptLogError), never served and never silently dropped; a checkpoint is
only a hint, so any bad checkpoint gives the same state as a full replay; a failed
write or fsync stops the handle and acknowledges nothing that is not on disk.
"""

from __future__ import annotations

import contextvars
import errno
import itertools
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import blake3
import cbor2
import pytest
import trio

import koru
from conftest import full_replay, open_store
from koru import (
    CorruptLogError,
    DatabaseClosedError,
    DatabaseLockedError,
    DurabilityError,
    KeyNotFoundError,
    ReadOnlyError,
)
from koru._loader import CHECKPOINT_FILE, load
from koru.events import FileStore, agent_index, unpack_location
from koru.events._frame import (
    SEGMENT_HEADER_SIZE,
    encode_record,
    encode_segment_header,
    parse_record,
    parse_segment_header,
)
from koru.projections import decode_checkpoint

AGENT = "storage"
NS = "ns"
CHILD = Path(__file__).with_name("_crash_child.py")
PAGE = 4096

# -- helpers ---------------------------------------------------------------------------


def seg_path(db: Path, n: int = 1) -> Path:
    return db / "logs" / AGENT / f"{n:08d}.seg"


def value(i: int, pad: int = 0) -> dict[str, Any]:
    return {"i": i, "name": f"value-{i}", "pad": "p" * pad}


async def make_db(path: Path, n: int = 5, pad: int = 0, **kw: Any) -> list[koru.Version]:
    """A database holding ``n`` acknowledged puts: key ``k<i>`` = ``value(i)``."""
    async with koru.open(path, sync="always", **kw) as db:
        return [await db.put(NS, f"k{i}", value(i, pad)) for i in range(n)]


def record_spans(path: Path) -> list[tuple[int, int, int]]:
    """(segment, start, end) of every record of the storage log, in order."""
    store = FileStore(path, readonly=True)
    try:
        starts = [unpack_location(r.location)[1:] for r in store.replay(AGENT)]
    finally:
        store.close()
    spans = []
    for seg, start in starts:
        end, _, _ = parse_record(seg_path(path, seg).read_bytes(), start)
        spans.append((seg, start, end))
    return spans


def digest_of(kv: Any) -> str:
    # Mirrors Database.digest() for a state rebuilt outside a Database.
    return blake3.blake3(b"koru-delta/digest/v1" + kv.digest()).hexdigest()


def copy_db(src: Path, dst: Path, *, checkpoint: bool = True) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    if not checkpoint:
        (dst / CHECKPOINT_FILE).unlink(missing_ok=True)
    return dst


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def tree(path: Path) -> dict[str, tuple[bytes, int] | None]:
    """Every file (content, mtime) and directory under ``path``."""
    out: dict[str, tuple[bytes, int] | None] = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
    return out


async def state(db: koru.Database, keys: list[tuple[str, str]]) -> dict[str, Any]:
    """Everything observable about ``keys``, for comparing two opens."""
    namespaces = sorted({ns for ns, _ in keys})
    return {
        "digest": db.digest(),
        "root": db.roots()[AGENT],
        "keys": {ns: await db.keys(ns) for ns in namespaces},
        "history": {
            f"{ns}/{k}": [
                (v.write_id, v.value, v.deleted, v.previous, v.timestamp)
                for v in await db.history(ns, k)
            ]
            for ns, k in keys
        },
        "events": db.stats().events,
        "versions": db.stats().versions,
    }


WORKLOAD_KEYS = [(ns, f"k{i}") for ns in ("a", "b") for i in range(6)]


async def workload(db: koru.Database, seed: int, n: int, tag: str = "x") -> None:
    """``n`` events of puts, batches and deletes; the same seed gives the same shape
    (same keys, same value sizes) whatever ``tag`` (one character) is."""
    rng = random.Random(seed)
    for i in range(n):
        roll = rng.random()
        live = [key for key in WORKLOAD_KEYS if await db.contains(*key)]
        if roll < 0.15 and live:
            await db.delete(*rng.choice(live))
        elif roll < 0.4:
            keys = rng.sample(WORKLOAD_KEYS, rng.randint(2, 3))
            await db.put_batch([(ns, k, {"i": i, "s": tag * rng.randint(1, 40)}) for ns, k in keys])
        else:
            ns, k = rng.choice(WORKLOAD_KEYS)
            await db.put(ns, k, {"i": i, "s": tag * rng.randint(1, 40)})


async def reference_state(path: Path, scratch: Path) -> dict[str, Any]:
    """The state a full replay of ``path``'s log gives (via a copy without checkpoint)."""
    copy = copy_db(path, scratch, checkpoint=False)
    async with koru.open(copy, readonly=True) as db:
        assert db.stats().checkpoint_events == 0
        ref = await state(db, WORKLOAD_KEYS)
    kv, _ = full_replay(path)
    assert ref["digest"] == digest_of(kv)
    return ref


# -- (a) torn tails: truncation at every offset ----------------------------------------


async def test_truncation_at_every_offset_of_last_record(tmp_path: Path) -> None:
    base = tmp_path / "base"
    versions = await make_db(base, 5)
    spans = record_spans(base)
    assert len(spans) == 5 and {s for s, _, _ in spans} == {1}
    end4 = spans[3][2]
    _, start5, end5 = spans[4]
    assert end4 == start5 and seg_path(base).stat().st_size == end5

    # The reference: the log holding exactly the first four records.
    ref_dir = copy_db(base, tmp_path / "ref", checkpoint=False)
    os.truncate(seg_path(ref_dir), start5)
    ref_kv, ref_cursor = full_replay(ref_dir)
    assert ref_cursor.count == 4

    work = tmp_path / "work"
    for cut in range(start5, end5):
        # Half the runs keep the checkpoint, which names the lost record: it must be
        # recognised as not matching the log.
        copy_db(base, work, checkpoint=cut % 2 == 0)
        os.truncate(seg_path(work), cut)
        async with koru.open(work, sync="always") as db:
            assert seg_path(work).stat().st_size == start5, f"cut at {cut}: tail not cut back"
            assert await db.keys(NS) == ["k0", "k1", "k2", "k3"]
            for i in range(4):
                assert [v.write_id for v in await db.history(NS, f"k{i}")] == [versions[i].write_id]
                assert await db.get(NS, f"k{i}") == value(i)
            assert await db.history(NS, "k4") == []
            assert db.digest() == digest_of(ref_kv)
            assert db.roots()[AGENT] == ref_cursor.root.hex()
            assert db.stats().events == 4
            new = await db.put(NS, "after", {"cut": cut})
            digest = db.digest()
        kv, cursor = full_replay(work)
        assert digest_of(kv) == digest and cursor.count == 5
        async with koru.open(work) as db:
            assert await db.keys(NS) == ["after", "k0", "k1", "k2", "k3"]
            assert await db.get(NS, "after") == {"cut": cut}
            assert [v.write_id for v in await db.history(NS, "after")] == [new.write_id]
            assert db.digest() == digest


async def test_truncation_at_every_offset_of_new_segment(tmp_path: Path) -> None:
    """A crash right after a segment rotation: the new segment's header, then its first
    record, cut at every byte."""
    base = tmp_path / "base"
    versions = await make_db(base, 5)
    seg1_size = seg_path(base).stat().st_size
    # Reopen with segments no larger than the first one: the sixth put starts segment 2.
    async with koru.open(base, sync="always", segment_size=seg1_size) as db:
        await db.put(NS, "k5", value(5))
    seg2 = seg_path(base, 2).read_bytes()
    assert seg_path(base).stat().st_size == seg1_size
    assert len(seg2) > SEGMENT_HEADER_SIZE
    header = parse_segment_header(seg2)
    assert header.first_index == 5

    ref_dir = copy_db(base, tmp_path / "ref", checkpoint=False)
    seg_path(ref_dir, 2).unlink()
    ref_kv, ref_cursor = full_replay(ref_dir)

    work = tmp_path / "work"
    for cut in range(len(seg2)):
        copy_db(base, work, checkpoint=cut % 2 == 1)
        os.truncate(seg_path(work, 2), cut)
        async with koru.open(work, sync="always", segment_size=seg1_size) as db:
            if cut < SEGMENT_HEADER_SIZE:
                # The header never fully landed: the segment is dropped.
                assert not seg_path(work, 2).exists(), f"cut at {cut}"
            else:
                assert seg_path(work, 2).stat().st_size == SEGMENT_HEADER_SIZE, f"cut at {cut}"
            assert seg_path(work).stat().st_size == seg1_size
            assert await db.keys(NS) == [f"k{i}" for i in range(5)]
            assert [v.write_id for v in await db.history(NS, "k4")] == [versions[4].write_id]
            assert db.digest() == digest_of(ref_kv)
            assert db.roots()[AGENT] == ref_cursor.root.hex()
            new = await db.put(NS, "after", {"cut": cut})
        assert seg_path(work, 2).exists()
        kv, cursor = full_replay(work)
        assert cursor.count == 6 and cursor.segment == 2
        async with koru.open(work) as db:
            assert [v.write_id for v in await db.history(NS, "after")] == [new.write_id]
            assert await db.get(NS, "after") == {"cut": cut}
            assert db.digest() == digest_of(kv)


# -- (b) corruption: every bit flip is detected ----------------------------------------


def expected_position(spans: list[tuple[int, int, int]], byte: int) -> tuple[int, int]:
    """(record position, record offset) a flip at ``byte`` of segment 1 must be reported
    at: the record holding it, or record 0 at offset 0 for the segment header."""
    if byte < SEGMENT_HEADER_SIZE:
        return 0, 0
    for i, (_, start, end) in enumerate(spans):
        if start <= byte < end:
            return i, start
    raise AssertionError(f"byte {byte} is in no record")


async def test_every_bit_flip_in_log_is_detected(tmp_path: Path) -> None:
    base = tmp_path / "base"
    await make_db(base, 5)
    spans = record_spans(base)
    original = seg_path(base).read_bytes()
    assert len(original) == spans[-1][2]
    work = copy_db(base, tmp_path / "work", checkpoint=False)
    seg = seg_path(work)
    for bit in range(len(original) * 8):
        seg.write_bytes(flip_bit(original, bit))
        store = FileStore(work, readonly=True)
        try:
            with pytest.raises(CorruptLogError) as info:
                load(store, use_checkpoint=False)
        finally:
            store.close()
        position, offset = expected_position(spans, bit // 8)
        err = info.value
        assert (err.agent, err.position, err.offset) == (AGENT, position, offset), f"bit {bit}"


async def test_bit_flips_fail_the_open_and_leave_the_file_alone(tmp_path: Path) -> None:
    """Through ``koru.open`` (writable, no checkpoint): every bit of the last record (the
    one a torn-tail rule could wrongly drop) and a sample elsewhere."""
    base = tmp_path / "base"
    await make_db(base, 5)
    spans = record_spans(base)
    original = seg_path(base).read_bytes()
    _, last_start, last_end = spans[-1]
    bits = sorted(set(range(last_start * 8, last_end * 8)) | set(range(0, last_start * 8, 11)))
    work = copy_db(base, tmp_path / "work", checkpoint=False)
    for bit in bits:
        damaged = flip_bit(original, bit)
        seg_path(work).write_bytes(damaged)
        with pytest.raises(CorruptLogError) as info:
            async with koru.open(work, sync="always"):
                pass
        assert info.value.position == expected_position(spans, bit // 8)[0], f"bit {bit}"
        assert seg_path(work).read_bytes() == damaged, f"bit {bit}: the open changed the log"
        assert not (work / CHECKPOINT_FILE).exists()


async def test_bit_flip_under_a_checkpoint_is_never_served(tmp_path: Path) -> None:
    """With a checkpoint, records before its cursor need not be re-verified at open; a
    damaged one must then fail the open or every read of its value, never serve it."""
    base = tmp_path / "base"
    await make_db(base, 5)
    spans = record_spans(base)
    original = seg_path(base).read_bytes()
    work = tmp_path / "work"
    rng = random.Random(1)
    bits = sorted(rng.sample(range(len(original) * 8), 150))
    opened = 0
    for bit in bits:
        copy_db(base, work)
        seg_path(work).write_bytes(flip_bit(original, bit))
        position, _ = expected_position(spans, bit // 8)
        # The segment header is always parsed, and the cursor's own record re-read.
        must_fail = bit // 8 < SEGMENT_HEADER_SIZE or position == 4
        try:
            async with koru.open(work, readonly=True) as db:
                assert not must_fail, f"bit {bit}: opened"
                opened += 1
                for i in range(5):
                    if i == position:
                        with pytest.raises(CorruptLogError):
                            await db.get(NS, f"k{i}")
                        with pytest.raises(CorruptLogError):
                            await db.history(NS, f"k{i}")
                    else:
                        assert await db.get(NS, f"k{i}") == value(i)
        except CorruptLogError as exc:
            assert exc.position == position, f"bit {bit}"
    assert opened, "no damaged record below the checkpoint's cursor was ever opened"


def reframe(records: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(encode_record(root, event) for root, event in records)


async def test_validly_framed_edits_break_the_chain(tmp_path: Path) -> None:
    """Records that pass their checksums but do not continue the hash chain."""
    base = tmp_path / "base"
    await make_db(base, 5)
    original = seg_path(base).read_bytes()
    header = original[:SEGMENT_HEADER_SIZE]
    recs = []
    for _, start, _ in record_spans(base):
        _, root, event = parse_record(original, start)
        recs.append((root, event))
    genesis_header = parse_segment_header(header)
    cases = {
        # another record's event under this record's root
        "edited event": ([*recs[:2], (recs[2][0], recs[3][1]), *recs[3:]], 2),
        "edited last event": ([*recs[:4], (recs[4][0], recs[3][1])], 4),
        "removed record": ([*recs[:2], *recs[3:]], 2),
        "duplicated record": ([*recs[:3], recs[2], *recs[3:]], 3),
        "swapped records": ([recs[0], recs[2], recs[1], *recs[3:]], 1),
    }
    work = copy_db(base, tmp_path / "work", checkpoint=False)
    for name, (records, position) in cases.items():
        damaged = header + reframe(records)
        seg_path(work).write_bytes(damaged)
        with pytest.raises(CorruptLogError) as info:
            async with koru.open(work, sync="always"):
                pass
        assert info.value.position == position, name
        assert "chain" in info.value.reason, name
        assert seg_path(work).read_bytes() == damaged, name
    # A segment header that does not continue the chain.
    bad_header = encode_segment_header(agent_index(AGENT), 1, genesis_header.prev_root)
    seg_path(work).write_bytes(bad_header + original[SEGMENT_HEADER_SIZE:])
    with pytest.raises(CorruptLogError) as info:
        async with koru.open(work, sync="always"):
            pass
    assert info.value.offset == 0 and "chain" in info.value.reason


# -- (c) zero-filled tails -------------------------------------------------------------


@pytest.mark.parametrize("zeros", [1, 11, 12, 13, 45, 100, PAGE, 3 * PAGE + 5])
async def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path, zeros: int) -> None:
    path = tmp_path / "db"
    versions = await make_db(path, 5)
    size = seg_path(path).stat().st_size
    with seg_path(path).open("ab") as f:
        f.write(bytes(zeros))
    before = tree(path)
    async with koru.open(path, readonly=True) as db:
        assert await db.keys(NS) == [f"k{i}" for i in range(5)]
    assert tree(path) == before, "a read-only open changed files"
    async with koru.open(path, sync="always") as db:
        assert seg_path(path).stat().st_size == size
        for i, v in enumerate(versions):
            assert [h.write_id for h in await db.history(NS, f"k{i}")] == [v.write_id]
        new = await db.put(NS, "after", 1)
    kv, cursor = full_replay(path)
    assert cursor.count == 6 and cursor.offset == seg_path(path).stat().st_size
    async with koru.open(path) as db:
        assert [h.write_id for h in await db.history(NS, "after")] == [new.write_id]
        assert db.digest() == digest_of(kv)


@pytest.mark.parametrize("size", [0, 1, SEGMENT_HEADER_SIZE, SEGMENT_HEADER_SIZE + 1, PAGE])
async def test_zero_filled_new_segment_is_a_torn_tail(tmp_path: Path, size: int) -> None:
    """A segment created just before a power loss: its size landed, its data did not.
    Whatever its length, an all-zero last segment holds nothing that was acknowledged."""
    path = tmp_path / "db"
    versions = await make_db(path, 5)
    seg_path(path, 2).write_bytes(bytes(size))
    async with koru.open(path, sync="always") as db:
        assert not seg_path(path, 2).exists()
        assert [h.write_id for h in await db.history(NS, "k4")] == [versions[4].write_id]
        await db.put(NS, "after", 1)
    assert full_replay(path)[1].count == 6


async def test_zero_filled_tail_from_a_page_boundary_inside_the_last_record(
    tmp_path: Path,
) -> None:
    """Power loss as the page cache makes it: the file size landed, the data only up to a
    page boundary that falls inside a record; the rest reads as zeros. No record from
    that one on was synced, so none was acknowledged under ``sync="always"``: it is a
    torn tail, exactly like zeros starting at a record boundary."""
    path = tmp_path / "db"
    await make_db(path, 8, pad=1500)
    spans = record_spans(path)
    data = seg_path(path).read_bytes()
    boundary, torn = next(
        (p, i)
        for p in range(PAGE, len(data), PAGE)
        for i, (_, start, end) in enumerate(spans)
        if start + 12 < p < end
    )
    seg_path(path).write_bytes(data[:boundary] + bytes(len(data) - boundary))
    async with koru.open(path, sync="always") as db:
        assert seg_path(path).stat().st_size == spans[torn][1]
        assert await db.keys(NS) == sorted(f"k{i}" for i in range(torn))


# -- (d) checkpoints -------------------------------------------------------------------


async def build_workload_db(path: Path, n: int = 40, **kw: Any) -> None:
    async with koru.open(path, sync="os", **kw) as db:
        await workload(db, 1, n)


async def test_missing_checkpoint_gives_the_same_state(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await build_workload_db(path)
    async with koru.open(path, readonly=True) as db:
        assert db.stats().checkpoint_events == 40 and db.stats().replayed_events == 0
        with_checkpoint = await state(db, WORKLOAD_KEYS)
    (path / CHECKPOINT_FILE).unlink()
    async with koru.open(path) as db:
        assert db.stats().checkpoint_events == 0 and db.stats().replayed_events == 40
        assert await state(db, WORKLOAD_KEYS) == with_checkpoint
    # The close wrote a new checkpoint, and it is used.
    async with koru.open(path) as db:
        assert db.stats().checkpoint_events == 40
        assert await state(db, WORKLOAD_KEYS) == with_checkpoint
    assert with_checkpoint == await reference_state(path, tmp_path / "ref")


def load_with_checkpoint(path: Path, data: bytes) -> Any:
    (path / CHECKPOINT_FILE).write_bytes(data)
    store = FileStore(path, readonly=True)
    try:
        return load(store)
    finally:
        store.close()


async def test_corrupt_checkpoint_falls_back_to_replay(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await build_workload_db(path)
    good = (path / CHECKPOINT_FILE).read_bytes()
    ref_kv, _ = full_replay(path)
    ref_ns = ref_kv.snapshot()["ns"]
    assert load_with_checkpoint(path, good).from_checkpoint == 40

    rng = random.Random(2)
    bits = list(range(40 * 8)) + rng.sample(range(40 * 8, len(good) * 8), 300)
    lengths = [*range(64), *range(64, len(good), 37)]
    damaged = [flip_bit(good, b) for b in bits] + [good[:n] for n in lengths]
    for data in damaged:
        loaded = load_with_checkpoint(path, data)
        assert (loaded.from_checkpoint, loaded.replayed) == (0, 40)
        assert digest_of(loaded.kv) == digest_of(ref_kv)
        assert loaded.kv.snapshot()["ns"] == ref_ns

    # A sample through koru.open: same state, and the close replaces the checkpoint.
    ref = await reference_state(path, tmp_path / "ref")
    for data in [*damaged[::50], good[:-1]]:
        (path / CHECKPOINT_FILE).write_bytes(data)
        async with koru.open(path) as db:
            assert db.stats().checkpoint_events == 0
            assert await state(db, WORKLOAD_KEYS) == ref
        decode_checkpoint((path / CHECKPOINT_FILE).read_bytes())


def checkpoint_blob(body: Any) -> bytes:
    raw = body if isinstance(body, bytes) else cbor2.dumps(body)
    return b"KORUCKP1" + blake3.blake3(raw).digest() + raw


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00" * 200,
        b"KORUCKP1",
        b"KORUCKP1" + bytes(32),
        bytes(range(256)) * 8,
        checkpoint_blob(b"\xff\xff"),
        checkpoint_blob([1, 2, 3]),
        checkpoint_blob({"format": 1}),
        checkpoint_blob({"format": 2, "kv": {}, "feeds": {}, "cursors": {}, "hlc": 0}),
        checkpoint_blob({"format": 1, "kv": {"ns": []}, "feeds": {}, "cursors": {}, "hlc": 0}),
    ],
    ids=[
        "empty",
        "zeros",
        "magic-only",
        "magic-and-zero-digest",
        "random",
        "bad-cbor",
        "not-a-map",
        "missing-fields",
        "unknown-format",
        "wrong-types",
    ],
)
async def test_garbage_checkpoint_falls_back_to_replay(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "db"
    await build_workload_db(path)
    ref = await reference_state(path, tmp_path / "ref")
    (path / CHECKPOINT_FILE).write_bytes(garbage)
    async with koru.open(path) as db:
        assert db.stats().checkpoint_events == 0 and db.stats().replayed_events == 40
        assert await state(db, WORKLOAD_KEYS) == ref
    async with koru.open(path) as db:
        assert db.stats().checkpoint_events == 40
        assert await state(db, WORKLOAD_KEYS) == ref


async def test_stale_checkpoint_replays_the_tail_across_segments(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await build_workload_db(path, 20, segment_size=1024)
    stale = (path / CHECKPOINT_FILE).read_bytes()
    async with koru.open(path, sync="os", segment_size=1024) as db:
        await workload(db, 2, 30)
    cursor = decode_checkpoint(stale).cursors[AGENT]
    last_segment = max(int(p.stem) for p in (path / "logs" / AGENT).glob("*.seg"))
    assert cursor.count == 20 and cursor.segment < last_segment
    ref = await reference_state(path, tmp_path / "ref")
    (path / CHECKPOINT_FILE).write_bytes(stale)
    async with koru.open(path, segment_size=1024) as db:
        assert (db.stats().checkpoint_events, db.stats().replayed_events) == (20, 30)
        assert await state(db, WORKLOAD_KEYS) == ref
        await db.put("a", "k0", "after")
    kv, _ = full_replay(path)
    async with koru.open(path) as db:
        assert (db.stats().checkpoint_events, db.stats().replayed_events) == (51, 0)
        assert db.digest() == digest_of(kv)
        assert await db.get("a", "k0") == "after"


async def test_stale_checkpoint_at_the_start_of_a_segment(tmp_path: Path) -> None:
    """A checkpoint taken when the last segment held only its header (cursor ``last``
    is -1), then more records in that segment."""
    path = tmp_path / "db"
    await make_db(path, 5)
    size = seg_path(path).stat().st_size
    async with koru.open(path, sync="always", segment_size=size) as db:
        await db.put(NS, "k5", value(5))
    os.truncate(seg_path(path, 2), SEGMENT_HEADER_SIZE + 3)  # torn first record
    async with koru.open(path, segment_size=size):
        pass  # recovers, and its close checkpoints the header-only segment
    stale = (path / CHECKPOINT_FILE).read_bytes()
    cursor = decode_checkpoint(stale).cursors[AGENT]
    assert (cursor.segment, cursor.offset, cursor.last) == (2, SEGMENT_HEADER_SIZE, -1)
    async with koru.open(path, segment_size=size) as db:
        await db.put(NS, "k6", value(6))
    (path / CHECKPOINT_FILE).write_bytes(stale)
    async with koru.open(path) as db:
        assert (db.stats().checkpoint_events, db.stats().replayed_events) == (5, 1)
        assert await db.get(NS, "k6") == value(6)
        assert db.digest() == digest_of(full_replay(path)[0])


async def test_checkpoint_of_another_log_falls_back_to_replay(tmp_path: Path) -> None:
    """The log was replaced by another with records of exactly the same sizes: the
    checkpoint's cursor lands on a record boundary, only the chain root tells."""
    a, b = tmp_path / "a", tmp_path / "b"
    async with koru.open(a, sync="os") as db:
        await workload(db, 3, 30, tag="a")
    async with koru.open(b, sync="os") as db:
        await workload(db, 3, 30, tag="b")
    ca = decode_checkpoint((a / CHECKPOINT_FILE).read_bytes()).cursors[AGENT]
    cb = decode_checkpoint((b / CHECKPOINT_FILE).read_bytes()).cursors[AGENT]
    assert (ca.count, ca.segment, ca.offset, ca.last) == (cb.count, cb.segment, cb.offset, cb.last)
    assert ca.root != cb.root
    ref = await reference_state(b, tmp_path / "ref")
    shutil.copy(a / CHECKPOINT_FILE, b / CHECKPOINT_FILE)
    async with koru.open(b) as db:
        assert db.stats().checkpoint_events == 0
        assert await state(db, WORKLOAD_KEYS) == ref


async def test_checkpoint_ahead_of_the_log_falls_back_to_replay(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await build_workload_db(path, 30, segment_size=1024)
    segs = sorted((path / "logs" / AGENT).glob("*.seg"))
    assert len(segs) >= 3
    cases = {
        "last record removed": lambda: os.truncate(
            seg_path(path, int(segs[-1].stem)), record_spans(path)[-1][1]
        ),
        "last segment removed": lambda: segs[-1].unlink(),
        "whole log removed": lambda: shutil.rmtree(path / "logs" / AGENT),
    }
    base = copy_db(path, tmp_path / "base")
    for name, damage in cases.items():
        copy_db(base, path)
        damage()
        ref = await reference_state(path, tmp_path / "ref")
        async with koru.open(path, readonly=True) as db:
            assert db.stats().checkpoint_events == 0, name
            assert await state(db, WORKLOAD_KEYS) == ref, name
    # With no log at all, the state is empty whatever the checkpoint said.
    assert ref["events"] == 0 and ref["keys"] == {"a": [], "b": []}


def slow_tracked_disk(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Make fdatasync slow (so it runs in a worker thread) and track, per file, how much
    data each fdatasync made durable: the data written before it started, not the
    file's size, which runs ahead because the store allocates space ahead."""
    real_fdatasync, real_pwrite = os.fdatasync, os.pwrite
    durable: dict[str, int] = {}
    written: dict[str, int] = {}

    def tracking_pwrite(fd: int, data: Any, offset: int) -> int:
        n = real_pwrite(fd, data, offset)
        target = os.readlink(f"/proc/self/fd/{fd}")
        written[target] = max(written.get(target, 0), offset + n)
        return n

    def slow_fdatasync(fd: int) -> None:
        time.sleep(0.005)  # a slow device
        target = os.readlink(f"/proc/self/fd/{fd}")
        size = written.get(target, 0)
        real_fdatasync(fd)
        durable[target] = max(durable.get(target, 0), size)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    monkeypatch.setattr(os, "pwrite", tracking_pwrite)
    return durable


async def test_checkpoint_names_only_durable_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint's cursors must not run ahead of what is synced (the contract in
    ``Database._write_checkpoint``): after a power loss the log may end at the last
    sync, and a checkpoint naming later records would describe writes that are gone.

    Here fsync is slow (so it runs in a worker thread) and a writer keeps appending
    while a checkpoint is being taken.
    """
    durable = slow_tracked_disk(monkeypatch)
    violations: list[tuple[int, int]] = []

    real_write_file = FileStore.write_file

    def write_file(self: FileStore, name: str, *parts: bytes) -> None:
        if name == CHECKPOINT_FILE:
            c = decode_checkpoint(b"".join(parts)).cursors[AGENT]
            synced = durable.get(str(seg_path(self.path, c.segment).resolve()), 0)
            if c.offset > synced:
                violations.append((c.offset, synced))
        real_write_file(self, name, *parts)

    monkeypatch.setattr(FileStore, "write_file", write_file)
    async with koru.open(tmp_path / "db", sync="os") as db:
        await db.put(NS, "first", 0)
        for _ in range(3):
            await db.checkpoint()

        async def writer() -> None:
            for i in range(40):
                await db.put(NS, f"k{i}", i)
                await trio.sleep(0.0005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            for _ in range(3):
                await trio.sleep(0.003)
                await db.checkpoint()
    assert violations == [], "checkpoint cursor (offset) ahead of the synced log (size)"


# -- (e) the lock ----------------------------------------------------------------------


async def test_second_writable_open_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path) as db:
        await db.put(NS, "k", 1)
        with pytest.raises(DatabaseLockedError):
            async with koru.open(path):
                pass
        with pytest.raises(DatabaseLockedError):
            open_store(path)
        async with koru.open(path, readonly=True) as reader:
            assert await reader.get(NS, "k") == 1
        await db.put(NS, "k", 2)  # the failed opens did not disturb the writer
    async with koru.open(path) as db:
        assert await db.get(NS, "k") == 2


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        assert chunk, f"child closed its output: {buf!r}"
        buf += chunk
    return buf


async def test_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await make_db(path, 2)
    cfg = json.dumps({"mode": "hold", "path": str(path)})
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(CHILD), cfg],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        with trio.fail_after(30):
            ready = json.loads(await read_line(proc.stdout))
        assert ready["op"] == "ready"
        with pytest.raises(DatabaseLockedError):
            async with koru.open(path):
                pass
        async with koru.open(path, readonly=True) as db:
            assert await db.get("held", "key") == {"pid": ready["pid"]}
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
    assert proc.returncode == -signal.SIGKILL
    async with koru.open(path) as db:
        assert [v.write_id for v in await db.history("held", "key")] == [ready["write_id"]]
        assert await db.keys(NS) == ["k0", "k1"]
        await db.put(NS, "k2", 2)


async def test_readonly_open_alongside_a_writer_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, sync="always") as writer:
        await workload(writer, 4, 30)
        await writer.checkpoint()
        await workload(writer, 5, 10)  # a tail after the checkpoint
        expected = await state(writer, WORKLOAD_KEYS)
        before = tree(path)
        async with koru.open(path, readonly=True) as reader:
            assert reader.readonly
            assert await state(reader, WORKLOAD_KEYS) == expected
            for attempt in (
                reader.put("a", "k0", 1),
                reader.put_batch([("a", "k0", 1)]),
                reader.delete("a", "k0"),
                reader.checkpoint(),
            ):
                with pytest.raises(ReadOnlyError):
                    await attempt
        assert tree(path) == before, "a read-only open changed files"
        await writer.put("a", "k0", "later")
        async with koru.open(path, readonly=True) as reader:
            assert await reader.get("a", "k0") == "later"


@pytest.mark.parametrize("damage", ["torn-tail", "zero-tail", "empty-segment", "no-meta"])
async def test_readonly_open_of_a_damaged_log_changes_nothing(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "db"
    versions = await make_db(path, 4)
    stale = (path / CHECKPOINT_FILE).read_bytes()
    async with koru.open(path, sync="always") as db:
        doomed = await db.put(NS, "k4", value(4))
    (path / CHECKPOINT_FILE).write_bytes(stale)  # stale: names 4 of the 5 records
    spans = record_spans(path)
    expect = 5
    if damage == "torn-tail":
        os.truncate(seg_path(path), spans[-1][1] + 20)
        expect = 4
    elif damage == "zero-tail":
        with seg_path(path).open("ab") as f:
            f.write(bytes(500))
    elif damage == "empty-segment":
        seg_path(path, 2).write_bytes(b"")
    else:
        (path / "meta").unlink()
        (path / CHECKPOINT_FILE).unlink()
    before = tree(path)
    async with koru.open(path, readonly=True) as db:
        assert db.stats().events == expect
        for i, v in enumerate(versions):
            assert await db.get(NS, f"k{i}") == value(i)
            assert (await db.get_versioned(NS, f"k{i}")).write_id == v.write_id
        if expect == 5:
            assert (await db.get_versioned(NS, "k4")).write_id == doomed.write_id
        else:
            assert not await db.contains(NS, "k4")
    assert tree(path) == before, "a read-only open changed files"
    async with koru.open(path) as db:  # a writable open then repairs
        assert db.stats().events == expect
    assert full_replay(path)[1].offset == max(
        p.stat().st_size for p in (path / "logs" / AGENT).glob("*.seg")
    )


# -- (f) failed writes and fsyncs are fatal --------------------------------------------


class Disk:
    """Wraps ``os.fdatasync``/``os.fsync``/``os.pwrite`` to remember what is durable and
    to fail on demand.

    The store allocates segment space ahead (the file's size runs ahead of its data),
    so what a sync makes durable is the data written so far, not the file's size.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real_fdatasync = os.fdatasync
        self.real_fsync = os.fsync
        self.real_pwrite = os.pwrite
        #: Segment path -> bytes of data written, and known to be on stable storage.
        self.written: dict[str, int] = {}
        self.durable: dict[str, int] = {}
        self.fail_fdatasync = False
        self.fail_dir_fsync = False
        self.fail_segment_write = False
        self._fail_next_write = False
        monkeypatch.setattr(os, "fdatasync", self.fdatasync)
        monkeypatch.setattr(os, "fsync", self.fsync)
        monkeypatch.setattr(os, "pwrite", self.pwrite)

    @staticmethod
    def target(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    def _synced(self, fd: int) -> None:
        path = self.target(fd)
        if path.endswith(".seg"):
            size = min(self.written.get(path, 0), os.fstat(fd).st_size)
            self.durable[path] = max(self.durable.get(path, 0), size)

    def fdatasync(self, fd: int) -> None:
        if self.fail_fdatasync:
            raise OSError(errno.EIO, "simulated fdatasync failure")
        self.real_fdatasync(fd)
        self._synced(fd)

    def fsync(self, fd: int) -> None:
        if self.fail_dir_fsync and stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "simulated directory fsync failure")
        self.real_fsync(fd)
        self._synced(fd)

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        path = self.target(fd)
        if (self.fail_segment_write or self._fail_next_write) and path.endswith(".seg"):
            if self._fail_next_write:
                self._fail_next_write = False
                raise OSError(errno.ENOSPC, "simulated full disk")
            # A short write first (half the record reaches the file), then ENOSPC.
            self.fail_segment_write = False
            self._fail_next_write = True
            data = bytes(data)[: len(data) // 2]
        n = self.real_pwrite(fd, data, offset)
        self.written[path] = max(self.written.get(path, 0), offset + n)
        return n

    def power_loss(self, path: Path) -> None:
        """Cut every segment back to what was synced, as a power cut would."""
        for seg in (path / "logs" / AGENT).glob("*.seg"):
            os.truncate(seg, self.durable.get(str(seg.resolve()), 0))


async def assert_dead(db: koru.Database) -> None:
    """Every later operation fails; none is acknowledged."""
    dead = (DatabaseClosedError, DurabilityError)
    attempts = [
        db.put(NS, "later", 1),
        db.put_batch([(NS, "later", 1)]),
        db.delete(NS, "k0"),
        db.get(NS, "k0"),
        db.history(NS, "k0"),
        db.keys(NS),
        db.checkpoint(),
    ]
    for attempt in attempts:
        with pytest.raises(dead):
            await attempt


async def test_failed_fdatasync_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "db"
    disk = Disk(monkeypatch)
    acked: list[tuple[str, int, koru.Version]] = []
    async with koru.open(path, sync="always") as db:
        for i in range(10):
            acked.append((f"k{i}", i, await db.put(NS, f"k{i}", i)))
        disk.fail_fdatasync = True
        with pytest.raises(DurabilityError):
            await db.put(NS, "doomed", 1)
        await assert_dead(db)
    # No checkpoint was written after the failure (it would name unsynced records).
    assert not (path / CHECKPOINT_FILE).exists()
    disk.fail_fdatasync = False
    disk.power_loss(path)
    async with koru.open(path) as db:
        for key, v, version in acked:
            assert [h.write_id for h in await db.history(NS, key)] == [version.write_id]
            assert await db.get(NS, key) == v
        assert not await db.contains(NS, "doomed")


async def test_failed_fdatasync_fails_every_waiting_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db"
    disk = Disk(monkeypatch)
    acked: list[koru.Version] = []
    outcomes: list[object] = []
    async with koru.open(path, sync="always", checkpoint_every=3) as db:
        for i in range(5):
            acked.append(await db.put(NS, f"k{i}", i))
        disk.fail_fdatasync = True

        async def writer(i: int) -> None:
            try:
                outcomes.append(await db.put(NS, f"w{i}", i))
            except (DurabilityError, DatabaseClosedError) as exc:
                outcomes.append(type(exc))

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(writer, i)
    assert len(outcomes) == 8
    assert all(o in (DurabilityError, DatabaseClosedError) for o in outcomes), outcomes
    assert DurabilityError in outcomes
    disk.fail_fdatasync = False
    disk.power_loss(path)
    async with koru.open(path) as db:
        for i, version in enumerate(acked):
            assert (await db.get_versioned(NS, f"k{i}")).write_id == version.write_id
        for i in range(8):
            assert not await db.contains(NS, f"w{i}")


async def test_failed_directory_fsync_is_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first put creates the log's directory and segment; if syncing the directory
    fails, the segment may not exist after a power loss: nothing is acknowledged."""
    path = tmp_path / "db"
    disk = Disk(monkeypatch)
    async with koru.open(path, sync="always") as db:
        disk.fail_dir_fsync = True
        with pytest.raises(DurabilityError):
            await db.put(NS, "k0", 0)
        await assert_dead(db)
    disk.fail_dir_fsync = False
    assert not (path / CHECKPOINT_FILE).exists()
    async with koru.open(path) as db:  # the lock was released; the log is consistent
        assert db.stats().events in (0, 1)


@pytest.mark.parametrize("sync", ["always", "os"])
async def test_failed_write_is_fatal_and_its_torn_record_is_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str
) -> None:
    path = tmp_path / "db"
    disk = Disk(monkeypatch)
    async with koru.open(path, sync=sync) as db:
        acked = [await db.put(NS, f"k{i}", i) for i in range(5)]
        target = str(seg_path(path).resolve())
        size = disk.written[target]  # the data's end (the file is allocated ahead)
        disk.fail_segment_write = True
        with pytest.raises(DurabilityError):
            await db.put(NS, "doomed", "x" * 200)
        assert size < disk.written[target]  # half a record reached the file
        await assert_dead(db)
    # The half record was erased when the write failed, and the failed handle's close
    # left the file alone (no truncation to the data's end).
    after = seg_path(path).read_bytes()
    assert len(after) > size and not any(after[size:])
    async with koru.open(path) as db:
        assert seg_path(path).stat().st_size == size
        for i, version in enumerate(acked):
            assert (await db.get_versioned(NS, f"k{i}")).write_id == version.write_id
        with pytest.raises(KeyNotFoundError):
            await db.get(NS, "doomed")
        await db.put(NS, "after", 1)
    assert full_replay(path)[1].count == 6


async def test_acknowledged_only_after_the_fsync_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sync="always"``: a put returns only once an fsync that *finished* covers its
    record, even while checkpoints (which sync too) run concurrently on a slow device
    (fsync in a worker thread)."""
    durable = slow_tracked_disk(monkeypatch)

    # Where the current task's last appended record ends (a context variable: each
    # trio task sees its own).
    record_end: contextvars.ContextVar[tuple[str, int]] = contextvars.ContextVar("record_end")
    real_append = FileStore.append

    def append(self: FileStore, agent: str, data: bytes, event_id: bytes) -> tuple[int, bytes]:
        location, root = real_append(self, agent, data, event_id)
        _, seg, offset = unpack_location(location)
        end = offset + len(encode_record(root, data))
        record_end.set((str(seg_path(self.path, seg).resolve()), end))
        return location, root

    monkeypatch.setattr(FileStore, "append", append)
    unsafe: list[tuple[int, int]] = []
    acks = 0
    async with koru.open(tmp_path / "db", sync="always") as db:
        await db.put(NS, "first", 0)

        async def writer(w: int) -> None:
            nonlocal acks
            for i in range(100):
                await db.put(NS, f"w{w}", i)
                acks += 1
                target, end = record_end.get()
                if durable.get(target, 0) < end:
                    unsafe.append((end, durable.get(target, 0)))

        async def checkpointer() -> None:
            while acks < 400:
                await db.checkpoint()
                await trio.sleep(0.001)

        async with trio.open_nursery() as nursery:
            for w in range(4):
                nursery.start_soon(writer, w)
            nursery.start_soon(checkpointer)
    assert acks == 400
    assert unsafe == [], f"{len(unsafe)} puts acknowledged before their fsync finished"


async def test_failed_fdatasync_at_close_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``sync="os"`` the close is where data gets synced: a failure there raises
    out of the ``async with`` and writes no checkpoint."""
    path = tmp_path / "db"
    disk = Disk(monkeypatch)
    with pytest.raises(DurabilityError):
        async with koru.open(path, sync="os") as db:
            await db.put(NS, "k0", 0)
            disk.fail_fdatasync = True
    assert not (path / CHECKPOINT_FILE).exists()
    disk.fail_fdatasync = False
    async with koru.open(path) as db:  # the lock was released
        assert await db.get(NS, "k0") == 0


def test_a_full_segment_is_synced_before_the_next_one_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Why it matters: if a new segment reached the disk while its predecessor's last
    # records did not, the chain would read as broken after a power cut.
    from koru.events import _file_store

    calls: list[tuple[str, object]] = []
    real_open, real_sync = os.open, os.fdatasync

    def spy_open(path: Any, flags: int, *args: Any) -> int:
        fd = real_open(path, flags, *args)
        if str(path).endswith(".seg") and flags & os.O_CREAT:
            calls.append(("create", Path(path).name))
        if str(path).endswith(".seg"):
            calls.append(("fd", (fd, Path(path).name)))
        return fd

    def spy_sync(fd: int) -> None:
        calls.append(("sync", fd))
        real_sync(fd)

    monkeypatch.setattr(_file_store.os, "open", spy_open)
    monkeypatch.setattr(_file_store.os, "fdatasync", spy_sync)
    store = open_store(tmp_path / "db", segment_size=600)
    for i in range(12):
        data = bytes([i]) * 100
        store.append("storage", data, blake3.blake3(data).digest())
    store.close()
    fds = {name: fd for kind, v in calls if kind == "fd" for fd, name in [v]}  # type: ignore[misc]
    creates = [v for kind, v in calls if kind == "create"]
    assert len(creates) >= 3
    for older, newer in itertools.pairwise(creates):
        created_at = calls.index(("create", newer))
        assert ("sync", fds[older]) in calls[:created_at], f"{older} not synced before {newer}"


async def _crashed_copy(tmp_path: Path, puts: int) -> tuple[Path, int, int]:
    """A copy of a live database's directory, as a crash would leave it: the active
    segment allocated ahead (zeros after the data). Returns (copy, start of the last
    record, end of the data)."""
    path = tmp_path / "db"
    async with koru.open(path, sync="always") as db:
        for i in range(puts):
            await db.put(NS, f"k{i}", {"i": i, "pad": "x" * 150})
        cursor = db._store.cursor(AGENT)
        copy = tmp_path / "crashed"
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns("LOCK", "checkpoint"))
    assert seg_path(copy).stat().st_size > cursor.offset  # allocated ahead
    return copy, cursor.last, cursor.offset


async def test_damage_in_the_last_record_before_allocated_zeros_is_corruption(
    tmp_path: Path,
) -> None:
    copy, last, _ = await _crashed_copy(tmp_path, 6)
    with seg_path(copy).open("r+b") as f:
        f.seek(last + 40)
        byte = f.read(1)
        f.seek(last + 40)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(CorruptLogError) as err:
        async with koru.open(copy):
            pass
    assert err.value.offset == last


async def test_a_record_cut_at_a_sector_boundary_is_the_logs_end(tmp_path: Path) -> None:
    copy, last, end = await _crashed_copy(tmp_path, 6)
    boundary = (last // 512 + 1) * 512
    assert boundary < end, "the test needs a last record that crosses a sector boundary"
    with seg_path(copy).open("r+b") as f:  # the sectors after the boundary never landed
        f.seek(boundary)
        f.write(bytes(end - boundary))
    async with koru.open(copy) as db:
        assert db.stats().events == 5
        assert not await db.contains(NS, "k5")
        assert await db.get(NS, "k4") == {"i": 4, "pad": "x" * 150}
    assert seg_path(copy).stat().st_size == last


def test_sync_leaves_buffers_to_the_appending_thread(tmp_path: Path) -> None:
    """The committer may run the fsync in a worker thread while the event loop keeps
    appending. If that thread also moved buffered records to the file, two threads
    could write at the same offset (seen as a broken chain after a bulk load); so sync
    never touches buffers, and callers flush on the appending thread first."""
    store = open_store(tmp_path / "db", buffered=True)
    for i in range(50):
        data = i.to_bytes(4, "big") * 20
        store.append(AGENT, data, blake3.blake3(data).digest())
    size = seg_path(tmp_path / "db").stat().st_size
    store.sync()
    assert seg_path(tmp_path / "db").stat().st_size == size  # buffers untouched
    store.flush()
    store.sync()
    store.close()
    store = FileStore(tmp_path / "db", readonly=True)
    assert len(list(store.replay(AGENT))) == 50
    store.close()


async def test_a_readonly_open_reads_past_a_record_being_written(tmp_path: Path) -> None:
    # A reader may open while the writer is inside a write: the record it meets is cut
    # short at an arbitrary byte, followed by space allocated ahead. The reader sees
    # the log up to there; a writable open would call the same bytes corruption, since
    # after a crash only whole sectors go missing.
    copy, last, end = await _crashed_copy(tmp_path, 6)
    stop = last + (end - last) // 2 + 3
    assert stop % 512, "the cut must not fall on a sector boundary"
    with seg_path(copy).open("r+b") as f:
        f.seek(stop)
        f.write(bytes(end - stop))
    async with koru.open(copy, readonly=True) as db:
        assert db.stats().events == 5
        assert await db.get(NS, "k4") == {"i": 4, "pad": "x" * 150}
    with pytest.raises(CorruptLogError):
        async with koru.open(copy):
            pass
