"""A plain put's value found in its event's bytes, without decoding the event.

Why: a cold read takes one value out of one record, and decoding the whole event for
it (``cbor2.loads`` of the envelope, then every field's type and range checked) was a
tenth of the read. What a read must know is narrower: that the record is a put *of
this key* and where its value's bytes are. :func:`put_value` finds that by matching
the event's layout as this node's writer lays it out (:class:`~._put_codec.PutEncoder`:
``[1, "put", origin, "storage", seq, prev, hlc, [namespace, key, value, previous]]``),
walking the envelope field by field, so the names and the value it reads are the
body's own and not bytes inside another field that look like them.

It proves nothing alone: the record's checksums are checked before (the store's read),
and the caller proves the value against its content id after (blake3 of exactly the
bytes found) and decodes it strictly. Anything that does not match (another event type
or agent, a batch, damage) gives None, and the caller decodes the whole event the
general way, which names what is wrong.
"""

from __future__ import annotations

import re

from ._cbor_parts import head
from ._chain import STORAGE

__all__ = ["put_value"]

#: ``[1, "put", origin (a 16-byte string), "storage", seq, prev, hlc, [`` as the writer
#: lays them out: each head's first byte says how long its item is, so the match is
#: one pass with no backtracking; its end is where the body's first item starts.
_UINT = rb"(?:[\x00-\x17]|\x18.|\x19..|\x1a.{4}|\x1b.{8})"
_ENVELOPE = re.compile(
    rb"\x88\x01\x63put\x50.{16}"
    + re.escape(bytes((0x60 | len(STORAGE),)) + STORAGE.encode())
    + _UINT
    + rb"(?:\xf6|\x58\x20.{32})"
    + _UINT
    + rb"\x84",
    re.DOTALL,
)
_TEXT_HEADS = tuple(bytes((0x60 | i,)) for i in range(24))
_BYTES_HEADS = tuple(bytes((0x40 | i,)) for i in range(24))
#: Namespace -> its CBOR text (a database reads from few namespaces). Bounded.
_NAMES: dict[str, bytes] = {}
_NAMES_MAX = 1024


def _text(s: str) -> bytes:
    b = s.encode()
    n = len(b)
    return _TEXT_HEADS[n] + b if n < 24 else head(0x60, n) + b


def put_value(event: bytes, namespace: str, key: str, size: int) -> bytes | None:
    """The ``size`` bytes of the value that ``event`` (the bytes of a plain put of this
    node's storage log) writes to (``namespace``, ``key``), or None if ``event`` is not
    laid out as such a put of that key with a value of that size."""
    found = _ENVELOPE.match(event)
    if found is None:
        return None
    at = found.end()
    try:
        ns = _NAMES.get(namespace)
        if ns is None:
            ns = _text(namespace)
            if len(_NAMES) < _NAMES_MAX and len(ns) <= 256:
                _NAMES[namespace] = ns
        k = len(key)
        names = b"%b%b%b" % (
            ns,
            _TEXT_HEADS[k] + key.encode() if k < 24 and key.isascii() else _text(key),
            _BYTES_HEADS[size] if size < 24 else head(0x40, size),
        )
    except UnicodeEncodeError:  # a lone surrogate: a name no event holds
        return None
    if not event.startswith(names, at):
        return None
    start = at + len(names)
    end = start + size
    # The body ends the event: the previous write id (null, or a 32-byte id) follows.
    rest = len(event) - end
    if not (
        (rest == 1 and event[end] == 0xF6) or (rest == 34 and event.startswith(b"\x58\x20", end))
    ):
        return None
    return event[start:end]
