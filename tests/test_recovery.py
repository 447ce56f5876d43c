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
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import cbor2
import pytest
import trio
import trio.testing
from test_store_contract import make_events

import koru
from conftest import digest_of, full_replay, open_store
from koru import (
    CorruptLogError,
    DatabaseClosedError,
    DatabaseLockedError,
    DataLossError,
    DurabilityError,
    KeyNotFoundError,
    ReadOnlyError,
)
from koru._loader import CHECKPOINT_FILE, load
from koru.events import (
    LOST_FOUND,
    FileStore,
    OsDisk,
    agent_index,
    decode_trusted,
    unpack_location,
    verify_logs,
)
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
        "digest": (await db.digest()),
        "root": (await db.roots())[AGENT],
        "keys": {ns: await db.keys(ns) for ns in namespaces},
        "history": {
            f"{ns}/{k}": [
                (v.write_id, v.value, v.deleted, v.previous, v.timestamp)
                for v in await db.history(ns, k)
            ]
            for ns, k in keys
        },
        "events": (await db.stats()).events,
        "versions": (await db.stats()).versions,
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
        assert (await db.stats()).checkpoint_events == 0
        ref = await state(db, WORKLOAD_KEYS)
    kv, _ = full_replay(path)
    assert ref["digest"] == digest_of(kv)
    return ref


# -- (a) torn tails: truncation at every offset ----------------------------------------


async def stale_base(path: Path, n: int, **kw: Any) -> tuple[list[koru.Version], bytes]:
    """A database of ``n`` puts whose last record no checkpoint names, as a crash right
    after that write leaves it: returns the versions and the (stale) checkpoint, which
    proves the first ``n - 1`` records durable and is the one on disk."""
    versions = await make_db(path, n - 1, **kw)
    stale = (path / CHECKPOINT_FILE).read_bytes()
    async with koru.open(path, sync="always", **kw) as db:
        versions.append(await db.put(NS, f"k{n - 1}", value(n - 1)))
    (path / CHECKPOINT_FILE).write_bytes(stale)
    return versions, stale


def lost_found(path: Path) -> dict[str, bytes]:
    directory = path / LOST_FOUND
    return {p.name: p.read_bytes() for p in directory.iterdir()} if directory.exists() else {}


