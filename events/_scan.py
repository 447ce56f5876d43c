"""One verifying pass over the records of a segment's bytes, with no side effects.

Recovery, read-only opens and (later) the log reader of the command line all walk a
segment the same way: check each record's header checksum and chain link (which
hashes the whole body, so it proves the body's checksum too), yield it, and stop at the
first record that fails, named by its checksums first. What a failure *means* (the
torn tail of a crash, or corruption) is not decided here: that depends on whether the
bytes were proven durable, which only the caller knows.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import blake3

from ._frame import (
    MAX_BODY_SIZE,
    RECORD_HEADER_SIZE,
    ROOT_SIZE,
    FrameError,
    TornRecord,
    parse_record,
)
from ._store import Record

__all__ = ["BATCH", "SegmentScan"]

#: Most records of a list the plain scan yields.
BATCH = 256

_blake3 = blake3.blake3
_crc32 = zlib.crc32
_unpack_header = struct.Struct("<III").unpack_from


class SegmentScan:
    """Iterate the verified records of ``data`` from ``offset``.

    After iteration, ``offset``/``last``/``root``/``count`` describe the end of the last
    good record (``last`` is where it starts, or the starting ``last``), and
    ``failure`` is None if the data ended exactly there, else the reason the record at
    ``offset`` failed; ``torn`` says the data ends inside that record (its bytes run
    out), as opposed to a complete record that fails a check. A record's location is
    ``base + `` its offset in ``data`` (``base`` also carries where ``data`` starts in its
    file, when it is only the part of a segment after a cursor).

    With ``plain``, the records come as plain tuples ``(location, position, event id,
    event bytes)`` instead of :class:`Record` objects, in lists of up to ``BATCH`` (the
    last one shorter): what replay reads, one object fewer per record and one
    generator step per list instead of per record (a consumer that stops early leaves
    the scan at the end of the last list it was handed).
    """

    __slots__ = ("base", "count", "data", "failure", "last", "offset", "plain", "root", "torn")

    def __init__(
        self,
        data: bytes | mmap.mmap,
        offset: int,
        root: bytes,
        count: int,
        base: int,
        last: int = -1,
        *,
        plain: bool = False,
    ) -> None:
        self.data = data
        self.offset = offset
        self.root = root
        self.count = count
        self.base = base
        self.last = last
        self.plain = plain
        self.failure: str | None = None
        self.torn = False

    def __iter__(self) -> Iterator[Any]:
        data, base, plain = self.data, self.base, self.plain
        offset, root, count, last = self.offset, self.root, self.count, self.last
        size = len(data)
        new, record = tuple.__new__, Record
        unpack, crc = _unpack_header, _crc32
        # One hasher for the scan, reset before each use (a third cheaper than a new
        # one per hash; the scan runs on one thread).
        hasher = _blake3()
        reset, update = hasher.reset, hasher.update
        batch: list[tuple[int, int, bytes, bytes]] = []
        put, flush = batch.append, count + BATCH - 1
        try:
            while offset < size:
                # The fast path, inlined (a replay reads millions of records); any
                # failure goes through parse_record to name the exact problem. Why the
                # body's checksum is not computed here: the chain link hashes the whole
                # body (root and event), so a link that holds proves it intact; a link
                # that fails is classified below, by parse_record, checksums first.
                try:
                    n, _, head_crc = unpack(data, offset)
                except struct.error:  # less than a record header left
                    n = head_crc = -1
                body = offset + RECORD_HEADER_SIZE
                start = body + ROOT_SIZE
                nxt = body + n
                if (
                    nxt <= size
                    and ROOT_SIZE < n <= MAX_BODY_SIZE
                    # (8 bytes sliced out: cheaper than a memoryview's slice)
                    and crc(data[offset : offset + 8]) == head_crc
                ):
                    event = data[start:nxt]
                    reset()
                    eid = update(event).digest()
                    stored_root = data[body:start]
                    reset()
                    update(root)
                    linked = update(eid).digest() == stored_root
                else:
                    linked = False
                if not linked:
                    try:
                        parse_record(data, offset)
                        self.failure = "hash chain link broken"
                    except TornRecord as exc:
                        self.failure, self.torn = str(exc), True
                    except FrameError as exc:
                        self.failure = str(exc)
                    break
                if plain:
                    put((base + offset, count, eid, event))
                    if count == flush:
                        yield batch
                        batch = []
                        put, flush = batch.append, count + BATCH
                else:
                    yield new(record, (base + offset, count, eid, stored_root, event))
                count += 1
                root = stored_root
                last = offset
                offset = nxt
            if batch:
                yield batch
        finally:
            # Also when the consumer stops early: the scan then ends at the record it
            # was handed last (not counted; in plain mode, the last of a list), which
            # is where that consumer stopped.
            self.offset, self.root, self.count, self.last = offset, root, count, last
