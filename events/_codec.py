"""Canonical CBOR encoding of events, and strict decoding.

Wire form of every event (schema version 1), a CBOR array::

    [1, tag, origin, agent, seq, prev, hlc, body]

with ``origin`` a 16-byte string, ``prev`` a 32-byte string or null, and ``body``
an array whose shape the tag decides::

    put    [namespace, key, value bytes, previous write id | null]
    delete [namespace, key, previous write id | null]
    batch  [[namespace, key, value bytes | null, previous | null], ...]  (keys distinct)
 Values travel as byte strings holding their
own canonical CBOR, so decoding an event never decodes user values (replay stays
fast) and a value's content id is the hash of exactly the bytes stored.

The envelope holds only arrays, ints, strings and nulls: cbor2 always encodes those
minimally with definite lengths, so a plain ``dumps`` *is* the canonical encoding.
Decoding re-encodes and compares, which rejects every non-canonical form (non-minimal
ints, indefinite lengths, trailing bytes) with one rule instead of a list of checks.
"""

from __future__ import annotations

from typing import Any

import blake3
import cbor2

from koru._errors import CodecError

from ._event import NODE_ID_SIZE, BatchEvent, DeleteEvent, Event, PutEvent, Write
from ._values import DEFAULT_MAX_VALUE_SIZE, decode_value_strict

__all__ = [
    "MAX_EVENT_SIZE",
    "SCHEMA_VERSION",
    "decode_event",
    "decode_trusted",
    "encode_event",
    "put_fields",
    "event_id",
]

SCHEMA_VERSION = 1
#: Largest accepted encoded event, in bytes.
MAX_EVENT_SIZE = 64 * 1024 * 1024
_ID_SIZE = 32
_UINT64_MAX = 2**64 - 1


def event_id(data: bytes) -> bytes:
    """An event's id: blake3 of its canonical bytes."""
    return blake3.blake3(data).digest()


def _body(event: Event) -> list[Any]:
    if type(event) is PutEvent:
        return [event.namespace, event.key, event.value, event.previous]
    if type(event) is DeleteEvent:
        return [event.namespace, event.key, event.previous]
    if type(event) is BatchEvent:
        return [[w.namespace, w.key, w.value, w.previous] for w in event.items]
    raise TypeError(f"not an encodable event: {type(event).__name__}")


def encode_event(event: Event) -> bytes:
    """The canonical CBOR bytes of ``event``."""
    return cbor2.dumps(
        [
            SCHEMA_VERSION,
            event.TAG,
            event.origin,
            event.agent,
            event.seq,
            event.prev,
            event.hlc,
            _body(event),
        ]
    )


def _text(item: Any, what: str) -> str:
    if type(item) is not str or not item:
        raise CodecError(f"{what} must be a non-empty text string")
    return item


def _previous(item: Any) -> bytes | None:
    if item is None or (type(item) is bytes and len(item) == _ID_SIZE):
        return item
    raise CodecError("previous must be null or a 32-byte write id")


def _write(item: Any) -> Write:
    if type(item) is not list or len(item) != 4:
        raise CodecError("batch item must be [namespace, key, value, previous]")
    value = item[2]
    if not (type(value) is bytes or value is None):
        raise CodecError("value must be a byte string or null")
    return Write(_text(item[0], "namespace"), _text(item[1], "key"), value, _previous(item[3]))


def _decode_body(tag: Any, header: tuple[bytes, str, int, bytes | None, int], body: Any) -> Event:
    if type(body) is not list:
        raise CodecError("event body must be an array")
    if tag == "put":
        if len(body) != 4 or type(body[2]) is not bytes:
            raise CodecError("put body must be [namespace, key, value bytes, previous]")
        return PutEvent(
            *header,
            _text(body[0], "namespace"),
            _text(body[1], "key"),
            body[2],
            _previous(body[3]),
        )
    if tag == "delete":
        if len(body) != 3:
            raise CodecError("delete body must be [namespace, key, previous]")
        return DeleteEvent(
            *header, _text(body[0], "namespace"), _text(body[1], "key"), _previous(body[2])
        )
    if tag == "batch":
        if not body:
            raise CodecError("batch body must not be empty")
        items = tuple(_write(item) for item in body)
        if len({(w.namespace, w.key) for w in items}) != len(items):
            raise CodecError("batch writes the same key twice")
        return BatchEvent(*header, items)
    raise CodecError(f"unknown event type {tag!r}")


