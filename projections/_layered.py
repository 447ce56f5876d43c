"""A dict with O(1) snapshots, and a list a checkpoint's encoder makes on demand.

Why: a checkpoint's capture runs on the event loop without yielding (the state and the
log cursors must agree), and copying a map of hundreds of thousands of entries there
held every put that long: 69-91 ms for 200,000 keys with a time to live, 227-262 ms for
an index of 200,000 entries (a Python list per entry); even ``dict.copy`` of 200,000
entries took 10-16 ms. A :class:`LayeredDict` is snapshotted instead: the layer that
took the writes so far is frozen (never changed again) and a new, empty one takes the
writes from then on, so the capture costs a handful of operations whatever the size.
The snapshot's entries are listed later, by the encoder, in slices (:class:`LazyList`),
and that listing also merges the frozen layers into one (:meth:`Snapshot.merged`),
which the next snapshot puts in their place: a lookup searches at most a few layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableMapping
from itertools import chain, filterfalse
from operator import add
from typing import Any, Generic, TypeVar, cast

__all__ = ["LayeredDict", "LazyList", "PairKeyed", "Snapshot", "pair_of"]

K = TypeVar("K")
V = TypeVar("V")

#: The most entries of the top layer :meth:`LayeredDict.settle` applies on the loop.
SETTLE_MAX = 4096
#: A key's removal, recorded in a layer above one that may hold the key.
_GONE: Any = object()
_MISSING: Any = object()


def _ignore(key: Any, value: Any) -> None:
    pass


class Snapshot(Generic[K, V]):
    """The entries of a :class:`LayeredDict` at the moment of :meth:`LayeredDict.snapshot`:
    frozen layers (newest first), never changed again. Iterating it (any number of
    times) gives each entry once, the oldest layer's first, in a deterministic order."""

    __slots__ = ("layers", "length", "merged")

    def __init__(self, layers: tuple[dict[K, V], ...], length: int) -> None:
        self.layers = layers
        self.length = length
        #: The layers merged into one dict (no removals in it), once a full iteration
        #: has built it (or at once, for a single layer without removals).
        self.merged: dict[K, V] | None = (
            layers[0] if len(layers) == 1 and length == len(layers[0]) else None
        )

    def __len__(self) -> int:
        return self.length

    def items(self, merge: bool = True) -> Iterator[tuple[K, V]]:
        """Every entry; with ``merge``, the first full iteration keeps the entries as
        one dict (:attr:`merged`)."""
        merged = self.merged
        if merged is not None:
            yield from merged.items()
            return
        layers = self.layers
        building: dict[K, V] = {}
        keep = building.__setitem__ if merge else _ignore
        for depth in range(len(layers) - 1, -1, -1):
            layer, newer = layers[depth], layers[:depth]
            if not newer:  # the newest layer: only its removals to skip
                for key, value in layer.items():
                    if value is not _GONE:
                        keep(key, value)
                        yield key, value
            elif len(newer) == 1:  # (the usual case: one layer above the merged one)
                above = newer[0]
                for key, value in layer.items():
                    if value is not _GONE and key not in above:
                        keep(key, value)
                        yield key, value
            else:
                for key, value in layer.items():
                    if value is _GONE or any(key in n for n in newer):
                        continue
                    keep(key, value)
                    yield key, value
        if merge and self.merged is None and len(building) == self.length:
            self.merged = building


