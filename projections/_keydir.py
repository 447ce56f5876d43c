"""The key directory: where each key's version records lie inside a checkpoint file.

Why: a checkpoint of a large database is one CBOR document (about 134 MB at a million
versions), and answering one key from it would mean reading, hashing and decoding all
of it: a second, where a one-shot ``kdelta get`` has a tenth of that. The directory is
written beside each checkpoint and lists every key of its key/value section in sorted
order with the offset, length and crc32 of the key's packed version records in the
checkpoint file. A one-shot reader binary-searches it and reads a few kilobytes.

Like the checkpoint, it is a shortcut, never the truth: it is bound to its checkpoint by
that file's digest, verified by its own blake3, and each blob it points at is checked
against its crc32; a directory that is missing, damaged or of another checkpoint is
ignored, and the reader loads the database in full. It also carries the storage log's
cursor of the checkpoint, from which the reader folds what was written since.

Format: ``b"KORUKEY1" | blake3(body) | body``; body: the header (format, checkpoint
digest, key/value section version, storage cursor, entry count), then a u32 offset per
entry, then the entries, sorted by (namespace, key) as UTF-8 bytes::

    u16 namespace length | namespace | u16 key length | key | u64 offset | u32 length
    | u32 crc32
"""

from __future__ import annotations

import struct
import zlib
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

import blake3

from koru.events import STORAGE, CorruptCheckpointError, Cursor, genesis_root

from ._checkpoint import Placed

__all__ = ["KEYS_FILE", "KeyDirectory", "encode_key_directory", "key_directory_of"]

#: The directory's file name, beside ``checkpoint``.
KEYS_FILE = "checkpoint.keys"
_MAGIC = b"KORUKEY1"
_FORMAT = 1
#: format, checkpoint digest, kv section version, cursor (count, root, segment, offset,
#: last), entry count
_HEAD = struct.Struct("<I32sIQ32sIQqI")
_U16 = struct.Struct("<H")
_TAIL = struct.Struct("<QII")  # offset, length, crc32
_OFFSETS = "<{}I"


def encode_key_directory(
    placed: Iterable[tuple[str, str, int, int]],
    blobs: Iterable[bytes],
    *,
    checkpoint_digest: bytes,
    kv_version: int,
    cursor: Cursor,
) -> list[bytes]:
    """The directory's bytes, as pieces to write in order.

    ``placed`` gives (namespace, key, offset, length) of each key's version records in
    the checkpoint file, and ``blobs`` the records themselves in the same order (for
    their crc32).
    """
    rows = []
    for (namespace, key, offset, length), blob in zip(placed, blobs, strict=True):
        ns, k = namespace.encode(), key.encode()
        rows.append(
            (
                ns,
                k,
                _U16.pack(len(ns))
                + ns
                + _U16.pack(len(k))
                + k
                + _TAIL.pack(offset, length, zlib.crc32(blob)),
            )
        )
    rows.sort()
    offsets, at = [], 0
    for row in rows:
        offsets.append(at)
        at += len(row[2])
    head = _HEAD.pack(
        _FORMAT,
        checkpoint_digest,
        kv_version,
        cursor.count,
        cursor.root,
        cursor.segment,
        cursor.offset,
        cursor.last,
        len(rows),
    )
    body = [head, struct.pack(_OFFSETS.format(len(rows)), *offsets), *(r[2] for r in rows)]
    hasher = blake3.blake3()
    for piece in body:
        hasher.update(piece)
    return [_MAGIC, hasher.digest(), *body]


def key_directory_of(
    captured: dict[str, Any], placed: list[Placed], checkpoint_digest: bytes
) -> list[bytes] | None:
    """The directory of a checkpoint encoded from ``captured`` (whose key/value blobs
    landed where ``placed`` says), or None if it has no key/value section."""
    section = captured.get("sections", {}).get("kv")
    if section is None:
        return None
    version, data = section
    namespaces = data["ns"]
    cursor = captured["cursors"].get(STORAGE)
    return encode_key_directory(
        placed,
        (namespaces[ns][key] for ns, key, _, _ in placed),
        checkpoint_digest=checkpoint_digest,
        kv_version=version,
        cursor=Cursor(*cursor) if cursor is not None else Cursor(0, genesis_root(STORAGE)),
    )


class KeyDirectory:
    """A parsed, verified key directory (see the module doc)."""

    __slots__ = ("_base", "_count", "_data", "_offsets", "checkpoint_digest", "cursor")

    def __init__(self, data: bytes, kv_version: int) -> None:
        """Verify ``data`` and read its header.

        Raises:
            CorruptCheckpointError: not a directory, damaged, of another format, or of
                another version of the key/value section than ``kv_version``.
        """
        start = len(_MAGIC) + 32
        if len(data) < start + _HEAD.size or not data.startswith(_MAGIC):
            raise CorruptCheckpointError("not a koru key directory")
        body = memoryview(data)[start:]
        if blake3.blake3(body).digest() != data[len(_MAGIC) : start]:
            raise CorruptCheckpointError("key directory checksum mismatch")
        fmt, digest, version, count, root, segment, offset, last, n = _HEAD.unpack_from(data, start)
        if fmt != _FORMAT or version != kv_version:
            raise CorruptCheckpointError(f"key directory format {fmt}, section {version}")
        at = start + _HEAD.size
        if len(data) < at + 4 * n:
            raise CorruptCheckpointError("key directory is cut short")
        self.checkpoint_digest: bytes = digest
        self.cursor = Cursor(count, root, segment, offset, last)
        self._data = data
        self._count = n
        self._offsets = struct.unpack_from(_OFFSETS.format(n), data, at)
        self._base = at + 4 * n

    def __len__(self) -> int:
        return int(self._count)

    def _name(self, i: int) -> tuple[bytes, bytes]:
        data, at = self._data, self._base + self._offsets[i]
        (n,) = _U16.unpack_from(data, at)
        ns = data[at + 2 : at + 2 + n]
        at += 2 + n
        (m,) = _U16.unpack_from(data, at)
        return ns, data[at + 2 : at + 2 + m]

    def _entry(self, i: int) -> tuple[bytes, bytes, int, int, int]:
        ns, key = self._name(i)
        at = self._base + self._offsets[i] + 4 + len(ns) + len(key)
        return (ns, key, *_TAIL.unpack_from(self._data, at))

    def find(self, namespace: str, key: str) -> tuple[int, int, int] | None:
        """(offset, length, crc32) of the key's version records, or None if the
        checkpoint holds no version of it.

        Raises:
            CorruptCheckpointError: an entry runs past the directory (a crafted file).
        """
        target = (namespace.encode(), key.encode())
        try:
            i = bisect_left(range(self._count), target, key=self._name)
            if i < self._count and self._name(i) == target:
                return self._entry(i)[2:]
        except struct.error as exc:
            raise CorruptCheckpointError(f"key directory entry unreadable: {exc}") from None
        return None

    def namespace(self, namespace: str) -> Iterator[tuple[str, int, int, int]]:
        """(key, offset, length, crc32) of every key of ``namespace``, in key order."""
        ns = namespace.encode()
        try:
            i = bisect_left(range(self._count), (ns, b""), key=self._name)
            while i < self._count:
                name, key, offset, length, crc = self._entry(i)
                if name != ns:
                    return
                yield key.decode(), offset, length, crc
                i += 1
        except (struct.error, UnicodeDecodeError) as exc:
            raise CorruptCheckpointError(f"key directory entry unreadable: {exc}") from None
