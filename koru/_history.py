"""Building ``history()`` results in bulk.

A key may have thousands of versions and ``history`` returns them all, so this is a hot
loop: values are decoded with one cbor2 call (a CBOR array assembled from the stored
encodings), rows are built from raw packed records, and hex ids are reused along the
causal chain (a version's ``previous`` is usually the version just before it).

A key whose whole history is read again, unchanged, skips all of that but the decode:
:class:`HistoryCache` keeps, for the last few keys read, a copy of their raw records
(to prove the history unchanged) and, from the second read on, each version's metadata
row without its value and the values' stored encodings as one CBOR array. Values are
decoded afresh on every call (each caller gets its own objects, as from every read);
the encodings are content addressed, so a copy is as good as the value cache's. Where
every value is an immutable scalar or a dict or list of them, decoded templates are
kept instead and each call gets shallow copies, as the value cache serves them (a new
container holding the same immutable items: indistinguishable from a fresh decode).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from itertools import repeat
from operator import add
from typing import Any

import cbor2

from koru.events import cbor_head
from koru.projections import EXPIRES, NO_ID, TOMBSTONE, KvState

from ._cache import shared
from ._types import Versioned

__all__ = ["NULL", "HistoryCache", "decode_all", "history_rows"]

#: The stored encoding of None: stands in for a deletion's value in ``decode_all``.
NULL = b"\xf6"
_CONTAINERS = (dict, list)
#: Decoded templates take up to about this many times their encoding's bytes.
_TEMPLATE_BLOWUP = 10
_new = tuple.__new__


def encode_all(parts: list[bytes]) -> bytes:
    """Many stored value encodings as one CBOR array (for :func:`decode_all`)."""
    return cbor_head(4, len(parts)) + b"".join(parts)


def decode_all(parts: list[bytes]) -> list[Any]:
    """Decode many stored value encodings at once."""
    values: list[Any] = cbor2.loads(encode_all(parts))
    return values


def history_rows(
    namespace: str, key: str, recs: Iterable[tuple[Any, ...]], values: Iterable[Any]
) -> list[Versioned]:
    """One :class:`Versioned` per raw record (see ``KvState.history_raw``) and value,
    in one pass (a first read of a long history spends most of its time here)."""
    out: list[Versioned] = []
    append = out.append
    last_origin, o = b"", ""
    last_wid, last_hex = NO_ID, None
    # values may be endless (history_meta's repeat(None)): recs decide the length
    for (hlc, origin, wid, cid, prev, _, _, expires, flags), value in zip(
        recs, values, strict=False
    ):
        if origin != last_origin:
            last_origin, o = origin, origin.hex()
        p = last_hex if prev == last_wid else (None if prev == NO_ID else prev.hex())
        last_wid, last_hex = wid, wid.hex()
        if not flags:
            append(
                _new(
                    Versioned, (value, namespace, key, last_hex, cid.hex(), hlc, p, o, False, None)
                )
            )
            continue
        e = expires if flags & EXPIRES else None
        if flags & TOMBSTONE:
            append(_new(Versioned, (value, namespace, key, last_hex, None, hlc, p, o, True, e)))
        else:
            append(
                _new(Versioned, (value, namespace, key, last_hex, cid.hex(), hlc, p, o, False, e))
            )
    return out


def _rows(values: list[Any], meta: list[tuple[Any, ...]]) -> list[Versioned]:
    # (value,) + meta per row, as map calls: the fastest way found to build them.
    return list(map(_new, repeat(Versioned), map(add, zip(values), meta)))


def history_meta(
    namespace: str, key: str, recs: Iterable[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """:func:`history_rows` without the values: each version's fields after its value
    (what a prepared history keeps, built once)."""
    return [row[1:] for row in history_rows(namespace, key, recs, repeat(None))]


class HistoryCache:
    """The prepared whole histories of the last ``size`` keys read (see the module's
    docstring), each valid while the key's raw records are byte for byte the same.

    A history is prepared on its second read with the same raw records (the first
    only notes them): a key read once between writes pays nothing extra but a copy of
    its records. Only histories of at least ``min_versions`` versions (below that,
    building them costs little) and whose records and values' encodings each take at
    most ``max_bytes`` are kept.
    """

    __slots__ = ("_entries", "max_bytes", "min_versions", "size")

    def __init__(self, size: int = 8, min_versions: int = 32, max_bytes: int = 1 << 20) -> None:
        self.size = size
        self.min_versions = min_versions
        self.max_bytes = max_bytes
        #: (namespace, key) -> (raw records, then once prepared the metadata rows, the
        #: values as one CBOR array and, if every value can be copied rather than
        #: decoded, their templates; None and b"" before)
        self._entries: OrderedDict[
            tuple[str, str],
            tuple[bytes, list[tuple[Any, ...]] | None, bytes, list[Any] | None],
        ] = OrderedDict()

    def rows(self, namespace: str, key: str, blob: bytes | bytearray) -> list[Versioned] | bool:
        """The whole history if it is prepared for exactly these raw records; else
        whether it was read before with exactly these (then :meth:`keep` prepares it)."""
        slot = (namespace, key)
        entry = self._entries.get(slot)
        if entry is None:
            return False
        if entry[0] != blob:
            del self._entries[slot]
            return False
        self._entries.move_to_end(slot)
        meta = entry[1]
        if meta is None:
            return True
        templates = entry[3]
        if templates is None:
            return _rows(cbor2.loads(entry[2]), meta)
        return _rows([t.copy() if type(t) in _CONTAINERS else t for t in templates], meta)

    def keep(
        self,
        namespace: str,
        key: str,
        blob: bytes | bytearray,
        parts: list[bytes],
        again: bool,
    ) -> list[Versioned]:
        """The whole history built from the raw records ``blob`` and the values'
        encodings ``parts``; prepared and kept if read ``again`` unchanged, else its
        records noted (if it qualifies)."""
        array = encode_all(parts)
        if len(parts) < self.min_versions or max(len(blob), len(array)) > self.max_bytes:
            return history_rows(namespace, key, KvState.iter_records(blob), cbor2.loads(array))
        entries = self._entries
        slot = (namespace, key)
        if again:
            meta = history_meta(namespace, key, KvState.iter_records(blob))
            values = cbor2.loads(array)
            templates = None
            if len(array) * _TEMPLATE_BLOWUP <= self.max_bytes and all(
                shared(v) is v for v in values
            ):
                templates = [v.copy() if type(v) in _CONTAINERS else v for v in values]
            entries[slot] = (bytes(blob), meta, array, templates)
            rows = _rows(values, meta)
        else:
            entries[slot] = (bytes(blob), None, b"", None)
            rows = history_rows(namespace, key, KvState.iter_records(blob), cbor2.loads(array))
        entries.move_to_end(slot)
        while len(entries) > self.size:
            entries.popitem(last=False)
        return rows
