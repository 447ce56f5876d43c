"""The event types a log may hold: each tag with how its body is encoded and decoded.

Why a registry: every capability adds events of its own (index and view definitions,
embeddings, identities and grants, tier moves), and each should be an addition in its
own module of this layer, not an edit of the codec. A type registers its tag, its
class (a named tuple under :class:`Event` whose first fields are the header, in order:
replay reads them by position), and two functions: ``encode(event) -> body`` (plain
CBOR data: lists, ints, text, bytes, null) and ``decode(header, body) -> event``, which
checks every field of untrusted data and raises :class:`CodecError`. Tags are stable
strings chosen by the type's author, never derived from import paths, and a tag is
never reused.

Bodies hold only arrays, integers, text, byte strings and null, at most two arrays
deep (the decoder's depth limit): cbor2 encodes those one way only, which is what makes
"decode, re-encode, compare" a complete canonical check. A map would pass in any key
order (give two ids to one event), and a set (CBOR tag 258) in an order that depends on
the process's hash seed, so the codec refuses both anywhere in an event
(:class:`CodecError`, and ``Writer.emit`` refuses to write one); use an array (of
pairs).
Floats travel as bytes.

Every event type lives in a module of ``koru.events`` listed in :data:`EVENT_MODULES`:
the first tag not registered yet imports them all (the package imports its modules
lazily, so that a one-shot read loads only what it uses), so any reader of a log, the
``kdelta`` command line included, knows every type a log may hold. A new type's module
is added to that list (a test checks that every module registering a type is in it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

from ._event import Event

__all__ = [
    "EVENT_MODULES",
    "EventType",
    "Header",
    "event_type_of",
    "event_types",
    "register_event_type",
]

#: The modules of this package that register event types (besides the codec's own).
EVENT_MODULES = (
    "._auth_events",
    "._essence",
    "._lifecycle",
    "._lineage",
    "._query_events",
    "._sleep",
    "._ttl",
    "._vector_events",
    "._workspaces",
)

#: An event's header fields, in order: origin, agent, seq, prev, hlc.
Header = tuple[bytes, str, int, bytes | None, int]
_HEADER_FIELDS = ("origin", "agent", "seq", "prev", "hlc")


class EventType(NamedTuple):
    tag: str
    cls: type[Event]
    encode: Callable[[Any], list[Any]]
    decode: Callable[[Header, Any], Event]


_BY_TAG: dict[str, EventType] = {}
_BY_CLASS: dict[type[Event], EventType] = {}


def register_event_type(
    cls: type[Event],
    encode: Callable[[Any], list[Any]],
    decode: Callable[[Header, Any], Event],
) -> None:
    """Make events of ``cls`` (tag ``cls.TAG``) encodable and decodable.

    Raises:
        ValueError: an empty tag, a tag or class registered already, or a class that is
            not a named tuple whose first fields are the header's, in order.
    """
    tag = cls.TAG
    if type(tag) is not str or not tag:
        raise ValueError(f"{cls.__name__} needs a non-empty str TAG")
    if not issubclass(cls, tuple) or getattr(cls, "_fields", ())[:5] != _HEADER_FIELDS:
        # Replay reads every record's header by position, as the first five fields of a
        # tuple: anything else would be written, acknowledged, then unreadable.
        raise ValueError(
            f"{cls.__name__} must be a named tuple whose first fields are {_HEADER_FIELDS}"
        )
    if tag in _BY_TAG or cls in _BY_CLASS:
        raise ValueError(f"event type {tag!r} ({cls.__name__}) is registered already")
    kind = EventType(tag, cls, encode, decode)
    _BY_TAG[tag] = kind
    _BY_CLASS[cls] = kind


def event_type_of(tag: Any) -> EventType | None:
    """The registered type with ``tag``, or None."""
    if type(tag) is not str:
        return None
    kind = _BY_TAG.get(tag)
    if kind is None and not _complete:
        _register_all()
        kind = _BY_TAG.get(tag)
    return kind


def event_types() -> dict[str, EventType]:
    """Every registered type by tag (a copy)."""
    _register_all()
    return dict(_BY_TAG)


_complete = False


def _register_all() -> None:
    """Import every module that registers event types (once)."""
    global _complete
    if not _complete:
        for module in EVENT_MODULES:
            importlib.import_module(module, __package__)
        _complete = True


def encoder_of(cls: type[Event]) -> Callable[[Any], list[Any]] | None:
    kind = _BY_CLASS.get(cls)
    return None if kind is None else kind.encode
