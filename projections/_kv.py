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

import heapq
import itertools
import struct
from bisect import bisect_left, bisect_right
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from operator import add, itemgetter, lt
from typing import Any, ClassVar, NamedTuple

from blake3 import blake3 as _blake3

from koru.events import (
    Event,
    ExpiringPutEvent,
    PutEvent,
    PutRun,
    Table,
    content_id,
    key_probe,
    write_id,
)

from ._deadlines import Deadlines
from ._layered import LazyList, Snapshot
from ._merging import MAX_TABLES, merge_plan, replace_merged
from ._newtable import NewTable

__all__ = [
    "EXPIRES",
    "LAST_CID",
    "LAST_PLACE",
    "PLACE",
    "NO_ID",
    "RECORD_SIZE",
    "TOMBSTONE",
    "KvState",
    "VersionRecord",
]

# hlc, origin, write id, content id, previous, location, size, expires, flags.
_REC = struct.Struct(">Q16s32s32s32sQIQB")
RECORD_SIZE = _REC.size
_HLC = struct.Struct(">Q")  # a record's first field, its timestamp
# every record's content id, in one pass (after hlc, origin and write id)
_CIDS = struct.Struct(f">56x32s{RECORD_SIZE - 88}x")
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)
_STAMPS = struct.Struct(f">Q{RECORD_SIZE - 8}x")  # every record's timestamp, in one pass
#: Time travel lists a key's timestamps only from this many versions on (below it a
#: search of the records costs a handful of steps).
_STAMPED = 32
_ORDER = 8 + 16 + 32  # hlc, origin, write id: the order key is the record's prefix
_WID = 24
_CID = 56
_LOC_AT = _CID + 64  # a record's location: after the content id and the previous id
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
#: Every expiry time is below this (a record's 8 bytes).
_TIME_END = 1 << 64
# Where the last record's write id and order key end, counted from a blob's end.
_LAST_WID = _WID - RECORD_SIZE
_LAST_ORDER = _ORDER - RECORD_SIZE
#: Where the last (current) record's content id lies in a key's blob: for the hot
#: read path, which slices it out without a call (``blob[LAST_CID]``).
LAST_CID = slice(_CID - RECORD_SIZE, _CID + 32 - RECORD_SIZE)
#: A record's location and value size, adjacent; and where the last (current) record's
#: lie in a key's blob, counted from its end: for the read of a value the cache does not
#: hold (``PLACE.unpack_from(blob, LAST_PLACE)``, no search through the layers again).
PLACE = struct.Struct(">QI")
LAST_PLACE = _LOC_AT - RECORD_SIZE
_ID_MASK = (1 << 256) - 1  # a write id, the low bits of an order key read as an int
#: Default budgets of the warm tier (records written lately, still in memory after the
#: checkpoint that wrote them to a table) and the hot tier (records read from tables).
DEFAULT_WARM_BYTES = 64 * 1024 * 1024
DEFAULT_HOT_BYTES = 32 * 1024 * 1024
#: Default number of content ids the recent map keeps (see ``KvState.recent``).
DEFAULT_RECENT = 1 << 16
#: Keys added to a namespace's memory layer since its order was kept that a listing of
#: a prefix filters one by one before it merges them in (see _memory_range).
_FRESH = 4096
_TOP = chr(0x10FFFF)
_HOT_OVERHEAD = 150  # a dict slot, an ordered-dict link, a tuple key, a bytes header


