"""Crafted records: a valid checksum and chain around a malformed body.

Checksums and hash chains catch accidents, not intent: anyone who can write the files
can frame and chain any bytes. Replay reads this node's own log without the strict
decoder's re-encoding, so it must still check every field: a crafted record raises
``CorruptLogError`` (never ``struct.error``, ``TypeError``, a CBOR error, or a silently
wrong fold), it is accepted only if the strict decoder accepts it too, and nothing it
does makes a key vanish. The same holds for crafted checkpoints (valid digest,
malformed body): they are refused or only ever lead to ``KoruError``\\ s.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import blake3
import cbor2
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import koru
from koru._loader import load
from koru.events import (
    STORAGE,
    BatchEvent,
    CodecError,
    DeleteEvent,
    FileStore,
    MemoryStore,
    PutEvent,
    Write,
    decode_event,
    encode_event,
    encode_value,
    event_id,
)
from koru.events._frame import MAX_BODY_SIZE, FrameError, parse_record
from koru.projections import KvState
from koru.simulations import SimDisk

ORIGIN = bytes(range(16))
OTHER = bytes(range(16, 32))
HLC = 1_767_225_600 * 10**9

anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=40)
    | st.sampled_from(["put", "delete", "batch", "storage", "", STORAGE]),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=8,
)


def base_events() -> list[bytes]:
    """One valid event of each type, each the first of its own feed."""
    origins = [bytes([i]) * 16 for i in range(3)]
    put = PutEvent(origins[0], STORAGE, 1, None, HLC, "ns", "p", encode_value({"v": 1}), None)
    delete = DeleteEvent(origins[1], STORAGE, 1, None, HLC + 1, "ns", "d", None)
    batch = BatchEvent(
        origins[2],
        STORAGE,
        1,
        None,
        HLC + 2,
        (Write("ns", "b1", encode_value(1), None), Write("ns2", "b2", encode_value([2]), None)),
    )
    return [encode_event(e) for e in (put, delete, batch)]


@st.composite
def crafted(draw: st.DrawFn) -> bytes:
    """A valid event with one part replaced, dropped or added; or arbitrary bytes."""
    kind = draw(st.sampled_from(["replace", "drop", "add", "replace-body", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    raw = cbor2.loads(draw(st.sampled_from(base_events())))
    target = raw
    if kind == "replace-body" and raw[7]:
        target = raw[7]
        if draw(st.booleans()) and type(target[0]) is list:
            target = target[0]  # inside a batch item
    if kind in ("replace", "replace-body"):
        target[draw(st.integers(0, len(target) - 1))] = draw(anything)
    elif kind == "drop":
        del target[draw(st.integers(0, len(target) - 1))]
    else:
        target.insert(draw(st.integers(0, len(target))), draw(anything))
    return cbor2.dumps(raw)


def strictly_valid(data: bytes) -> bool:
    """Accepted by the strict decoder. Carried values are not decoded: replay does not
    decode values either (they are proven and decoded when first read)."""
    try:
        decode_event(data)
    except CodecError:
        return False
    return True


def keys_of(kv: KvState) -> set[tuple[str, str]]:
    return {(ns, key) for ns, key, _ in kv.all_items()}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crafted(), st.integers(0, 2))
def test_a_crafted_record_raises_corrupt_log_or_is_strictly_valid(data: bytes, at: int) -> None:
    good = base_events()
    records = [*good[:at], data, *good[at:]]
    store = MemoryStore()
    for record in records:
        store.append(STORAGE, record, event_id(record))
    try:
        loaded = load(store)
    except koru.CorruptLogError as exc:
        assert exc.agent == STORAGE
        # The crafted record is refused, or it was valid and takes a feed position
        # that a later (genuine) event then cannot.
        assert exc.position == at or (exc.position > at and strictly_valid(data)), exc
        return
    # Accepted: then the strict decoder accepts it as well (same rules, minus the
    # canonical re-encoding that the chain makes unnecessary) ...
    assert strictly_valid(data)
    # ... and every key every event writes is there: none vanished.
    expected = KvState()
    for i, record in enumerate(records):
        expected.apply(decode_event(record), event_id(record), i)
    assert keys_of(loaded.kv) == keys_of(expected)
    assert loaded.kv.digest() == expected.digest()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crafted())
def test_crafted_records_through_a_file_store(data: bytes) -> None:
    """The same, on disk, through ``koru.open``: a crafted record never escapes as a raw
    exception, whatever the open then does with it; and if the open accepts it, every
    read of every key works or raises a KoruError."""

    async def check() -> None:
        disk = SimDisk()
        store = FileStore("/db", disk=disk)
        store.create_node(ORIGIN)
        first = PutEvent(bytes([9]) * 16, STORAGE, 1, None, HLC, "ns", "first", b"\x01", None)
        for record in (encode_event(first), data):
            store.append(STORAGE, record, event_id(record))
        store.close()
        try:
            async with koru.open("/db", disk=disk) as db:
                for ns in await db.namespaces():
                    for key in await db.keys(ns):
                        for read in (db.get, db.get_versioned, db.history, db.diff):
                            try:
                                await read(ns, key)
                            except (koru.CorruptLogError, koru.VersionNotFoundError) as exc:
                                if isinstance(exc, koru.CorruptLogError):
                                    assert exc.position == 1, exc
        except koru.CorruptLogError as exc:
            assert exc.position == 1 and exc.path.endswith("00000001.seg")

    trio.run(check)


@pytest.mark.parametrize(
    "value",
    [b"", b"\xff", b"\x18", b"\x18\x01", cbor2.dumps({1: 2}), cbor2.dumps(float("nan"))],
    ids=["empty", "break", "truncated", "non-minimal", "int-key", "nan"],
)
async def test_a_crafted_value_is_reported_when_read(value: bytes) -> None:
    """Replay does not decode values; a crafted record carrying bytes that are not a
    valid value is caught when the value is first read (and never cached)."""
    disk = SimDisk()
    store = FileStore("/db", disk=disk)
    store.create_node(ORIGIN)
    event = encode_event(PutEvent(ORIGIN, STORAGE, 1, None, HLC, "ns", "k", value, None))
    store.append(STORAGE, event, event_id(event))
    store.close()
    async with koru.open("/db", disk=disk) as db:
        assert await db.keys("ns") == ["k"]
        reads = (db.get, db.get_versioned, db.history, lambda ns, k: db.diff(ns, k, 0, 0))
        for read in reads:
            for _ in range(2):  # the second read (not from the cache) fails the same way
                with pytest.raises(koru.CorruptLogError, match="value"):
                    await read("ns", "k")
        assert (await db.stats()).corruptions == 2 * len(reads)


# -- crafted checkpoints ------------------------------------------------------------------


def mutate_cbor(rng: random.Random, body: Any, depth: int = 0) -> Any:
    """Replace one part of a decoded checkpoint body by a random value."""
    if isinstance(body, dict) and body:
        key = rng.choice(sorted(body, key=repr))
        if rng.random() < 0.7 and depth < 4:
            body[key] = mutate_cbor(rng, body[key], depth + 1)
        else:
            body[key] = rng.choice([None, -1, 2**70, "x", b"\x00" * 133, [], {}, 1.5])
        return body
    if isinstance(body, list) and body:
        i = rng.randrange(len(body))
        body[i] = mutate_cbor(rng, body[i], depth + 1)
        return body
    if isinstance(body, bytes) and body:
        out = bytearray(body)
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        if rng.random() < 0.3:
            out = out[: rng.randrange(len(out))]
        return bytes(out)
    if isinstance(body, int):
        return rng.choice([body + 1, body - 1, -body, 2**64, 0])
    return rng.choice([None, 0, "x", b"", []])


async def test_crafted_checkpoints_only_ever_raise_koru_errors() -> None:
    rng = random.Random(7)
    disk = SimDisk()
    async with koru.open("/db", disk=disk, segment_size=512) as db:
        for i in range(30):
            await db.put("ns", f"k{i % 7}", {"i": i})
        await db.delete("ns", "k0")
        await db.put_batch([("ns2", "a", 1), ("ns2", "b", 2)])
    original = disk.read_file("/db/checkpoint")
    magic, body = original[:8], cbor2.loads(original[40:])
    outcomes: dict[str, int] = {}
    for _ in range(300):
        forged = cbor2.dumps(mutate_cbor(rng, cbor2.loads(cbor2.dumps(body))))
        disk.write("/db/checkpoint", magic + blake3.blake3(forged).digest() + forged)
        try:
            async with koru.open("/db", disk=disk, readonly=True) as db:
                for ns in ("ns", "ns2"):
                    for key in ("k0", "k1", "k5", "a", "b"):
                        for call in (db.get, db.get_versioned, db.history, db.contains):
                            with contextlib.suppress(koru.NotFoundError, koru.CorruptLogError):
                                await call(ns, key)
                    await db.keys(ns)
                await db.namespaces()
                outcome = "opened" if (await db.stats()).checkpoint_events else "ignored"
        except koru.KoruError as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("ignored", 0) > 50  # most forgeries are refused by shape
    assert outcomes.get("opened", 0) > 20  # and many are not: reads then meet the log
    assert set(outcomes) <= {"opened", "ignored", "CorruptLogError", "DataLossError"}


@pytest.mark.parametrize("claimed", [MAX_BODY_SIZE + 1, 2**32 - 1])
def test_a_record_claiming_a_huge_body_is_refused_before_reading_it(claimed: int) -> None:
    """A record header with a valid checksum that claims more than the largest event:
    refused by the limit (FrameError), not taken for a record still being written
    (which would send a reader after ``claimed`` bytes)."""
    import struct
    import zlib

    body_crc = 0
    head = struct.pack("<II", claimed, body_crc)
    record = head + struct.pack("<I", zlib.crc32(head)) + bytes(100)
    with pytest.raises(FrameError, match="limit"):
        parse_record(record, 0)