async def test_truncation_at_every_offset_of_last_record(tmp_path: Path) -> None:
    base = tmp_path / "base"
    versions, _ = await stale_base(base, 5)
    spans = record_spans(base)
    assert len(spans) == 5 and {s for s, _, _ in spans} == {1}
    end4 = spans[3][2]
    _, start5, end5 = spans[4]
    assert end4 == start5 and seg_path(base).stat().st_size == end5
    original = seg_path(base).read_bytes()

    # The reference: the log holding exactly the first four records.
    ref_dir = copy_db(base, tmp_path / "ref", checkpoint=False)
    os.truncate(seg_path(ref_dir), start5)
    ref_kv, ref_cursor = full_replay(ref_dir)
    assert ref_cursor.count == 4

    work = tmp_path / "work"
    for cut in range(start5, end5):
        # Half the runs keep the stale checkpoint (it names four records), half have
        # none: either way the fifth record was never proven durable.
        copy_db(base, work, checkpoint=cut % 2 == 0)
        os.truncate(seg_path(work), cut)
        async with koru.open(work, sync="always") as db:
            assert seg_path(work).stat().st_size == start5, f"cut at {cut}: tail not cut back"
            assert await db.keys(NS) == ["k0", "k1", "k2", "k3"]
            for i in range(4):
                assert [v.write_id for v in await db.history(NS, f"k{i}")] == [versions[i].write_id]
                assert await db.get(NS, f"k{i}") == value(i)
            assert await db.history(NS, "k4") == []
            assert (await db.digest()) == digest_of(ref_kv)
            assert (await db.roots())[AGENT] == ref_cursor.root.hex()
            assert (await db.stats()).events == 4
            # What the cut record held is kept, never silently dropped.
            assert (await db.stats()).set_aside_files == (cut > start5)
            new = await db.put(NS, "after", {"cut": cut})
            digest = await db.digest()
        kept = list(lost_found(work).values())
        assert kept == ([original[start5:cut].rstrip(b"\0")] if cut > start5 else [])
        kv, cursor = full_replay(work)
        assert digest_of(kv) == digest and cursor.count == 5
        async with koru.open(work) as db:
            assert await db.keys(NS) == ["after", "k0", "k1", "k2", "k3"]
            assert await db.get(NS, "after") == {"cut": cut}
            assert [v.write_id for v in await db.history(NS, "after")] == [new.write_id]
            assert (await db.digest()) == digest

    # The same cuts under a checkpoint that names the fifth record: it was proven
    # durable, so its loss is reported, and nothing is changed (the checkpoint stays).
    async with koru.open(base) as db:
        await db.checkpoint()
    for cut in (start5, start5 + 1, (start5 + end5) // 2, end5 - 1):
        copy_db(base, work)
        os.truncate(seg_path(work), cut)
        before = tree(work)
        for readonly in (True, False):
            with pytest.raises(DataLossError) as info:
                async with koru.open(work, readonly=readonly):
                    pass
            assert (info.value.position, info.value.offset) == (4, start5), info.value
            assert info.value.path == str(seg_path(work))
        assert tree(work) == before


async def test_truncation_at_every_offset_of_new_segment(tmp_path: Path) -> None:
    """A crash right after a segment rotation: the new segment's header, then its first
    record, cut at every byte. The manifest (in ``meta``) lists a segment only once its
    header is durable, so a crash can tear only the header of a segment it does not
    list yet; a listed segment with a torn header is corruption."""
    base = tmp_path / "base"
    versions = await make_db(base, 5)
    seg1_size = seg_path(base).stat().st_size
    unlisted = (base / "meta").read_bytes()  # the manifest before segment 2 existed
    stale = (base / CHECKPOINT_FILE).read_bytes()  # names the five records of segment 1
    # Reopen with segments no larger than the first one: the sixth put starts segment 2.
    async with koru.open(base, sync="always", segment_size=seg1_size) as db:
        await db.put(NS, "k5", value(5))
    (base / CHECKPOINT_FILE).write_bytes(stale)
    seg2 = seg_path(base, 2).read_bytes()
    assert seg_path(base).stat().st_size == seg1_size
    assert len(seg2) > SEGMENT_HEADER_SIZE
    header = parse_segment_header(seg2)
    assert header.first_index == 5

    ref_dir = copy_db(base, tmp_path / "ref", checkpoint=False)
    seg_path(ref_dir, 2).unlink()
    (ref_dir / "meta").write_bytes(unlisted)
    ref_kv, ref_cursor = full_replay(ref_dir)

    work = tmp_path / "work"
    for cut in range(len(seg2)):
        copy_db(base, work, checkpoint=cut % 2 == 1)
        if cut < SEGMENT_HEADER_SIZE:
            (work / "meta").write_bytes(unlisted)
        os.truncate(seg_path(work, 2), cut)
        async with koru.open(work, sync="always", segment_size=seg1_size) as db:
            if cut < SEGMENT_HEADER_SIZE:
                # The header never fully landed: the segment is dropped, its bytes kept.
                assert not seg_path(work, 2).exists(), f"cut at {cut}"
                kept = seg2[:cut].rstrip(b"\0")
            else:
                assert seg_path(work, 2).stat().st_size == SEGMENT_HEADER_SIZE, f"cut at {cut}"
                kept = seg2[SEGMENT_HEADER_SIZE:cut].rstrip(b"\0")
            assert list(lost_found(work).values()) == ([kept] if kept else [])
            assert (await db.stats()).set_aside_bytes == len(kept)
            assert seg_path(work).stat().st_size == seg1_size
            assert await db.keys(NS) == [f"k{i}" for i in range(5)]
            assert [v.write_id for v in await db.history(NS, "k4")] == [versions[4].write_id]
            assert (await db.digest()) == digest_of(ref_kv)
            assert (await db.roots())[AGENT] == ref_cursor.root.hex()
            new = await db.put(NS, "after", {"cut": cut})
        assert seg_path(work, 2).exists()
        kv, cursor = full_replay(work)
        assert cursor.count == 6 and cursor.segment == 2
        async with koru.open(work) as db:
            assert [v.write_id for v in await db.history(NS, "after")] == [new.write_id]
            assert await db.get(NS, "after") == {"cut": cut}
            assert (await db.digest()) == digest_of(kv)

    for cut in (0, 1, SEGMENT_HEADER_SIZE // 2, SEGMENT_HEADER_SIZE - 1):
        copy_db(base, work, checkpoint=False)  # the manifest lists segment 2
        os.truncate(seg_path(work, 2), cut)
        before = tree(work)
        with pytest.raises(CorruptLogError) as info:
            async with koru.open(work, segment_size=seg1_size):
                pass
        assert (info.value.position, info.value.offset) == (5, 0)
        assert info.value.path == str(seg_path(work, 2))
        assert tree(work) == before


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
    # A full replay from genesis, held to the checkpoint's cursor (the whole log was
    # proven durable): every flipped bit is reported at its exact record.
    base = tmp_path / "base"
    await make_db(base, 5)
    spans = record_spans(base)
    original = seg_path(base).read_bytes()
    assert len(original) == spans[-1][2]
    work = copy_db(base, tmp_path / "work")
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
        assert err.path == str(seg)


async def test_a_damaged_body_is_named_a_checksum_failure_not_a_broken_link(
    tmp_path: Path,
) -> None:
    """Replay proves a record's body by its chain link alone; when the link fails, the
    record is still classified checksums first, so a damaged body reads as damage."""
    base = tmp_path / "base"
    await make_db(base, 5)
    spans = record_spans(base)
    original = seg_path(base).read_bytes()
    work = copy_db(base, tmp_path / "work")
    _, start, end = spans[2]
    for byte in (start + 12, start + 12 + 32, end - 1):  # root, event, last byte
        seg_path(work).write_bytes(flip_bit(original, byte * 8))
        store = FileStore(work, readonly=True)
        try:
            with pytest.raises(CorruptLogError) as info:
                load(store, use_checkpoint=False)
        finally:
            store.close()
        assert (info.value.position, info.value.offset) == (2, start)
        assert "body checksum" in info.value.reason, byte


async def test_a_forged_body_checksum_over_an_intact_body_is_left_to_verify(
    tmp_path: Path,
) -> None:
    """A record whose body checksum field was rewritten, with a header checksum to
    match, over an intact body: the chain proves the body, so replay serves the true
    value; ``verify_logs``, which checks every checksum, reports the record."""
    base = tmp_path / "base"
    await make_db(base, 5)
    spans = record_spans(base)
    data = bytearray(seg_path(base).read_bytes())
    _, start, _ = spans[2]
    n = int.from_bytes(data[start : start + 4], "little")
    forged = (int.from_bytes(data[start + 4 : start + 8], "little") ^ 1).to_bytes(4, "little")
    data[start + 4 : start + 8] = forged
    head = zlib.crc32(n.to_bytes(4, "little") + forged).to_bytes(4, "little")
    data[start + 8 : start + 12] = head
    work = copy_db(base, tmp_path / "work", checkpoint=False)
    seg_path(work).write_bytes(bytes(data))
    store = FileStore(work, readonly=True)
    try:
        kv = load(store, use_checkpoint=False).kv
    finally:
        store.close()
    assert kv.live == 5
    problems = list(verify_logs(work))
    assert [(p.severity, p.position, p.offset) for p in problems] == [("error", 2, start)]
    assert "body checksum" in problems[0].message


async def test_bit_flips_fail_the_open_and_leave_the_file_alone(tmp_path: Path) -> None:
    """Through ``koru.open`` (writable, checkpoint present): a flip in the segment header
    or in the record at the checkpoint's cursor (both read at every open) fails it, and
    neither the log nor the checkpoint is changed."""
    base = tmp_path / "base"
    await make_db(base, 5)
    spans = record_spans(base)
    original = seg_path(base).read_bytes()
    _, last_start, last_end = spans[-1]
    bits = [*range(0, SEGMENT_HEADER_SIZE * 8, 7), *range(last_start * 8, last_end * 8)]
    work = copy_db(base, tmp_path / "work")
    checkpoint = (work / CHECKPOINT_FILE).read_bytes()
    for bit in bits:
        damaged = flip_bit(original, bit)
        seg_path(work).write_bytes(damaged)
        with pytest.raises(CorruptLogError) as info:
            async with koru.open(work, sync="always"):
                pass
        assert info.value.position == expected_position(spans, bit // 8)[0], f"bit {bit}"
        assert seg_path(work).read_bytes() == damaged, f"bit {bit}: the open changed the log"
        assert (work / CHECKPOINT_FILE).read_bytes() == checkpoint
        assert lost_found(work) == {}


async def test_a_flipped_bit_past_the_last_checkpoint_ends_the_log(tmp_path: Path) -> None:
    """No checkpoint names the last record (a crash after writing it): a flip there is
    what a power cut can leave, so the log ends before it, and it is set aside."""
    base = tmp_path / "base"
    versions, _ = await stale_base(base, 5)
    spans = record_spans(base)
    original = seg_path(base).read_bytes()
    _, last_start, last_end = spans[-1]
    work = tmp_path / "work"
    for bit in range(last_start * 8, last_end * 8, 13):
        copy_db(base, work)
        damaged = flip_bit(original, bit)
        seg_path(work).write_bytes(damaged)
        async with koru.open(work, sync="always") as db:
            assert (await db.stats()).events == 4
            assert (await db.stats()).set_aside_files == 1
            assert not await db.contains(NS, "k4")
            assert (await db.get_versioned(NS, "k3")).write_id == versions[3].write_id
        assert seg_path(work).read_bytes() == original[:last_start]
        assert list(lost_found(work).values()) == [damaged[last_start:]]


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
    """Records that pass their checksums but do not continue the hash chain, met by a
    full replay held to the checkpoint's cursor (the whole log proven durable)."""
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
    work = copy_db(base, tmp_path / "work")

    def replay_fails() -> CorruptLogError:
        store = FileStore(work, readonly=True)
        try:
            with pytest.raises(CorruptLogError) as info:
                load(store, use_checkpoint=False)
        finally:
            store.close()
        return info.value

    for name, (records, position) in cases.items():
        damaged = header + reframe(records)
        seg_path(work).write_bytes(damaged)
        err = replay_fails()
        assert err.position == position, name
        assert "chain" in err.reason, name
        assert seg_path(work).read_bytes() == damaged, name
    # A segment header that does not continue the chain.
    bad_header = encode_segment_header(agent_index(AGENT), 1, genesis_header.prev_root)
    seg_path(work).write_bytes(bad_header + original[SEGMENT_HEADER_SIZE:])
    err = replay_fails()
    assert err.offset == 0 and "chain" in err.reason


def rewrite_record(path: Path, index: int, edit: Any) -> None:
    """Replace record ``index`` of segment 1 by ``edit(root, event)``'s (root, event),
    framed with fresh checksums: only the hash chain (and content ids) can tell."""
    data = seg_path(path).read_bytes()
    spans = [(start, end) for seg, start, end in record_spans(path) if seg == 1]
    start, end = spans[index]
    _, root, event = parse_record(data, start)
    new = encode_record(*edit(root, event))
    assert len(new) == end - start, "the edit must keep the record's size"
    seg_path(path).write_bytes(data[:start] + new + data[end:])


def swap_records(path: Path, i: int, j: int) -> None:
    data = seg_path(path).read_bytes()
    spans = [(start, end) for seg, start, end in record_spans(path) if seg == 1]
    (a0, a1), (b0, b1) = sorted([spans[i], spans[j]])
    assert a1 - a0 == b1 - b0, "swapped records must have equal sizes"
    seg_path(path).write_bytes(data[:a0] + data[b0:b1] + data[a1:b0] + data[a0:a1] + data[b1:])


def forge_value(root: bytes, event: bytes) -> tuple[bytes, bytes]:
    """The same put with another value of the same encoded size."""
    raw = cbor2.loads(event)
    old = raw[7][2]
    raw[7][2] = cbor2.dumps(cbor2.loads(old) | {"name": "FORGED!"[: len("value-1")]})
    assert len(raw[7][2]) == len(old)
    return root, cbor2.dumps(raw)


@pytest.mark.parametrize("sync", ["always", "os"])
@pytest.mark.parametrize("checkpoint", [True, False], ids=["checkpoint", "no-checkpoint"])
@pytest.mark.parametrize("tamper", ["swap", "forge"])
async def test_tampered_records_are_never_served(
    tmp_path: Path, sync: str, checkpoint: bool, tamper: str
) -> None:
    """Two records of equal size swapped (three puts to one key, then another put), or
    a value rewritten in place with both checksums fixed. With a checkpoint, records
    before its cursor are not re-read at open, so every read proves a value against the
    content id the projection recorded; without one, the replay meets the broken chain
    past the last proven point, ends the log there and sets the rest aside."""
    path = tmp_path / "db"
    async with koru.open(path, sync=sync) as db:
        written = [await db.put(NS, "k", value(i)) for i in (1, 2, 3)]
        await db.put(NS, "other", value(9))
    if not checkpoint:
        (path / CHECKPOINT_FILE).unlink()
    if tamper == "swap":
        swap_records(path, 1, 2)
        bad = 1
    else:
        rewrite_record(path, 2, forge_value)
        bad = 2
    if checkpoint:
        async with koru.open(path, readonly=True) as db:
            with pytest.raises(CorruptLogError) as info:
                await db.get(NS, "k")
            assert info.value.agent == AGENT and info.value.path == str(seg_path(path))
            assert info.value.position == 2
            with pytest.raises(CorruptLogError):
                await db.history(NS, "k")
            with pytest.raises(CorruptLogError):
                await db.get_at(NS, "k", written[bad].timestamp)
            with pytest.raises(CorruptLogError):
                await db.diff(NS, "k")
            assert await db.get(NS, "other") == value(9)
            assert (await db.stats()).corruptions == 4
    else:
        async with koru.open(path) as db:
            assert (await db.stats()).events == bad
            assert (await db.stats()).set_aside_files == 1
            assert [v.value for v in await db.history(NS, "k")] == [value(i) for i in (1, 2, 3)][
                :bad
            ]
            assert not await db.contains(NS, "other")


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
        assert (await db.digest()) == digest_of(kv)


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
    (path / CHECKPOINT_FILE).unlink()  # no checkpoint proves these records durable
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
    assert list(lost_found(path).values()) == [data[spans[torn][1] : boundary]]


# -- (d) checkpoints -------------------------------------------------------------------


async def build_workload_db(path: Path, n: int = 40, **kw: Any) -> None:
    async with koru.open(path, sync="os", **kw) as db:
        await workload(db, 1, n)


async def test_missing_checkpoint_gives_the_same_state(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await build_workload_db(path)
    async with koru.open(path, readonly=True) as db:
        assert (await db.stats()).checkpoint_events == 40 and (
            await db.stats()
        ).replayed_events == 0
        with_checkpoint = await state(db, WORKLOAD_KEYS)
    (path / CHECKPOINT_FILE).unlink()
    async with koru.open(path) as db:
        assert (await db.stats()).checkpoint_events == 0 and (
            await db.stats()
        ).replayed_events == 40
        assert await state(db, WORKLOAD_KEYS) == with_checkpoint
    # The close wrote a new checkpoint, and it is used.
    async with koru.open(path) as db:
        assert (await db.stats()).checkpoint_events == 40
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
    ref_ns = list(ref_kv.all_items())
    assert load_with_checkpoint(path, good).from_checkpoint == 40

    rng = random.Random(2)
    bits = list(range(40 * 8)) + rng.sample(range(40 * 8, len(good) * 8), 300)
    lengths = [*range(64), *range(64, len(good), 37)]
    damaged = [flip_bit(good, b) for b in bits] + [good[:n] for n in lengths]
    for data in damaged:
        loaded = load_with_checkpoint(path, data)
        assert (loaded.from_checkpoint, loaded.replayed) == (0, 40)
        assert digest_of(loaded.kv) == digest_of(ref_kv)
        assert list(loaded.kv.all_items()) == ref_ns

    # A sample through koru.open: same state, and the close replaces the checkpoint.
    ref = await reference_state(path, tmp_path / "ref")
    for data in [*damaged[::50], good[:-1]]:
        (path / CHECKPOINT_FILE).write_bytes(data)
        async with koru.open(path) as db:
            assert (await db.stats()).checkpoint_events == 0
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
        assert (await db.stats()).checkpoint_events == 0 and (
            await db.stats()
        ).replayed_events == 40
        assert await state(db, WORKLOAD_KEYS) == ref
    async with koru.open(path) as db:
        assert (await db.stats()).checkpoint_events == 40
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
        stats = await db.stats()
        assert (stats.checkpoint_events, stats.replayed_events) == (
            20,
            30,
        )
        assert await state(db, WORKLOAD_KEYS) == ref
        await db.put("a", "k0", "after")
    kv, _ = full_replay(path)
    async with koru.open(path) as db:
        stats = await db.stats()
        assert (stats.checkpoint_events, stats.replayed_events) == (51, 0)
        assert (await db.digest()) == digest_of(kv)
        assert await db.get("a", "k0") == "after"


async def test_stale_checkpoint_at_the_start_of_a_segment(tmp_path: Path) -> None:
    """A checkpoint taken when the last segment held only its header (cursor ``last``
    is -1), then more records in that segment."""
    path = tmp_path / "db"
    await make_db(path, 5)
    size = seg_path(path).stat().st_size
    five = (path / CHECKPOINT_FILE).read_bytes()
    async with koru.open(path, sync="always", segment_size=size) as db:
        await db.put(NS, "k5", value(5))
    (path / CHECKPOINT_FILE).write_bytes(five)  # a crash before a checkpoint named k5
    os.truncate(seg_path(path, 2), SEGMENT_HEADER_SIZE + 3)  # torn first record
    async with koru.open(path, segment_size=size) as db:
        await db.checkpoint()  # recovered: a checkpoint of the header-only segment
    stale = (path / CHECKPOINT_FILE).read_bytes()
    cursor = decode_checkpoint(stale).cursors[AGENT]
    assert (cursor.segment, cursor.offset, cursor.last) == (2, SEGMENT_HEADER_SIZE, -1)
    async with koru.open(path, segment_size=size) as db:
        await db.put(NS, "k6", value(6))
    (path / CHECKPOINT_FILE).write_bytes(stale)
    async with koru.open(path) as db:
        stats = await db.stats()
        assert (stats.checkpoint_events, stats.replayed_events) == (5, 1)
        assert await db.get(NS, "k6") == value(6)
        assert (await db.digest()) == digest_of(full_replay(path)[0])


async def test_a_checkpoint_of_another_node_is_ignored(tmp_path: Path) -> None:
    """A checkpoint copied from another database (its log has records of exactly the
    same sizes, so the cursor lands on a record boundary): it names another node, so it
    proves nothing about this log and is ignored; the close replaces it."""
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
        assert (await db.stats()).checkpoint_events == 0
        assert "another node" in ((await db.stats()).checkpoint_ignored or "")
        assert await state(db, WORKLOAD_KEYS) == ref
    assert decode_checkpoint((b / CHECKPOINT_FILE).read_bytes()).cursors[AGENT].root == cb.root


async def test_a_log_shorter_than_its_checkpoint_is_data_loss(tmp_path: Path) -> None:
    """The checkpoint proves its records durable: a log that lost some of them (a record,
    the last segment, a middle segment, the whole log) is reported with what is missing,
    by read-only and writable opens alike; nothing is changed and the checkpoint is
    never replaced by a shorter history."""
    path = tmp_path / "db"
    await build_workload_db(path, 30, segment_size=1024)
    segs = sorted((path / "logs" / AGENT).glob("*.seg"))
    assert len(segs) >= 3
    last_record = record_spans(path)[-1]
    cases: dict[str, tuple[Any, int]] = {
        "last record removed": (
            lambda: os.truncate(seg_path(path, last_record[0]), last_record[1]),
            last_record[1],
        ),
        "last segment removed": (lambda: segs[-1].unlink(), 0),
        "middle segment removed": (lambda: segs[1].unlink(), 0),
        "last segment zeroed": (lambda: segs[-1].write_bytes(bytes(segs[-1].stat().st_size)), 0),
        "last segment cut to its header": (
            lambda: os.truncate(segs[-1], SEGMENT_HEADER_SIZE),
            SEGMENT_HEADER_SIZE,
        ),
        "whole log removed": (lambda: shutil.rmtree(path / "logs" / AGENT), 0),
        "logs directory removed": (lambda: shutil.rmtree(path / "logs"), 0),
    }
    base = copy_db(path, tmp_path / "base")
    for name, (damage, offset) in cases.items():
        copy_db(base, path)
        damage()
        before = tree(path)
        for readonly in (True, False):
            with pytest.raises(CorruptLogError) as info:
                async with koru.open(path, readonly=readonly, segment_size=1024):
                    pass
            err = info.value
            assert err.agent == AGENT, name
            assert err.offset == offset, (name, err)
            assert err.path.startswith(str(path / "logs")), (name, err)
            if name != "last segment zeroed":  # a zeroed header reads as corruption
                assert isinstance(err, DataLossError), (name, err)
        assert tree(path) == before, name


async def test_a_missing_segment_is_found_without_a_checkpoint(tmp_path: Path) -> None:
    """The manifest in ``meta`` lists every segment: a missing one is data loss even
    when no checkpoint names it."""
    path = tmp_path / "db"
    await build_workload_db(path, 30, segment_size=1024)
    (path / CHECKPOINT_FILE).unlink()
    segs = sorted((path / "logs" / AGENT).glob("*.seg"))
    for victim in (segs[-1], segs[1], segs[0]):
        work = copy_db(path, tmp_path / "work")
        (work / victim.relative_to(path)).unlink()
        with pytest.raises(DataLossError, match=f"segment {victim.name} is missing"):
            async with koru.open(work, readonly=True):
                pass


def slow_tracked_disk(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Make fdatasync slow (so it runs in a worker thread) and track, per file, how much
    data each fdatasync made durable: the data written before it started, not the
    file's size, which runs ahead because the store allocates space ahead."""
    real_fdatasync, real_pwrite = os.fdatasync, os.pwrite
    durable: dict[str, int] = {}
    written: dict[str, int] = {}

    def tracking_pwrite(fd: int, data: Any, offset: int) -> int:
        n = real_pwrite(fd, data, offset)
        if bytes(data[:n]).count(0) < n:  # data, not the zeros allocated ahead
            target = os.readlink(f"/proc/self/fd/{fd}")
            written[target] = max(written.get(target, 0), offset + n)
        return n

    def slow_fdatasync(fd: int) -> None:
        # What a sync covers is decided when it begins: data written while it runs (the
        # event loop keeps appending) is not covered by it.
        target = os.readlink(f"/proc/self/fd/{fd}")
        size = written.get(target, 0)
        time.sleep(0.005)  # a slow device
        real_fdatasync(fd)
        durable[target] = max(durable.get(target, 0), size)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    monkeypatch.setattr(os, "pwrite", tracking_pwrite)
    # Every record through pwrite, where it is tracked (not copied into a map).
    monkeypatch.setattr(OsDisk, "map_append", lambda *_: None)
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


async def child_lines(cfg: dict[str, Any], cwd: Path) -> list[dict[str, Any]]:
    """Run the child to completion; its output lines."""
    result = await trio.run_process(
        [sys.executable, str(CHILD), json.dumps(cfg)], capture_stdout=True, cwd=cwd
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


async def test_removing_files_under_a_live_writer_lets_no_second_writer_in(
    tmp_path: Path,
) -> None:
    """The writer's lock is on the database directory itself. Removing or replacing a
    file in it (here the ``LOCK`` file that format-1 databases kept) cannot hand the
    database to a second writer: tried from another process."""
    path = tmp_path / "db"
    await make_db(path, 2)
    (path / "LOCK").write_bytes(b"")
    cfg = json.dumps({"mode": "hold", "path": str(path)})
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(CHILD), cfg], stdout=subprocess.PIPE, cwd=tmp_path
    )
    try:
        assert proc.stdout is not None
        with trio.fail_after(30):
            ready = json.loads(await read_line(proc.stdout))
        (path / "LOCK").unlink()
        (path / "LOCK").write_bytes(b"")
        (path / "LOCK").unlink()
        assert await child_lines({"mode": "try", "path": str(path)}, tmp_path) == [{"op": "locked"}]
        with pytest.raises(DatabaseLockedError):
            async with koru.open(path):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
    (second,) = await child_lines({"mode": "try", "path": str(path)}, tmp_path)
    assert second["op"] == "opened"
    async with koru.open(path, readonly=True) as db:
        assert [v.write_id for v in await db.history("held", "key")] == [ready["write_id"]]
        assert [v.write_id for v in await db.history("held", "second")] == [second["write_id"]]


@pytest.mark.parametrize("sync", ["always", "os"])
async def test_readonly_opens_racing_a_writer_process_report_no_corruption(
    tmp_path: Path, sync: str
) -> None:
    """Read-only opens while another process writes (puts, batches, deletes, segment
    rotations, checkpoints): none may report corruption that a recovery by the writer
    would not, and each sees a consistent prefix of the writer's log."""
    path = tmp_path / "db"
    cfg = {
        "mode": "write",
        "path": str(path),
        "sync": sync,
        "seed": 5,
        "round": 0,
        "segment_size": 8192,
        "checkpoint_every": 40,
    }
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(CHILD), json.dumps(cfg)], stdout=subprocess.PIPE, cwd=tmp_path
    )
    opens, seen = 0, []
    try:
        assert proc.stdout is not None
        with trio.fail_after(30):
            assert json.loads(await read_line(proc.stdout))["op"] == "ready"

        async def drain() -> None:
            assert proc.stdout is not None
            while await proc.stdout.receive_some(1 << 16):
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            for _ in range(60):
                async with koru.open(path, readonly=True) as db:
                    seen.append((await db.stats()).events)
                    for ns in ("users", "orders", "config"):
                        for key in await db.keys(ns):
                            await db.get_versioned(ns, key)
                            await db.history(ns, key)
                opens += 1
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
    assert opens == 60
    assert seen[-1] > seen[0]  # the writer was writing all along


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


@pytest.mark.parametrize("damage", ["torn-tail", "zero-tail", "empty-segment"])
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
    else:
        seg_path(path, 2).write_bytes(b"")
    before = tree(path)
    async with koru.open(path, readonly=True) as db:
        assert (await db.stats()).events == expect
        for i, v in enumerate(versions):
            assert await db.get(NS, f"k{i}") == value(i)
            assert (await db.get_versioned(NS, f"k{i}")).write_id == v.write_id
        if expect == 5:
            assert (await db.get_versioned(NS, "k4")).write_id == doomed.write_id
        else:
            assert not await db.contains(NS, "k4")
    assert tree(path) == before, "a read-only open changed files"
    async with koru.open(path) as db:  # a writable open then repairs
        assert (await db.stats()).events == expect
    assert full_replay(path)[1].offset == max(
        p.stat().st_size for p in (path / "logs" / AGENT).glob("*.seg")
    )


@pytest.mark.parametrize(
    "damage", ["missing", "empty", "garbage", *(f"bit-{i}" for i in range(0, 800, 37)), "directory"]
)
async def test_a_missing_or_damaged_meta_is_refused(tmp_path: Path, damage: str) -> None:
    """``meta`` holds the node id that names this database's own events: a database
    whose logs exist but whose meta is gone or damaged is refused (never given a new
    id), with the path in the error, and nothing is changed."""
    path = tmp_path / "db"
    await make_db(path, 3)
    meta = path / "meta"
    good = meta.read_bytes()
    if damage == "missing":
        meta.unlink()
    elif damage == "empty":
        meta.write_bytes(b"")
    elif damage == "garbage":
        meta.write_bytes(b"\xa1\x61x\x01")
    elif damage.startswith("bit-"):
        meta.write_bytes(flip_bit(good, int(damage[4:]) % (8 * len(good))))
    else:
        meta.unlink()
        meta.mkdir()
    before = tree(path)
    for readonly in (True, False):
        with pytest.raises(koru.StorageError, match="meta") as info:
            async with koru.open(path, readonly=readonly):
                pass
        assert str(meta) in str(info.value)
    assert tree(path) == before


# -- (f) failed writes and fsyncs are fatal --------------------------------------------


class Disk:
    """Wraps ``os.fdatasync``/``os.fsync``/``os.pwrite`` to remember what is durable and
    to fail on demand.

    The store allocates segment space ahead (the file's size runs ahead of its data),
    so what a sync makes durable is the data written so far, not the file's size; the
    zeros it allocates with (``OsDisk.allocate``) are not data. Every record goes
    through ``os.pwrite`` here (``OsDisk.map_append`` gives no map): what this wraps
    is the write that can fail, and a record copied into a map cannot.
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
        monkeypatch.setattr(OsDisk, "map_append", lambda *_: None)

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
        if bytes(data).count(0) != len(data):  # not zeros alone (see the docstring)
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
        assert (await db.stats()).events in (0, 1)


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


class _FullWhileAllocating(OsDisk):
    """A disk that runs out of space while the store allocates ahead: half the zeros
    land, then ENOSPC."""

    full = False

    def allocate(self, fd: int, offset: int, length: int) -> None:
        if not self.full:
            super().allocate(fd, offset, length)
            return
        super().allocate(fd, offset, length // 2)
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("sync", ["always", "os"])
async def test_a_full_disk_while_allocating_ahead_is_fatal_and_loses_nothing_acknowledged(
    tmp_path: Path, sync: str
) -> None:
    """The space ahead of the data is allocated by writing zeros; a disk that fills up
    half way through them fails the write that needed them (DurabilityError, the handle
    dead), and the database reopens with every acknowledged write and nothing else."""
    path = tmp_path / "db"
    disk = _FullWhileAllocating()
    acked: list[koru.Version] = []
    async with koru.open(path, sync=sync, disk=disk) as db:
        for i in range(3):
            acked.append(await db.put(NS, f"k{i}", "x" * 10_000))
        disk.full = True
        with pytest.raises(DurabilityError):
            for i in range(3, 100):  # 256 KiB allocated at a time: one of these crosses
                acked.append(await db.put(NS, f"k{i}", "x" * 10_000))
        await assert_dead(db)
    async with koru.open(path) as db:
        for version in acked:
            assert (await db.get_versioned(NS, version.key)).write_id == version.write_id
        assert len(await db.keys(NS)) == len(acked)
    assert full_replay(path)[1].count == len(acked)


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

        rng = random.Random(4)

        async def writer(w: int) -> None:
            nonlocal acks
            for i in range(100):
                # Staggered, so that some writers append while a sync is running in the
                # worker thread (they must wait for the next one).
                await trio.sleep(rng.random() * 0.002)
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


class RecordingDisk(OsDisk):
    """The real filesystem, recording creations and syncs by *path* (file descriptor
    numbers are reused from one segment to the next, so they cannot tell files apart)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.paths: dict[int, str] = {}

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        fd = super().open(path, flags, mode)
        self.paths[fd] = path
        if flags & os.O_CREAT:
            self.calls.append(("create", path))
        return fd

    def close(self, fd: int) -> None:
        self.paths.pop(fd, None)
        super().close(fd)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        self.calls.append(("write", self.paths[fd]))
        return super().pwrite(fd, data, offset)

    def truncate(self, fd: int, size: int) -> None:
        self.calls.append(("truncate", self.paths[fd]))
        super().truncate(fd, size)

    def fdatasync(self, fd: int) -> None:
        self.calls.append(("sync", self.paths[fd]))
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        self.calls.append(("sync", self.paths[fd]))
        super().fsync(fd)

    def fsync_dir(self, path: str) -> None:
        self.calls.append(("sync dir", path))
        super().fsync_dir(path)


def test_a_full_segment_is_synced_before_the_next_one_exists(tmp_path: Path) -> None:
    # Why it matters: if a new segment reached the disk while its predecessor's last
    # records did not, the chain would read as broken after a power cut. And a new
    # segment is durable (its data, then its directory entry) before the manifest lists it.
    disk = RecordingDisk()
    store = open_store(tmp_path / "db", segment_size=600, disk=disk)
    for i in range(30):
        data = bytes([i]) * 100
        store.append("storage", data, blake3.blake3(data).digest())
    store.close()
    calls = disk.calls
    creates = [path for kind, path in calls if kind == "create" and path.endswith(".seg")]
    assert len(creates) >= 5
    for older, newer in itertools.pairwise(creates):
        created_at = calls.index(("create", newer))
        last_write_of_older = max(i for i, c in enumerate(calls[:created_at]) if c[1] == older)
        assert calls[last_write_of_older] == ("sync", older), f"{older} not synced last"
    for seg in creates:
        after = calls[calls.index(("create", seg)) :]
        sync, sync_dir = after.index(("sync", seg)), after.index(("sync dir", os.path.dirname(seg)))
        meta = next(i for i, c in enumerate(after) if c[0] == "create" and "meta" in c[1])
        assert sync < sync_dir < meta, f"{seg}: listed before it was durable"


async def _crashed_copy(
    tmp_path: Path, puts: int, *, checkpoint: bool = False
) -> tuple[Path, int, int]:
    """A copy of a live database's directory, as a crash would leave it: the active
    segment allocated ahead (zeros after the data), and a checkpoint naming every record
    if ``checkpoint``, else none. Returns (copy, start of the last record, end of data)."""
    path = tmp_path / "db"
    async with koru.open(path, sync="always") as db:
        for i in range(puts):
            await db.put(NS, f"k{i}", {"i": i, "pad": "x" * 150})
        if checkpoint:
            await db.checkpoint()
        cursor = db._store.cursor(AGENT)
        copy = tmp_path / "crashed"
        shutil.copytree(
            path, copy, ignore=None if checkpoint else shutil.ignore_patterns("checkpoint")
        )
    assert seg_path(copy).stat().st_size > cursor.offset  # allocated ahead
    return copy, cursor.last, cursor.offset


@pytest.mark.parametrize("checkpoint", [True, False], ids=["named", "not-named"])
async def test_damage_in_the_last_record_before_allocated_zeros(
    tmp_path: Path, checkpoint: bool
) -> None:
    """A complete last record that fails its checksum, then the zeros allocated ahead:
    corruption if a checkpoint names the record (it was proven durable), else what a
    power cut can leave: the log ends before it and the record is set aside."""
    copy, last, end = await _crashed_copy(tmp_path, 6, checkpoint=checkpoint)
    with seg_path(copy).open("r+b") as f:
        f.seek(last + 40)
        byte = f.read(1)
        f.seek(last + 40)
        f.write(bytes([byte[0] ^ 0x10]))
    damaged = seg_path(copy).read_bytes()
    if checkpoint:
        with pytest.raises(CorruptLogError) as err:
            async with koru.open(copy):
                pass
        assert (err.value.position, err.value.offset) == (5, last)
        assert seg_path(copy).read_bytes() == damaged
    else:
        async with koru.open(copy) as db:
            assert (await db.stats()).events == 5
            stats = await db.stats()
            assert (stats.set_aside_files, stats.set_aside_bytes) == (
                1,
                end - last,
            )
        assert list(lost_found(copy).values()) == [damaged[last:end]]
        assert seg_path(copy).stat().st_size == last


async def test_a_record_cut_at_a_sector_boundary_is_the_logs_end(tmp_path: Path) -> None:
    copy, last, end = await _crashed_copy(tmp_path, 6)
    boundary = (last // 512 + 1) * 512
    assert boundary < end, "the test needs a last record that crosses a sector boundary"
    with seg_path(copy).open("r+b") as f:  # the sectors after the boundary never landed
        f.seek(boundary)
        f.write(bytes(end - boundary))
    async with koru.open(copy) as db:
        assert (await db.stats()).events == 5
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
    # short at an arbitrary byte, followed by space allocated ahead. Past the point the
    # log was proven durable, the reader sees the log up to there.
    copy, last, end = await _crashed_copy(tmp_path, 6)
    stop = last + (end - last) // 2 + 3
    assert stop % 512, "the cut must not fall on a sector boundary"
    with seg_path(copy).open("r+b") as f:
        f.seek(stop)
        f.write(bytes(end - stop))
    async with koru.open(copy, readonly=True) as db:
        assert (await db.stats()).events == 5
        assert await db.get(NS, "k4") == {"i": 4, "pad": "x" * 150}
        assert (await db.stats()).set_aside_files == 0
    # A writable open (no checkpoint names the record) ends the log in the same place,
    # and keeps the part of the record that landed.
    partial = seg_path(copy).read_bytes()[last:stop]
    async with koru.open(copy) as db:
        assert (await db.stats()).events == 5
    assert list(lost_found(copy).values()) == [partial]


async def test_readonly_store_listed_before_the_writer_moved_on(tmp_path: Path) -> None:
    """A read-only open lists the segments, then reads the checkpoint; a writer that
    meanwhile started new segments and checkpointed there must not make that open
    report lost data (the reader looks again), and what it loads is complete."""
    path = tmp_path / "db"
    async with koru.open(path, segment_size=4096, checkpoint_every=10**6) as db:
        await db.put("k", "first", value(0, pad=200))
        reader = FileStore(path, readonly=True)  # lists one segment
        try:
            for i in range(40):  # several new segments
                await db.put("k", f"n{i}", value(i, pad=200))
            await db.checkpoint()  # its cursor names the newest segment
            loaded = load(reader)
        finally:
            reader.close()
        assert loaded.from_checkpoint == 41
        assert loaded.kv.live == 41


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt during the test, even when pytest runs as a
    shell's background job (which starts with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_in_the_write_path_never_splits_the_log_from_the_projections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c: None
) -> None:
    """Ctrl-C (SIGINT) arriving after an event was appended but before every projection
    folded it (seen with Ctrl-C during ``kdelta import``): the close that follows wrote
    a checkpoint whose state lacked part of an event its cursor covers, so every later
    open served it (a feed head behind its log, key/value writes missing). The write
    path is shielded from KeyboardInterrupt; it arrives at the next checkpoint."""
    from koru._audit import audit_checkpoint
    from koru.projections import FeedState

    fold = FeedState.apply
    armed = [False]

    def interrupted(self: FeedState, event: Any, eid: bytes, location: int) -> None:
        if armed[0]:
            armed[0] = False
            signal.raise_signal(signal.SIGINT)  # handled before the next line runs
        fold(self, event, eid, location)

    monkeypatch.setattr(FeedState, "apply", interrupted)

    async def write() -> None:
        async with koru.open(tmp_path) as db:
            for i in range(10):
                armed[0] = i == 5
                await db.put_batch([("users", f"k{i}", i), ("users", f"j{i}", i)])

    with pytest.raises(KeyboardInterrupt):
        trio.run(write)
    store = FileStore(tmp_path, readonly=True)
    try:
        assert audit_checkpoint(store) == ([], [])
    finally:
        store.close()
    kv, _ = full_replay(tmp_path)

    async def reopen() -> None:
        async with koru.open(tmp_path) as db:
            assert await db.digest() == digest_of(kv)
            events = (await db.stats()).events
            assert await db.feed_heads() == {(db.node_id, "storage"): events}

    trio.run(reopen)


def _interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C's KeyboardInterrupt, alone or in a group."""
    return isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None
    )


def _every_acknowledged_write_reads_back(path: Path, acked: dict[str, int]) -> None:
    async def reopen() -> None:
        async with koru.open(path, processes=False) as db:
            for key, value in acked.items():
                assert await db.get("users", key) == value

    trio.run(reopen)


def test_ctrl_c_in_a_group_commit_never_acknowledges_a_write_it_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c: None
) -> None:
    """Ctrl-C (SIGINT) arriving in the leader of a group-commit round just as it pushes
    the log's buffer to the OS (``FileStore._flush_log`` had swapped the buffer out,
    ``_write`` not yet begun): the records of that buffer were dropped, the store not
    marked broken, and the next round synced what was left and acknowledged the
    writers whose records were dropped (a reopen then found a broken chain or values
    missing). The commit path is shielded from KeyboardInterrupt as the write path is;
    it arrives at the next checkpoint of the main task."""
    from koru.events import FileStore as Store

    write = Store._write
    armed = [False]

    def interrupted(self: Store, log: Any, data: Any) -> None:
        if armed[0]:
            armed[0] = False
            signal.raise_signal(signal.SIGINT)  # handled before the next line runs
        write(self, log, data)

    monkeypatch.setattr(Store, "_write", interrupted)
    acked: dict[str, int] = {}
    stopped: list[BaseException] = []

    async def writer(db: koru.Database, i: int) -> None:
        try:
            await db.put("users", f"k{i}", i)
            acked[f"k{i}"] = i
        except KeyboardInterrupt as exc:
            stopped.append(exc)

    async def main() -> None:
        async with koru.open(tmp_path, sync="always", processes=False) as db:
            await db.put("users", "first", 0)
            acked["first"] = 0
            armed[0] = True
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(writer, db, i)
            for i in range(8, 12):  # later rounds, after the interrupt
                await db.put("users", f"k{i}", i)
                acked[f"k{i}"] = i

    try:
        trio.run(main)
    except BaseException as exc:  # the interrupt, delivered to the main task
        stopped.append(exc)
    assert not armed[0] and stopped  # the interrupt was raised, somewhere
    assert all(map(_interrupt, stopped))
    monkeypatch.undo()

    _every_acknowledged_write_reads_back(tmp_path, acked)