def _order_at(blob: bytes | bytearray, j: int) -> bytes:
    return bytes(blob[j * RECORD_SIZE : j * RECORD_SIZE + _ORDER])


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
    """Every key's versions, plus order-independent digests of the whole state.

    Three layers hold the version records, each key's complete records in one place,
    the newest layer first: ``namespaces`` (in memory: what changed since the last
    checkpoint, or everything when no table exists yet), ``frozen`` (what a checkpoint
    in progress is writing to a table, never changed again) and ``tables`` (written by
    earlier checkpoints, read in place from disk). A write to a key held by a lower
    layer copies its records up first. Why: memory holds what changed, not what exists,
    so a database larger than memory opens and runs in memory bounded by its writes
    between checkpoints, and a checkpoint writes what changed, not everything.
    """

    __slots__ = (
        "_capturing",
        "_frozen_order",
        "_mirrors",
        "_missed",
        "_order",
        "_searched",
        "_sizes",
        "_stamps",
        "current_sum",
        "expiring",
        "frozen",
        "hot",
        "hot_bytes",
        "hot_capacity",
        "hot_hits",
        "key_total",
        "live",
        "max_hlc",
        "max_tables",
        "mem_bytes",
        "namespaces",
        "ns_live",
        "pinned",
        "reads",
        "recent",
        "recent_capacity",
        "recent_count",
        "recent_hits",
        "retired",
        "table_reads",
        "tables",
        "version_sum",
        "versions",
        "warm",
        "warm_bytes",
        "warm_capacity",
        "warm_hits",
    )

    #: The projection's name (its checkpoint section) and section format (3: records
    #: carry an expiry, and the records live in tables; older sections are rebuilt
    #: from the log).
    name: ClassVar[str] = "kv"
    version: ClassVar[int] = 3

    def __init__(self) -> None:
        #: namespace -> key -> packed version records: the memory layer.
        self.namespaces: dict[str, dict[str, bytearray | bytes]] = {}
        #: Per namespace: (the memory layer's dict of its keys, how many it held, those
        #: keys sorted) when last listed (see _memory_order).
        self._order: dict[str, tuple[dict[str, bytearray | bytes], int, list[str]]] = {}
        #: The same for the frozen layers' namespaces, by the id of a namespace's dict
        #: of keys (dropped with its layer: see _frozen_keys).
        self._frozen_order: dict[int, tuple[dict[str, bytearray | bytes], int, list[str]]] = {}
        #: Bytes of records in the memory layer.
        self.mem_bytes = 0
        #: Memory layers frozen by checkpoints not yet written (newest first), and their
        #: sizes.
        self.frozen: list[dict[str, dict[str, bytearray | bytes]]] = []
        #: The warm tier: layers written to tables lately, kept as they were (newest
        #: first, with their sizes) within ``warm_capacity`` bytes, so that what was
        #: written recently is still read from memory after the checkpoint; the oldest
        #: go first (a newer layer always shadows an older one, so none is ever stale).
        self.warm: list[tuple[dict[str, dict[str, bytearray | bytes]], int]] = []
        self.warm_bytes = 0
        self.warm_capacity = DEFAULT_WARM_BYTES
        #: Layers that left the warm tier, for the shell to free a slice at a time:
        #: dropping a layer of a hundred thousand keys at once frees as many objects
        #: in one go, over ten milliseconds on the event loop.
        self.retired: list[Any] = []
        #: Tables written by checkpoints (newest first).
        self.tables: list[Table] = []
        #: Tables whose every key is in warm layers (id -> the table, those layers):
        #: the tables this process wrote from layers still warm, and merges of such
        #: tables only. A key the warm tier lacks is in none of them, so a search for
        #: it skips them (a new key's put proves its absence with dict probes alone).
        #: Dropped when one of its layers leaves the warm tier or the table is merged.
        self._mirrors: dict[int, tuple[Table, tuple[Any, ...]]] = {}
        #: The hot tier of the tables: records read from them lately, in the order they
        #: were, within ``hot_capacity`` bytes (a write drops its key from here: the
        #: memory layer holds the newer records).
        self.hot: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self.hot_bytes = 0
        self.hot_capacity = DEFAULT_HOT_BYTES
        #: Lookups answered by the warm and hot tiers, and lookups that searched the
        #: tables (the cold tier), since the state was built.
        self.warm_hits = 0
        self.hot_hits = 0
        self.table_reads = 0
        #: The last key every layer below memory was searched for in vain, if no write
        #: has been folded since. Why: a put to a new key searches them to learn it has
        #: no current version, and its fold would search them again (about 1 µs per
        #: table) to find records to copy up. Nothing but a fold of that key puts a key
        #: below memory: layers move down (memory is frozen, frozen layers become
        #: tables, tables merge) without gaining keys, so the answer holds until then.
        self._missed: tuple[str, str] | None = None
        #: Tables the cold tier keeps before merging regardless of sizes.
        self.max_tables = MAX_TABLES
        #: Keys the hot tier keeps whatever else is read (the node's distillation
        #: decisions, see TierState), and reads per key of the hot tier (its fitness).
        self.pinned: set[tuple[str, str]] = set()
        self.reads: defaultdict[tuple[str, str], int] = defaultdict(int)
        #: The recent map: the content ids of current values read lately from the value
        #: cache (namespace -> key -> content id), kept by the reader (``remember``), so
        #: that a read of such a key searches no layer and slices no record. Why it is
        #: always current: every fold that writes a key drops its entry first
        #: (``_insert``, ``apply_put`` and ``apply_run``; nothing else changes a key's
        #: versions), and the reader keeps only live values without a time to live,
        #: read while no key
        #: had one (a value with one is judged by the clock on every read). At most
        #: ``recent_capacity`` entries (``recent_count`` counts the ones added, an upper
        #: bound): past that the map is emptied at once, about a millisecond per
        #: 100,000 entries.
        self.recent: dict[str, dict[str, bytes]] = {}
        self.recent_capacity = DEFAULT_RECENT
        self.recent_count = 0
        #: Reads answered by the recent map (not counted again as a tier's hits).
        self.recent_hits = 0
        self._capturing: list[dict[str, dict[str, bytearray | bytes]]] = []
        self._sizes: dict[int, int] = {}  # id of a frozen layer -> its bytes
        #: Keys whose current version is not a tombstone, in all and per namespace.
        self.live = 0
        self.ns_live: dict[str, int] = {}
        #: Keys ever written (deleted ones included).
        self.key_total = 0
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
        #: newer version replaces them). Layered: a checkpoint's capture snapshots it in
        #: O(1) (see :mod:`._layered`).
        self.expiring: Deadlines = Deadlines()
        #: Time travel's list of one key's timestamps (the blob it was read from, that
        #: blob's length then, the list), and the key searched last (its blob, length,
        #: searches of it so far): see :meth:`at_raw`.
        self._stamps: tuple[bytearray | bytes, int, list[int]] | None = None
        self._searched: tuple[bytearray | bytes | None, int, int] = (None, 0, 0)

    # -- the layers --------------------------------------------------------------------

    def _blob(self, namespace: str, key: str, io: bool = True) -> bytearray | bytes | None:
        """A key's version records, from the newest layer that holds them (without
        ``io``, BlockingIOError where only the tables could tell).

        The hot tier is asked right after memory: it only ever holds records read from
        the tables while no newer layer held the key, and a write drops the key from
        it, so what it holds is always current."""
        keys = self.namespaces.get(namespace)
        if keys is not None:
            blob = keys.get(key)
            if blob is not None:
                return blob
        return self._below(namespace, key, io)

    def _below(self, namespace: str, key: str, io: bool = True) -> bytearray | bytes | None:
        """:meth:`_blob` past the memory layer (for callers that probed it already)."""
        hot = self.hot
        if hot:
            slot = (namespace, key)
            found = hot.get(slot)
            if found is not None:
                self.hot_hits += 1
                return found
        return self._beneath(namespace, key, io)

    def _beneath(self, namespace: str, key: str, io: bool = True) -> bytearray | bytes | None:
        """:meth:`_below` past the hot tier (for callers that probed it already: a
        cold ``get``)."""
        for layer in self.frozen:
            keys = layer.get(namespace)
            if keys is not None:
                blob = keys.get(key)
                if blob is not None:
                    return blob
        if not self.tables:
            return None
        for layer, _ in self.warm:
            keys = layer.get(namespace)
            if keys is not None:
                blob = keys.get(key)
                if blob is not None:
                    self.warm_hits += 1
                    return blob
        if not io:
            raise BlockingIOError(f"{namespace!r}/{key!r} is not in memory")
        self.table_reads += 1
        mirrors = self._mirrors
        probe = None
        for table in self.tables:
            if mirrors:
                mirror = mirrors.get(id(table))
                if mirror is not None and mirror[0] is table:
                    continue  # its every key is in a warm layer, searched above
            if probe is None:
                probe = key_probe(namespace, key)
                if probe is None:
                    return None  # not valid Unicode: in no table
            found = table.lookup(probe)
            if found is not None:
                # Promote: the next read of this key is a dictionary probe. Evicted in
                # the order promoted: an exact LRU would cost every hit a reordering.
                slot = (namespace, key)
                self.hot[slot] = found
                self.reads[slot] = 0
                self.hot_bytes += len(found) + _HOT_OVERHEAD
                if self.hot_bytes > self.hot_capacity:
                    self._evict()
                return found
        self._missed = (namespace, key)
        return None

    def _evict(self) -> None:
        """Bring the hot tier within its budget, oldest promotions first, keeping the
        keys the distillation process pinned (each skipped once per round)."""
        hot, pinned = self.hot, self.pinned
        skipped = 0
        while self.hot_bytes > self.hot_capacity and hot and skipped <= len(hot):
            slot, evicted = hot.popitem(last=False)
            if slot in pinned and skipped < len(hot):
                hot[slot] = evicted  # to the back of the line
                skipped += 1
                continue
            self.reads.pop(slot, None)
            self.hot_bytes -= len(evicted) + _HOT_OVERHEAD

    def touch(self, namespace: str, key: str) -> None:
        """Count one read of a key by the database's user (not the lookups a read makes),
        if the key is in the hot tier: its fitness."""
        slot = (namespace, key)
        if slot in self.hot:
            self.reads[slot] += 1

    def remember(self, namespace: str, key: str, content_id: bytes) -> None:
        """Keep ``content_id`` as the current value of a key just read (see
        ``recent``): the caller found it live, with no time to live."""
        recent = self.recent
        self.recent_count += 1
        if self.recent_count > self.recent_capacity:
            recent.clear()
            self.recent_count = 1
        keys = recent.get(namespace)
        if keys is None:
            keys = recent[namespace] = {}
        keys[key] = content_id

    def fitness(self) -> dict[tuple[str, str], int]:
        """Reads per key of the hot tier since the last :meth:`decay` (what the
        distillation process ranks keys by)."""
        return dict(self.reads)

    def decay(self) -> None:
        """Halve every read count: recent reads weigh more than old ones."""
        for slot in self.reads:
            self.reads[slot] //= 2

    def items(self, namespace: str, prefix: str = "") -> Iterator[tuple[str, bytearray | bytes]]:
        """(key, version records) of every key of ``namespace`` ever written (only those
        starting with ``prefix``, if given), in key order (by UTF-8 bytes), streamed:
        the newest layer holding a key wins, and a namespace larger than memory is
        never held whole. A namespace only one layer or table holds is read from it
        alone (no merge), and the sorted order of the memory and frozen layers' keys is
        kept between calls (see :meth:`_memory_order`).

        With a ``prefix``, each layer is read from the prefix's place in its order to
        the end of its range only (a bisection of the kept order; a table's block
        index): the work is about the keys in the range, not the namespace's (a served
        ``keys()`` for a client granted ``user-42/*``; h-wild)."""
        sources: list[tuple[int, Iterator[tuple[str, bytearray | bytes]]]] = []
        keys = self.namespaces.get(namespace)
        if keys:
            if prefix:
                sources.append((0, self._memory_range(namespace, keys, prefix)))
            else:
                order = self._memory_order(namespace, keys)
                sources.append((0, ((k, keys[k]) for k in order)))
        for age, layer in enumerate(self.frozen, 1):
            held = layer.get(namespace)
            if held:
                order = self._frozen_keys(held)
                if prefix:
                    order = _in_range(order, prefix)
                sources.append((age, _pairs(order, held)))
        base = 1 + len(self.frozen)
        for age, table in enumerate(self.tables, base):
            found = table.items(namespace, prefix)
            first = next(found, None)
            if first is not None:
                sources.append((age, itertools.chain((first,), found)))
        if len(sources) == 1:
            yield from sources[0][1]
            return
        last = None
        for key_b, _, key, blob in heapq.merge(*(_stream(items, age) for age, items in sources)):
            if key_b != last:
                last = key_b
                yield key, blob

    def _memory_range(
        self, namespace: str, keys: dict[str, bytearray | bytes], prefix: str
    ) -> Iterator[tuple[str, bytearray | bytes]]:
        """(key, records) of the memory layer's keys of ``namespace`` (``keys``) that
        start with ``prefix``, in key order. The kept order is bisected; keys added since
        it was kept are filtered one by one while they are few (at most
        :data:`_FRESH` or a 32nd of the kept ones), rather than merged into it: a merge
        compares every key again (about 20 ms for 300,000), which a listing after each
        write would pay in full."""
        kept = self._order.get(namespace)
        if kept is not None and kept[0] is keys and len(keys) >= kept[1]:
            known, order = kept[1], kept[2]
            if len(keys) - known > max(_FRESH, known >> 5):
                order, known = self._memory_order(namespace, keys), len(keys)
        else:
            order, known = self._memory_order(namespace, keys), len(keys)
        found = _in_range(order, prefix)
        if len(keys) > known:
            # The dict's last keys, read from its end (islice from the front steps
            # over every key before them: 2.5 ms for 300,000).
            added = itertools.islice(reversed(keys), len(keys) - known)
            fresh = [k for k in added if k.startswith(prefix)]
            if fresh:
                found = sorted(found + fresh)
        return ((k, keys[k]) for k in found)

    def _frozen_keys(self, held: dict[str, bytearray | bytes]) -> list[str]:
        """A frozen layer's keys of one namespace (``held``), sorted once and kept while
        the layer is frozen (it never changes: its order, taken over from the memory
        layer it was, needs at most the keys added since merged in)."""
        kept = self._frozen_order.get(id(held))
        if kept is not None and kept[0] is held:
            known, order = kept[1], kept[2]
            if known == len(held):
                return order
            order = order + sorted(itertools.islice(reversed(held), len(held) - known))
            order.sort()
        else:
            order = sorted(held)
        self._frozen_order[id(held)] = (held, len(held), order)
        return order

    def _memory_order(self, namespace: str, keys: dict[str, bytearray | bytes]) -> list[str]:
        """The keys of ``namespace`` in the memory layer (``keys``), sorted, kept between
        calls. Why: every listing sorted them all again (100-220 ms for 300,000 keys, a
        served ``keys()`` at each request, even for a client that may read one of them;
        h-resid). Sound because a layer's keys are only ever added (a key is never
        removed from a layer; a checkpoint swaps the whole layer), and a dict keeps its
        keys in the order they came: the keys added since are the last ones. Sorted as
        ``str`` (code points), which is UTF-8 byte order."""
        kept = self._order.get(namespace)
        if kept is not None and kept[0] is keys and len(keys) >= kept[1]:
            known, order = kept[1], kept[2]
            if len(keys) == known:
                return order
            # Two sorted runs, which the sort merges in one pass (a new list: a
            # listing still walking the old one must not see it change).
            order = order + sorted(itertools.islice(keys, known, None))
            order.sort()
        else:
            order = sorted(keys)
        self._order[namespace] = (keys, len(keys), order)
        return order

    def written_namespaces(self) -> list[str]:
        """Every namespace any key was ever written in (deleted ones too), sorted by
        UTF-8 bytes."""
        names: set[str] = set()
        for table in self.tables:
            names.update(table.namespaces())
        for layer in [*self.frozen, self.namespaces]:
            names.update(layer)
        return sorted(names, key=str.encode)

    def all_items(self) -> Iterator[tuple[str, str, bytes]]:
        """(namespace, key, version records) of every key, in order: the whole state,
        for checks that compare two states."""
        for ns in self.written_namespaces():
            for key, blob in self.items(ns):
                yield ns, key, bytes(blob)

    # -- the fold ----------------------------------------------------------------------

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        """Fold one event in. Applying an event twice changes nothing."""
        if type(event) is PutEvent:  # the common case, without building Write objects
            self.apply_put(event, event_id, location, content_id(event.value))
            return
        self.apply_writes(event, event_id, location, None)

    def apply_writes(
        self,
        event: Event,
        event_id: bytes,
        location: int,
        content_ids: Sequence[bytes] | None,
        write_ids: Sequence[bytes] | None = None,
    ) -> None:
        """:meth:`apply` of an event's writes, with the content ids of their values (in
        order; anything for a tombstone) when the writer has them already (see
        :class:`~._projection.PutFold`), else hashed here; and their write ids, if the
        writer has them (``write_id(event_id, i)``), else made here."""
        origin, hlc = event.origin, event.hlc
        if type(event) is ExpiringPutEvent:  # a put with a time to live: no Write built
            value = event.value
            rec = _REC.pack(
                hlc,
                origin,
                event_id,
                content_id(value) if content_ids is None else content_ids[0],
                event.previous or _NO_ID,
                location,
                len(value),
                event.expires,
                _EXPIRES,
            )
            self._insert(event.namespace, event.key, rec, hlc)
            if hlc > self.max_hlc:
                self.max_hlc = hlc
            return
        for i, w in enumerate(event.writes):
            data, expires = w.value, w.expires
            if data is None:
                cid = _NO_ID
            elif content_ids is None:
                cid = content_id(data)
            else:
                cid = content_ids[i]
            wid = write_id(event_id, i) if write_ids is None else write_ids[i]
            rec = _REC.pack(
                hlc,
                origin,
                wid,
                cid,
                w.previous or _NO_ID,
                location,
                0 if data is None else len(data),
                expires or 0,
                (_TOMBSTONE if data is None else 0) | (_EXPIRES if expires else 0),
            )
            if data is None or expires:
                self._insert(w.namespace, w.key, rec, hlc)
            else:
                self._put_record(w.namespace, w.key, rec, wid, hlc)

    def apply_put(self, event: PutEvent, event_id: bytes, location: int, content_id: bytes) -> None:
        """:meth:`apply` of a plain put whose value's content id the writer has (see
        :class:`~._projection.PutFold`)."""
        hlc = event.hlc
        rec = _REC.pack(
            hlc,
            event.origin,
            event_id,
            content_id,
            event.previous or _NO_ID,
            location,
            len(event.value),
            0,
            0,
        )
        self._put_record(event.namespace, event.key, rec, event_id, hlc)

    def _put_record(self, namespace: str, key: str, rec: bytes, wid_bytes: bytes, hlc: int) -> None:
        """Fold the packed record of a value without a time to live (``wid_bytes``, its
        write id) into its key: a plain put's, or a batch's write's."""
        if self.recent and (read := self.recent.get(namespace)):  # (see __init__)
            read.pop(key, None)
        # The common cases inlined as apply_run has them (a key new to memory with
        # nothing below it, or one every layer below was just searched for in vain:
        # the miss current_write_id noted, see _missed; or a put newer than the
        # current version held here); anything else takes _insert. The same counts
        # and sums either way.
        keys = self.namespaces.get(namespace)
        blob = None if keys is None else keys.get(key)
        if blob is None:
            if (self.frozen or self.tables) and self._missed != (namespace, key):
                self._insert(namespace, key, rec, hlc)
                return
            if keys is None:
                keys = self.namespaces[namespace] = {}
            keys[key] = bytearray(rec)
            wid = int.from_bytes(wid_bytes, "big")
            self.current_sum += wid
            self.key_total += 1
            self.live += 1
            ns_live = self.ns_live
            ns_live[namespace] = ns_live.get(namespace, 0) + 1
        # Why comparing the whole record with the current one's order key: see apply_run.
        elif type(blob) is bytearray and rec > (last := blob[-RECORD_SIZE:_LAST_ORDER]):
            wid = int.from_bytes(wid_bytes, "big")
            replaced = int.from_bytes(last, "big") & _ID_MASK  # the current write id
            if replaced == wid:  # applied already
                return
            self.current_sum += wid - replaced
            flags = blob[-1]
            blob += rec
            if flags:  # the version it replaces was deleted, or had a time to live
                if flags & _TOMBSTONE:
                    self.live += 1
                    self.ns_live[namespace] = self.ns_live.get(namespace, 0) + 1
                if flags & _EXPIRES:
                    self.expiring.pop((namespace, key), None)
        else:
            self._insert(namespace, key, rec, hlc)
            return
        self._missed = None  # (a fold: see __init__)
        self.mem_bytes += RECORD_SIZE
        self.versions += 1
        self.version_sum += wid
        if hlc > self.max_hlc:
            self.max_hlc = hlc

    def apply_run(self, run: PutRun) -> None:
        """Fold a run of puts: the same as :meth:`apply` of each in order.

        The common case, a put newer than the current version of a key held in memory
        (or a new key when nothing lies below memory), appends its record here, with the
        counts and sums kept in locals; anything else takes :meth:`_insert`. Both add
        to the same counts and sums, which commute.
        """
        pack, from_bytes = _REC.pack, int.from_bytes
        hasher = _blake3()  # reset before each use: a third cheaper than one per value
        reset, update = hasher.reset, hasher.update
        origin, insert = run.origin, self._insert
        self._missed = None  # (a fold: see __init__)
        namespaces, ns_live, expiring = self.namespaces, self.ns_live, self.expiring
        below = bool(self.frozen or self.tables)
        recent = self.recent
        created = revived = other = current = every = 0
        for hlc, (namespace, key, value, previous), eid, location in run.rows:
            if recent and (read := recent.get(namespace)):  # (see __init__)
                read.pop(key, None)
            # content_id(value), inlined: one call fewer per version.
            reset()
            cid = update(value).digest()
            rec = pack(hlc, origin, eid, cid, previous or _NO_ID, location, len(value), 0, 0)
            keys = namespaces.get(namespace)
            blob = None if keys is None else keys.get(key)
            if blob is None:
                if keys is None or below:
                    insert(namespace, key, rec, hlc)
                    other += 1
                    continue
                keys[key] = bytearray(rec)
                wid = from_bytes(eid, "big")  # a put's one write id is its event id
                current += wid
                created += 1
                ns_live[namespace] = ns_live.get(namespace, 0) + 1
            # Why comparing the whole record with the current one's order key: a record
            # that starts with that key compares greater too (it is longer), which is the
            # record applied already, told by its write id below.
            elif type(blob) is bytearray and rec > (last := blob[-RECORD_SIZE:_LAST_ORDER]):
                wid = from_bytes(eid, "big")
                replaced = from_bytes(last, "big") & _ID_MASK  # the current write id
                if replaced == wid:  # applied already
                    other += 1
                    continue
                current += wid - replaced
                flags = blob[-1]
                blob += rec
                if flags:  # the version it replaces was deleted, or had a time to live
                    if flags & _TOMBSTONE:
                        revived += 1
                        ns_live[namespace] = ns_live.get(namespace, 0) + 1
                    if flags & _EXPIRES:
                        expiring.pop((namespace, key), None)
            else:
                insert(namespace, key, rec, hlc)
                other += 1
                continue
            every += wid
        added = len(run.rows) - other
        self.mem_bytes += added * RECORD_SIZE
        self.versions += added
        self.version_sum += every
        self.current_sum += current
        self.key_total += created
        self.live += created + revived
        top = run.top
        if top > self.max_hlc:
            self.max_hlc = top

    def _insert(self, namespace: str, key: str, rec: bytes, hlc: int) -> None:
        """Insert one packed version record in order (idempotent)."""
        if self.recent and (read := self.recent.get(namespace)):  # (see __init__)
            read.pop(key, None)
        keys = self.namespaces.get(namespace)
        if keys is None:
            keys = self.namespaces[namespace] = {}
        blob = keys.get(key)
        missed, self._missed = self._missed, None
        if blob is None and (self.frozen or self.tables) and missed != (namespace, key):
            below = self._below(namespace, key)  # a key written before: copy it up
            if below is not None:
                blob = keys[key] = bytearray(below)
                self.mem_bytes += len(below)
                if self.hot:  # its records here would go stale after the next flush
                    evicted = self.hot.pop((namespace, key), None)
                    if evicted is not None:
                        self.hot_bytes -= len(evicted) + _HOT_OVERHEAD
                        self.reads.pop((namespace, key), None)
            # That search noted a miss of this very key, which this fold puts in memory:
            # a note left standing would outlive the fold (see __init__).
            self._missed = None
        wid = int.from_bytes(rec[_WID:_ORDER], "big")
        tomb = rec[-1] & _TOMBSTONE
        if blob is None:
            keys[key] = blob = bytearray(rec)
            self.current_sum += wid
            self.key_total += 1
            if not tomb:
                self.live += 1
                self.ns_live[namespace] = self.ns_live.get(namespace, 0) + 1
            if rec[-1] & _EXPIRES:
                self.expiring[(namespace, key)] = int.from_bytes(rec[_EXP:-1], "big")
        else:
            if type(blob) is not bytearray:  # a checkpoint's bytes: made writable
                blob = keys[key] = bytearray(blob)
            last = len(blob) - RECORD_SIZE
            last_hlc = int.from_bytes(blob[last : last + 8], "big")
            # Most writes are newer than the key's current version: decide on the
            # timestamp alone, and compare whole order keys only on a tie.
            if hlc > last_hlc or (hlc == last_hlc and rec[:_ORDER] > blob[last : last + _ORDER]):
                self.current_sum += wid - int.from_bytes(blob[last + _WID : last + _ORDER], "big")
                change = (not tomb) - (not blob[-1] & _TOMBSTONE)
                if change:
                    self.live += change
                    self.ns_live[namespace] = self.ns_live.get(namespace, 0) + change
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
        self.mem_bytes += RECORD_SIZE  # not for a record applied already (returned above)
        self.versions += 1
        # Sums are reduced mod 2**256 only when read: cheaper on the hot path.
        self.version_sum += wid
        if hlc > self.max_hlc:
            self.max_hlc = hlc

    # -- queries -----------------------------------------------------------------------

    def packed(self, namespace: str, key: str) -> bytearray | bytes | None:
        """A key's packed version records, oldest first (None if never written): for
        bulk readers that unpack only the fields they need (queries, subscriptions)."""
        return self._blob(namespace, key)

    def current(self, namespace: str, key: str) -> VersionRecord | None:
        """The current version of a key (possibly a tombstone), or None if never written."""
        blob = self._blob(namespace, key)
        if blob is None:
            return None
        return _unpack(_REC.unpack_from(blob, len(blob) - RECORD_SIZE))

    def current_write_id(self, namespace: str, key: str) -> bytes | None:
        """The write id of the key's current version (None if never written)."""
        keys = self.namespaces.get(namespace)  # _blob's memory probe, inlined
        blob = None if keys is None else keys.get(key)
        if blob is None:
            # _below inlined: every put of a key not in memory comes here.
            hot = self.hot
            if hot and (blob := hot.get((namespace, key))) is not None:
                self.hot_hits += 1
            elif self.frozen or self.tables:
                blob = self._beneath(namespace, key)
            if blob is None:
                return None
        base = len(blob) - RECORD_SIZE
        return bytes(blob[base + _WID : base + _ORDER])

    def live_content_id(self, namespace: str, key: str) -> bytes | None:
        """The content id of the key's current value; None if never written or deleted.

        The hot read path (``get``, ``contains``): one dict probe per level when the key
        is in memory, a search of the tables otherwise.
        """
        keys = self.namespaces.get(namespace)
        blob = keys.get(key) if keys is not None else None
        if blob is None:
            if not (self.frozen or self.tables):
                return None
            blob = self._below(namespace, key)
            if blob is None:
                return None
        if blob[-1] & _TOMBSTONE:
            return None
        return bytes(blob[_CID - RECORD_SIZE : _CID + 32 - RECORD_SIZE])

    def memory_content_id(self, namespace: str, key: str) -> bytes | None:
        """:meth:`live_content_id` without I/O: raises ``BlockingIOError`` when only a
        search of the tables could tell (the key is not in memory, and tables exist)."""
        keys = self.namespaces.get(namespace)
        blob = keys.get(key) if keys is not None else None
        if blob is None:
            if not (self.frozen or self.tables):
                return None
            blob = self._below(namespace, key, io=False)
            if blob is None:
                return None
        if blob[-1] & _TOMBSTONE:
            return None
        return bytes(blob[_CID - RECORD_SIZE : _CID + 32 - RECORD_SIZE])

    def history(self, namespace: str, key: str) -> list[VersionRecord]:
        """Every version of a key in order (oldest first); empty if never written."""
        blob = self._blob(namespace, key)
        if blob is None:
            return []
        return [_unpack(r) for r in _REC.iter_unpack(blob)]

    def history_blob(self, namespace: str, key: str) -> bytearray | bytes | None:
        """A key's version records as stored (packed, oldest first; see
        :meth:`history_raw`), for a reader that keeps what it built from them and
        compares them to know it is still current. Not to be modified."""
        return self._blob(namespace, key)

    @staticmethod
    def records(blob: bytearray | bytes) -> list[tuple[Any, ...]]:
        """A key's version records (:meth:`history_blob`) as raw packed tuples."""
        return list(_REC.iter_unpack(blob))

    @staticmethod
    def iter_records(blob: bytearray | bytes) -> Iterator[tuple[Any, ...]]:
        """:meth:`records` one at a time (none kept alive by the caller's loop)."""
        return _REC.iter_unpack(blob)

    @staticmethod
    def content_ids(blob: bytearray | bytes) -> list[bytes]:
        """Each record's content id (all zeros for a deletion), in order."""
        return list(map(_FIRST, _CIDS.iter_unpack(blob)))

    def history_raw(self, namespace: str, key: str) -> list[tuple[Any, ...]]:
        """:meth:`history` as raw packed tuples, for bulk readers.

        Each tuple is (hlc, origin, write id, content id, previous, location, size,
        expires, flags), with all-zero ids for "none", flag bit 0 (:data:`TOMBSTONE`)
        marking a deletion and bit 1 (:data:`EXPIRES`) a time to live.
        """
        blob = self._blob(namespace, key)
        return [] if blob is None else list(_REC.iter_unpack(blob))

    def at(self, namespace: str, key: str, hlc: int) -> VersionRecord | None:
        """The version current at time ``hlc``: the last one with timestamp <= hlc."""
        rec = self.at_raw(namespace, key, hlc)
        return None if rec is None else _unpack(rec)

    def at_raw(self, namespace: str, key: str, hlc: int) -> tuple[Any, ...] | None:
        """:meth:`at` as a raw packed tuple (see :meth:`history_raw`), for the reader
        that builds its answer straight from it."""
        blob = self._blob(namespace, key)
        if blob is None:
            return None
        size = len(blob)
        stamps = self._stamps
        # A key's records only ever grow (a blob is appended to or inserted into, never
        # rewritten in place), so the same blob of the same length has the same stamps.
        if stamps is not None and stamps[0] is blob and stamps[1] == size:
            lo = bisect_right(stamps[2], hlc)
        else:
            # A binary search over the records' leading timestamps, read in place (a
            # key function per step cost more than the search).
            lo, hi = 0, size // RECORD_SIZE
            stamp = _HLC.unpack_from
            while lo < hi:
                mid = (lo + hi) >> 1
                if stamp(blob, mid * RECORD_SIZE)[0] <= hlc:
                    lo = mid + 1
                else:
                    hi = mid
            n = size // RECORD_SIZE
            if n >= _STAMPED:
                self._count_search(blob, size, n)
        if lo == 0:
            return None
        return _REC.unpack_from(blob, (lo - 1) * RECORD_SIZE)

    def _count_search(self, blob: bytearray | bytes, size: int, n: int) -> None:
        """Count a search of one key's ``n`` records; list its timestamps once the
        searches made cost about what listing them does.

        Why this rule (the ski-rental one): a key asked about again and again at
        different times (a time-travel scan, a replayed audit) then costs one C bisect
        per question instead of a Python loop of log2(n) steps, while a key asked about
        once or twice never pays for a list it would not use; whatever the pattern,
        the searches cost at most twice what the better of the two choices would
        have. One key's list is kept at a time (n ints), dropped when another key's
        list is made; a write to the key makes it stale (its length changes)."""
        seen, length, count = self._searched
        count = count + 1 if seen is blob and length == size else 1
        # A search is about log2(n) steps of one unpack each; a list costs about half
        # an unpack per record.
        if count * n.bit_length() * 2 >= n:
            self._stamps = (blob, size, [t for (t,) in _STAMPS.iter_unpack(blob)])
            self._searched = (None, 0, 0)
        else:
            self._searched = (blob, size, count)

    def expired(self, namespace: str, key: str, now: int) -> bool:
        """True if the key's current version has a time to live that ``now`` reached."""
        expires = self.expiring.get((namespace, key))
        return expires is not None and now >= expires

    def keys(self, namespace: str, now: int | None = None) -> list[str]:
        """Keys of a namespace whose current version is not a tombstone (nor expired at
        ``now``, if given), sorted."""
        if not self.ns_live.get(namespace):
            return []
        live = [k for k, blob in self.items(namespace) if not blob[-1] & _TOMBSTONE]
        if now is not None and self.expiring:
            live = [k for k in live if not self.expired(namespace, k, now)]
        return sorted(live)

    def live_keys(self, namespace: str, now: int | None = None, prefix: str = "") -> Iterator[str]:
        """:meth:`keys`, streamed in key order (by UTF-8 bytes): for a listing read
        under a bound, stopped once it is passed. With ``prefix``, only the keys that
        start with it (only their range is read: see :meth:`items`)."""
        if not self.ns_live.get(namespace):
            return
        when = now if self.expiring else None
        for k, blob in self.items(namespace, prefix):
            if not blob[-1] & _TOMBSTONE and (when is None or not self.expired(namespace, k, when)):
                yield k

    def live_namespaces(
        self, now: int | None = None, keep: Callable[[str], bool] | None = None
    ) -> list[str]:
        """Namespaces with at least one live key (not expired at ``now``, if given),
        sorted; only those ``keep`` allows, if given (the others are neither copied
        nor sorted)."""
        gone: dict[str, int] = {}
        if now is not None and self.expiring:
            for (ns, _), _expires in self.expiring.at_most(now):
                gone[ns] = gone.get(ns, 0) + 1
        return sorted(
            ns
            for ns, n in self.ns_live.items()
            if n > gone.get(ns, 0) and (keep is None or keep(ns))
        )

    def live_at(self, now: int) -> int:
        """Keys whose current value is a value at ``now``: :attr:`live` less those
        whose time to live is over (their expiry recorded or not), as reads count."""
        return self.live - (self.expiring.count_at_most(now) if self.expiring else 0)

    def key_count(self) -> int:
        """Keys ever written, deleted ones included."""
        return self.key_total

    def digest(self) -> bytes:
        """One 64-byte summary of the state: equal for equal sets of applied events."""
        # The sums are kept unreduced on the hot path; reduce them here.
        current, every = self.current_sum % _MOD, self.version_sum % _MOD
        return current.to_bytes(32, "big") + every.to_bytes(32, "big")

    # -- checkpoints -------------------------------------------------------------------

    def capture(self) -> dict[str, Any]:
        """The state for a checkpoint, without copying records: the memory layer is
        frozen (a new one takes the writes from here on) and handed over, with every
        layer frozen before it whose table was not written yet, as one new table; the
        tables already written are referred to by name. See :meth:`checkpointed`."""
        if self.namespaces:
            self.frozen.insert(0, self.namespaces)
            self._sizes[id(self.namespaces)] = self.mem_bytes
            self.namespaces = {}
            # The frozen layer's orders go with it (see _frozen_keys).
            for keys, known, order in self._order.values():
                self._frozen_order[id(keys)] = (keys, known, order)
            self._order.clear()
            self.mem_bytes = 0
        self._capturing = list(self.frozen)
        layers = self._capturing
        return {
            "tables": list(self.tables),
            "new": NewTable(lambda: _merged(layers), owner=layers) if layers else None,
            "live": self.live,
            "ns_live": {ns: n for ns, n in self.ns_live.items() if n},
            "keys": self.key_total,
            "versions": self.versions,
            "max_hlc": self.max_hlc,
            "current_sum": (self.current_sum % _MOD).to_bytes(32, "big"),
            "version_sum": (self.version_sum % _MOD).to_bytes(32, "big"),
            # Listed by the encoder, in slices, from a snapshot taken in O(1), as two
            # columns: each key as the map holds it (see PairKeyed), and its time.
            # Why columns: a million rows [namespace, key, time] took cbor2 about 1 s
            # to decode at open (a list each), these a tenth of that.
            "expiring_at": _expiring_columns(self.expiring.snapshot()),
        }

    def checkpointed(self, written: dict[NewTable, Table]) -> None:
        """The checkpoint of the last :meth:`capture` is durable: its new table takes
        the place of the layers it holds. (If it failed, they stay frozen and the next
        checkpoint writes them.)"""
        self.expiring.settle()  # its snapshot is spent
        self.retired += self.expiring.retired  # (freed by the shell in slices)
        self.expiring.retired.clear()
        for new, table in written.items():
            if new.owner is self._capturing:
                self.tables.insert(0, table)
                done = self._capturing
                self.frozen = [f for f in self.frozen if all(f is not c for c in done)]
                still = {id(keys) for layer in self.frozen for keys in layer.values()}
                for slot in [s for s in self._frozen_order if s not in still]:
                    del self._frozen_order[slot]
                self._capturing = []
                # What was just written stays readable from memory, as the warm tier.
                for layer in reversed(done):
                    size = self._sizes.pop(id(layer), 0)
                    self.warm.insert(0, (layer, size))
                    self.warm_bytes += size
                self._mirrors[id(table)] = (table, tuple(done))
                while self.warm and self.warm_bytes > self.warm_capacity:
                    layer, size = self.warm.pop()
                    self.warm_bytes -= size
                    self._unmirror(layer)
                    # Freed by the shell a slice at a time (see ``retired``).
                    self.retired.append(layer)

    def compaction(self) -> tuple[list[Table], NewTable] | None:
        """Tables worth merging now, and the merged table to write, or None (see
        :mod:`._merging`)."""
        return merge_plan(self.tables, self.max_tables)

    def compacted(self, inputs: list[Table], merged: Table) -> None:
        """The merge of ``inputs`` was written as ``merged``: it takes their place."""
        replace_merged(self.tables, inputs, merged)
        mirrors = self._mirrors
        found = [mirrors.pop(id(t), None) for t in inputs]
        if all(m is not None and m[0] is t for m, t in zip(found, inputs, strict=True)):
            # Its keys are some of theirs (a merge never adds a key): mirrored too.
            layers = tuple(layer for m in found if m is not None for layer in m[1])
            mirrors[id(merged)] = (merged, layers)

    def _unmirror(self, layer: Any) -> None:
        """``layer`` left the warm tier: the tables it mirrored are searched again."""
        mirrors = self._mirrors
        for tid, (_, layers) in list(mirrors.items()):
            if any(held is layer for held in layers):
                del mirrors[tid]

    @classmethod
    def restore(cls, data: Any) -> KvState:
        """Rebuild the state from :meth:`capture` output (its tables opened again).

        Checks the shape of everything (ValueError/KeyError/TypeError if malformed), so
        a damaged or crafted checkpoint is refused here rather than failing later inside
        a read. Table entries are checked when read (their crc32).
        """
        state = cls()
        new, tables = data["new"], data["tables"]
        if type(tables) is not list:
            raise ValueError("tables must be a list")
        tables = ([] if new is None else [new]) + tables
        if not all(isinstance(t, Table) for t in tables):
            raise ValueError("tables must be tables")
        for table in tables:
            table.verify()  # damaged offsets: this section is rebuilt, not misread
        state.tables = tables
        for field in ("live", "keys", "versions", "max_hlc"):
            if type(data[field]) is not int or data[field] < 0:
                raise ValueError(f"{field} must be a non-negative int")
        for field in ("current_sum", "version_sum"):
            if type(data[field]) is not bytes or len(data[field]) != 32:
                raise ValueError(f"{field} must be 32 bytes")
        ns_live = data["ns_live"]
        if type(ns_live) is not dict or not all(
            type(ns) is str and type(n) is int and n >= 0 for ns, n in ns_live.items()
        ):
            raise ValueError("ns_live must map namespaces to counts")
        if sum(ns_live.values()) != data["live"]:
            raise ValueError("ns_live does not add up to live")
        if "expiring_at" in data:
            state.expiring.load_joined(_expiring_from_columns(data["expiring_at"]))
            rows: Any = []
        else:  # checkpoints written before the columns
            rows = data["expiring"]
        if type(rows) is not list:
            raise ValueError("expiring must be a list")
        if rows:
            # Checked and loaded column by column, by C iterators: an insert per key
            # was about 2 s of opening a database of 1,000,000 keys with a ttl.
            if set(map(type, rows)) != {list} or set(map(len, rows)) != {3}:
                raise ValueError("expiring must list [namespace, key, ns]")
            names, keys, times = (list(map(itemgetter(i), rows)) for i in range(3))
            if not set(map(type, names)) == set(map(type, keys)) == {str} or set(
                map(type, times)
            ) != {int}:
                raise ValueError("expiring must list [namespace, key, ns]")
            # Checked as the columns are (a time no record holds, a key listed twice,
            # an empty name): this older form was a way around those checks.
            joined = list(map(add, map(add, map(chr, map(len, names)), names), keys))
            columns = {"keys": joined, "times": times}
            state.expiring.load_joined(_expiring_from_columns(columns))
        state.live = data["live"]
        state.ns_live = dict(ns_live)
        state.key_total = data["keys"]
        state.versions = data["versions"]
        state.max_hlc = data["max_hlc"]
        state.current_sum = int.from_bytes(data["current_sum"], "big")
        state.version_sum = int.from_bytes(data["version_sum"], "big")
        return state


