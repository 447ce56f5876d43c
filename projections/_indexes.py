"""Secondary indexes: a projection, defined by events, folded from every write.

An index of ``namespace`` on a field path maps each key to the value of that field in
the key's current version, and each distinct value (by the total order's
:func:`~koru.projections._order.order_key`) to the set of keys holding it, with the
distinct values kept sorted for range lookups. Equality, ``in`` and range filters on
the path are answered from it (see the face's planner); it never changes a result,
only how many documents are read.

Order independence: every entry remembers the order key ``(hlc, origin, write id)``
of the write that set it, the same order the key/value projection uses to pick the
current version, so writes arriving in any order (several origins, ingest) leave the
index agreeing with the current versions. Deletions leave an entry with no value for
the same reason. Definitions are last-writer-wins by the same order.

A definition folded when the namespace already holds documents starts *pending*: a
pure fold cannot read values written before it (they live in the log, not here), so
the database fills it from the current documents (:meth:`Index.fill`) right after
``create_index``, and lazily before first use after a replay or an ingested definition.
A pending index ignores writes (the fill reads their result) and is never used.

Index values are decoded from the bytes each write event carries.

Why the entries and buckets hold only strings, bytes, numbers and dicts of them: CPython's
cyclic garbage collector never tracks such dicts, while a set per value, a tuple per
entry and dicts holding them were visited by every full collection (over 70 ms with
200,000 entries, a pause of every put). Each entry is the write's order followed by the
value's order key in :mod:`marshal` (version 2: canonical, no references). Buckets are
split by rank, keyed by the value itself (its order key's second item): a value held by
one key maps to that key (a dict of strings), one held by several to a dict of keys to
None, in a second map; a list's or map's value is keyed by its bytes (:func:`_slot`).
Only that second map (one entry per value shared by keys) and the sorted values of each
rank are tracked.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Collection, Iterable, Iterator
from marshal import dumps, loads
from typing import Any, ClassVar

import cbor2

from koru.events import (
    Event,
    IndexEvent,
    InvalidQueryError,
    PutEvent,
    PutRun,
    Table,
    write_id,
)

from ._layered import LayeredDict, LazyList, Snapshot
from ._newtable import NewTable
from ._order import MISSING, NUMBER, order_key
from ._paths import check_path, get_path, split_path

__all__ = ["Index", "Indexes", "from_order_key", "pack_entry", "unpack_entry", "write_order"]

Key = tuple[Any, ...]

#: The length of a write's order (:func:`write_order`).
ORDER = 56
#: The :mod:`marshal` version of an entry's value: 2 writes no back-references and no
#: interning marks, so equal keys of the same types give equal bytes.
_MARSHAL = 2


def pack_entry(order: bytes, value: Key | None) -> bytes:
    """An index entry: the order of the write that set it, then its value's order key
    (none if the key holds no value)."""
    return order if value is None else order + dumps(value, _MARSHAL)


def unpack_entry(entry: bytes) -> tuple[bytes, Key | None]:
    """The order and the value's order key (or None) of an entry."""
    if len(entry) == ORDER:
        return entry, None
    return entry[:ORDER], loads(memoryview(entry)[ORDER:])


def write_order(hlc: int, origin: bytes, wid: bytes) -> bytes:
    """The order key of a write as bytes: compares as the key/value projection orders
    versions."""
    return hlc.to_bytes(8, "big") + origin + wid


def from_order_key(k: Key) -> Any:
    """The value whose :func:`order_key` is ``k`` (ints and floats keep their type)."""
    r = k[0]
    if r == 1:
        return None
    if r == 6:
        return [from_order_key(x) for x in k[1]]
    if r == 7:
        return {name: from_order_key(x) for name, x in k[1]}
    return k[1]


