"""One verifying pass over the records of a segment's bytes, with no side effects.

Recovery, read-only opens and (later) the log reader of the command line all walk a
segment the same way: check each record's header checksum, body checksum and chain
link, yield it, and stop at the first record that fails. What a failure *means* (the
torn tail of a crash, or corruption) is not decided here: that depends on whether the
bytes were proven durable, which only the caller knows.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Iterator

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

__all__ = ["SegmentScan"]

_blake3 = blake3.blake3
_crc32 = zlib.crc32
_unpack_header = struct.Struct("<III").unpack_from
_pack_len_crc = struct.Struct("<II").pack


class SegmentScan:
    """Iterate the verified records of ``data`` from ``offset``.

    After iteration, ``offset``/``last``/``root``/``count`` describe the end of the last
    good record (``last`` is where it starts, or the starting ``last``), and
    ``failure`` is None if the data ended exactly there, else the reason the record at
    ``offset`` failed; ``torn`` says the data ends inside that record (its bytes run
    out), as opposed to a complete record that fails a check. A record's location is
    ``base + `` its offset in ``data`` (``base`` also carries where ``data`` starts in its
    file, when it is only the part of a segment after a cursor).
    """

    __slots__ = ("base", "count", "data", "failure", "last", "offset", "root", "torn")

    def __init__(
        self,
        data: bytes | mmap.mmap,
        offset: int,
        root: bytes,
        count: int,
        base: int,
        last: int = -1,
    ) -> None:
        self.data = data
        self.offset = offset
        self.root = root
        self.count = count
        self.base = base
        self.last = last
        self.failure: str | None = None
        self.torn = False

    def __iter__(self) -> Iterator[Record]:
        data, base = self.data, self.base
        offset, root, count, last = self.offset, self.root, self.count, self.last
        size = len(data)
        new = tuple.__new__
        view = memoryview(data)
        try:
            while offset < size:
                # The fast path, inlined (a replay reads millions of records); any
                # failure goes through parse_record to name the exact problem.
                ok = False
                if size - offset >= RECORD_HEADER_SIZE:
                    n, body_crc, head_crc = _unpack_header(data, offset)
                    body = offset + RECORD_HEADER_SIZE
                    nxt = body + n
                    ok = (
                        nxt <= size
                        and ROOT_SIZE < n <= MAX_BODY_SIZE
                        and _crc32(_pack_len_crc(n, body_crc)) == head_crc
                        and _crc32(view[body:nxt]) == body_crc
                    )
                if not ok:
                    try:
                        parse_record(data, offset)
                        self.failure = "record failed its checks"  # pragma: no cover
                    except TornRecord as exc:
                        self.failure, self.torn = str(exc), True
                    except FrameError as exc:
                        self.failure = str(exc)
                    break
                stored_root = data[body : body + ROOT_SIZE]
                event = data[body + ROOT_SIZE : nxt]
                eid = _blake3(event).digest()
                if _blake3(root + eid).digest() != stored_root:
                    self.failure = "hash chain link broken"
                    break
                yield new(Record, (base + offset, count, eid, stored_root, event))
                count += 1
                root = stored_root
                last = offset
                offset = nxt
        finally:
            # Also when the consumer stops early: the scan then ends at the record it
            # was handed last (not counted), which is where that consumer stopped.
            view.release()
            self.offset, self.root, self.count, self.last = offset, root, count, last
