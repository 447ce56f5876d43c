"""The peer protocol's messages: one CBOR array each, ``[version, type, *fields]``.

Every message type has a fixed list of fields, each checked by type and size when it
is decoded, so a malformed or unexpected message is refused here, before any part of
the protocol looks at it (:class:`WireError`, carrying the websocket close code to
answer with). No maps, no tags: a message is arrays, ints, bytes, text and null.

Close codes are RFC 6455's: what a peer gets back tells it what it did wrong.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import cbor2

from koru.events import KoruError, decodes_within, refuse_tags

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_LATER",
    "PROTOCOL_VERSION",
    "Msg",
    "WireError",
    "decode",
    "encode",
]

#: The version every message carries; a peer speaking another is refused.
PROTOCOL_VERSION = 1

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL = 1002
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_LATER = 1013


class WireError(KoruError):
    """A message this side cannot take: the connection closes with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.reason))


class Msg(enum.IntEnum):
    """Message types."""

    HELLO = 1  # server: challenge (server key, nonce, expires), node id
    AUTH = 2  # client: response, own challenge nonce, role, credentials, listen address
    WELCOME = 3  # server: its signature over the client's challenge, node id, credentials
    SUMMARY = 10  # Merkle root over the feed heads, feed count
    RANGES = 11  # subtrees whose hashes the sender holds: [[depth, prefix, hash], ...]
    HEADS = 12  # the sender's feed heads under a subtree: tags (8 B each), seqs
    EVENTS = 13  # event bytes, as ingest takes them, concatenated (no per-event framing)
    ACK = 14  # events received and taken (flow control)
    BLOOM = 15  # one-round approximate diff: ids of recent events in a Bloom filter
    PING = 20
    PONG = 21
    PEERS = 22  # gossip: addresses of peers the sender knows
    REQUEST = 30  # a client's call: [call id, payload]
    RESPONSE = 31  # its answer: [call id, payload]
    STREAM_ITEM = 32  # an item of a streamed answer: [call id, payload]
    STREAM_END = 33  # the end of a streamed answer: [call id, payload | null]
    CANCEL = 34  # the client stops a streamed answer: [call id]
    CLOSE = 40  # [code, reason]: for transports without their own close frame


_MAX_TEXT = 1024
_MAX_LIST = 1 << 20

#: What a message's items may cost in Python objects beyond its strings' contents (which
#: the message's size bounds), estimated from their headers: a message is decoded whole
#: before its schema is checked, and an item of one byte (an empty array) decodes to
#: some 64, so the 96 MiB an admitted side (a client needs no capability) may send would
#: take some 6 GB. The most a schema allows (HEADS of 2**20 seqs) is estimated at 40 MiB.
MAX_DECODED = 64 << 20


def _uint(value: Any) -> bool:
    return type(value) is int and 0 <= value < 1 << 64


def _bytes(size: int | None = None, most: int = 1 << 30) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return type(value) is bytes and (
            len(value) == size if size is not None else len(value) <= most
        )

    return check


def _text(value: Any) -> bool:
    return type(value) is str and len(value) <= _MAX_TEXT


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _list_of(check: Callable[[Any], bool], most: int = _MAX_LIST) -> Callable[[Any], bool]:
    def checked(value: Any) -> bool:
        return type(value) is list and len(value) <= most and all(check(v) for v in value)

    return checked


def _range(value: Any) -> bool:
    return (
        type(value) is list
        and len(value) == 3
        and _uint(value[0])
        and value[0] <= 16
        and _uint(value[1])
        and type(value[2]) is bytes
        and len(value[2]) == 32
    )