class Index:
    """One namespace's index on one path."""

    __slots__ = (
        "buckets",
        "entries",
        "namespace",
        "path",
        "pending",
        "segments",
        "shared",
        "values",
    )

    def __init__(self, namespace: str, path: str, *, pending: bool = True) -> None:
        self.namespace = namespace
        self.path = path
        self.segments = split_path(path)
        #: key -> :func:`pack_entry` of the write that set it and its value; layered, so
        #: that a checkpoint's capture snapshots it in O(1).
        self.entries: LayeredDict[str, bytes] = LayeredDict()
        #: rank -> value (an order key's second item, None for null) -> the one key
        #: holding it (a dict of strings: never tracked)
        self.buckets: dict[int, dict[Any, str]] = {}
        #: rank -> value -> the keys holding it, when more than one does (a dict of
        #: dicts is always tracked: only values held by several keys are in it)
        self.shared: dict[int, dict[Any, dict[str, None]]] = {}
        #: rank -> the distinct values of both, ascending
        self.values: dict[int, list[Any]] = {}
        self.pending = pending

    def put(self, key: str, order: bytes, value: Key | None) -> None:
        """Record that the write ``order`` left ``key`` holding ``value`` (an order key,
        None for no value); an older write than the one recorded changes nothing."""
        entries = self.entries
        old = entries.get(key)
        if value is None:
            packed = order
        else:
            rank = value[0]  # (_canonical's common cases inlined: every put comes here)
            if rank == NUMBER:
                if value[1] != value[1]:
                    value = (NUMBER, _NAN)
            elif rank > 5:
                value = _canonical(value)
            packed = order + dumps(value, _MARSHAL)
        if old is not None:
            # (An entry starts with its order, of fixed length: it compares with
            # ``order`` as its order does, and greater when equal.)
            if old >= order:
                return
            if len(old) > ORDER:
                was = loads(old[ORDER:])
                if was == value:  # the same bucket
                    entries.put_known(key, packed, True)
                    return
                self._unbucket(key, was)
        entries.put_known(key, packed, old is not None)
        if value is None:
            return
        inner = value[1] if len(value) > 1 else None
        slot = inner if rank < 6 else _slot(inner)
        one = self.buckets.get(rank)
        if one is None:
            one = self.buckets[rank] = {}
            self.shared[rank] = {}
            self.values[rank] = []
        shared = self.shared[rank]
        bucket = shared.get(slot)
        if bucket is not None:
            bucket[key] = None
            return
        first = one.pop(slot, None)
        if first is not None:
            shared[slot] = {first: None, key: None}
        else:
            one[slot] = key
            insort(self.values[rank], inner)

    def _unbucket(self, key: str, value: Key) -> None:
        value = _canonical(value)
        rank = value[0]
        inner = value[1] if len(value) > 1 else None
        slot = inner if rank < 6 else _slot(inner)
        shared = self.shared[rank]
        bucket = shared.get(slot)
        if bucket is not None:
            del bucket[key]
            if len(bucket) == 1:  # (back to one key)
                (self.buckets[rank][slot],) = bucket
                del shared[slot]
            return
        del self.buckets[rank][slot]
        values = self.values[rank]
        i = 0 if rank == 1 else bisect_left(values, inner)  # (null: its one value)
        if i == len(values) or (values[i] is not inner and values[i] != inner):
            # A NaN in the list: it is no longer sorted (it was not before either).
            i = next(j for j, v in enumerate(values) if v is inner or v == inner)
        del values[i]

    def fill(self, entries: Iterable[tuple[str, bytes, Key | None]]) -> None:
        """Build the index from the namespace's current versions (no longer pending)."""
        self.entries, self.buckets, self.shared, self.values = LayeredDict(), {}, {}, {}
        for key, order, value in entries:
            self.put(key, order, value)
        self.pending = False

    def extract(self, doc: Any) -> Key | None:
        """The order key of this index's field in ``doc`` (None if missing)."""
        v = get_path(doc, self.segments)
        return None if v is MISSING else order_key(v)

    def items(self) -> Iterator[tuple[str, tuple[bytes, Key | None]]]:
        """Every entry: key, (order of the write that set it, its value's order key)."""
        for key, entry in self.entries.items():
            yield key, unpack_entry(entry)

    # -- lookups -------------------------------------------------------------------------

    def _bucket(self, rank: int, inner: Any) -> Collection[str]:
        slot = inner if rank < 6 else _slot(inner)
        first = self.buckets[rank].get(slot)
        return (first,) if first is not None else self.shared[rank][slot].keys()

    def equal(self, value: Key) -> Collection[str]:
        """Keys whose field equals the value with order key ``value``."""
        rank = value[0]
        one = self.buckets.get(rank)
        if one is None:
            return ()
        inner = value[1] if len(value) > 1 else None
        slot = inner if rank < 6 else _slot(_canonical(value)[1])
        first = one.get(slot)
        if first is not None:
            return (first,)
        bucket = self.shared[rank].get(slot)
        return () if bucket is None else bucket.keys()

    def between(
        self, low: Key, low_open: bool, high: Key, high_open: bool
    ) -> Iterator[Collection[str]]:
        """The buckets of the values between ``low`` and ``high``."""
        for rank in range(low[0], high[0] + 1):
            values = self.values.get(rank)
            if not values:
                continue
            lo, hi = 0, len(values)
            # A bound of one item, ``(rank,)``, is below every value of its rank but
            # null, whose order key it is.
            if rank == low[0]:
                if len(low) > 1:
                    lo = (bisect_right if low_open else bisect_left)(values, low[1])
                elif rank == 1 and low_open:
                    lo = 1
            if rank == high[0]:
                if len(high) > 1:
                    hi = (bisect_left if high_open else bisect_right)(values, high[1])
                elif rank != 1 or high_open:
                    hi = 0
            for v in values[lo:hi]:
                yield self._bucket(rank, v)

    def __len__(self) -> int:
        shared = sum(len(b) for bs in self.shared.values() for b in bs.values())
        return shared + sum(map(len, self.buckets.values()))