class LayeredDict(MutableMapping[K, V]):
    """A mutable mapping whose :meth:`snapshot` is O(1): writes go to the top layer;
    the layers below it are frozen (see the module's docstring)."""

    __slots__ = ("_below", "_last", "_length", "_removed", "_top", "retired")

    def __init__(self) -> None:
        self._top: dict[K, V] = {}
        #: Frozen layers, newest first (only the top one is ever written).
        self._below: tuple[dict[K, V], ...] = ()
        self._length = 0
        self._last: Snapshot[K, V] | None = None
        #: The keys the top layer marks removed.
        self._removed: set[K] = set()
        #: Layers no longer used, for the owner to hand to the shell, which frees them
        #: a slice at a time (dropping a layer of 200,000 entries frees it in one go).
        self.retired: list[dict[K, V]] = []

    def _lower(self, key: K) -> Any:
        for layer in self._below:
            value = layer.get(key, _MISSING)
            if value is not _MISSING:
                return value
        return _MISSING

    def _find(self, key: K) -> Any:
        value = self._top.get(key, _MISSING)
        if value is _MISSING and self._below:
            value = self._lower(key)
        return _MISSING if value is _GONE else value

    def get(self, key: K, default: Any = None) -> Any:
        value = self._top.get(key, _MISSING)
        if value is _MISSING:
            for layer in self._below:
                value = layer.get(key, _MISSING)
                if value is not _MISSING:
                    break
            else:
                return default
        return default if value is _GONE else value

    def __getitem__(self, key: K) -> V:
        value = self._find(key)
        if value is _MISSING:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return self._find(key) is not _MISSING  # type: ignore[arg-type]

    def __setitem__(self, key: K, value: V) -> None:
        if self._find(key) is _MISSING:
            self._length += 1
        self._top[key] = value
        if self._removed:
            self._removed.discard(key)

    def put_known(self, key: K, value: V, present: bool) -> None:
        """``self[key] = value`` for a caller that just read whether ``key`` is
        ``present`` (one search of the layers instead of two)."""
        if not present:
            self._length += 1
        self._top[key] = value
        if self._removed:
            self._removed.discard(key)

    def __delitem__(self, key: K) -> None:
        if self._find(key) is _MISSING:
            raise KeyError(key)
        self._length -= 1
        if self._below and self._lower(key) not in (_MISSING, _GONE):
            self._top[key] = _GONE
            self._removed.add(key)
        else:
            del self._top[key]

    def pop(self, key: K, default: Any = _MISSING) -> Any:
        value = self._find(key)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        del self[key]
        return value

    def __len__(self) -> int:
        return self._length

    def __bool__(self) -> bool:
        return self._length > 0

    def __iter__(self) -> Iterator[K]:
        return (key for key, _ in self.items())

    def items(self) -> Iterator[tuple[K, V]]:  # type: ignore[override]
        """Every entry (the lower layers' first). Past the top layer, each layer's keys
        are filtered and looked up by C iterators (a reader's scan of every key with a
        time to live ran a Python step per key otherwise, six times as long)."""
        top, below = self._top, self._below
        if not below:
            return iter(top.items())
        parts: list[Iterator[tuple[K, V]]] = []
        for depth, layer in enumerate(below):
            keys: Iterator[K] = iter(layer)
            for newer in (top, *below[:depth]):
                keys = filterfalse(newer.__contains__, keys)
            found = list(keys)
            pairs = zip(found, map(layer.__getitem__, found), strict=True)
            if depth == len(below) - 1:  # the oldest layer holds no removals
                parts.append(pairs)
            else:
                parts.append((k, v) for k, v in pairs if v is not _GONE)
        parts.reverse()
        parts.append((k, v) for k, v in top.items() if v is not _GONE)
        return chain.from_iterable(parts)

    def at_most(self, bound: Any) -> list[tuple[K, V]]:
        """The entries whose value is at most ``bound`` (values that compare with it):
        each layer's filtered by value first, then only those matches looked up in the
        layers above. Why: the expiry process asks which keys with a time to live are
        due, and a scan of every entry across two layers (:meth:`items`) held the loop
        about 35 ms for 200,000 of them, one layer's filter about 6 ms."""
        layers = (self._top, *self._below)
        found: list[tuple[K, V]] = []
        for depth, layer in enumerate(layers):
            hits = [(k, v) for k, v in layer.items() if v is not _GONE and v <= bound]
            if depth:
                newer = layers[:depth]
                hits = [(k, v) for k, v in hits if not any(k in n for n in newer)]
            found += hits
        return found

    def iter_at_most(self, bound: Any) -> Iterator[tuple[K, V]]:
        """:meth:`at_most`, streamed (the same entries, in the same order): for a
        listing read under a bound, stopped once it is passed. The map must not change
        while it is read."""
        layers = (self._top, *self._below)
        for depth, layer in enumerate(layers):
            newer = layers[:depth]
            for k, v in layer.items():
                if v is not _GONE and v <= bound and not any(k in n for n in newer):
                    yield k, v

    def count_at_most(self, bound: Any) -> int:
        """How many entries :meth:`at_most` finds, without making their keys (a
        :class:`PairKeyed` splits each key it returns)."""
        return len(LayeredDict.at_most(self, bound))

    def clear(self) -> None:
        self._top, self._below, self._length, self._last = {}, (), 0, None
        self._removed = set()

    def load(self, entries: dict[K, V]) -> None:
        """Take ``entries`` (a dict the caller gives up) as the whole content of this
        map, which must be empty: a checkpoint's restore, one dict built by C
        iterators instead of an insert per entry (1,000,000 keys with a ttl: about
        2 s of opening as inserts)."""
        if self._length or self._below:
            raise ValueError("only an empty map is loaded")
        self._top, self._length = entries, len(entries)

    def settle(self) -> None:
        """The last snapshot is spent (its checkpoint is durable): if a full listing
        merged its layers, no snapshot came after it and the top layer holds at most
        :data:`SETTLE_MAX` entries, the merge with the top layer's writes applied
        becomes the only layer, so lookups and scans run at a plain dict's speed
        again until the next snapshot. Why: a reader's scan of every key with a time
        to live (the expiry process's) took six times as long over two layers. Why
        the bound: applying the top layer is on the event loop, about a millisecond
        per 10,000 entries; past it the layers stay until the next snapshot, which
        puts the merge in their place (and the next listing merges it with the top)."""
        last = self._last
        if last is None or last.merged is None or self._below is not last.layers:
            return
        if len(self._top) > SETTLE_MAX:
            return
        merged = last.merged
        merged.update(self._top)
        for key in self._removed:
            del merged[key]
        self.retired += [layer for layer in self._below if layer is not merged]
        self._top, self._below, self._last, self._removed = merged, (), None, set()

    def snapshot(self) -> Snapshot[K, V]:
        """The entries as they are now, frozen, in O(1): the top layer is frozen and a
        new one takes the writes. Layers that the previous snapshot merged (see
        :class:`Snapshot`) are replaced by their merge first."""
        last = self._last
        if last is not None and last.merged is not None and len(last.layers) > 1:
            n = len(last.layers)
            tail = self._below[-n:]
            if len(tail) == n and all(a is b for a, b in zip(tail, last.layers, strict=True)):
                self._below = (*self._below[:-n], last.merged)
                self.retired += tail
        if self._top:
            self._below = (self._top, *self._below)
            self._top, self._removed = {}, set()
        if not self._below:
            self._below = ({},)
        snap: Snapshot[K, V] = Snapshot(self._below, self._length)
        self._last = snap
        return snap


