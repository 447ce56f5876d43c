"""Tables: immutable, sorted files of (namespace, key) -> bytes, read in place.

Why: a projection as large as the data (every key's version records) cannot live in
memory, nor be rewritten whole by every checkpoint, nor be decoded whole by every open.
A table is written once, when a checkpoint moves what changed out of memory, and then
only read: binary-searched in place (a memory map), so opening a database costs what
its tables' headers cost, and a key nobody asks for costs no memory at all. Tables are
named by their content's hash and never change; newer tables hide older entries of the
same key, and compaction merges several into one.

Format (little-endian)::

    b"KORUTAB1" | u32 format | u32 reserved | u64 entries | 32 B blake3(offsets)
    | u64 offset of entry i, for every i (relative to the first entry)
    | entries, sorted by (namespace, key) as UTF-8 bytes:
        u32 crc32(rest of the entry) | u16 namespace length | namespace
        | u16 key length | key | u32 value length | value

The offsets are verified (their hash) before the first search, and every entry read is
checked against its crc32, so damage is reported (:class:`CorruptCheckpointError`) and
never answered around: a table that fails is rebuilt from the log by its owner.
"""

from __future__ import annotations

import heapq
import struct
import sys
import zlib
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

import blake3

from ._errors import CorruptCheckpointError

__all__ = ["TABLE_MAGIC", "Table", "encode_table", "table_name"]

TABLE_MAGIC = b"KORUTAB1"
_FORMAT = 1
_HEAD = struct.Struct("<8sIIQ32s")
_CRC = struct.Struct("<I")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def _entry(ns: bytes, key: bytes, value: bytes) -> bytes:
    body = b"".join(
        (_U16.pack(len(ns)), ns, _U16.pack(len(key)), key, _U32.pack(len(value)), value)
    )
    return _CRC.pack(zlib.crc32(body)) + body


def encode_table(items: Iterable[tuple[str, str, bytes]]) -> list[bytes]:
    """A table's bytes, as pieces to write in order, from (namespace, key, value)
    items in any order (a (namespace, key) at most once).

    The entries are produced lazily (a table may be larger than memory would like to
    hold twice): the list holds the header and the offsets, then an iterator."""
    rows = _sorted((ns.encode(), key.encode(), value) for ns, key, value in items)
    offsets, at = [], 0
    for ns, key, value in rows:
        offsets.append(at)
        at += 12 + len(ns) + len(key) + len(value)  # crc, three lengths, the bytes
    index = struct.pack(f"<{len(offsets)}Q", *offsets)
    head = _HEAD.pack(TABLE_MAGIC, _FORMAT, 0, len(offsets), blake3.blake3(index).digest())
    return [head, index, *(_entry(ns, key, value) for ns, key, value in rows)]


_CHUNK = 20_000


def _sorted(rows: Iterable[tuple[bytes, bytes, bytes]]) -> list[tuple[bytes, bytes, bytes]]:
    """``sorted(rows)``, in chunks merged at the Python level: one ``sorted`` of a
    million rows holds the GIL for a second, which would freeze the event loop of the
    thread that runs it in a worker; between chunks the loop gets to run."""
    rows = list(rows)
    if len(rows) <= _CHUNK:
        return sorted(rows)
    chunks = [sorted(rows[i : i + _CHUNK]) for i in range(0, len(rows), _CHUNK)]
    return list(heapq.merge(*chunks))


def table_name(pieces: list[bytes]) -> str:
    """The content name of a table: the first 16 bytes of blake3 of its bytes, in hex."""
    hasher = blake3.blake3()
    for piece in pieces:
        hasher.update(piece)
    return hasher.hexdigest()[:32]


