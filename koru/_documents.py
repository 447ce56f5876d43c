"""Decoded documents of a namespace, kept for scans and refreshed by what changed.

A full scan decodes every current value of a namespace; decoding is most of its cost
(about 1 µs per small document, more than evaluating a filter). So the query engine
keeps, per namespace it has scanned, the decoded current documents in key order, and
the write path marks keys dirty (:meth:`Documents.touch`, called by the one observer of
``Writer.write``, so local writes and ingested events alike); the next scan re-reads
only those. Values are read through the :class:`~koru._reader.ValueReader` (the value
cache, else the log with the content-id proof), never taken from an event directly.

These objects are never handed to a caller: rows are decoded afresh from the value
bytes, aggregate results are copied. The whole cache is bounded by the encoded size
of the documents it holds (:data:`DOC_CACHE_BYTES`, least recently scanned namespace
evicted first); a namespace bigger than the budget is decoded on every scan instead.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from koru.projections import RECORD_SIZE, TOMBSTONE, KvState

from ._history import decode_all

__all__ = [
    "DOC_CACHE_BYTES",
    "DocumentCache",
    "Documents",
    "live_bytes",
    "live_records",
    "read_at",
    "read_live",
    "read_values",
]

#: Default budget of decoded documents, counted as their encoded size (Python objects
#: take several times that).
DOC_CACHE_BYTES = 32 * 1024 * 1024

# The content id, location and size of a packed version record, which start 56 bytes in.
_TAIL = struct.Struct(">32s32xQI")
_FROM_END = RECORD_SIZE - 56

Reader = Callable[[bytes, int, str, str], bytes]
Peek = Callable[[bytes], bytes | None]


def live_records(
    kv: KvState, namespace: str, keys: list[str] | None = None
) -> list[tuple[str, bytes, int, int]]:
    """``(key, content id, location, size)`` of the live keys of ``namespace`` (all of
    them, or those in ``keys``), in the order given (sorted by key for all)."""
    pairs = kv.items(namespace) if keys is None else ((k, kv.packed(namespace, k)) for k in keys)
    out = []
    tail = _TAIL.unpack_from
    for key, blob in pairs:
        if blob is None or blob[-1] & TOMBSTONE:
            continue
        out.append((key, *tail(blob, len(blob) - _FROM_END)))
    return out


def live_bytes(kv: KvState, namespace: str, keys: list[str]) -> int:
    """The encoded size of the current values of ``keys`` (live keys of ``namespace``):
    what an answer of them holds, known before a value is read."""
    packed = kv.packed
    tail = _TAIL.unpack_from
    total = 0
    for key in keys:
        blob = packed(namespace, key)
        if blob is not None:
            total += tail(blob, len(blob) - _FROM_END)[2]
    return total


def read_values(
    read: Reader, namespace: str, recs: list[tuple[str, bytes, int, int]], peek: Peek
) -> list[Any]:
    """Decode the values of ``recs`` (from :func:`live_records`) with one cbor2 call;
    ``peek`` looks in the value cache first (the usual case, one dict probe)."""
    parts = []
    for key, cid, loc, _ in recs:
        data = peek(cid)
        parts.append(data if data is not None else read(cid, loc, namespace, key))
    return decode_all(parts)


def read_live(
    kv: KvState, namespace: str, keys: list[str], read: Reader, peek: Peek
) -> tuple[list[str], list[Any]]:
    """The live ones of ``keys`` and their current values, decoded with one cbor2 call
    (:func:`live_records` and :func:`read_values` in one pass, for index lookups)."""
    packed = kv.packed
    tail = _TAIL.unpack_from
    found, parts = [], []
    for key in keys:
        blob = packed(namespace, key)
        if blob is None or blob[-1] & TOMBSTONE:
            continue
        cid, loc, _ = tail(blob, len(blob) - _FROM_END)
        data = peek(cid)
        parts.append(data if data is not None else read(cid, loc, namespace, key))
        found.append(key)
    return found, decode_all(parts)


def read_at(
    kv: KvState, namespace: str, when: int, read: Reader, peek: Peek
) -> tuple[list[str], list[Any]]:
    """Keys of ``namespace`` with a value at time ``when``, and those values (decoded
    afresh), in key order."""
    recs = []
    for key, _ in kv.items(namespace):
        r = kv.at(namespace, key, when)
        if r is not None and r.content_id is not None and not r.expired(when):
            recs.append((key, r.content_id, r.location, r.size))
    return [r[0] for r in recs], read_values(read, namespace, recs, peek)


class Documents:
    """One namespace's current documents, decoded, in key order."""

    __slots__ = ("dirty", "docs", "index", "keys", "namespace", "size", "sizes")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.keys: list[str] = []
        self.docs: list[Any] = []
        self.sizes: list[int] = []
        self.index: dict[str, int] = {}
        #: Keys written since the last refresh (None: everything, rebuild). A dict of
        #: keys to None, not a set: the cyclic garbage collector never tracks it (a set
        #: is always tracked, and a namespace written and not scanned gathers every key
        #: it writes: a full collection visited each of them).
        self.dirty: dict[str, None] | None = None
        self.size = 0

    def refresh(self, kv: KvState, read: Reader, peek: Peek) -> None:
        """Bring the documents up to date with the projection."""
        ns = self.namespace
        if self.dirty is None:
            recs = live_records(kv, ns)
            self.keys = [r[0] for r in recs]
            self.sizes = [r[3] for r in recs]
            self.docs = read_values(read, ns, recs, peek)
            self.index = {k: i for i, k in enumerate(self.keys)}
            self.size = sum(self.sizes)
            self.dirty = {}
            return
        if not self.dirty:
            return
        dirty = sorted(self.dirty)
        self.dirty = {}
        recs = live_records(kv, ns, dirty)
        values = read_values(read, ns, recs, peek)
        live = {r[0] for r in recs}
        reshape = False
        for (key, _, _, size), doc in zip(recs, values, strict=True):
            i = self.index.get(key)
            if i is None:
                reshape = True
                continue
            self.size += size - self.sizes[i]
            self.docs[i], self.sizes[i] = doc, size
        if reshape or any(k in self.index for k in dirty if k not in live):
            # Keys came or went: merge, in key order (rare next to updates in place).
            merged = {k: (d, z) for k, d, z in zip(self.keys, self.docs, self.sizes, strict=True)}
            for k in dirty:
                if k not in live:
                    merged.pop(k, None)
            for (key, _, _, size), doc in zip(recs, values, strict=True):
                merged[key] = (doc, size)
            self.keys = sorted(merged)
            self.docs = [merged[k][0] for k in self.keys]
            self.sizes = [merged[k][1] for k in self.keys]
            self.index = {k: i for i, k in enumerate(self.keys)}
            self.size = sum(self.sizes)


