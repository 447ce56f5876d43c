"""Canonical CBOR assembled from parts: heads, ints and text, and flat dicts.

Why: ``cbor2.dumps`` costs about half a microsecond before it encodes anything, and the
general value walk (:mod:`._values`) sorts the keys of every dict with a Python key
function. The encoders of the commonest shapes (a flat record, the plain put event)
build the same canonical bytes here from pieces, with the key order of a dict cached
per tuple of keys. ``tests/test_put_codec.py`` checks them byte for byte against the
general codec with hypothesis.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["encode_flat", "head", "text", "uint"]

_SMALL = tuple(bytes((i,)) for i in range(24))
_TEXT_HEADS = tuple(bytes((0x60 | i,)) for i in range(24))
_BYTES_HEADS = tuple(bytes((0x40 | i,)) for i in range(24))
_MAP_HEADS = tuple(bytes((0xA0 | i,)) for i in range(24))
_B8 = struct.Struct(">BB").pack
_B16 = struct.Struct(">BH").pack
_B32 = struct.Struct(">BI").pack
_B64 = struct.Struct(">BQ").pack
_NULL = b"\xf6"
#: Largest int a CBOR head holds; the value rules allow -2**64 .. 2**64 - 1.
_HEAD_MAX = 2**64 - 1


def head(major: int, n: int) -> bytes:
    """The CBOR head of major type ``major`` (already shifted) and argument ``n``."""
    if n < 24:
        return bytes((major | n,))
    if n < 0x100:
        return _B8(major | 24, n)
    if n < 0x10000:
        return _B16(major | 25, n)
    if n < 0x100000000:
        return _B32(major | 26, n)
    return _B64(major | 27, n)


def uint(n: int) -> bytes:
    """An unsigned int (major type 0), ``0 <= n < 2**64``."""
    if n < 24:
        return _SMALL[n]
    if n < 0x100:
        return _B8(24, n)
    if n < 0x10000:
        return _B16(25, n)
    if n < 0x100000000:
        return _B32(26, n)
    return _B64(27, n)


def text(s: str) -> bytes:
    """A text string (UnicodeEncodeError for a lone surrogate, as cbor2 raises)."""
    b = s.encode()
    n = len(b)
    return _TEXT_HEADS[n] + b if n < 24 else head(0x60, n) + b


def _key_order(key: str) -> tuple[int, str]:
    # Canonical CBOR orders map keys by encoded length, then bytewise; for text keys
    # that is (UTF-8 length, code points), since UTF-8 preserves code point order.
    return (len(key), key) if key.isascii() else (len(key.encode()), key)


#: Tuple of a dict's keys (in the caller's order) -> the encoded keys in canonical
#: order, with the caller's keys. Bounded: records of a few shapes fill it at once.
_ORDERS: dict[tuple[str, ...], tuple[tuple[str, bytes], ...]] = {}
_ORDERS_MAX = 4096
#: Keys longer than this together are ordered afresh every time, not remembered.
_ORDERS_KEY_CHARS = 256


_MISSING: Any = object()


def _order(keys: tuple[Any, ...]) -> tuple[tuple[str, bytes], ...] | None:
    """The canonical order of a dict's keys with each key encoded; None when a key is
    not a str, or the dict has 24 keys or more (the general encoder takes those)."""
    try:
        found = _ORDERS.get(keys, _MISSING)
    except Exception:  # a key's own __eq__ raised: not a str key, so not ours
        return None
    if found is not _MISSING:
        return found  # type: ignore[no-any-return]
    if len(keys) >= 24 or not all(type(k) is str for k in keys):
        return None
    try:
        found = tuple((k, text(k)) for k in sorted(keys, key=_key_order))
    except UnicodeEncodeError:
        return None  # a lone surrogate: the general encoder refuses it
    if len(_ORDERS) < _ORDERS_MAX and sum(map(len, keys)) <= _ORDERS_KEY_CHARS:
        _ORDERS[keys] = found  # short keys only: the cache never holds large strings
    return found


def encode_flat(value: dict[Any, Any]) -> bytes | None:
    """The canonical CBOR of a dict of fewer than 24 str keys whose values are text,
    ints in the CBOR range, booleans, None or bytes; None for any other dict (the
    general encoder takes it, and raises what is wrong with it).

    Raises:
        UnicodeEncodeError: a text value holds a lone surrogate (as cbor2 raises).
    """
    keys = tuple(value)
    try:
        order = _ORDERS.get(keys, _MISSING)
    except Exception:  # a key's own __eq__ raised: not a str key (_order says so)
        order = _MISSING
    if order is _MISSING:
        order = _order(keys)
        if order is None:
            return None
    parts = [_MAP_HEADS[len(order)]]
    append = parts.append
    # text() and uint() inlined for short text and small ints (one call each fewer).
    for k, encoded in order:
        append(encoded)
        v = value[k]
        kind = type(v)
        if kind is str:
            if len(v) < 24 and v.isascii():
                append(_TEXT_HEADS[len(v)] + v.encode())
            else:
                append(text(v))
        elif kind is int:
            if v >= 0:
                if v < 24:
                    append(_SMALL[v])
                    continue
                if v < 0x100:
                    append(_B8(24, v))
                    continue
                if v > _HEAD_MAX:
                    return None
                append(uint(v))
            else:
                if -1 - v > _HEAD_MAX:
                    return None
                append(head(0x20, -1 - v))
        elif kind is bool:
            append(b"\xf5" if v else b"\xf4")
        elif v is None:
            append(_NULL)
        elif kind is bytes:
            append(head(0x40, len(v)))
            append(v)
        else:
            return None
    return b"".join(parts)