def _interrupt_once_after(monkeypatch: pytest.MonkeyPatch, method: str) -> list[bool]:
    """Ctrl-C (SIGINT) raised once, right after the writer's ``method`` first returns
    (handled before its caller's next line runs); the flag is cleared once it is."""
    from koru._writer import Writer

    original = getattr(Writer, method)
    armed = [True]

    def interrupted(self: Writer, *args: Any) -> Any:
        done = original(self, *args)
        if armed[0]:
            armed[0] = False
            signal.raise_signal(signal.SIGINT)
        return done

    monkeypatch.setattr(Writer, method, interrupted)
    return armed


def test_ctrl_c_just_after_a_put_joins_its_round_never_orphans_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c: None
) -> None:
    """Ctrl-C arriving in a put under ``sync="always"`` just after it handed its value
    to the next round (``Writer.join`` returned, its wait not begun): the interrupt
    came out of the put at once, the value stayed queued with nobody to withdraw it,
    and the next round wrote a put whose caller had been told it failed. What must
    hold: the put is written if and only if it was acknowledged."""
    armed = _interrupt_once_after(monkeypatch, "join")
    acked: dict[str, int] = {}
    told: list[BaseException] = []

    async def main() -> None:
        async with koru.open(tmp_path, sync="always", processes=False) as db:
            try:
                await db.put("users", "k", 1)
                acked["k"] = 1
            except KeyboardInterrupt as exc:
                told.append(exc)
            for i in range(3):  # later rounds
                await db.put("users", f"after{i}", i)
                acked[f"after{i}"] = i

    try:
        trio.run(main)
    except BaseException as exc:  # the interrupt, delivered to the main task
        told.append(exc)
    assert not armed[0] and told and all(map(_interrupt, told))
    monkeypatch.undo()

    async def reopen() -> None:
        async with koru.open(tmp_path, processes=False) as db:
            assert await db.contains("users", "k") == ("k" in acked)
            for key, value in acked.items():
                assert await db.get("users", key) == value

    trio.run(reopen)