_NAN = float("nan")


def _canonical(k: Key) -> Key:
    """``k`` with each NaN in it the one :data:`_NAN`: a NaN equals no other object,
    and the key read back from an entry holds new ones."""
    rank = k[0]
    if rank == NUMBER:
        return (NUMBER, _NAN) if k[1] != k[1] else k
    if rank == 6:
        return (6, tuple(map(_canonical, k[1])))
    if rank == 7:
        return (7, tuple((name, _canonical(v)) for name, v in k[1]))
    return k


def _slot(inner: Any) -> bytes:
    """The bucket key of a list's or map's value (an order key's second item, its
    NaNs canonical): :mod:`marshal` bytes of it with every number that equals an int
    written as that int, so that values equal in the order (``[1]`` and ``[1.0]``,
    ``0.0`` and ``-0.0``) share one. Why not the tuple itself: a dict holding a tuple
    is tracked by the cyclic garbage collector until a full collection, which then
    visits every entry (24-42 ms for 200,000 list or map values, 13 ms for ints)."""
    return dumps(_integral(inner), _MARSHAL)


def _integral(inner: Any) -> Any:
    """``inner`` (nested tuples of order keys) with integral floats as ints."""
    if type(inner) is tuple:
        if len(inner) == 2 and inner[0] == NUMBER and type(inner[0]) is int:
            n = inner[1]
            if type(n) is float and n.is_integer():
                return (NUMBER, int(n))
            return inner
        return tuple(map(_integral, inner))
    return inner


def _entry_rows(snapshot: Snapshot[str, bytes]) -> Iterator[list[Any]]:
    """A captured index's entries: ``[key, order]``, or ``[key, order, value]``."""
    for k, entry in snapshot.items():
        if len(entry) == ORDER:
            yield [k, entry]
        else:
            yield [k, entry[:ORDER], from_order_key(loads(memoryview(entry)[ORDER:]))]


