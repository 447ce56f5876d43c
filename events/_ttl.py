"""Events of values with a time to live, and of their expiry.

A value written with a TTL carries the moment it stops being current (``expires``, ns
since the epoch on the writer's clock): a put (``put-ttl``) or a batch whose writes
share it (``batch-ttl``). Reads treat such a value as absent from that moment on; the
expiry process then writes an ``expire`` event, a tombstone naming the version that
expired, so history shows the expiry like a delete.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from ._errors import CodecError
from ._event import Event, Write
from ._fields import UINT64_MAX, id_or_none, name, raw_bytes, uint
from ._registry import Header, register_event_type

__all__ = ["ExpireEvent", "ExpiringBatchEvent", "ExpiringPutEvent"]


class _ExpiringPut(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    namespace: str
    key: str
    value: bytes
    previous: bytes | None
    expires: int


class ExpiringPutEvent(_ExpiringPut, Event):
    """Set ``namespace/key`` to a value that is current until ``expires``."""

    __slots__ = ()
    TAG: ClassVar[str] = "put-ttl"

    @property
    def writes(self) -> tuple[Write, ...]:
        return (Write(self.namespace, self.key, self.value, self.previous, self.expires),)


class _ExpiringBatch(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    expires: int
    items: tuple[Write, ...]


class ExpiringBatchEvent(_ExpiringBatch, Event):
    """Several writes committed atomically, each current until ``expires``."""

    __slots__ = ()
    TAG: ClassVar[str] = "batch-ttl"

    @property
    def writes(self) -> tuple[Write, ...]:
        return tuple(w._replace(expires=self.expires) for w in self.items)


class _Expire(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    namespace: str
    key: str
    previous: bytes


class ExpireEvent(_Expire, Event):
    """The version ``previous`` of ``namespace/key`` expired: a tombstone after it."""

    __slots__ = ()
    TAG: ClassVar[str] = "expire"

    @property
    def writes(self) -> tuple[Write, ...]:
        return (Write(self.namespace, self.key, None, self.previous),)


def _decode_put(header: Header, body: Any) -> Event:
    if type(body) is not list or len(body) != 5:
        raise CodecError("put-ttl body must be [namespace, key, value, previous, expires]")
    return ExpiringPutEvent(
        *header,
        name(body[0], "namespace"),
        name(body[1], "key"),
        raw_bytes(body[2], "value"),
        id_or_none(body[3]),
        uint(body[4], "expires", 1, UINT64_MAX),
    )


def _item(item: Any) -> Write:
    if type(item) is not list or len(item) != 4:
        raise CodecError("batch-ttl item must be [namespace, key, value, previous]")
    return Write(
        name(item[0], "namespace"),
        name(item[1], "key"),
        raw_bytes(item[2], "value"),
        id_or_none(item[3]),
    )


def _decode_batch(header: Header, body: Any) -> Event:
    if type(body) is not list or len(body) != 2 or type(body[1]) is not list or not body[1]:
        raise CodecError("batch-ttl body must be [expires, [items...]] with items")
    items = tuple(_item(item) for item in body[1])
    if len({(w.namespace, w.key) for w in items}) != len(items):
        raise CodecError("batch-ttl writes the same key twice")
    return ExpiringBatchEvent(*header, uint(body[0], "expires", 1, UINT64_MAX), items)


def _decode_expire(header: Header, body: Any) -> Event:
    if type(body) is not list or len(body) != 3:
        raise CodecError("expire body must be [namespace, key, previous]")
    previous = id_or_none(body[2])
    if previous is None:
        raise CodecError("expire must name the version that expired")
    return ExpireEvent(*header, name(body[0], "namespace"), name(body[1], "key"), previous)


register_event_type(
    ExpiringPutEvent, lambda e: [e.namespace, e.key, e.value, e.previous, e.expires], _decode_put
)
register_event_type(
    ExpiringBatchEvent,
    lambda e: [e.expires, [[w.namespace, w.key, w.value, w.previous] for w in e.items]],
    _decode_batch,
)
register_event_type(ExpireEvent, lambda e: [e.namespace, e.key, e.previous], _decode_expire)