def test_ctrl_c_as_a_round_ends_never_strands_its_parked_writers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c: None
) -> None:
    """Ctrl-C (SIGINT) arriving in the leader of a group-commit round after it took the
    list of writers parked on the round and before it woke them: they were never
    woken (parked forever, the round over). The commit path is shielded from
    KeyboardInterrupt; it arrives at the next checkpoint of the main task. (A mock
    clock that jumps when every task is blocked turns the hang into TooSlowError.)"""
    reschedule = trio.lowlevel.reschedule
    armed = [False]

    def interrupted(task: Any, *args: Any) -> None:
        if armed[0]:
            armed[0] = False
            signal.raise_signal(signal.SIGINT)  # handled before the next line runs
        reschedule(task, *args)

    acked: list[int] = []
    stopped: list[BaseException] = []

    async def writer(db: koru.Database, i: int) -> None:
        try:
            await db.put("users", f"k{i}", i)
            acked.append(i)
        except KeyboardInterrupt as exc:
            stopped.append(exc)

    async def main() -> None:
        async with koru.open(tmp_path, sync="always", processes=False) as db:
            await db.put("users", "first", 0)
            # Syncs inline: a task waiting for a worker thread counts as blocked, and
            # the mock clock would jump past the deadline while one syncs.
            db._writer._committer.inline_sync_max = float("inf")
            monkeypatch.setattr(trio.lowlevel, "reschedule", interrupted)
            armed[0] = True
            with trio.fail_after(3600):
                async with trio.open_nursery() as nursery:
                    for i in range(8):
                        nursery.start_soon(writer, db, i)
            monkeypatch.undo()
            assert sorted(acked) == list(range(8))  # the round acknowledged every one

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    except BaseException as exc:  # the interrupt, delivered to the main task
        stopped.append(exc)
    monkeypatch.undo()
    assert not armed[0]  # the interrupt was raised
    assert not any(
        isinstance(exc, trio.TooSlowError)
        or (isinstance(exc, BaseExceptionGroup) and exc.subgroup(trio.TooSlowError))
        for exc in stopped
    ), stopped
    assert stopped and all(map(_interrupt, stopped))


