"""The event model: every operation is an immutable, versioned event.

An event names its origin node, the agent whose log it belongs to, its sequence
number in that origin's feed for the agent, the id of the previous event in that
feed, and a hybrid-logical-clock timestamp. Its id is blake3 of its canonical CBOR
bytes (see :mod:`koru.events._codec`). The type tag is a stable string chosen here,
never derived from a Python import path, so renaming a class never changes stored
bytes.

Why tuples: an event type is a named tuple under a common :class:`Event` base, so it
is immutable, compares and hashes by value, and costs a third of a slotted frozen class
to build, which matters on the paths that build one per record (every write, every
replayed event, every event a peer sends).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import blake3

__all__ = [
    "NODE_ID_SIZE",
    "BatchEvent",
    "DeleteEvent",
    "Event",
    "PutEvent",
    "Write",
    "write_id",
]

#: Bytes in a node id.
NODE_ID_SIZE = 16


class Write(NamedTuple):
    """One key's new version inside an event.

    ``value`` is canonical CBOR (None deletes); ``previous`` is the write id of the
    version the writer saw as current, the causal link (None for a key's first write).
    Two writes with the same ``previous`` are concurrent: both stay in history.
    ``expires`` is when the version stops being current (ns since the epoch, on the
    writer's clock), for values written with a time to live; None for the rest.
    """

    namespace: str
    key: str
    value: bytes | None
    previous: bytes | None
    expires: int | None = None


class Event:
    """Common header of every event; each type adds a body and a stable ``TAG``.

    The header fields (first in every type, in this order) are ``origin``, ``agent``,
    ``seq``, ``prev`` and ``hlc``.
    """

    __slots__ = ()
    TAG: ClassVar[str] = ""

    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int

    @property
    def writes(self) -> tuple[Write, ...]:
        """The key writes this event makes (empty for events that write no key)."""
        return ()


class _Put(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    namespace: str
    key: str
    value: bytes
    previous: bytes | None


class PutEvent(_Put, Event):
    """Set ``namespace/key`` to a new value."""

    __slots__ = ()
    TAG: ClassVar[str] = "put"

    @property
    def writes(self) -> tuple[Write, ...]:
        return (Write(self.namespace, self.key, self.value, self.previous),)


class _Delete(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    namespace: str
    key: str
    previous: bytes | None


class DeleteEvent(_Delete, Event):
    """Write a tombstone for ``namespace/key``; history keeps it."""

    __slots__ = ()
    TAG: ClassVar[str] = "delete"

    @property
    def writes(self) -> tuple[Write, ...]:
        return (Write(self.namespace, self.key, None, self.previous),)


class _Batch(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    items: tuple[Write, ...]


class BatchEvent(_Batch, Event):
    """Several writes committed atomically: one event, one record, all or nothing."""

    __slots__ = ()
    TAG: ClassVar[str] = "batch"

    @property
    def writes(self) -> tuple[Write, ...]:
        return self.items


def write_id(event_id: bytes, index: int) -> bytes:
    """The id of the ``index``-th write of an event: the event id itself for the first,
    blake3(event id || index) for the rest of a batch, so every write has its own id."""
    if index == 0:
        return event_id
    return blake3.blake3(event_id + index.to_bytes(4, "big")).digest()
