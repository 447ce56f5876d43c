"""Telling a record another process is still writing from a damaged one.

A reader of a live log (a read-only handle, ``kdelta verify``, ``watch``, export) can
read the last segment while the writer's ``pwrite`` is landing: it sees the bytes that
landed and, where the rest will go, the zeros allocated ahead (the file is already long
enough, so the record does not look torn). Recovery and both readers judge such a
record by this one rule, so they never disagree on what is damage.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from ._frame import RECORD_HEADER_SIZE

__all__ = ["still_landing"]

_HEAD = struct.Struct("<III")  # body length, body crc32, crc32 of those two


def still_landing(seen: bytes, read_again: Callable[[], bytes | None]) -> bool:
    """Whether the record failing its checks at the start of ``seen`` (its bytes and
    every byte after it in the last segment) may be one another process is still
    writing.

    Its extent is what its header claims when the header passes its checksum, else the
    header's own 12 bytes (a damaged length may point anywhere). It may be landing if:
    its bytes end in zeros with nothing but zeros after them, and, when the whole body
    is there to check, some bytes in place of those zeros would give it its checksum
    (a complete record whose last byte is truly 0, damaged elsewhere, is damage); or
    its own bytes differ when read again (``read_again()``: None when the file is now
    shorter), as when a page beyond it landed first. A writer appending after it says
    nothing about it: only its own bytes are compared. A crash leaves the same bytes as
    a write in progress: a torn tail, never acknowledged, either way.
    """
    if len(seen) < RECORD_HEADER_SIZE:
        return True  # not even its header: torn
    n, body_crc, head_crc = _HEAD.unpack_from(seen, 0)
    whole = zlib.crc32(seen[:8]) == head_crc
    extent = RECORD_HEADER_SIZE + n if whole else RECORD_HEADER_SIZE
    if extent > len(seen):
        return True  # its header is right and its body is not all there: torn
    if whole and zlib.crc32(seen[RECORD_HEADER_SIZE:extent]) == body_crc:
        return False  # every byte of it landed: what fails (its chain link) is damage
    if (
        seen[extent - 1] == 0
        and seen.count(0, extent) == len(seen) - extent
        and (not whole or _completable(seen[RECORD_HEADER_SIZE:extent], body_crc))
    ):
        return True
    again = read_again()
    return again is None or again[:extent] != seen[:extent]


def _completable(body: bytes, crc: int) -> bool:
    """Whether some bytes in place of ``body``'s trailing zeros give it checksum
    ``crc`` (as the rest of a record still landing would). CRC-32 is affine in those
    bytes: four or more reach every checksum; fewer reach a subspace, tested exactly
    (a damaged record whose last byte is truly 0 almost never lies in it)."""
    k = len(body) - len(body.rstrip(b"\0"))
    if k >= 4:
        return True
    if k == 0:
        return False
    start = zlib.crc32(body[:-k])
    zero = zlib.crc32(bytes(k), start)
    basis: list[int] = []  # distinct leading bits, highest first
    for bit in range(8 * k):
        v = zlib.crc32((1 << bit).to_bytes(k, "little"), start) ^ zero
        for b in basis:
            v = min(v, v ^ b)
        if v:
            basis = sorted([*basis, v], reverse=True)
    target = crc ^ zero
    for b in basis:
        target = min(target, target ^ b)
    return target == 0
