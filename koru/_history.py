"""Building ``history()`` results in bulk.

A key may have thousands of versions and ``history`` returns them all, so this is a hot
loop: values are decoded with one cbor2 call (a CBOR array assembled from the stored
encodings), rows are built from raw packed records, and hex ids are reused along the
causal chain (a version's ``previous`` is usually the version just before it).
"""

from __future__ import annotations

from typing import Any

import cbor2

from koru.events import cbor_head
from koru.projections import EXPIRES, NO_ID, TOMBSTONE

from ._types import Versioned

__all__ = ["NULL", "decode_all", "history_rows"]

#: The stored encoding of None: stands in for a deletion's value in ``decode_all``.
NULL = b"\xf6"


def decode_all(parts: list[bytes]) -> list[Any]:
    """Decode many stored value encodings at once."""
    values: list[Any] = cbor2.loads(cbor_head(4, len(parts)) + b"".join(parts))
    return values


def history_rows(
    namespace: str, key: str, recs: list[tuple[Any, ...]], values: list[Any]
) -> list[Versioned]:
    """One :class:`Versioned` per raw record (see ``KvState.history_raw``)."""
    out: list[Versioned] = []
    append = out.append
    new = tuple.__new__
    last_origin, o = b"", ""
    last_wid, last_hex = NO_ID, None
    for (hlc, origin, wid, cid, prev, _, _, expires, flags), value in zip(recs, values):  # noqa: B905
        if origin != last_origin:
            last_origin, o = origin, origin.hex()
        p = last_hex if prev == last_wid else (None if prev == NO_ID else prev.hex())
        last_wid, last_hex = wid, wid.hex()
        e = expires if flags & EXPIRES else None
        if flags & TOMBSTONE:
            append(new(Versioned, (value, namespace, key, last_hex, None, hlc, p, o, True, e)))
        else:
            append(
                new(Versioned, (value, namespace, key, last_hex, cid.hex(), hlc, p, o, False, e))
            )
    return out