@pytest.mark.parametrize("sync", ["never", "os"])
def test_ctrl_c_in_a_tight_loop_of_puts_arrives_at_the_next_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c: None, sync: str
) -> None:
    """Ctrl-C (SIGINT) arriving inside a put (``Database.put`` is shielded from
    KeyboardInterrupt, which trio then delivers at the next checkpoint) in a tight loop
    of puts in the main task, at puts that yield (every 64th) and puts that do not:
    under ``"never"`` and ``"os"`` most puts never yield. What must hold: the put it
    landed in returns, the very next put raises KeyboardInterrupt before it writes
    anything, and every acknowledged put reads back after a reopen (held; a guard)."""
    from koru._writer import Writer

    plain = Writer.put_plain
    armed = [-1]

    def interrupted(self: Writer, *args: Any) -> Any:
        version = plain(self, *args)
        if armed[0] == 0:
            signal.raise_signal(signal.SIGINT)  # deferred: the put is shielded
        armed[0] -= 1
        return version

    monkeypatch.setattr(Writer, "put_plain", interrupted)
    acked: dict[str, int] = {}

    async def main() -> None:
        async with koru.open(tmp_path, sync=sync, processes=False) as db:
            n = 0
            for landing in (0, 5, 62, 63, 64, 130):
                armed[0] = landing
                after = None
                with pytest.raises(KeyboardInterrupt):
                    for _ in range(1000):
                        key = f"k{n}"
                        await db.put("users", key, n)
                        acked[key] = n
                        n += 1
                        if armed[0] < 0 and after is None:
                            after = 0
                        elif after is not None:
                            after += 1
                # the put it landed in returned; the next one raised, unwritten
                assert after == 0 and armed[0] < 0
                assert not await db.contains("users", f"k{n}")

    trio.run(main)
    monkeypatch.undo()
    _every_acknowledged_write_reads_back(tmp_path, acked)