def put_fields(data: bytes) -> tuple[bytes, int, int, str, str, bytes, bytes | None] | None:
    """For a trusted ``put`` event: (origin, seq, hlc, namespace, key, value, previous);
    None for any other event type.

    The replay hot path folds puts from these fields without building event objects.
    Same trust rule as :func:`decode_trusted`.
    """
    try:
        raw = cbor2.loads(data)
        if raw[1] != "put":
            return None
        body = raw[7]
        return raw[2], raw[4], raw[6], body[0], body[1], body[2], body[3]
    except Exception as exc:
        raise CodecError(f"undecodable event: {exc!r}") from None


def decode_trusted(data: bytes) -> Event:
    """Decode event bytes this node wrote and checksummed itself (its own log), fast.

    Skips the canonical re-encoding and field checks of :func:`decode_event`: a record
    that passed its checksum holds exactly the bytes ``encode_event`` produced. Never
    use it for bytes from elsewhere.
    """
    try:
        raw = cbor2.loads(data)
        _, tag, origin, agent, seq, prev, hlc, body = raw
        if tag == "put":
            return PutEvent(origin, agent, seq, prev, hlc, body[0], body[1], body[2], body[3])
    except Exception as exc:
        raise CodecError(f"undecodable event: {exc!r}") from None
    return decode_event(data)


def decode_event(data: bytes, *, check_values: bool = False) -> Event:
    """Decode canonical event bytes strictly.

    Args:
        data: the bytes, exactly one event and nothing after it.
        check_values: also decode every carried value strictly (for events from peers;
            this node's own log was validated when written).

    Raises:
        CodecError: anything but the canonical encoding of a known, well-formed event.
    """
    if len(data) > MAX_EVENT_SIZE:
        raise CodecError(f"event of {len(data)} bytes is over the {MAX_EVENT_SIZE}-byte limit")
    try:
        raw = cbor2.loads(data, max_depth=4, allow_indefinite=False, allow_duplicate_keys=False)
    except (cbor2.CBORDecodeError, RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise CodecError(f"undecodable event: {exc}") from None
    if type(raw) is not list or len(raw) != 8:
        raise CodecError("event must be an array of 8 items")
    version, tag, origin, agent, seq, prev, hlc, body = raw
    if version != SCHEMA_VERSION or type(version) is not int:
        raise CodecError(f"unsupported event schema version {version!r}")
    if type(origin) is not bytes or len(origin) != NODE_ID_SIZE:
        raise CodecError(f"origin must be a {NODE_ID_SIZE}-byte node id")
    if type(seq) is not int or not 1 <= seq <= _UINT64_MAX:
        raise CodecError("seq must be a positive 64-bit integer")
    if not (prev is None or (type(prev) is bytes and len(prev) == _ID_SIZE)):
        raise CodecError("prev must be null or a 32-byte event id")
    if (prev is None) != (seq == 1):
        raise CodecError("prev must be null exactly for the first event of a feed")
    if type(hlc) is not int or not 0 <= hlc <= _UINT64_MAX:
        raise CodecError("hlc must be a 64-bit unsigned integer")
    event = _decode_body(tag, (origin, _text(agent, "agent"), seq, prev, hlc), body)
    if cbor2.dumps(raw) != data:
        raise CodecError("event bytes are not the canonical encoding")
    if check_values:
        for w in event.writes:
            if w.value is not None:
                decode_value_strict(w.value, DEFAULT_MAX_VALUE_SIZE)
    return event
