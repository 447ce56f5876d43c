"""Canonical CBOR for user values: validation, encoding and strict decoding.

A value is JSON-like (dict with str keys, list, str, int, float, bool, None) plus bytes.
It is validated *before* anything is written, then encoded as canonical CBOR, whose
blake3 hash is the value's content id: equal values get equal bytes and share storage.
"""

from __future__ import annotations

import math
from typing import Any

import blake3
import cbor2

from ._cbor_parts import encode_flat
from ._errors import CodecError, InvalidDataError
from ._limits import MAX_VALUE_DEPTH, MAX_VALUE_SIZE
from ._tags import refuse_tags

__all__ = [
    "DEFAULT_MAX_VALUE_SIZE",
    "cbor_head",
    "MAX_VALUE_DEPTH",
    "content_id",
    "decode_value",
    "decode_value_strict",
    "encode_value",
]

#: Largest accepted encoded value, in bytes (a database may set a smaller limit).
DEFAULT_MAX_VALUE_SIZE = MAX_VALUE_SIZE

_INT_MIN = -(2**64)
_INT_MAX = 2**64 - 1
_SCALARS = (str, bool, type(None), bytes)


class _HasFloat(Exception):
    """Raised by the fast canonicaliser: this value needs cbor2's float handling."""


def _key_order(item: tuple[str, Any]) -> tuple[int, str]:
    # Canonical CBOR orders map keys by encoded length, then bytewise; for text keys
    # that is (UTF-8 length, code points), since UTF-8 preserves code point order.
    key = item[0]
    return (len(key), key) if key.isascii() else (len(key.encode()), key)


def _check(value: Any, depth: int) -> Any:
    """Validate ``value`` and return a copy with dict keys in canonical order.

    Why a walk rather than trusting cbor2: cbor2 happily encodes sets, tuples,
    datetimes, big ints and non-string keys, none of which survive a round trip as the
    same JSON-like value. Why the copy: a plain ``cbor2.dumps`` of maps built in
    canonical key order gives the canonical bytes several times faster than
    ``canonical=True``. Floats raise :class:`_HasFloat` once the whole value is known
    to be valid, because only cbor2 picks their shortest exact encoding.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidDataError(f"integer {value} is outside the 64-bit CBOR range")
        return value
    if kind is float:
        if math.isnan(value):
            raise InvalidDataError("NaN is not a storable value (it is not equal to itself)")
        raise _HasFloat
    if depth >= MAX_VALUE_DEPTH:
        raise InvalidDataError(f"value nests deeper than {MAX_VALUE_DEPTH} levels")
    floats = False
    if kind is dict:
        items = []
        for k, v in value.items():
            if type(k) is not str:
                raise InvalidDataError(f"dict keys must be str, got {type(k).__name__}: {k!r}")
            if type(v) not in _SCALARS:  # skip the call for the common flat case
                try:
                    v = _check(v, depth + 1)
                except _HasFloat:
                    floats = True
            items.append((k, v))
        if floats:
            raise _HasFloat
        if len(items) > 1:
            items.sort(key=_key_order)
        return dict(items)
    if kind is list:
        out = []
        for v in value:
            if type(v) not in _SCALARS:
                try:
                    v = _check(v, depth + 1)
                except _HasFloat:
                    floats = True
            out.append(v)
        if floats:
            raise _HasFloat
        return out
    raise InvalidDataError(
        f"unsupported value type {kind.__name__}: values are JSON-like "
        "(dict, list, str, int, float, bool, None) or bytes"
    )


def encode_value(value: Any, max_size: int = DEFAULT_MAX_VALUE_SIZE) -> bytes:
    """Validate ``value`` and return its canonical CBOR encoding.

    Raises:
        InvalidDataError: unsupported type, non-str dict key, NaN, out-of-range int,
            text with lone surrogates, too deep, or encoded size over ``max_size``.
    """
    try:
        # A flat record (the commonest value) is assembled from parts, same bytes.
        flat = encode_flat(value) if type(value) is dict else None
        if flat is not None:
            data: bytes = flat
        else:
            try:
                data = cbor2.dumps(_check(value, 0))
            except _HasFloat:
                data = cbor2.dumps(value, canonical=True)
    except UnicodeEncodeError:
        raise InvalidDataError(
            "value holds text that is not valid Unicode (a lone surrogate cannot be stored)"
        ) from None
    if len(data) > max_size:
        raise InvalidDataError(
            f"value is {len(data)} bytes encoded, over the {max_size}-byte limit"
        )
    return data


def cbor_head(major: int, n: int) -> bytes:
    """The CBOR head of a definite-length item: major type 4 (array) or 5 (map) of n
    entries. Lets callers assemble a container from items encoded separately."""
    top = major << 5
    if n < 24:
        return bytes((top | n,))
    for extra, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes((top | extra,)) + n.to_bytes(size, "big")
    raise ValueError(f"{n} entries do not fit a CBOR head")


def content_id(encoded: bytes) -> bytes:
    """The content id of an encoded value: blake3 of its canonical bytes. (A put
    computes it once, where it is written, and hands it to the fold with the event:
    ``Projections.apply_put``.)"""
    return blake3.blake3(encoded).digest()


def decode_value(data: bytes) -> Any:
    """Decode value bytes that this node already validated (its own log)."""
    return cbor2.loads(data)


#: A value holds no tags (see :mod:`._tags`: shared references would make a bomb).
_NO_TAGS = refuse_tags()


def decode_value_strict(data: bytes, max_size: int = DEFAULT_MAX_VALUE_SIZE) -> Any:
    """Decode untrusted value bytes, accepting only the canonical encoding of a valid value.

    Raises:
        CodecError: not CBOR, not canonical (non-minimal ints, unsorted or duplicate
            keys, indefinite lengths, trailing bytes), too big, or not a valid value.
    """
    if len(data) > max_size:
        raise CodecError(f"value of {len(data)} bytes is over the {max_size}-byte limit")
    try:
        value = cbor2.loads(
            data,
            max_depth=MAX_VALUE_DEPTH + 1,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            semantic_decoders=_NO_TAGS,
        )
    except (cbor2.CBORDecodeError, RecursionError, ValueError, TypeError) as exc:
        raise CodecError(f"undecodable value: {exc}") from None
    try:
        canonical = encode_value(value, max_size)
    except InvalidDataError as exc:
        raise CodecError(f"not a valid value: {exc}") from None
    if canonical != data:
        raise CodecError("value bytes are not the canonical encoding")
    return value