class Table:
    """A table read in place from ``data`` (a memory map or bytes), named ``name``.

    Construction reads the header only; the offsets are verified by their hash before
    the first lookup, each entry by its crc32 when read.

    Raises:
        CorruptCheckpointError: not a table, or damaged.
    """

    __slots__ = ("_base", "_count", "_data", "_offsets", "_verified", "name", "size")

    def __init__(self, data: Any, name: str) -> None:
        self.name = name
        self.size = len(data)
        if self.size < _HEAD.size:
            raise CorruptCheckpointError(f"table {name} is cut short")
        magic, fmt, _, count, digest = _HEAD.unpack_from(data, 0)
        if magic != TABLE_MAGIC or fmt != _FORMAT:
            raise CorruptCheckpointError(f"table {name} is not a koru table of format 1")
        base = _HEAD.size + 8 * count
        if base > self.size:
            raise CorruptCheckpointError(f"table {name} is cut short")
        self._data = data
        self._count = count
        self._base = base
        index = memoryview(data)[_HEAD.size : base]
        # The offsets are little-endian; a memory view reads them in place where the
        # machine is too (everywhere koru runs today), else they are unpacked once.
        self._offsets: Any = (
            index.cast("Q") if sys.byteorder == "little" else struct.unpack(f"<{count}Q", index)
        )
        self._verified = digest

    def __len__(self) -> int:
        return int(self._count)

    def verify(self) -> None:
        """Check the offsets against their hash (once; every search needs them right).

        Raises:
            CorruptCheckpointError: they are damaged.
        """
        self._verify()

    def _verify(self) -> None:
        if self._verified is None:
            return
        index = memoryview(self._data)[_HEAD.size : self._base]
        if blake3.blake3(index).digest() != self._verified:
            raise CorruptCheckpointError(f"table {self.name}: its offsets are damaged")
        self._verified = None

    def _name(self, i: int) -> tuple[bytes, bytes]:
        data = self._data
        at = self._base + self._offsets[i] + 4
        (n,) = _U16.unpack_from(data, at)
        ns = bytes(data[at + 2 : at + 2 + n])
        at += 2 + n
        (m,) = _U16.unpack_from(data, at)
        return ns, bytes(data[at + 2 : at + 2 + m])

    def _entry(self, i: int) -> tuple[bytes, bytes, bytes]:
        data, start = self._data, self._base + self._offsets[i]
        try:
            (crc,) = _CRC.unpack_from(data, start)
            at = start + 4
            (n,) = _U16.unpack_from(data, at)
            ns = bytes(data[at + 2 : at + 2 + n])
            at += 2 + n
            (m,) = _U16.unpack_from(data, at)
            key = bytes(data[at + 2 : at + 2 + m])
            at += 2 + m
            (v,) = _U32.unpack_from(data, at)
            end = at + 4 + v
            if end > self.size or zlib.crc32(memoryview(data)[start + 4 : end]) != crc:
                raise CorruptCheckpointError(
                    f"table {self.name}: entry {i} fails its check (the log is intact: "
                    "remove the checkpoint file to rebuild the state from it)"
                )
            return ns, key, bytes(data[at + 4 : end])
        except struct.error:
            raise CorruptCheckpointError(f"table {self.name}: entry {i} is cut short") from None

    def _search(self, target: tuple[bytes, bytes]) -> int:
        self._verify()
        try:
            return bisect_left(range(self._count), target, key=self._name)
        except struct.error:
            raise CorruptCheckpointError(f"table {self.name}: an entry is cut short") from None

    def get(self, namespace: str, key: str) -> bytes | None:
        """The value of (namespace, key), or None if the table has none."""
        try:
            target = (namespace.encode(), key.encode())
        except UnicodeEncodeError:  # not a name (a lone surrogate): no table holds it
            return None
        i = self._search(target)
        if i < self._count:
            ns, k, value = self._entry(i)
            if (ns, k) == target:
                return value
        return None

    def items(self, namespace: str) -> Iterator[tuple[str, bytes]]:
        """(key, value) of every key of ``namespace``, in key order."""
        try:
            ns = namespace.encode()
        except UnicodeEncodeError:  # not a name: no table holds it
            return
        i = self._search((ns, b""))
        while i < self._count:
            name, key, value = self._entry(i)
            if name != ns:
                return
            yield key.decode(), value
            i += 1

    def entries(self) -> Iterator[tuple[str, str, bytes]]:
        """Every (namespace, key, value), in order."""
        self._verify()
        for i in range(self._count):
            ns, key, value = self._entry(i)
            yield ns.decode(), key.decode(), value

    def namespaces(self) -> Iterator[str]:
        """The namespaces the table holds keys of, in order (one search per namespace)."""
        self._verify()
        i = 0
        while i < self._count:
            ns, _ = self._name(i)
            yield ns.decode()
            i = bisect_left(range(self._count), (ns + b"\x00",), key=lambda j: self._name(j)[:1])

    def release(self) -> None:
        """Let go of the memory map (the table is unusable after)."""
        if isinstance(self._offsets, memoryview):
            self._offsets.release()
        close = getattr(self._data, "close", None)
        if close is not None:
            close()
