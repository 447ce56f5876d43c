"""Canonical CBOR encoding of events, and strict decoding.

Wire form of every event (schema version 1), a CBOR array::

    [1, tag, origin, agent, seq, prev, hlc, body]

with ``origin`` a 16-byte string, ``prev`` a 32-byte string or null, and ``body``
an array whose shape the tag decides::

    put    [namespace, key, value bytes, previous write id | null]
    delete [namespace, key, previous write id | null]
    batch  [[namespace, key, value bytes | null, previous | null], ...]  (keys distinct)

Other capabilities add their own types through :mod:`koru.events._registry`. Values
travel as byte strings holding their own canonical CBOR, so decoding an event never
decodes user values (replay stays fast) and a value's content id is the hash of
exactly the bytes stored.

The envelope holds only arrays, ints, strings and nulls: cbor2 always encodes those
minimally with definite lengths, so a plain ``dumps`` *is* the canonical encoding.
Decoding re-encodes and compares, which rejects every non-canonical form (non-minimal
ints, indefinite lengths, trailing bytes) with one rule instead of a list of checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import blake3
import cbor2

from ._errors import CodecError, InvalidDataError
from ._event import NODE_ID_SIZE, BatchEvent, DeleteEvent, Event, PutEvent, Write
from ._fields import ID_SIZE as _ID_SIZE
from ._fields import UINT64_MAX as _UINT64_MAX
from ._fields import id_or_none, name, text
from ._limits import MAX_EVENT_SIZE, MAX_NAME_BYTES
from ._registry import Header, encoder_of, event_type_of, register_event_type
from ._tags import refuse_tags
from ._values import DEFAULT_MAX_VALUE_SIZE, decode_value_strict

__all__ = [
    "MAX_EVENT_SIZE",
    "SCHEMA_VERSION",
    "decode_event",
    "decode_trusted",
    "encode_event",
    "event_id",
    "event_link",
]

SCHEMA_VERSION = 1
_new = tuple.__new__


def event_id(data: bytes) -> bytes:
    """An event's id: blake3 of its canonical bytes."""
    return blake3.blake3(data).digest()


_ARGUMENT_SIZE = {24: 1, 25: 2, 26: 4, 27: 8}


def _item(data: bytes, at: int) -> tuple[int, int, int]:
    """(major type, argument, next offset) of the CBOR item head at ``at``."""
    if at >= len(data):
        raise CodecError("event bytes end inside their header")
    major, info = data[at] >> 5, data[at] & 31
    if info < 24:
        return major, info, at + 1
    size = _ARGUMENT_SIZE.get(info)
    if size is None or at + 1 + size > len(data):
        raise CodecError("event bytes end inside their header")
    return major, int.from_bytes(data[at + 1 : at + 1 + size], "big"), at + 1 + size


def event_link(data: bytes) -> tuple[bytes, bytes, int, bytes | None]:
    """``(origin, agent, seq, prev)`` of an event's bytes (the agent as its UTF-8
    bytes; ``prev`` None for a feed's first event), read off its header without
    decoding the event: its place in its feed and its link to its predecessor, what a
    reader of a log checks an event read from it by.

    Raises:
        CodecError: the bytes do not begin like an event.
    """
    # [1, tag, origin, agent, seq, prev, ...]: with a tag and an agent under 24 bytes
    # (every registered one) the offsets are read off directly.
    at = origin = name = 0  # where the seq, the origin's bytes and the agent's begin
    tag = data[2:3]
    if data[:2] == b"\x88\x01" and b"\x60" <= tag < b"\x78":
        origin = 4 + tag[0] - 0x60
        agent = data[origin + 16 : origin + 17]
        if data[origin - 1 : origin] == b"\x50" and b"\x60" <= agent < b"\x78":
            name = origin + 17
            at = name + agent[0] - 0x60
    if not at:
        major, count, at = _item(data, 0)
        if major != 4 or count != 8:
            raise CodecError("an event is an array of 8 items")
        for want in (0, 3, 2, 3):  # version, tag, origin, agent
            major, arg, at = _item(data, at)
            if major != want or (want == 2 and arg != NODE_ID_SIZE):
                raise CodecError("malformed event header")
            origin, name = (at, name) if want == 2 else (origin, at)
            at += arg if major != 0 else 0
    first = data[at : at + 1]  # the seq, an unsigned int
    if not first or first[0] >= 0x1C:
        raise CodecError("malformed event header")
    step = 1 if first[0] < 0x18 else 1 + (1 << (first[0] - 0x18))
    seq = first[0] if step == 1 else int.from_bytes(data[at + 1 : at + step], "big")
    node, agent_name = data[origin : origin + NODE_ID_SIZE], data[name:at]
    at += step
    if data[at : at + 1] == b"\xf6":
        return node, agent_name, seq, None
    if data[at : at + 2] != b"\x58\x20" or at + 34 > len(data):
        raise CodecError("malformed prev")
    return node, agent_name, seq, data[at + 2 : at + 34]


