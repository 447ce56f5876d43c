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

Packed records cost ~141 bytes per version instead of several Python objects, which
keeps resident memory per key small and makes checkpoints one blob per key.

A version written with a time to live records when it expires (and a flag bit says
so). Whether it has expired depends on the time of the question, so the fold does not
decide it: readers pass the time (``now``), and :attr:`KvState.expiring` lists the keys
whose current version expires, for the process that writes their expiry.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from typing import Any, ClassVar, NamedTuple

from koru.events import Event, PutEvent, content_id, write_id

__all__ = ["EXPIRES", "NO_ID", "RECORD_SIZE", "TOMBSTONE", "KvState", "VersionRecord"]

# hlc, origin, write id, content id, previous, location, size, expires, flags.
_REC = struct.Struct(">Q16s32s32s32sQIQB")
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
_EXPIRES = 2
#: Flag bit of a version with a time to live (its ``expires`` field is set).
EXPIRES = _EXPIRES
_EXP = RECORD_SIZE - 9  # where ``expires`` starts in a record


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
    #: When the version stops being current (ns), for a value with a time to live.
    expires: int | None = None

    def expired(self, now: int) -> bool:
        """True if it has a time to live and ``now`` is at or past it."""
        return self.expires is not None and now >= self.expires


def _unpack(rec: tuple[Any, ...]) -> VersionRecord:
    hlc, origin, wid, cid, prev, loc, size, expires, flags = rec
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
        expires if flags & _EXPIRES else None,
    )


def _expires_of(blob: bytes | bytearray) -> int | None:
    """When the last record of ``blob`` (the current version) expires, if it does."""
    if not blob[-1] & _EXPIRES:
        return None
    return int.from_bytes(blob[len(blob) - 9 : len(blob) - 1], "big")


class KvState:
    """Every key's versions, plus order-independent digests of the whole state."""

    __slots__ = (
        "current_sum",
        "expiring",
        "live",
        "max_hlc",
        "namespaces",
        "version_sum",
        "versions",
    )

    #: The projection's name (its checkpoint section) and section format (2: records
    #: carry an expiry; a version-1 section is rebuilt from the log).
    name: ClassVar[str] = "kv"
    version: ClassVar[int] = 2

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
        #: (namespace, key) -> when its current version expires, for the keys whose
        #: current version has a time to live (expired ones too, until an expiry or a
        #: newer version replaces them).
        self.expiring: dict[tuple[str, str], int] = {}

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
                0,
            )
            self._insert(event.namespace, event.key, rec, hlc)
            return
        for i, w in enumerate(event.writes):
            data, expires = w.value, w.expires
            rec = _REC.pack(
                hlc,
                origin,
                write_id(event_id, i),
                _NO_ID if data is None else content_id(data),
                w.previous or _NO_ID,
                location,
                0 if data is None else len(data),
                expires or 0,
                (_TOMBSTONE if data is None else 0) | (_EXPIRES if expires else 0),
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
            keys[key] = blob = bytearray(rec)
            self.current_sum += wid
            if not tomb:
                self.live += 1
            if rec[-1] & _EXPIRES:
                self.expiring[(namespace, key)] = int.from_bytes(rec[_EXP:-1], "big")
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
                if rec[-1] & _EXPIRES:
                    self.expiring[(namespace, key)] = int.from_bytes(rec[_EXP:-1], "big")
                elif blob[last + RECORD_SIZE - 1] & _EXPIRES:
                    self.expiring.pop((namespace, key), None)
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
        expires, flags), with all-zero ids for "none", flag bit 0 (:data:`TOMBSTONE`)
        marking a deletion and bit 1 (:data:`EXPIRES`) a time to live.
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

    def expired(self, namespace: str, key: str, now: int) -> bool:
        """True if the key's current version has a time to live that ``now`` reached."""
        expires = self.expiring.get((namespace, key))
        return expires is not None and now >= expires

    def keys(self, namespace: str, now: int | None = None) -> list[str]:
        """Keys of a namespace whose current version is not a tombstone (nor expired at
        ``now``, if given), sorted."""
        keys = self.namespaces.get(namespace, {})
        live = [k for k, blob in keys.items() if not blob[-1] & _TOMBSTONE]
        if now is not None and self.expiring:
            live = [k for k in live if not self.expired(namespace, k, now)]
        return sorted(live)

    def live_namespaces(self, now: int | None = None) -> list[str]:
        """Namespaces with at least one live key (not expired at ``now``, if given),
        sorted."""
        expiring = self.expiring if now is not None else {}
        return sorted(
            ns
            for ns, keys in self.namespaces.items()
            if any(
                not blob[-1] & _TOMBSTONE
                and not (expiring and now is not None and self.expired(ns, k, now))
                for k, blob in keys.items()
            )
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
                expires = _expires_of(blob)
                if expires is not None:
                    state.expiring[(ns, key)] = expires
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
