"""The key/value projection: current state, full history and time travel per key.

A pure fold: :meth:`KvState.apply` takes an event (with its id and where the shell
stored it) and updates the state; no I/O, no clock, no trio. Values are not held here:
each version records its content id and the location of the event that carries the
value, and the shell reads values through a cache.

Per key, versions are kept as fixed-size packed records in one ``bytearray``, sorted
by the order key ``(hlc, origin, write id)``. The record starts with exactly those
fields in big-endian form, so comparing the first 56 bytes of two records compares
their order keys: insertion is a byte comparison, and the same set of events yields
the same bytes whatever order they arrived in. The current version is the last record.
Concurrent writes (same ``previous``) are all kept; the order key picks the current one.

Packed records cost ~133 bytes per version instead of several Python objects, which
keeps resident memory per key small and makes checkpoints one blob per key.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from typing import Any, ClassVar, NamedTuple

from koru.events import Event, PutEvent, content_id, write_id

__all__ = ["NO_ID", "RECORD_SIZE", "TOMBSTONE", "KvState", "VersionRecord"]

_REC = struct.Struct(">Q16s32s32s32sQIB")
RECORD_SIZE = _REC.size
_ORDER = 8 + 16 + 32  # hlc, origin, write id: the order key is the record's prefix
_WID = 24
_CID = 56
_NO_ID = bytes(32)
#: The all-zero id that stands for "none" in packed records.
NO_ID = _NO_ID
_MOD = 1 << 256
_TOMBSTONE = 1
#: Flag bit of a deletion in packed records.
TOMBSTONE = _TOMBSTONE


def _order_at(blob: bytes | bytearray, j: int) -> bytes:
    return bytes(blob[j * RECORD_SIZE : j * RECORD_SIZE + _ORDER])


def _hlc_at(blob: bytes | bytearray, j: int) -> int:
    return int.from_bytes(blob[j * RECORD_SIZE : j * RECORD_SIZE + 8], "big")


class VersionRecord(NamedTuple):
    """One version's metadata as the projection stores it (ids as raw bytes)."""

    hlc: int
    origin: bytes
    write_id: bytes
    content_id: bytes | None
    previous: bytes | None
    location: int
    size: int
    deleted: bool


def _unpack(rec: tuple[Any, ...]) -> VersionRecord:
    hlc, origin, wid, cid, prev, loc, size, flags = rec
    deleted = bool(flags & _TOMBSTONE)
    return VersionRecord(
        hlc,
        origin,
        wid,
        None if deleted else cid,
        None if prev == _NO_ID else prev,
        loc,
        size,
        deleted,
    )