class Indexes:
    """Every secondary index of the database, with their definitions."""

    __slots__ = ("by_namespace", "definitions", "retired")

    name: ClassVar[str] = "indexes"
    version: ClassVar[int] = 1

    def __init__(self) -> None:
        #: (namespace, path) -> (order of the latest definition event, created)
        self.definitions: dict[tuple[str, str], tuple[bytes, bool]] = {}
        #: namespace -> path -> index (created definitions with a valid path)
        self.by_namespace: dict[str, dict[str, Index]] = {}
        #: Layers of the indexes' entries no longer used, for the shell to free a
        #: slice at a time (see ``Projections.retired``).
        self.retired: list[Any] = []

    def get(self, namespace: str, path: str) -> Index | None:
        found = self.by_namespace.get(namespace)
        return None if found is None else found.get(path)

    def listing(self) -> list[tuple[str, str]]:
        """(namespace, path) of every index, sorted."""
        return sorted((ns, p) for ns, paths in self.by_namespace.items() for p in paths)

    @property
    def put_namespaces(self) -> dict[str, dict[str, Index]]:
        """The namespaces whose plain puts the fold acts on (see
        ``Projections``): those with an index. Never rebound."""
        return self.by_namespace

    # -- the fold ----------------------------------------------------------------------

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        if type(event) is PutEvent:  # the common case first
            indexes = self.by_namespace.get(event.namespace)
            if indexes:
                order = write_order(event.hlc, event.origin, event_id)
                self._write(indexes, event.key, order, event.value)
            return
        if type(event) is IndexEvent:
            self._define(event, event_id)
            return
        if not self.by_namespace:
            return
        for i, w in enumerate(event.writes):
            indexes = self.by_namespace.get(w.namespace)
            if indexes:
                order = write_order(event.hlc, event.origin, write_id(event_id, i))
                self._write(indexes, w.key, order, w.value)

    def apply_run(self, run: PutRun) -> None:
        """Fold a run of puts: nothing to do unless an index covers a namespace."""
        if self.by_namespace:
            for event, event_id, location in run.events():
                self.apply(event, event_id, location)

    def _write(self, indexes: dict[str, Index], key: str, order: bytes, data: bytes | None) -> None:
        doc: Any = MISSING
        for index in indexes.values():
            if index.pending:
                continue
            if data is None:
                index.put(key, order, None)
                continue
            if doc is MISSING:
                doc = cbor2.loads(data)
            index.put(key, order, index.extract(doc))

    def _define(self, event: IndexEvent, event_id: bytes) -> None:
        slot = (event.namespace, event.path)
        order = write_order(event.hlc, event.origin, event_id)
        known = self.definitions.get(slot)
        if known is not None and known[0] >= order:
            return  # an older (or the same) definition: the latest one stands
        created = event.action == "create"
        self.definitions[slot] = (order, created)
        paths = self.by_namespace.get(event.namespace)
        if not created:
            if paths is not None and paths.pop(event.path, None) is not None and not paths:
                del self.by_namespace[event.namespace]
            return
        try:
            check_path(event.path, "path")
        except InvalidQueryError:
            return  # a crafted definition: remembered, never built
        if paths is None:
            paths = self.by_namespace[event.namespace] = {}
        paths.setdefault(event.path, Index(event.namespace, event.path))

    # -- checkpoints -------------------------------------------------------------------

    def capture(self) -> dict[str, Any]:
        definitions = [
            [ns, p, order, created] for (ns, p), (order, created) in self.definitions.items()
        ]
        indexes = []
        for ns, paths in self.by_namespace.items():
            for p, index in paths.items():
                # Listed by the encoder, in slices, from a snapshot taken in O(1).
                entries = LazyList(index.entries.snapshot(), _entry_rows)
                indexes.append([ns, p, index.pending, entries])
        return {"definitions": definitions, "indexes": indexes}

    def checkpointed(self, written: dict[NewTable, Table]) -> None:
        """The checkpoint of the last :meth:`capture` is durable: its snapshots are
        spent (see :meth:`LayeredDict.settle`)."""
        for paths in self.by_namespace.values():
            for index in paths.values():
                index.entries.settle()
                self.retired += index.entries.retired  # (freed by the shell in slices)
                index.entries.retired.clear()

    @classmethod
    def restore(cls, data: Any) -> Indexes:
        state = cls()
        for ns, p, order, created in data["definitions"]:
            if type(ns) is not str or type(p) is not str or type(order) is not bytes:
                raise ValueError("malformed index definition")
            if type(created) is not bool:
                raise ValueError("malformed index definition")
            state.definitions[(ns, p)] = (order, created)
        for ns, p, pending, entries in data["indexes"]:
            known = state.definitions.get((ns, p))
            if known is None or not known[1] or type(pending) is not bool:
                raise ValueError(f"index {ns!r}/{p!r} without a definition")
            check_path(p, "path")
            index = Index(ns, p, pending=pending)
            for entry in entries:
                if type(entry) is not list or len(entry) not in (2, 3):
                    raise ValueError("malformed index entry")
                key, order = entry[0], entry[1]
                if type(key) is not str or type(order) is not bytes or len(order) != ORDER:
                    raise ValueError("malformed index entry")
                index.put(key, order, order_key(entry[2]) if len(entry) == 3 else None)
            state.by_namespace.setdefault(ns, {})[p] = index
        return state
