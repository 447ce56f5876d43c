"""The ``put`` event's encoder (and ``put-ttl``'s): canonical bytes from a precomputed head.

Why: a put is a few microseconds of work spread over many small steps, and encoding
its event was one of the largest (``cbor2.dumps`` of the 8-item envelope with its
4-item body). Every put event of a node's storage log starts with the same four
fields, ``[1, "put", origin, "storage", ...``, so :class:`PutEncoder` encodes them
once and appends seq, prev, hlc and the body ``[namespace, key, value bytes,
previous]`` from parts (:mod:`._cbor_parts`). A put with a time to live (``put-ttl``)
differs only in its tag and a fifth body field, ``expires``, so it is encoded the same
way. The bytes are exactly those of :func:`~._codec.encode_event`
(``tests/test_put_codec.py`` checks it byte for byte with hypothesis); other event
types go the general way.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ._cbor_parts import head, text, uint
from ._chain import STORAGE
from ._codec import SCHEMA_VERSION
from ._errors import InvalidDataError
from ._event import Write
from ._fields import UINT64_MAX
from ._limits import MAX_EVENT_SIZE

__all__ = ["PutEncoder"]

_NULL = b"\xf6"
_ID_HEAD = b"\x58\x20"  # a 32-byte string
_BODY_HEAD = b"\x84"  # the put body: an array of 4
_TTL_BODY_HEAD = b"\x85"  # the put-ttl body: the same and expires
_BYTES_HEADS = tuple(bytes((0x40 | i,)) for i in range(24))
_TEXT_HEADS = tuple(bytes((0x60 | i,)) for i in range(24))
_B8 = struct.Struct(">BB").pack
_B32 = struct.Struct(">BI").pack
_B64 = struct.Struct(">BQ").pack


def _id(b: bytes | None) -> bytes:
    """An id (32 bytes, as every id is) or null."""
    if b is None:
        return _NULL
    return _ID_HEAD + b if len(b) == 32 else head(0x40, len(b)) + b


class PutEncoder:
    """The canonical bytes of this node's ``put`` and ``put-ttl`` events, built from one
    constant head (schema version, tag, origin, agent) and the fields that vary."""

    __slots__ = ("_batch_prefix", "_names", "_prefix", "_ttl_prefix")

    def __init__(self, origin: bytes) -> None:
        # [1, "put", origin, "storage", ...: an array of 8 whose first four never change.
        self._prefix, self._ttl_prefix, self._batch_prefix = (
            b"\x88"
            + uint(SCHEMA_VERSION)
            + text(tag)
            + head(0x40, len(origin))
            + origin
            + text(STORAGE)
            for tag in ("put", "put-ttl", "batch")
        )
        #: Encoded namespaces, reused (a database writes to few of them).
        self._names: dict[str, bytes] = {}

    def encode(
        self,
        seq: int,
        prev: bytes | None,
        hlc: int,
        namespace: str,
        key: str,
        value: bytes,
        previous: bytes | None,
        expires: int | None = None,
    ) -> bytes:
        """``encode_event(PutEvent(origin, "storage", seq, prev, hlc, namespace, key,
        value, previous))`` for names already checked, or with ``expires`` that of the
        ``ExpiringPutEvent``.

        Raises:
            InvalidDataError: as ``encode_event``: an hlc, seq or expires outside 64
                bits, or an event over ``MAX_EVENT_SIZE``.
        """
        if type(hlc) is not int or not 0 <= hlc <= UINT64_MAX:
            raise InvalidDataError(f"timestamp {hlc!r} is not a 64-bit unsigned integer of ns")
        if type(seq) is not int or not 1 <= seq <= UINT64_MAX:
            raise InvalidDataError(f"sequence number {seq!r} is not a positive 64-bit integer")
        ns = self._names.get(namespace)
        if ns is None:
            ns = text(namespace)
            if len(self._names) < 1024:
                self._names[namespace] = ns
        n = len(value)
        # Inlined for the common shapes (one call each fewer): a key of ASCII text (as
        # check_name lets through without a closer look), ids of 32 bytes (every id
        # this node's events carry), a timestamp of 8 bytes (every one since 1970), a
        # seq of 4 bytes (from the 65,536th event of a feed), a value under 256 bytes.
        k = len(key)
        if expires is None:
            prefix, body, tail = self._prefix, _BODY_HEAD, b""
        elif type(expires) is int and 1 <= expires <= UINT64_MAX:
            prefix, body, tail = self._ttl_prefix, _TTL_BODY_HEAD, uint(expires)
        else:
            raise InvalidDataError(f"expires {expires!r} is not a positive 64-bit integer")
        data = b"".join(
            (
                prefix,
                _B32(26, seq) if 0x10000 <= seq < 0x100000000 else uint(seq),
                _NULL if prev is None else _ID_HEAD + prev if len(prev) == 32 else _id(prev),
                _B64(27, hlc) if hlc >= 0x100000000 else uint(hlc),
                body,
                ns,
                _TEXT_HEADS[k] + key.encode() if k < 24 and key.isascii() else text(key),
                _BYTES_HEADS[n] if n < 24 else _B8(0x58, n) if n < 0x100 else head(0x40, n),
                value,
                _NULL
                if previous is None
                else _ID_HEAD + previous
                if len(previous) == 32
                else _id(previous),
                tail,
            )
        )
        if len(data) > MAX_EVENT_SIZE:
            raise InvalidDataError(
                f"event is {len(data)} bytes encoded, over the {MAX_EVENT_SIZE}-byte limit "
                "(a batch's values together must stay under it)"
            )
        return data

    def encode_batch(
        self,
        seq: int,
        prev: bytes | None,
        hlc: int,
        writes: Sequence[Write],
    ) -> bytes:
        """``encode_event(BatchEvent(origin, "storage", seq, prev, hlc, writes))`` for
        writes of values (no tombstones, no expiries) under names already checked: the
        batch a group-commit round appends for the puts handed to it.

        Raises:
            InvalidDataError: as ``encode_event``.
        """
        if type(hlc) is not int or not 0 <= hlc <= UINT64_MAX:
            raise InvalidDataError(f"timestamp {hlc!r} is not a 64-bit unsigned integer of ns")
        if type(seq) is not int or not 1 <= seq <= UINT64_MAX:
            raise InvalidDataError(f"sequence number {seq!r} is not a positive 64-bit integer")
        parts = [
            self._batch_prefix,
            uint(seq),
            _NULL if prev is None else _ID_HEAD + prev if len(prev) == 32 else _id(prev),
            _B64(27, hlc) if hlc >= 0x100000000 else uint(hlc),
            head(0x80, len(writes)),
        ]
        append, names = parts.append, self._names
        for namespace, key, value, previous, expires in writes:
            if value is None or expires is not None:
                raise InvalidDataError("encode_batch takes writes of values without expiries")
            ns = names.get(namespace)
            if ns is None:
                ns = text(namespace)
                if len(names) < 1024:
                    names[namespace] = ns
            k, n = len(key), len(value)
            append(_BODY_HEAD)
            append(ns)
            append(_TEXT_HEADS[k] + key.encode() if k < 24 and key.isascii() else text(key))
            append(_BYTES_HEADS[n] if n < 24 else head(0x40, n))
            append(value)
            append(
                _NULL
                if previous is None
                else _ID_HEAD + previous
                if len(previous) == 32
                else _id(previous)
            )
        data = b"".join(parts)
        if len(data) > MAX_EVENT_SIZE:
            raise InvalidDataError(
                f"event is {len(data)} bytes encoded, over the {MAX_EVENT_SIZE}-byte limit "
                "(a batch's values together must stay under it)"
            )
        return data
