"""A hostile reviewer's attacks on sealing and on serving a node's own feeds over a log
tampered on disk (h-seal).

A record is rewritten with its checksums fixed (crc32 proves damage, not intent): an
event of this node's own feed made to say something else, while the database is closed,
before a reopen that then seals and serves. What must hold: a seal never signs a point
over an event that is not the one the feed's chain proves (a signed statement, kept by
every peer for ever), and a tampered event is never shipped to a peer; a typed
``KoruError`` (``CorruptLogError``) is raised instead.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

import koru
from koru.events import IDENTITY, SealEvent, decode_event, event_id

DIFFICULTY = 4
_SEGMENT_HEADER = 56
_RECORD = struct.Struct("<III")


def _rewrite_record(segment: Path, event: bytes, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) inside the record holding ``event``,
    fixing both of its checksums: what an adversary, not a bad disk, leaves."""
    assert len(old) == len(new) and old in event
    data = bytearray(segment.read_bytes())
    at = _SEGMENT_HEADER
    while at + _RECORD.size <= len(data):
        n, _, _ = _RECORD.unpack_from(data, at)
        assert n, "event not found"
        start = at + _RECORD.size
        if bytes(data[start + 32 : start + n]) == event:
            body = bytes(data[start : start + n]).replace(old, new)
            crc = zlib.crc32(body)
            data[at : at + _RECORD.size] = _RECORD.pack(
                n, crc, zlib.crc32(struct.pack("<II", n, crc))
            )
            data[start : start + n] = body
            segment.write_bytes(bytes(data))
            return
        at = start + n
    raise AssertionError("event not found")


async def _written(path: Path, count: int) -> tuple[str, list[bytes]]:
    """A closed database of ``count`` puts (checkpointed on close, never sealed): its
    node id and its storage feed's events as they were written."""
    async with koru.open(path, difficulty=DIFFICULTY, sync="os", processes=False) as db:
        for i in range(count):
            await db.put("k", f"k{i:05d}", f"v{i:05d}")
        return db.node_id, await db.feed_events(db.node_id, "storage", 0)


async def test_a_seal_never_signs_a_mark_over_a_record_rewritten_on_disk(
    tmp_path: Path,
) -> None:
    """3,000 unsealed events: the seal names marks at 1,024 and 2,048, read from the
    log. The record of seq 1,024 is rewritten between close and reopen with its crc32
    fixed. The seal read it and signed the tampered event's id as the feed's point
    1,024 (the chain, the checkpoint's head and every other event say otherwise); it
    must refuse with CorruptLogError and sign nothing."""
    path = tmp_path / "db"
    node, events = await _written(path, 3000)
    _rewrite_record(path / "logs/storage/00000001.seg", events[1023], b"v01023", b"v0102X")
    async with koru.open(path, difficulty=DIFFICULTY, sync="os", processes=False) as db:
        with pytest.raises(koru.CorruptLogError):
            await db.seal()
        signed = {
            (p.agent, p.seq): p.event_id
            for data in await db.feed_events(node, IDENTITY, 0)
            if type(event := decode_event(data)) is SealEvent
            for p in event.points
        }
        assert all(eid == event_id(events[seq - 1]) for (_, seq), eid in signed.items())


async def test_a_seal_refuses_a_record_with_a_flipped_byte(tmp_path: Path) -> None:
    """The same record with one byte flipped and its checksums left alone: a typed
    error from the seal, nothing signed (this held before; kept beside the attack)."""
    path = tmp_path / "db"
    node, events = await _written(path, 3000)
    segment = path / "logs/storage/00000001.seg"
    data = bytearray(segment.read_bytes())
    data[data.find(events[1023]) + len(events[1023]) - 2] ^= 1
    segment.write_bytes(bytes(data))
    async with koru.open(path, difficulty=DIFFICULTY, sync="os", processes=False) as db:
        with pytest.raises(koru.CorruptLogError):
            await db.seal()
        assert not [
            data
            for data in await db.feed_events(node, IDENTITY, 0)
            if type(decode_event(data)) is SealEvent
        ]