class DocumentCache:
    """Decoded documents of the namespaces scanned lately, within a byte budget."""

    __slots__ = ("budget", "by_namespace", "first_use", "kv", "peek", "read")

    def __init__(
        self,
        kv: KvState,
        read: Reader,
        peek: Peek,
        budget: int = DOC_CACHE_BYTES,
        first_use: Callable[[], None] = lambda: None,
    ) -> None:
        self.kv = kv
        self.read = read
        self.peek = peek
        self.budget = budget
        self.by_namespace: OrderedDict[str, Documents] = OrderedDict()
        #: Called before the cache first holds documents: from then on writes must
        #: :meth:`touch` them (until then the write path need not call anything).
        self.first_use = first_use

    def touch(self, namespace: str, key: str) -> None:
        """A write to ``namespace/key`` was folded (the write path's observer)."""
        docs = self.by_namespace.get(namespace)
        if docs is not None and docs.dirty is not None:
            docs.dirty[key] = None

    def get(self, namespace: str) -> Documents:
        """The namespace's documents, up to date (kept if they fit the budget)."""
        if not self.by_namespace:
            self.first_use()
        docs = self.by_namespace.get(namespace)
        if docs is None:
            docs = Documents(namespace)
        docs.refresh(self.kv, self.read, self.peek)
        self.by_namespace[namespace] = docs
        self.by_namespace.move_to_end(namespace)
        total = sum(d.size for d in self.by_namespace.values())
        while total > self.budget and self.by_namespace:
            _, evicted = self.by_namespace.popitem(last=False)
            total -= evicted.size
        return docs
