"""The value cache: recently used value bytes, keyed by content id, within a byte budget.

Projections hold only where each value lives; values are read through this cache, so
memory is bounded by the budget rather than by the data set. Keyed by content id, one
copy serves every version (and every key) holding an equal value. It holds encoded
bytes; each read gives a fresh object, so a caller mutating a returned dict can never
corrupt what the next reader sees.

A value read through :meth:`ValueCache.value` also keeps a decoded *template* beside
its bytes when that is safe to copy from: an immutable scalar (returned as is), or a
dict or list whose items are all immutable scalars (returned as a shallow copy, a new
container holding the same immutable items: indistinguishable from a fresh decode,
and nothing a caller does to it reaches the template). A copy costs a tenth of a
decode. Nested values are decoded on every read. Templates count against the budget
but use only the room values leave: a put drops them (oldest first) before any value,
so keeping templates never costs a value its place. A content id never changes its
value, so a template is never stale.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any

import cbor2

__all__ = ["DEFAULT_CACHE_BYTES", "MISSING", "ValueCache", "shared"]

#: Default byte budget of the value cache.
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
# Rough per-entry overhead (dict slot, key and bytes object headers) counted against the budget.
_OVERHEAD = 120


#: The share of the budget kept for values read more than once (the protected
#: segment); the rest is the probation segment every value enters through.
PROTECTED_SHARE = 0.8
#: Shards, by a content id's first byte. Why: a Python dict grows by rehashing
#: every entry at once, and a cache of a million small values stalled a put for 20 ms
#: doing it; sixteen dicts grow a sixteenth at a time.
SHARDS = 16
#: A hit on a protected value (a template, or :meth:`ValueCache.get`) refreshes its
#: recency once in this many hits of its shard (minus one, a mask). Why not every
#: time: the reordering (two more random memory accesses) cost more than the copy
#: itself; a value read often is still refreshed often, and one read rarely is what
#: the least recently used policy should let go anyway.
_REFRESH_MASK = 7
#: Without room for a template, one read in this many makes room by dropping the
#: oldest templates (see _Shard.remember).
_REPLACE_EVERY = 16
#: What :meth:`ValueCache.value` returns when the value is not cached.
MISSING: Any = object()
#: The template of a value that cannot be shared (it nests containers): decoded per read.
_DEEP: Any = object()
_DEEP_COST = 64
#: The header of a small str, int, float or bytes object (49, 28, 24 and 33 bytes).
_ITEM = 56
_IMMUTABLE = frozenset((str, int, float, bool, type(None), bytes))
_size = sys.getsizeof
_first = itemgetter(0)


def shared(value: Any) -> Any:
    """What a template of ``value`` holds, before any copy is made: ``value`` itself if
    it is immutable or a dict or list of immutable items (a container is copied only
    once it is kept, see :meth:`_Shard.remember`), else :data:`_DEEP`."""
    kind = type(value)
    if kind is dict:
        for item in value.values():
            if type(item) not in _IMMUTABLE:
                return _DEEP
        return value
    if kind is list:
        for item in value:
            if type(item) not in _IMMUTABLE:
                return _DEEP
        return value
    return value if kind in _IMMUTABLE else _DEEP


def _template_cost(template: Any, encoded: int) -> int:
    """Bytes a template holds, estimated without visiting its items: the container,
    an object header for each key and item, and their contents (no more than the
    ``encoded`` size of the value)."""
    if template is _DEEP:
        return _DEEP_COST
    kind = type(template)
    if kind is dict:
        return _size(template) + 2 * _ITEM * len(template) + encoded
    if kind is list:
        return _size(template) + _ITEM * len(template) + encoded
    return _ITEM + encoded


class _Order:
    """Keys in the order they were added, oldest first: an ordered dict the cyclic
    garbage collector never looks into.

    Why not ``OrderedDict``: it is always tracked by the collector, and a full
    collection visited every one of its entries (over 30 ms with 400,000 cached values,
    a pause of every task). Here each key gets a stamp from a counter: ``at`` maps
    stamp to key, ``stamp`` key to stamp, both plain dicts holding only ints and bytes,
    which CPython leaves untracked. The oldest key is at the lowest stamp still in
    ``at``; ``low`` only moves forward, past each stamp once, so finding it is O(1)
    amortized (a plain dict's ``next(iter(...))`` after many removals from its front
    scans their holes every time)."""

    __slots__ = ("at", "low", "next", "stamp")

    def __init__(self) -> None:
        self.at: dict[int, bytes] = {}
        self.stamp: dict[bytes, int] = {}
        self.low = 0
        self.next = 0

    def __len__(self) -> int:
        return len(self.at)

    def __contains__(self, key: bytes) -> bool:
        return key in self.stamp

    def __iter__(self) -> Iterator[bytes]:
        """Keys, oldest first."""
        return iter(list(self.at.values()))

    def add(self, key: bytes) -> None:
        """Add ``key`` (not present) as the newest."""
        n = self.next
        self.next = n + 1
        self.at[n] = key
        self.stamp[key] = n

    def renew(self, key: bytes) -> None:
        """Make ``key`` (present) the newest."""
        stamp = self.stamp
        old = stamp[key]
        n = self.next
        if old != n - 1:
            self.next = n + 1
            at = self.at
            del at[old]
            at[n] = key
            stamp[key] = n

    def remove(self, key: bytes) -> None:
        del self.at[self.stamp.pop(key)]

    def pop_oldest(self) -> bytes:
        """Remove and return the oldest key (there must be one)."""
        at = self.at
        low = self.low
        while low not in at:
            low += 1
        self.low = low + 1
        key = at.pop(low)
        del self.stamp[key]
        return key


class _Shard:
    """One shard: a segmented LRU within its share of the budget, and the templates
    of values read again, in whatever room the values leave."""

    __slots__ = (
        "capacity",
        "data",
        "decoded",
        "full",
        "hits",
        "made",
        "probation",
        "protected",
        "protected_size",
        "size",
    )

    def __init__(self, capacity: float) -> None:
        self.data: dict[bytes, bytes] = {}
        #: content id -> template (see the module's docstring); ``made`` holds their
        #: order, oldest first: the first to go when values need the room.
        self.decoded: dict[bytes, Any] = {}
        self.made = _Order()
        self.probation = _Order()
        self.protected = _Order()
        self.capacity = capacity
        self.size = 0  # values and templates
        self.protected_size = 0
        self.hits = 0  # hits, for the sampled refresh
        self.full = 0  # templates not kept for want of room

    def touch(self, cid: bytes) -> None:
        """A hit: most recently used in the protected segment."""
        order = self.protected
        old = order.stamp.get(cid)
        if old is None:
            self.promote(cid)
            return
        # Order.renew inlined (every get of bytes comes here): one lookup, not two.
        n = order.next
        if old != n - 1:
            order.next = n + 1
            at = order.at
            del at[old]
            at[n] = cid
            order.stamp[cid] = n

    def promote(self, cid: bytes) -> None:
        """Move a value read again from probation to the protected segment, sending
        that segment's least recently used values back to probation past its share."""
        self.probation.remove(cid)
        self.protected.add(cid)
        self.protected_size += len(self.data[cid]) + _OVERHEAD
        limit = self.capacity * PROTECTED_SHARE
        while self.protected_size > limit:
            old = self.protected.pop_oldest()
            self.protected_size -= len(self.data[old]) + _OVERHEAD
            self.probation.add(old)

    def put(self, cid: bytes, data: bytes, cost: int) -> int:
        """Add a value; the bytes freed by the evictions it caused (templates first)."""
        self.data[cid] = data
        # probation.add and, below, probation.pop_oldest inlined (every put comes here)
        probation = self.probation
        at, stamp = probation.at, probation.stamp
        n = probation.next
        probation.next = n + 1
        at[n] = cid
        stamp[cid] = n
        self.size += cost
        freed = 0
        while self.size > self.capacity:
            if self.made.at:
                freed += self._forget(self.made.pop_oldest())
                continue
            if at:
                low = probation.low
                while low not in at:
                    low += 1
                probation.low = low + 1
                old = at.pop(low)
                del stamp[old]
            else:
                old = self.protected.pop_oldest()
                self.protected_size -= len(self.data[old]) + _OVERHEAD
            gone = len(self.data.pop(old)) + _OVERHEAD
            self.size -= gone
            freed += gone
        return freed

    def _forget(self, cid: bytes) -> int:
        """Drop a template (already out of ``made``); its cost."""
        cost = _template_cost(self.decoded.pop(cid), len(self.data[cid]))
        self.size -= cost
        return cost

    def remember(self, cid: bytes, value: Any, full: bool) -> int:
        """Keep a template of a cached value just decoded (``value``) if there is room
        for it (the change in size). ``full``: the caller found no room for the least
        template that saves a decode (see :meth:`ValueCache.value`), and this is the
        one such read in :data:`_REPLACE_EVERY` that drops the oldest templates to make
        it, never a value. Why so rarely: reads that cycle over more values than the
        room holds would otherwise replace a template on every read and never hit one
        (first in, first out fails a loop); this way most of them keep hitting, and a
        new hot set still takes over, gradually. The room is judged before the copy is
        made: a read of a value without room for its template (the hot values of a
        cache sized for the values alone) pays for no copy it would throw away."""
        encoded = len(self.data[cid])
        template = shared(value)
        cost = _template_cost(template, encoded)
        change = 0
        if self.size + cost > self.capacity:
            if not full:
                self.full += 1
                if self.full % _REPLACE_EVERY:
                    return 0
            while self.size + cost > self.capacity and self.made.at:
                change -= self._forget(self.made.pop_oldest())
            if self.size + cost > self.capacity:
                return change
        if template is value and (type(value) is dict or type(value) is list):
            template = value.copy()  # never the object handed to the reader
            cost = _template_cost(template, encoded)  # (a copy's size, as _forget counts)
            if self.size + cost > self.capacity:
                return change
        self.decoded[cid] = template
        self.made.add(cid)
        self.size += cost
        return change + cost


