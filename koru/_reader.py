"""Reading values: from the cache, else from the log, proven before they are served.

The projection holds, per version, the content id of its value and where the event
carrying it is stored; values themselves live in the log and, recently used, in the
:class:`~koru._cache.ValueCache`. Why the proof on every read from the log: records
before a checkpoint's cursor are not re-verified when a database opens, so a record
swapped with another of the same size, or rewritten with fresh checksums, would
otherwise be served. The content id (blake3 of the value's bytes) settles it in one
hash. The value is also decoded strictly once here (replay does not decode values), so
that what enters the cache always decodes: reads from the cache never meet a malformed
value.

A value may have moved (the Tiers capability): the projections that follow
:class:`~koru.projections.ValuePlacement` say where it lives now, and it is read there
instead, with the same proof. The version record still names the event that wrote it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cbor2

from koru.events import (
    CodecError,
    CorruptLogError,
    Event,
    LogStore,
    PutEvent,
    content_id,
    decode_trusted,
    decode_value_strict,
    put_value,
)

from ._cache import ValueCache

__all__ = ["ValueReader"]

#: A put record's bytes besides its value and names: record header, chain root, and
#: the event's envelope (origin, agent, seq, previous id, hlc, previous write id), with
#: room to spare.
_SLACK = 384


def _value_of(event: Event, cid: bytes, namespace: str, key: str, moved: bool) -> bytes:
    """The value with content id ``cid`` in ``event``: the key's own write (one hash),
    or, for a value that ``moved`` (a placement's location), any write holding it.
    Why not any write for every value: a version record swapped whole with another
    key's (a table rewritten with fresh checksums, which only the scrub's hash of the
    whole table sees) names that key's record and content id, both valid; the key's
    own write is what proves the value is this key's."""
    if (
        type(event) is PutEvent  # nearly every record: without building its Write
        and event.namespace == namespace
        and event.key == key
        and content_id(event.value) == cid
    ):
        return event.value
    for w in event.writes:
        if w.namespace == namespace and w.key == key and w.value is not None:
            if content_id(w.value) == cid:
                return w.value
            break
    if not moved:
        raise CodecError(f"it holds no write of the key with that value (content id {cid.hex()})")
    for w in event.writes:
        if w.value is not None and content_id(w.value) == cid:
            return w.value
    raise CodecError(f"it does not hold the value (content id {cid.hex()})")


class ValueReader:
    """Encoded values by content id, through the cache."""

    __slots__ = ("cache", "corruptions", "placements", "store")

    def __init__(
        self,
        store: LogStore,
        cache: ValueCache,
        placements: Sequence[Callable[[bytes], int | None]] = (),
    ) -> None:
        self.store = store
        self.cache = cache
        self.placements = tuple(placements)
        #: Corrupt records met by reads since the open.
        self.corruptions = 0

    def value_bytes(self, cid: bytes, location: int, namespace: str, key: str) -> bytes:
        """The encoded value with content id ``cid``, written by the event at
        ``location`` (or wherever a placement says it lives now).

        Raises:
            CorruptLogError: the record there does not hold that value (counted).
        """
        data = self.cache.get(cid)
        if data is None:
            data = self._read(cid, location, namespace, key, 0)[0]
        return data

    def value(self, cid: bytes, location: int, namespace: str, key: str, size: int = 0) -> Any:
        """:meth:`value_bytes` decoded (a fresh object): a value read from the log is
        the one its strict decode produced, not decoded a second time from its bytes.
        ``size``, the value's length if known, sizes the read of its record.

        Raises:
            CorruptLogError: the record there does not hold that value (counted).
        """
        data = self.cache.get(cid)
        if data is not None:
            return cbor2.loads(data)
        return self._read(cid, location, namespace, key, size)[1]

    def uncached(self, cid: bytes, location: int, namespace: str, key: str, size: int) -> Any:
        """:meth:`value` for a caller that just found ``cid`` missing from the cache (a
        cold ``get``): read from the log without asking the cache again.

        Raises:
            CorruptLogError: the record there does not hold that value (counted).
        """
        return self._read(cid, location, namespace, key, size)[1]

    def _read(
        self, cid: bytes, location: int, namespace: str, key: str, size: int
    ) -> tuple[bytes, Any]:
        """(bytes, value) of a value not in the cache, read from the log where its
        write or a placement put it, proven, and then cached; a failed proof counted."""
        moved = False
        for placed in self.placements:
            there = placed(cid)
            if there is not None:
                location, moved = there, True
                break
        try:
            data, value = self._decoded(cid, location, namespace, key, moved, size)
        except CorruptLogError:
            self.corruptions += 1
            raise
        self.cache.put(cid, data)
        return data, value

    def _decoded(
        self, cid: bytes, location: int, namespace: str, key: str, moved: bool, size: int = 0
    ) -> tuple[bytes, Any]:
        """(value bytes, the value decoded strictly) of the record at ``location``;
        ``size`` (the value's length, 0 if unknown) sizes the read: a put's record is
        its value and a few hundred bytes of header, names and ids (a longer record, a
        batch's or one a placement moved the value to, is read whole by a second read)."""
        data = (
            self.store.read(location, size + _SLACK + 4 * (len(namespace) + len(key)))
            if size and not moved
            else self.store.read(location)
        )
        return self._proven(data, cid, location, namespace, key, size, moved)

    def _proven(
        self,
        data: bytes,
        cid: bytes,
        location: int,
        namespace: str,
        key: str,
        size: int,
        moved: bool,
    ) -> tuple[bytes, Any]:
        """(value bytes, the value decoded strictly) of ``data``, the event at
        ``location``, proven to hold the value with content id ``cid`` (a write of the
        key unless the value ``moved``: see :func:`_value_of`).

        A plain put of the key (nearly every record read) has its value sliced out
        where the writer put it (:func:`~koru.events.put_value`, given the value's
        ``size``) and proven by its content id; anything else (another event type, a
        batch, a value that fails that proof) has the whole event decoded, which finds
        the value in any event holding it or says why not.
        """
        try:
            value = put_value(data, namespace, key, size) if size else None
            if value is None or content_id(value) != cid:
                value = _value_of(decode_trusted(data), cid, namespace, key, moved)
            return value, decode_value_strict(value)
        except CodecError as exc:
            reason = f"the record does not hold the value of {namespace!r}/{key!r}: {exc}"
        agent, position, offset, path = self.store.locate(location)
        raise CorruptLogError(agent, position, offset, reason, path)