@pytest.mark.parametrize("call", ["put", "put_batch"])
def test_ctrl_c_in_a_workspaces_first_write_never_leaves_it_uncreated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c: None, call: str
) -> None:
    """Ctrl-C (SIGINT) arriving in a workspace's first write just after its value was
    appended (``Writer.put`` or ``Writer.put_batch`` returned) and before the write
    recorded the workspace's creation (``Workspace._written``): the interrupt came
    out of the write at once, and the workspace held a value while ``workspaces()``
    did not list it and ``drop_workspace`` refused it as unknown. What must hold: a
    workspace holding a value exists (listed, and droppable)."""
    armed = _interrupt_once_after(monkeypatch, call)

    async def main() -> None:
        async with koru.open(tmp_path, processes=False) as db:
            space = db.workspace("w")
            if call == "put":
                await space.put("ns", "k", 1)
            else:
                await space.put_batch([("ns", "k", 1)])

    with pytest.raises(KeyboardInterrupt):
        trio.run(main)
    assert not armed[0]
    monkeypatch.undo()

    async def reopen() -> None:
        async with koru.open(tmp_path, processes=False) as db:
            if await db.workspace("w").contains("ns", "k"):
                assert [w.name for w in await db.workspaces()] == ["w"]
                await db.drop_workspace("w")

    trio.run(reopen)