def _expiring_columns(snapshot: Snapshot[Any, int]) -> dict[str, LazyList]:
    """The checkpoint's keys with a time to live: ``keys`` (each joined, see
    :class:`PairKeyed`) and ``times``, in the snapshot's order (the same at every
    listing)."""
    return {
        "keys": LazyList(snapshot, lambda snap: map(_FIRST, snap.items())),
        "times": LazyList(snapshot, lambda snap: map(_SECOND, snap.items())),
    }


def _expiring_from_columns(data: Any) -> dict[str, int]:
    """The map of :func:`_expiring_columns`' data, every entry checked by C iterators
    (ValueError if malformed): each key a joined pair of two non-empty names, each
    time an int."""
    if type(data) is not dict or set(data) != {"keys", "times"}:
        raise ValueError("expiring_at must be {keys, times}")
    keys, times = data["keys"], data["times"]
    if type(keys) is not list or type(times) is not list or len(keys) != len(times):
        raise ValueError("expiring_at must list as many keys as times")
    if not keys:
        return {}
    if set(map(type, keys)) != {str} or set(map(type, times)) != {int}:
        raise ValueError("expiring_at must list text keys and int times")
    if min(times) < 0 or max(times) >= _TIME_END:
        # A record holds its expiry in 8 unsigned bytes: any other time is damage or a
        # crafted file (a key read as expired since -5 ns, one never expiring).
        raise ValueError("expiring_at lists a time no record can hold")
    if not all(keys):
        raise ValueError("expiring_at lists an empty key")
    firsts = list(map(ord, map(_FIRST, keys)))  # each namespace's length
    if min(firsts) < 1 or not all(map(lt, map(add, firsts, repeat(1)), map(len, keys))):
        raise ValueError("expiring_at lists a key that is no pair of names")
    entries = dict(zip(keys, times, strict=True))
    if len(entries) != len(keys):
        # Listed twice: whichever time came last was served (a key's time moved).
        raise ValueError("expiring_at lists a key twice")
    return entries


