"""Attacks nobody had tried (h-untried): an export killed outright mid-stream,
tampered ttl columns of a checkpoint, read-only opens racing checkpoint replacement,
and maximum-size deletes through the wire while a subscriber is attached."""

from __future__ import annotations

import sys
from pathlib import Path

import koru

NS = "ns"
KDELTA = str(Path(sys.executable).parent / "kdelta")


async def test_unproven_events_waiting_for_a_seal_are_held_as_bytes_not_decoded() -> None:
    """Attack: a peer offers events of an origin that has not sealed them, each a batch
    of tiny deletes (tombstones) at the size limit, from several connections at once.
    They wait in the proven ingest's room, bounded in bytes (``MAX_WAITING_BYTES``,
    256 MiB; 64 MiB a sender). Decoded, such an event takes about 15 times its bytes
    (about 40 while decoding): held decoded, the room's 256 MiB were some 4 GB. Must
    hold: what waits costs about its bytes (held as bytes, decoded again when
    released, as the plain ingest's held events are)."""
    import gc
    import tracemalloc

    from koru.events import BatchEvent, Write, encode_event

    origin = bytes(range(16))
    writes = tuple(Write("n", f"k{i}", None, None) for i in range(20_000))
    async with koru.open(":memory:") as db:
        now = db._writer.now()
        data = encode_event(BatchEvent(origin, "storage", 2, bytes(32), now, writes))
        del writes
        gc.collect()
        room = db._proven
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            room.offer(data, now, b"peer")
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert room.waiting == 1
        assert held < 2 * len(data) + 64 * 1024, (held, len(data))