def _many_segments(path: Path) -> list[Path]:
    async def write() -> None:
        async with koru.open(path, segment_size=400) as db:
            for i in range(60):
                await db.put("ns", f"k{i}", {"i": i})

    trio.run(write)
    return sorted((path / "logs" / "storage").glob("*.seg"))


def _verified(path: Path) -> list[tuple[str, int, str]]:

    return [(Path(p.path).name, p.offset, p.message) for p in verify_logs(path)]


def test_verify_reports_a_missing_segment_once(tmp_path: Path) -> None:
    """One segment gone from the middle of a log: that is reported, and where the next
    segment's header disagrees with what came before; every later segment is checked
    from what its predecessors say, not reported as missing and misplaced in turn (470
    errors for one missing file of 239)."""
    segments = _many_segments(tmp_path)
    assert len(segments) > 6
    segments[3].unlink()
    found = _verified(tmp_path)
    after = segments[4].name
    assert [(name, offset) for name, offset, _ in found] == [(after, 0)] * 3
    assert "segment 00000004.seg is missing" in found[0][2]
    segments[5].unlink()
    found = _verified(tmp_path)
    assert [name for name, _, _ in found] == [after] * 3 + [segments[6].name] * 3


@pytest.mark.parametrize("landed", [0, 10])
def test_verify_takes_a_last_segment_without_its_header_for_a_torn_tail(
    tmp_path: Path, landed: int
) -> None:
    """A roll creates the next segment, then writes its header: ``kdelta verify`` beside
    the writer, or after a SIGKILL between the two, finds the last segment empty (or its
    header part-written). Recovery sets such a segment aside and readers take it for the
    log's end; verify reported damage (exit 3), 4 times in 24 SIGKILLs of a writer of
    small segments. A warning; the same file before another segment is damage."""
    segments = _many_segments(tmp_path)
    header = segments[-1].read_bytes()[:landed]
    following = segments[-1].with_name(f"{int(segments[-1].stem) + 1:08d}.seg")
    following.write_bytes(header)
    found = list(verify_logs(tmp_path))
    assert [(p.severity, Path(p.path).name, p.offset) for p in found] == [
        ("warning", following.name, 0)
    ], found
    assert "torn tail" in found[0].message
    following.with_name(f"{int(following.stem) + 1:08d}.seg").write_bytes(segments[-1].read_bytes())
    found = list(verify_logs(tmp_path))
    assert found and found[0].severity == "error" and Path(found[0].path) == following, found


@pytest.mark.parametrize("landed", [0, 10])
def test_verify_calls_a_listed_last_segment_without_its_header_damage(
    tmp_path: Path, landed: int
) -> None:
    """The manifest lists a segment only once its header is durable, so a listed last
    segment shorter than its header lost bytes that were there: recovery refuses it
    (CorruptLogError), and verify must not call it a torn tail that "the next writable
    open sets aside" (it did, exit 0, for the same file the next open rejects)."""
    store = open_store(tmp_path, segment_size=400)
    for data, eid in make_events(40, size=50):
        store.append(AGENT, data, eid)
    store.sync()  # the manifest lists every segment so far
    store.close()
    segments = sorted((tmp_path / "logs" / AGENT).glob("*.seg"))
    assert len(segments) > 2
    with open(segments[-1], "r+b") as f:
        f.truncate(landed)
    found = list(verify_logs(tmp_path))
    assert [(p.severity, Path(p.path).name, p.offset) for p in found] == [
        ("error", segments[-1].name, 0)
    ], found
    store = open_store(tmp_path)
    try:
        with pytest.raises(CorruptLogError):
            list(store.replay(AGENT))
    finally:
        store.close()


@pytest.mark.parametrize("landed", [1, 5, 11, 12, 13, 40, -1, -2, -3])
async def test_verify_takes_a_record_still_landing_for_a_torn_tail(
    tmp_path: Path, landed: int
) -> None:
    """``kdelta verify`` beside a live writer (its docstring says it is safe there) read
    the record being written half landed: its first bytes there, the rest still the
    zeros allocated ahead. That was reported as damage (exit 3) three times in thirty
    runs beside a writer; like a reader of the log, it is the tail being written, or a
    write cut short: a warning. The same record with data after it is damage."""
    path = tmp_path / "db"
    await make_db(path, 6, pad=30)
    seg, start, end = record_spans(path)[-1]
    assert seg == 1
    segment = seg_path(path).read_bytes()[:end]
    record = segment[start:end]
    cut = start + (landed if landed >= 0 else len(record) + landed)
    half = segment[:cut] + bytes(end - cut) + bytes(4096)  # zeros allocated ahead
    seg_path(path).write_bytes(half)
    found = list(verify_logs(path))
    assert [p.severity for p in found] == ["warning"], found
    assert found[0].offset == start and "torn tail" in found[0].message
    # Damage, not a write in progress: the same bytes with a record after them.
    seg_path(path).write_bytes(half[:end] + record)
    found = list(verify_logs(path))
    assert found and found[0].severity == "error" and found[0].offset == start, found


async def test_verify_takes_a_record_whose_bytes_change_for_one_still_landing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record read while a page beyond it landed first (data after it, its own bytes
    not all there yet): read again, its bytes differ. Not damage."""
    import koru.events._verify as verify_module

    path = tmp_path / "db"
    await make_db(path, 6, pad=30)
    _, start, end = record_spans(path)[-1]
    whole = seg_path(path).read_bytes()[:end]
    torn = bytearray(whole)
    torn[start + 20 : end - 8] = bytes(end - 8 - start - 20)  # a hole, the end landed
    seg_path(path).write_bytes(bytes(torn))
    read_again = verify_module._read_from

    def landed_meanwhile(file: str, offset: int) -> bytes | None:
        seg_path(path).write_bytes(whole)  # the writer's pwrite completes
        return read_again(file, offset)

    monkeypatch.setattr(verify_module, "_read_from", landed_meanwhile)
    found = list(verify_logs(path))
    assert [p.severity for p in found] == ["warning"], found
    assert found[0].offset == start


@pytest.mark.parametrize("where", ["body", "header"])
async def test_verify_reports_damage_before_a_record_landing_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Beside a live writer, a record is appended into the zeros allocated ahead while
    verify reads the segment again: that says nothing about a damaged record before it,
    whose own bytes did not change. It is damage (and the records after it are checked),
    not a torn tail."""
    import koru.events._verify as verify_module

    path = tmp_path / "db"
    await make_db(path, 6, pad=30)
    spans = record_spans(path)
    start = spans[2][1]
    data = bytearray(seg_path(path).read_bytes()[: spans[-1][2]])
    data[start + (4 if where == "header" else 60)] ^= 0x10
    tail = len(data)
    seg_path(path).write_bytes(bytes(data) + bytes(4096))  # zeros allocated ahead
    appended = bytes(data[spans[-1][1] : tail])  # a record-sized write, landing later
    read_again = verify_module._read_from

    def writer_appends(file: str, offset: int) -> bytes | None:
        with open(file, "r+b") as f:
            f.seek(tail)
            f.write(appended)
        return read_again(file, offset)

    monkeypatch.setattr(verify_module, "_read_from", writer_appends)
    found = list(verify_logs(path))
    assert found and found[0].severity == "error" and found[0].offset == start, found
    assert "torn" not in found[0].message