def _in_range(order: list[str], prefix: str) -> list[str]:
    """The keys of ``order`` (sorted) that start with ``prefix``: a slice found by
    bisection. Those keys are the range [prefix, its successor): the successor is the
    prefix with its last character (past any maximal ones, dropped) one code point up,
    and code point order is UTF-8 byte order."""
    lo = bisect_left(order, prefix)
    end = prefix.rstrip(_TOP)
    if not end:
        return order[lo:]  # (a prefix of only U+10FFFF: no successor)
    return order[lo : bisect_left(order, end[:-1] + chr(ord(end[-1]) + 1), lo)]


def _pairs(
    order: list[str], keys: dict[str, bytearray | bytes]
) -> Iterator[tuple[str, bytearray | bytes]]:
    """(key, records) of ``keys`` in ``order``. (A function, not a generator expression
    in a loop, which would read the loop's last layer: see _stream.)"""
    for k in order:
        yield k, keys[k]


def _stream(
    items: Iterable[tuple[str, bytearray | bytes]], age: int
) -> Iterator[tuple[bytes, int, str, bytearray | bytes]]:
    """A sorted source of (key, records) with its age (0 the newest), for a merge in
    which ties are broken by age alone. (A function, not a generator expression in a
    loop: the expression would read the loop's last ``age``.)"""
    for key, blob in items:
        yield key.encode(), age, key, blob


def _merged(
    layers: list[dict[str, dict[str, bytearray | bytes]]],
) -> Iterator[tuple[str, str, bytes]]:
    """The (namespace, key, records) of frozen layers (newest first), newest wins. The
    records are not copied: a frozen layer is never changed again. (Keys seen are kept
    per namespace, as strings: a set of (namespace, key) tuples is as many containers
    for the garbage collector to traverse while a checkpoint is written.)"""
    seen: dict[str, set[str]] = {}
    last = len(layers) - 1
    for age, layer in enumerate(layers):
        for ns, keys in layer.items():
            done = seen.get(ns)
            if done is None:
                done = seen[ns] = set()
            for key, blob in keys.items():
                if key not in done:
                    if age < last:  # the oldest layer's keys are never asked about
                        done.add(key)
                    yield ns, key, blob  # type: ignore[misc]