class KvState:
    """Every key's versions, plus order-independent digests of the whole state."""

    __slots__ = ("current_sum", "live", "max_hlc", "namespaces", "version_sum", "versions")

    #: The projection's name (its checkpoint section) and section format.
    name: ClassVar[str] = "kv"
    version: ClassVar[int] = 1

    def __init__(self) -> None:
        #: namespace -> key -> packed version records (bytes after a checkpoint load).
        self.namespaces: dict[str, dict[str, bytearray | bytes]] = {}
        #: Keys whose current version is not a tombstone.
        self.live = 0
        #: Versions of all keys, tombstones included.
        self.versions = 0
        #: Largest hlc of any applied write.
        self.max_hlc = 0
        # Why sums of write ids mod 2**256: a multiset hash that is updated in O(1) per
        # write and does not depend on arrival order (write ids are already blake3
        # outputs). One sum over current versions, one over every version.
        self.current_sum = 0
        self.version_sum = 0

    # -- the fold ----------------------------------------------------------------------

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        """Fold one event in. Applying an event twice changes nothing."""
        origin, hlc = event.origin, event.hlc
        if type(event) is PutEvent:  # the common case, without building Write objects
            value = event.value
            rec = _REC.pack(
                hlc,
                origin,
                event_id,
                content_id(value),
                event.previous or _NO_ID,
                location,
                len(value),
                0,
            )
            self._insert(event.namespace, event.key, rec, hlc)
            return
        for i, w in enumerate(event.writes):
            data = w.value
            rec = _REC.pack(
                hlc,
                origin,
                write_id(event_id, i),
                _NO_ID if data is None else content_id(data),
                w.previous or _NO_ID,
                location,
                0 if data is None else len(data),
                _TOMBSTONE if data is None else 0,
            )
            self._insert(w.namespace, w.key, rec, hlc)

    def _insert(self, namespace: str, key: str, rec: bytes, hlc: int) -> None:
        """Insert one packed version record in order (idempotent)."""
        keys = self.namespaces.get(namespace)
        if keys is None:
            keys = self.namespaces[namespace] = {}
        blob = keys.get(key)
        wid = int.from_bytes(rec[_WID:_ORDER], "big")
        tomb = rec[-1] & _TOMBSTONE
        if blob is None:
            keys[key] = bytearray(rec)
            self.current_sum += wid
            if not tomb:
                self.live += 1
        else:
            if type(blob) is not bytearray:  # loaded from a checkpoint as bytes
                blob = keys[key] = bytearray(blob)
            last = len(blob) - RECORD_SIZE
            last_hlc = int.from_bytes(blob[last : last + 8], "big")
            # Most writes are newer than the key's current version: decide on the
            # timestamp alone, and compare whole order keys only on a tie.
            if hlc > last_hlc or (hlc == last_hlc and rec[:_ORDER] > blob[last : last + _ORDER]):
                self.current_sum += wid - int.from_bytes(blob[last + _WID : last + _ORDER], "big")
                self.live += (not tomb) - (not blob[-1] & _TOMBSTONE)
                blob += rec
            else:
                order = rec[:_ORDER]
                n = len(blob) // RECORD_SIZE
                pos = bisect_right(range(n), order, key=lambda j: _order_at(blob, j))
                if pos and _order_at(blob, pos - 1) == order:
                    return  # already applied
                blob[pos * RECORD_SIZE : pos * RECORD_SIZE] = rec
        self.versions += 1
        # Sums are reduced mod 2**256 only when read: cheaper on the hot path.
        self.version_sum += wid
        if hlc > self.max_hlc:
            self.max_hlc = hlc

    # -- queries -----------------------------------------------------------------------

    def current(self, namespace: str, key: str) -> VersionRecord | None:
        """The current version of a key (possibly a tombstone), or None if never written."""
        keys = self.namespaces.get(namespace)
        blob = keys.get(key) if keys is not None else None
        if blob is None:
            return None
        return _unpack(_REC.unpack_from(blob, len(blob) - RECORD_SIZE))

    def current_write_id(self, namespace: str, key: str) -> bytes | None:
        """The write id of the key's current version (None if never written)."""
        keys = self.namespaces.get(namespace)
        blob = keys.get(key) if keys is not None else None
        if blob is None:
            return None
        base = len(blob) - RECORD_SIZE
        return bytes(blob[base + _WID : base + _ORDER])

    def live_content_id(self, namespace: str, key: str) -> bytes | None:
        """The content id of the key's current value; None if never written or deleted.

        The hot read path (``get``, ``contains``): one dict probe per level, one slice.
        """
        keys = self.namespaces.get(namespace)
        if keys is None:
            return None
        blob = keys.get(key)
        if blob is None or blob[-1] & _TOMBSTONE:
            return None
        return bytes(blob[_CID - RECORD_SIZE : _CID + 32 - RECORD_SIZE])

    def history(self, namespace: str, key: str) -> list[VersionRecord]:
        """Every version of a key in order (oldest first); empty if never written."""
        keys = self.namespaces.get(namespace)
        blob = keys.get(key) if keys is not None else None
        if blob is None:
            return []
        return [_unpack(r) for r in _REC.iter_unpack(blob)]

    def history_raw(self, namespace: str, key: str) -> list[tuple[Any, ...]]:
        """:meth:`history` as raw packed tuples, for bulk readers.

        Each tuple is (hlc, origin, write id, content id, previous, location, size,
        flags), with all-zero ids for "none" and flag bit 0 marking a deletion.
        """
        keys = self.namespaces.get(namespace)
        blob = keys.get(key) if keys is not None else None
        return [] if blob is None else list(_REC.iter_unpack(blob))

    def at(self, namespace: str, key: str, hlc: int) -> VersionRecord | None:
        """The version current at time ``hlc``: the last one with timestamp <= hlc."""
        keys = self.namespaces.get(namespace)
        blob = keys.get(key) if keys is not None else None
        if blob is None:
            return None
        n = len(blob) // RECORD_SIZE
        pos = bisect_right(range(n), hlc, key=lambda j: _hlc_at(blob, j))
        if pos == 0:
            return None
        return _unpack(_REC.unpack_from(blob, (pos - 1) * RECORD_SIZE))

    def keys(self, namespace: str) -> list[str]:
        """Keys of a namespace whose current version is not a tombstone, sorted."""
        keys = self.namespaces.get(namespace, {})
        return sorted(k for k, blob in keys.items() if not blob[-1] & _TOMBSTONE)

    def live_namespaces(self) -> list[str]:
        """Namespaces with at least one live key, sorted."""
        return sorted(
            ns
            for ns, keys in self.namespaces.items()
            if any(not blob[-1] & _TOMBSTONE for blob in keys.values())
        )

    def key_count(self) -> int:
        return sum(len(keys) for keys in self.namespaces.values())

    def digest(self) -> bytes:
        """One 64-byte summary of the state: equal for equal sets of applied events."""
        # The sums are kept unreduced on the hot path; reduce them here.
        current, every = self.current_sum % _MOD, self.version_sum % _MOD
        return current.to_bytes(32, "big") + every.to_bytes(32, "big")

    # -- checkpoints -------------------------------------------------------------------

    def capture(self) -> dict[str, Any]:
        """A plain-data copy of the state, for a checkpoint."""
        return {
            "ns": {
                ns: {k: bytes(blob) for k, blob in keys.items()}
                for ns, keys in self.namespaces.items()
            },
            "live": self.live,
            "versions": self.versions,
            "max_hlc": self.max_hlc,
            "current_sum": (self.current_sum % _MOD).to_bytes(32, "big"),
            "version_sum": (self.version_sum % _MOD).to_bytes(32, "big"),
        }

    @classmethod
    def restore(cls, data: Any) -> KvState:
        """Rebuild the state from :meth:`capture` output.

        Checks the shape of everything (ValueError/KeyError/TypeError if malformed), so
        a damaged or crafted checkpoint is refused here rather than failing later inside
        a read.
        """
        state = cls()
        namespaces = data["ns"]
        if type(namespaces) is not dict:
            raise ValueError("namespaces must be a map")
        for ns, keys in namespaces.items():
            if type(ns) is not str or type(keys) is not dict:
                raise ValueError("namespaces must map names to maps")
            for key, blob in keys.items():
                if type(key) is not str or type(blob) is not bytes:
                    raise ValueError(f"{ns}: keys must map names to version records")
                if not blob or len(blob) % RECORD_SIZE:
                    raise ValueError(f"{ns}/{key}: version records of {len(blob)} bytes")
        state.namespaces = namespaces
        for field in ("live", "versions", "max_hlc"):
            if type(data[field]) is not int or data[field] < 0:
                raise ValueError(f"{field} must be a non-negative int")
        for field in ("current_sum", "version_sum"):
            if type(data[field]) is not bytes or len(data[field]) != 32:
                raise ValueError(f"{field} must be 32 bytes")
        state.live = data["live"]
        state.versions = data["versions"]
        state.max_hlc = data["max_hlc"]
        state.current_sum = int.from_bytes(data["current_sum"], "big")
        state.version_sum = int.from_bytes(data["version_sum"], "big")
        return state