@pytest.mark.parametrize(("after", "limit"), [(0, None), (1000, 100), (1023, 1), (1022, 2)])
async def test_a_record_rewritten_on_disk_is_never_served_from_a_feed(
    tmp_path: Path, after: int, limit: int | None
) -> None:
    """The record of seq 1,024 rewritten with its checksums fixed, between close and
    reopen. ``feed_events`` (what sync pushes to every peer, and what a relay serves)
    shipped the tampered event as this node's own; whatever range is asked that holds
    it, it must raise CorruptLogError instead. A range that does not hold it is served."""
    path = tmp_path / "db"
    node, events = await _written(path, 3000)
    _rewrite_record(path / "logs/storage/00000001.seg", events[1023], b"v01023", b"v0102X")
    async with koru.open(path, difficulty=DIFFICULTY, sync="os", processes=False) as db:
        with pytest.raises(koru.CorruptLogError):
            await db.feed_events(node, "storage", after, limit)
        assert await db.feed_events(node, "storage", 2000, 10) == events[2000:2010]
        assert await db.feed_events(node, "storage", 1024) == events[1024:]


async def test_a_segment_swapped_from_another_database_is_never_sealed_nor_served(
    tmp_path: Path,
) -> None:
    """Two databases of the same shape (records of the same lengths at the same
    offsets); the first, sealed segment of one is replaced by the other's between close
    and reopen. The open does not read records before its checkpoint's cursor again,
    and the cursor (in the last segment) still matches: the seal and the feed read the
    other node's events as this node's own. Both must raise CorruptLogError."""
    options = {"difficulty": DIFFICULTY, "sync": "os", "processes": False}
    paths = [tmp_path / "a", tmp_path / "b"]
    for path, tag in zip(paths, "ab", strict=True):
        async with koru.open(path, segment_size=64 * 1024, **options) as db:
            for i in range(3000):
                await db.put("k", f"k{i:05d}", f"{tag}{i:05d}")
            if tag == "a":
                node = db.node_id
    first = "logs/storage/00000001.seg"
    assert (paths[0] / "logs/storage/00000002.seg").exists()
    (paths[0] / first).write_bytes((paths[1] / first).read_bytes())
    async with koru.open(paths[0], **options) as db:
        with pytest.raises(koru.CorruptLogError):
            await db.seal()
        with pytest.raises(koru.CorruptLogError):
            await db.feed_events(node, "storage", 0, 100)


@pytest.mark.parametrize("damage", ["rewritten", "flipped"])
async def test_a_peer_offering_a_held_event_again_is_not_blamed_for_a_damaged_record(
    tmp_path: Path, damage: str
) -> None:
    """A node holds another's 20 events; its record of event 5 is then rewritten on
    disk with its checksums fixed (or a byte of it flipped). A peer offers the honest
    event 5 again (sync sends duplicates). Ingest compared it with the id of what the
    log held and refused it as the peer's fork: counted in ``forks``, logged as the
    origin's, or (a flipped byte) raised CorruptLogError out of ``ingest``, which
    raises only for its caller's mistakes. It must refuse it as this node's own damage,
    neither counting a fork nor raising, and still take a true fork for one."""
    _, events = await _written(tmp_path / "origin", 20)
    path = tmp_path / "db"
    async with koru.open(path, difficulty=DIFFICULTY, sync="os", processes=False) as db:
        assert (await db.ingest(events)).accepted == 20
    segment = path / "logs/storage/00000001.seg"
    if damage == "rewritten":
        _rewrite_record(segment, events[4], b"v00004", b"v0000X")
    else:
        data = bytearray(segment.read_bytes())
        data[data.index(b"v00004")] ^= 1
        segment.write_bytes(bytes(data))
    async with koru.open(path, difficulty=DIFFICULTY, sync="os", processes=False) as db:
        result = await db.ingest([events[4]])
        assert result.accepted == 0 and len(result.refused) == 1
        assert "damaged" in result.refused[0].reason and not result.refused[0].fork
        assert (await db.stats()).forks == 0
        # A real fork of a sound event is still one.
        fork = events[6].replace(b"v00006", b"v0000Y")
        assert (await db.ingest([fork])).refused[0].fork