def _joined(pair: tuple[str, str]) -> Any:
    first, second = pair
    return chr(len(first)) + first + second


def pair_of(joined: str) -> tuple[str, str]:
    """The ``(first, second)`` pair a :class:`PairKeyed` stores as ``joined``."""
    n = ord(joined[0]) + 1
    return joined[1:n], joined[n:]


class PairKeyed(LayeredDict[tuple[str, str], V]):
    """A :class:`LayeredDict` keyed by pairs of strings, each stored as one string (the
    first's length as a character, the first, the second): its layers hold no tuples,
    so with atomic values the cyclic garbage collector never tracks them (a dict
    holding a tuple not yet untracked is tracked until a full collection, which visits
    every entry: 200,000 of them with a time to live were over 10 ms). Its snapshots
    list the joined strings (:func:`pair_of` splits one)."""

    __slots__ = ()

    def get(self, key: tuple[str, str], default: Any = None) -> Any:
        return LayeredDict.get(self, _joined(key), default)

    def __getitem__(self, key: tuple[str, str]) -> V:
        return LayeredDict.__getitem__(self, _joined(key))

    def __contains__(self, key: object) -> bool:
        return type(key) is tuple and LayeredDict.__contains__(self, _joined(key))

    def __setitem__(self, key: tuple[str, str], value: V) -> None:
        LayeredDict.__setitem__(self, _joined(key), value)

    def put_known(self, key: tuple[str, str], value: V, present: bool) -> None:
        LayeredDict.put_known(self, _joined(key), value, present)

    def __delitem__(self, key: tuple[str, str]) -> None:
        LayeredDict.__delitem__(self, _joined(key))

    def pop(self, key: tuple[str, str], default: Any = _MISSING) -> Any:
        joined: Any = _joined(key)
        value = self._find(joined)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        LayeredDict.__delitem__(self, joined)
        return value

    def load_pairs(
        self, firsts: Iterable[str], seconds: Iterable[str], values: Iterable[V]
    ) -> None:
        """:meth:`load` of ``(first, second) -> value`` entries given column by column
        (each pair joined by C iterators)."""
        firsts = list(firsts)
        joined = map(add, map(add, map(chr, map(len, firsts)), firsts), seconds)
        self.load_joined(dict(zip(joined, values, strict=True)))

    def load_joined(self, entries: dict[str, V]) -> None:
        """:meth:`load` of entries keyed as this map holds them (each pair joined)."""
        LayeredDict.load(self, cast(Any, entries))

    def items(self) -> Iterator[tuple[tuple[str, str], V]]:  # type: ignore[override]
        joined: Iterator[tuple[Any, V]] = LayeredDict.items(self)
        return ((pair_of(k), v) for k, v in joined)

    def at_most(self, bound: Any) -> list[tuple[tuple[str, str], V]]:
        """:meth:`LayeredDict.at_most`, each pair split only for the entries found (a
        scan through :meth:`items` split every key: 45 ms for 200,000)."""
        found: list[tuple[Any, V]] = LayeredDict.at_most(self, bound)  # (joined keys)
        return [(pair_of(k), v) for k, v in found]

    def iter_at_most(self, bound: Any) -> Iterator[tuple[tuple[str, str], V]]:
        """:meth:`at_most`, streamed: each pair split as it is read."""
        for k, v in LayeredDict.iter_at_most(self, bound):
            yield pair_of(cast(Any, k)), v


class LazyList:
    """A list of plain data (no tables, no memoryviews) a checkpoint's encoder makes on
    demand, in slices: ``len(source)`` items from ``make(source)``, ``source`` being
    something that never changes (a :class:`Snapshot`). Compares equal to the list."""

    __slots__ = ("make", "source")

    def __init__(self, source: Any, make: Callable[[Any], Iterator[Any]]) -> None:
        self.source = source
        self.make = make

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[Any]:
        return self.make(self.source)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LazyList | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LazyList({list(self)!r})"