async def test_verify_reports_a_damaged_last_record_that_ends_in_a_zero_byte(
    tmp_path: Path,
) -> None:
    """A complete last record whose event's last byte is 0 (a put's ``previous`` is a
    hash: one overwrite in 256), damaged by a flipped bit, then the zeros allocated
    ahead: its bytes are stable and its checksum matches no last byte a write still
    landing could bring. Damage to a record that may have been acknowledged, not a torn
    tail."""
    from koru.events import encode_event

    path = tmp_path / "db"
    await make_db(path, 6, pad=30)
    start = record_spans(path)[-1][1]
    data = seg_path(path).read_bytes()
    event = parse_record(data, start)[2]
    before = parse_record(data, record_spans(path)[-2][1])[1]
    last = decode_trusted(event)._replace(previous=bytes(range(1, 32)) + b"\0")
    encoded = encode_event(last)
    assert encoded[-1] == 0
    new_root = blake3.blake3(before + blake3.blake3(encoded).digest()).digest()
    record = encode_record(new_root, encoded)
    assert record[-1] == 0
    seg_path(path).write_bytes(data[:start] + record + bytes(4096))
    assert list(verify_logs(path)) == []  # a valid record, as written
    damaged = bytearray(record)
    damaged[len(record) // 2] ^= 0x04
    seg_path(path).write_bytes(data[:start] + bytes(damaged) + bytes(4096))
    found = list(verify_logs(path))
    assert [p.severity for p in found] == ["error"], found
    assert found[0].offset == start and "checksum" in found[0].message


async def test_audit_checks_again_a_checkpoint_replaced_while_it_was_checked(
    tmp_path: Path,
) -> None:
    """``kdelta verify`` beside a live writer: the checkpoint it read named tables the
    writer removed after writing a newer one ("table ... is missing": exit 3, seen in
    thirty runs beside a writer). A checkpoint that changed while it was checked is
    checked again, as a read-only open reads the newer one."""
    from koru._audit import audit_checkpoint
    from koru.projections import CHECKPOINT_FILE as NAME

    path = tmp_path / "db"
    async with koru.open(path, sync="os", processes=False) as db:
        for i in range(300):
            await db.put(NS, f"k{i}", value(i))
        await db.checkpoint()
        stale = (path / NAME).read_bytes()
        for i in range(300):
            await db.put(NS, f"k{i}", value(i + 1))
        await db.checkpoint()
        db._kv.max_tables = 1
        await db._checkpointer.compact()  # the tables merged: the first one named no more
        await db.checkpoint()  # which removes them
    store = FileStore(path, readonly=True)
    from koru.projections import decode_checkpoint, table_names

    named = table_names(decode_checkpoint(stale).sections)
    assert named - store.table_names(), "the stale checkpoint's tables are all still there"
    reads = [0]
    real = store.read_file

    def first_stale(name: str) -> bytes | None:
        if name == NAME:
            reads[0] += 1
            if reads[0] == 1:
                return stale
        return real(name)

    store.read_file = first_stale  # type: ignore[method-assign]
    try:
        problems, _ = audit_checkpoint(store)
        assert problems == [] and reads[0] == 2
    finally:
        store.close()


def test_verify_reports_a_segment_it_cannot_read_and_carries_on(tmp_path: Path) -> None:
    segments = _many_segments(tmp_path)
    data = bytearray(segments[-1].read_bytes())
    data[100] ^= 1
    segments[-1].write_bytes(bytes(data))
    segments[2].unlink()
    segments[2].mkdir()  # present, but not a file
    found = _verified(tmp_path)
    assert found[0][:2] == (segments[2].name, 0) and "cannot read" in found[0][2]
    assert found[-1][0] == segments[-1].name  # the damage after it is still found


def test_ctrl_c_during_an_ingest_call_arrives_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c: None
) -> None:
    """Ctrl-C while an ingest call takes in its events (kdelta import offers 2,000 at a
    time) is delivered when the call is done: raised anywhere inside it, it was
    sometimes raised where Python cannot propagate it (a callback run from C while
    decoding, seen as 'Exception ignored ... KeyboardInterrupt' on stderr) and lost, so
    the import ran on to the end and exited 0."""
    from koru._ingest import Ingest

    async def source() -> list[bytes]:
        async with koru.open(tmp_path / "src") as db:
            for i in range(30):
                await db.put("ns", f"k{i}", i)
            return await db.feed_events(db.node_id)

    events = trio.run(source)
    offer = Ingest.offer
    seen = [0]

    def interrupted(self: Ingest, data: object, now_ns: int) -> Any:
        seen[0] += 1
        if seen[0] == 10:
            signal.raise_signal(signal.SIGINT)
        return offer(self, data, now_ns)

    monkeypatch.setattr(Ingest, "offer", interrupted)

    async def take_in() -> None:
        async with koru.open(tmp_path / "dst") as db:
            await db.ingest(events)

    with pytest.raises(KeyboardInterrupt):
        trio.run(take_in)
    assert seen[0] == 30  # the whole call ran; the interrupt came after it


def test_the_checkpoint_audit_agrees_after_a_namespace_loses_its_last_key(
    tmp_path: Path,
) -> None:
    """A namespace whose last live key was deleted counts 0 live keys in a replay and is
    left out of a restored checkpoint: the same state. The audit (``kdelta verify``)
    reported the checkpoint as disagreeing with the log (found by the lineage property
    test)."""
    from koru._audit import audit_checkpoint

    async def write() -> None:
        async with koru.open(tmp_path) as db:
            await db.put("gone", "k", 1)
            await db.delete("gone", "k")
            await db.put("kept", "k", 1)
            await db.checkpoint()

    trio.run(write)
    store = FileStore(tmp_path, readonly=True)
    try:
        assert audit_checkpoint(store) == ([], [])
    finally:
        store.close()


@pytest.mark.parametrize("step", ["capture", "checkpointed"])
def test_ctrl_c_in_a_checkpoints_state_handover_lets_it_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c: None, step: str
) -> None:
    """Ctrl-C (SIGINT) arriving while a checkpoint freezes the key/value state's memory
    layer (``capture``) or hands its layers over to the table just written
    (``checkpointed``): each is a handful of assignments on the event loop that must
    not stop half-way (a layer both frozen and live, or listed twice), so both are
    shielded from KeyboardInterrupt; it arrives after, and every acknowledged write
    reads back after a reopen."""
    from koru.projections import KvState

    original = getattr(KvState, step)
    armed, finished = [False], []

    def interrupted(self: KvState, *args: Any) -> Any:
        if armed[0]:
            armed[0] = False
            signal.raise_signal(signal.SIGINT)  # handled before the next line runs
            finished.append(step)
        return original(self, *args)

    monkeypatch.setattr(KvState, step, interrupted)
    acked: dict[str, int] = {}
    stopped: list[BaseException] = []

    async def main() -> None:
        async with koru.open(tmp_path, sync="always", processes=False) as db:
            for i in range(20):
                await db.put("users", f"k{i}", i)
                acked[f"k{i}"] = i
            armed[0] = True
            await db.checkpoint()
            for i in range(20, 25):
                await db.put("users", f"k{i}", i)
                acked[f"k{i}"] = i

    try:
        trio.run(main)
    except BaseException as exc:  # the interrupt, delivered to the main task
        stopped.append(exc)
    assert not armed[0] and finished == [step], "the step was cut short"
    assert stopped and all(map(_interrupt, stopped))
    monkeypatch.undo()

    _every_acknowledged_write_reads_back(tmp_path, acked)


def _three_events(path: Path) -> Path:
    """A store at ``path`` holding three events, synced and closed."""
    store = open_store(path)
    for data, eid in make_events(3):
        store.append(AGENT, data, eid)
    store.sync()
    store.close()
    return path


def _kdelta_verify(path: Path, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """``kdelta verify`` of ``path`` in a process of its own (60 s at most: a hang fails)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "kdelta"), "--db", str(path), "verify"],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_verify_with_a_named_pipe_for_meta_reports_it_rather_than_hanging(
    tmp_path: Path,
) -> None:
    """``kdelta verify`` reads the manifest to judge a last segment; a named pipe put in
    the meta file's place is reported (as it was before the manifest was read), never
    opened in a way that blocks for ever."""
    path = _three_events(tmp_path / "db")
    (path / "meta").unlink()
    os.mkfifo(path / "meta")
    done = _kdelta_verify(path, tmp_path)
    assert done.returncode == 3, done.stderr.decode()
    assert b"meta" in done.stdout and b"not a regular file" in done.stdout


def test_verify_with_a_named_pipe_for_a_segment_reports_it_rather_than_hanging(
    tmp_path: Path,
) -> None:
    """Attack: a named pipe put where the next segment would be. ``kdelta verify``
    opened each segment with a plain open, which blocks on a pipe for ever; it must
    report the file and go on."""
    path = _three_events(tmp_path / "db")
    os.mkfifo(path / "logs" / AGENT / "00000002.seg")
    done = _kdelta_verify(path, tmp_path)
    assert done.returncode == 3, done.stderr.decode()
    assert b"00000002.seg" in done.stdout and b"not a regular file" in done.stdout