_SCHEMAS: dict[Msg, tuple[Callable[[Any], bool], ...]] = {
    Msg.HELLO: (_bytes(32), _bytes(32), _uint, _bytes(16)),
    Msg.AUTH: (
        _bytes(32),  # client public key
        _bytes(most=64),  # its proof-of-work nonce
        _bytes(64),  # signature over (server key, challenge, client key)
        _bytes(32),  # the client's challenge to the server
        _text,  # role: "peer" or "client"
        _list_of(_bytes(most=64 * 1024), 64),  # credentials: signed statements
        _opt(_text),  # the client's own listening address (peers)
    ),
    Msg.WELCOME: (
        _bytes(most=64),  # the server's proof-of-work nonce
        _bytes(64),  # signature over (client challenge), as a response
        _bytes(16),  # node id
        _list_of(_bytes(most=64 * 1024), 64),  # credentials
    ),
    Msg.SUMMARY: (_bytes(32), _uint),
    Msg.RANGES: (_list_of(_range, 4096),),
    Msg.HEADS: (_uint, _uint, _bytes(most=8 * _MAX_LIST), _list_of(_uint)),
    Msg.EVENTS: (_bytes(most=1 << 27),),  # events, concatenated (each a CBOR item)
    Msg.ACK: (_uint,),
    Msg.BLOOM: (_uint, _uint, _bytes(most=1 << 24)),
    Msg.PING: (_uint,),
    Msg.PONG: (_uint,),
    Msg.PEERS: (_list_of(_text, 256),),
    Msg.REQUEST: (_uint, _bytes(most=1 << 27)),
    Msg.RESPONSE: (_uint, _bytes(most=1 << 27)),
    Msg.STREAM_ITEM: (_uint, _bytes(most=1 << 27)),
    Msg.STREAM_END: (_uint, _opt(_bytes(most=1 << 27))),
    Msg.CANCEL: (_uint,),
    Msg.CLOSE: (_uint, _text),
}


def encode(kind: Msg, *fields: Any) -> bytes:
    """The bytes of a message (fields as :func:`decode` returns them)."""
    return cbor2.dumps([PROTOCOL_VERSION, int(kind), *fields])


def _no_tag(decoder: Any, tag: Any) -> Any:
    raise WireError(CLOSE_INVALID_PAYLOAD, "a message holds no CBOR tags")


_NO_TAGS = refuse_tags()  # dates, sets, shared references...: no tags at all


def _no_map(decoder: Any, value: Any) -> Any:
    raise WireError(CLOSE_INVALID_PAYLOAD, "a message holds no CBOR maps")


def decode(data: bytes, allowed: frozenset[Msg] | None = None) -> tuple[Msg, list[Any]]:
    """``(type, fields)`` of a message, checked against its schema.

    Raises:
        WireError: not CBOR, not a message, another version, a type not ``allowed``
            here, or a field of the wrong type or size (each with its close code).
    """
    if type(data) is not bytes:
        raise WireError(CLOSE_INVALID_PAYLOAD, "a message is a binary frame")
    if not decodes_within(data, MAX_DECODED, strings=False):
        raise WireError(CLOSE_INVALID_PAYLOAD, "a message that would decode to too much")
    try:
        raw = cbor2.loads(data, tag_hook=_no_tag, object_hook=_no_map, semantic_decoders=_NO_TAGS)
    except WireError:
        raise
    except Exception as exc:  # cbor2 raises several types for malformed input
        raise WireError(CLOSE_INVALID_PAYLOAD, f"not CBOR: {exc}") from None
    if type(raw) is not list or len(raw) < 2 or type(raw[0]) is not int or type(raw[1]) is not int:
        raise WireError(CLOSE_INVALID_PAYLOAD, "a message is [version, type, ...]")
    if raw[0] != PROTOCOL_VERSION:
        raise WireError(CLOSE_PROTOCOL, f"protocol version {raw[0]}, this side speaks 1")
    try:
        kind = Msg(raw[1])
    except ValueError:
        raise WireError(CLOSE_INVALID_PAYLOAD, f"unknown message type {raw[1]}") from None
    if allowed is not None and kind not in allowed:
        raise WireError(CLOSE_POLICY, f"{kind.name} is not allowed here")
    fields = raw[2:]
    schema = _SCHEMAS[kind]
    if len(fields) != len(schema) or not all(
        check(value) for check, value in zip(schema, fields, strict=True)
    ):
        raise WireError(CLOSE_INVALID_PAYLOAD, f"a malformed {kind.name} message")
    return kind, fields