class ValueCache:
    """A segmented least-recently-used map from content id to encoded value.

    Why segmented: a plain LRU lets one pass over cold keys (a scan, an export, a burst
    of one-off reads) push out every value that is read again and again. A value
    enters on probation; read again while cached it moves to the protected segment
    (most of the budget), and only the protected segment's least recently used values
    go back to probation. So one-off reads compete with each other, and frequently
    read values, the hot tier, leave only when other values are read more often.
    The budget is split evenly between shards (by content id, a uniform hash).
    """

    __slots__ = ("_by_byte", "_shards", "capacity", "hits", "misses", "size")

    def __init__(self, capacity: int = DEFAULT_CACHE_BYTES) -> None:
        self._shards = [_Shard(capacity / SHARDS) for _ in range(SHARDS)]
        #: Each shard's values, by a content id's first byte (for :meth:`peek_all`).
        self._by_byte = [self._shards[b & (SHARDS - 1)].data for b in range(256)]
        self.capacity = capacity
        self.size = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return sum(len(shard.data) for shard in self._shards)

    def peek(self, cid: bytes) -> bytes | None:
        """Like :meth:`get` but without counting or refreshing recency, for bulk reads."""
        return self._shards[cid[0] & (SHARDS - 1)].data.get(cid)

    def peek_all(self, cids: Sequence[bytes]) -> list[bytes | None]:
        """:meth:`peek` of many content ids, in order (C-level passes, read twice: a
        history of thousands of versions looks up each of its values)."""
        return list(map(dict.get, map(self._by_byte.__getitem__, map(_first, cids)), cids))

    def get(self, cid: bytes) -> bytes | None:
        shard = self._shards[cid[0] & (SHARDS - 1)]
        data = shard.data.get(cid)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        shard.hits += 1
        # Read again from probation: protected now. Already protected: refreshed on
        # one hit in eight, as a template hit is (see _REFRESH_MASK).
        if not shard.hits & _REFRESH_MASK or cid not in shard.protected.stamp:
            shard.touch(cid)
        return data

    def value(self, cid: bytes) -> Any:
        """The decoded value of ``cid``, a fresh object (see the module's docstring),
        or :data:`MISSING` if it is not cached. Counted as :meth:`get` counts."""
        shard = self._shards[cid[0] & (SHARDS - 1)]
        template = shard.decoded.get(cid, MISSING)
        if template is not MISSING:
            self.hits += 1
            shard.hits += 1
            if not shard.hits & _REFRESH_MASK:
                shard.touch(cid)
            kind = type(template)
            if kind is dict or kind is list:
                return template.copy()
            if template is _DEEP:
                return cbor2.loads(shard.data[cid])
            return template
        data = shard.data.get(cid)
        if data is None:
            self.misses += 1
            return MISSING
        self.hits += 1
        value = cbor2.loads(data)
        if cid in shard.protected.stamp:  # read before: worth a template
            # Refreshed on one hit in eight, as a template hit is (see _REFRESH_MASK).
            shard.hits += 1
            if not shard.hits & _REFRESH_MASK:
                shard.touch(cid)
            # Without room for the least template that saves a decode (a copyable one
            # costs at least an item's header and the bytes), the read is done: the
            # common case of a cache sized for its values, told without a call. A
            # nested value's marker would fit in less, but saves nothing.
            full = shard.size + _ITEM + len(data) > shard.capacity
            if full:
                shard.full += 1
                if shard.full % _REPLACE_EVERY:
                    return value  # decoded on every read instead, for now
            self.size += shard.remember(cid, value, full)
        else:  # a first read costs what a plain decode does (a scan keeps no templates)
            shard.promote(cid)
        return value

    def put(self, cid: bytes, data: bytes) -> None:
        shard = self._shards[cid[0] & (SHARDS - 1)]
        cost = len(data) + _OVERHEAD
        if cost > shard.capacity or cid in shard.data:
            return
        self.size += cost - shard.put(cid, data, cost)
