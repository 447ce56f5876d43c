"""Events of the lifecycle agent: tier decisions of the distillation process, so that
the log says which keys a node keeps hot, and replaying it keeps the same ones."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from ._errors import CodecError
from ._event import Event
from ._fields import name
from ._registry import Header, register_event_type

__all__ = ["LIFECYCLE", "MAX_TIER_KEYS", "TieringEvent"]

#: The agent whose log holds tier decisions.
LIFECYCLE = "lifecycle"
#: Keys one decision may move (a hot tier is about ten thousand keys).
MAX_TIER_KEYS = 100_000


class _Tiering(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    promoted: tuple[tuple[str, str], ...]
    demoted: tuple[tuple[str, str], ...]


class TieringEvent(_Tiering, Event):
    """The origin's hot tier gains ``promoted`` and loses ``demoted`` (namespace, key)
    pairs: the keys it keeps in memory whatever else is read."""

    __slots__ = ()
    TAG: ClassVar[str] = "tiering"


def _keys(item: Any, what: str) -> tuple[tuple[str, str], ...]:
    if type(item) is not list or len(item) > MAX_TIER_KEYS:
        raise CodecError(f"{what} must be a list of at most {MAX_TIER_KEYS} keys")
    keys = []
    for pair in item:
        if type(pair) is not list or len(pair) != 2:
            raise CodecError(f"{what} must list [namespace, key] pairs")
        keys.append((name(pair[0], "namespace"), name(pair[1], "key")))
    if len(set(keys)) != len(keys):
        raise CodecError(f"{what} lists a key twice")
    return tuple(keys)


def _decode(header: Header, body: Any) -> Event:
    if type(body) is not list or len(body) != 2:
        raise CodecError("tiering body must be [promoted, demoted]")
    promoted, demoted = _keys(body[0], "promoted"), _keys(body[1], "demoted")
    if set(promoted) & set(demoted):
        raise CodecError("a key cannot be promoted and demoted at once")
    return TieringEvent(*header, promoted, demoted)


register_event_type(
    TieringEvent,
    lambda e: [[list(k) for k in e.promoted], [list(k) for k in e.demoted]],
    _decode,
)