def _body(event: Event) -> list[Any]:
    if type(event) is PutEvent:  # nearly every event: no lookup
        return [event.namespace, event.key, event.value, event.previous]
    encode = encoder_of(type(event))
    if encode is None:
        raise TypeError(f"not an encodable event: {type(event).__name__}")
    return encode(event)


def encode_event(event: Event) -> bytes:
    """The canonical CBOR bytes of ``event``.

    Raises:
        InvalidDataError: the event breaks a limit the reader enforces (an hlc or seq
            outside 64 bits, encoded size over ``MAX_EVENT_SIZE``): it would be
            written and acknowledged, then refused by every later open.
    """
    hlc, seq = event.hlc, event.seq
    if type(hlc) is not int or not 0 <= hlc <= _UINT64_MAX:
        raise InvalidDataError(f"timestamp {hlc!r} is not a 64-bit unsigned integer of ns")
    if type(seq) is not int or not 1 <= seq <= _UINT64_MAX:
        raise InvalidDataError(f"sequence number {seq!r} is not a positive 64-bit integer")
    data: bytes = cbor2.dumps(
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
    if len(data) > MAX_EVENT_SIZE:
        raise InvalidDataError(
            f"event is {len(data)} bytes encoded, over the {MAX_EVENT_SIZE}-byte limit "
            "(a batch's values together must stay under it)"
        )
    return data


# -- the key/value event types ------------------------------------------------------


def _write(item: Any) -> Write:
    if type(item) is not list or len(item) != 4:
        raise CodecError("batch item must be [namespace, key, value, previous]")
    value = item[2]
    if not (type(value) is bytes or value is None):
        raise CodecError("value must be a byte string or null")
    return Write(name(item[0], "namespace"), name(item[1], "key"), value, id_or_none(item[3]))


def _decode_put(header: Header, body: Any) -> Event:
    if type(body) is not list or len(body) != 4 or type(body[2]) is not bytes:
        raise CodecError("put body must be [namespace, key, value bytes, previous]")
    return PutEvent(
        *header, name(body[0], "namespace"), name(body[1], "key"), body[2], id_or_none(body[3])
    )


def _decode_delete(header: Header, body: Any) -> Event:
    if type(body) is not list or len(body) != 3:
        raise CodecError("delete body must be [namespace, key, previous]")
    return DeleteEvent(
        *header, name(body[0], "namespace"), name(body[1], "key"), id_or_none(body[2])
    )


def _decode_batch(header: Header, body: Any) -> Event:
    if type(body) is not list or not body:
        raise CodecError("batch body must be a non-empty array")
    items = tuple(_write(item) for item in body)
    if len({(w.namespace, w.key) for w in items}) != len(items):
        raise CodecError("batch writes the same key twice")
    return BatchEvent(*header, items)


register_event_type(PutEvent, lambda e: [e.namespace, e.key, e.value, e.previous], _decode_put)
register_event_type(DeleteEvent, lambda e: [e.namespace, e.key, e.previous], _decode_delete)


def _encode_batch(event: Any) -> list[Any]:
    if any(w.expires is not None for w in event.items):
        # A plain batch has no field for it: silently dropping it would lose data.
        raise InvalidDataError("a batch with expiries is an ExpiringBatchEvent")
    return [[w.namespace, w.key, w.value, w.previous] for w in event.items]


register_event_type(BatchEvent, _encode_batch, _decode_batch)


def decode_trusted(data: bytes) -> Event:
    """Decode event bytes from this node's own, checksummed log, fast.

    Every field's type and range is checked, as :func:`decode_event` does, so a record
    crafted with a valid checksum and chain raises CodecError instead of a raw exception
    or a silently wrong fold; only the canonical re-encoding is skipped (the checksum and
    chain already bind the exact bytes). Puts, nearly every record, take an inlined
    path; other types go through :func:`decode_event`. Carried values are not decoded.

    Raises:
        CodecError: not a well-formed event.
    """
    try:
        raw = cbor2.loads(data)
    except Exception as exc:
        raise CodecError(f"undecodable event: {exc!r}") from None
    if (
        type(raw) is not list
        or len(raw) != 8
        or raw[1] != "put"
        or raw[0] != SCHEMA_VERSION
        or type(raw[0]) is not int  # True == 1 in Python
    ):
        return decode_event(data)
    _, _, origin, agent, seq, prev, hlc, body = raw
    if type(body) is not list or len(body) != 4:
        raise CodecError("put body must be [namespace, key, value bytes, previous]")
    namespace, key, value, previous = body
    if not (
        type(origin) is bytes
        and len(origin) == NODE_ID_SIZE
        and type(agent) is str
        and type(seq) is int
        and 1 <= seq <= _UINT64_MAX
        and type(hlc) is int
        and 0 <= hlc <= _UINT64_MAX
        and type(value) is bytes
        and (prev is None if seq == 1 else type(prev) is bytes and len(prev) == _ID_SIZE)
        and (previous is None or (type(previous) is bytes and len(previous) == _ID_SIZE))
    ):
        decode_event(data)  # names the exact problem
        raise CodecError("malformed put event")  # pragma: no cover - decode_event raises
    if not (
        type(namespace) is str
        and type(key) is str
        and namespace.isascii()
        and key.isascii()
        and 0 < len(namespace) <= MAX_NAME_BYTES
        and 0 < len(key) <= MAX_NAME_BYTES
    ):  # the rare case (non-ASCII or bad names), checked in full
        namespace, key = name(namespace, "namespace"), name(key, "key")
    if not agent:
        raise CodecError("agent must be a non-empty text string")
    return _new(PutEvent, (origin, agent, seq, prev, hlc, namespace, key, value, previous))


def _decode_v1(raw: list[Any]) -> Event:
    """Schema version 1: ``[1, tag, origin, agent, seq, prev, hlc, body]``."""
    if len(raw) != 8:
        raise CodecError("event must be an array of 8 items")
    _, tag, origin, agent, seq, prev, hlc, body = raw
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
    kind = event_type_of(tag)
    if kind is None:
        raise CodecError(f"unknown event type {tag!r}")
    return kind.decode((origin, text(agent, "agent"), seq, prev, hlc), body)


class _Unordered(Exception):
    """A map or a set met while decoding an event (its text names which)."""


def _no_map(decoder: Any, value: Any) -> Any:
    """cbor2's hook for every map decoded, and (below) its decoder of CBOR sets (tag
    258): an event refuses both. Why: "decode, re-encode, compare" is a complete
    canonical check only for arrays, ints, text, bytes and null. A map re-encodes in the
    key order it arrived in, so one event could have several encodings, each with its
    own id; a set re-encodes in the order Python iterates it, which for text depends on
    the process's hash seed, so the same bytes would pass in one process and fail the
    next replay in another (and a decoder iterating it would build its fields in a
    different order on every node). Values travel as byte strings and are checked by
    their own rules, sorted keys included."""
    raise _Unordered("map")


def _no_set(decoder: Any, *value: Any) -> Any:
    raise _Unordered("set")


_NO_SETS = refuse_tags({258: _no_set})


#: How to read each schema version into the current event model. Why a table: stored
#: events are never rewritten (their bytes are their id), so every version ever written
#: stays readable; a newer envelope adds its layout here, and older ones are upcast to
#: the current model by theirs. The writer always writes ``SCHEMA_VERSION``.
_LAYOUTS: dict[int, Callable[[list[Any]], Event]] = {1: _decode_v1}


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
        raw = cbor2.loads(
            data,
            max_depth=4,
            allow_indefinite=False,
            object_hook=_no_map,
            semantic_decoders=_NO_SETS,
        )
    except (cbor2.CBORDecodeError, RecursionError, ValueError, TypeError, OverflowError) as exc:
        if isinstance(exc.__cause__, _Unordered):  # cbor2 wraps what a hook raises
            kind = exc.__cause__
            raise CodecError(f"an event holds no {kind} (it would not have one encoding)") from None
        raise CodecError(f"undecodable event: {exc}") from None
    if type(raw) is not list or not raw:
        raise CodecError("event must be a non-empty array")
    version = raw[0]
    layout = _LAYOUTS.get(version) if type(version) is int else None
    if layout is None:
        raise CodecError(f"unsupported event schema version {version!r}")
    event = layout(raw)
    if cbor2.dumps(raw) != data:
        raise CodecError("event bytes are not the canonical encoding")
    if check_values:
        for w in event.writes:
            if w.value is not None:
                decode_value_strict(w.value, DEFAULT_MAX_VALUE_SIZE)
    return event
