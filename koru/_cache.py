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
from collections import OrderedDict
from typing import Any

import cbor2

__all__ = ["DEFAULT_CACHE_BYTES", "MISSING", "ValueCache"]

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
#: A hit served from a template refreshes the value's recency once in this many hits
#: of its shard (minus one, a mask). Why not every time: the reordering (an ordered
#: dict's move to the end, two more random memory accesses) cost more than the copy
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


def _shared(value: Any) -> Any:
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


class _Shard:
    """One shard: a segmented LRU within its share of the budget, and the templates
    of values read again, in whatever room the values leave."""

    __slots__ = (
        "capacity",
        "data",
        "decoded",
        "full",
        "hits",
        "probation",
        "protected",
        "protected_size",
        "size",
    )

    def __init__(self, capacity: float) -> None:
        self.data: dict[bytes, bytes] = {}
        #: content id -> template (see the module's docstring), oldest first: the
        #: first to go when values need the room.
        self.decoded: OrderedDict[bytes, Any] = OrderedDict()
        self.probation: OrderedDict[bytes, None] = OrderedDict()
        self.protected: OrderedDict[bytes, None] = OrderedDict()
        self.capacity = capacity
        self.size = 0  # values and templates
        self.protected_size = 0
        self.hits = 0  # template hits, for the sampled refresh
        self.full = 0  # templates not kept for want of room

    def touch(self, cid: bytes) -> None:
        """A hit: most recently used in the protected segment."""
        if cid in self.protected:
            self.protected.move_to_end(cid)
        else:
            self.promote(cid)

    def promote(self, cid: bytes) -> None:
        """Move a value read again from probation to the protected segment, sending
        that segment's least recently used values back to probation past its share."""
        del self.probation[cid]
        self.protected[cid] = None
        self.protected_size += len(self.data[cid]) + _OVERHEAD
        limit = self.capacity * PROTECTED_SHARE
        while self.protected_size > limit:
            old, _ = self.protected.popitem(last=False)
            self.protected_size -= len(self.data[old]) + _OVERHEAD
            self.probation[old] = None

    def put(self, cid: bytes, data: bytes, cost: int) -> int:
        """Add a value; the bytes freed by the evictions it caused (templates first)."""
        self.data[cid] = data
        self.probation[cid] = None
        self.size += cost
        freed = 0
        while self.size > self.capacity:
            if self.decoded:
                freed += self._forget(*self.decoded.popitem(last=False))
                continue
            if self.probation:
                old, _ = self.probation.popitem(last=False)
            else:
                old, _ = self.protected.popitem(last=False)
                self.protected_size -= len(self.data[old]) + _OVERHEAD
            gone = len(self.data.pop(old)) + _OVERHEAD
            self.size -= gone
            freed += gone
        return freed

    def _forget(self, cid: bytes, template: Any) -> int:
        """Account for a template dropped; its cost."""
        cost = _template_cost(template, len(self.data[cid]))
        self.size -= cost
        return cost

    def remember(self, cid: bytes, value: Any) -> int:
        """Keep a template of a cached value just decoded (``value``) if there is room
        for it (the change in size). Without room, one such read in
        :data:`_REPLACE_EVERY` drops the oldest templates to make it, never a value.
        Why so rarely: reads that cycle over more values than the room holds would
        otherwise replace a template on every read and never hit one (first in, first
        out fails a loop); this way most of them keep hitting, and a new hot set still
        takes over, gradually. The room is judged before the copy is made: a read of
        a value without room for its template (the hot values of a cache sized for
        the values alone) pays for no copy it would throw away."""
        encoded = len(self.data[cid])
        # The least any template of these bytes costs: when not even that fits (the
        # common case of a full cache), the answer is known without looking at value.
        full = self.size + min(_DEEP_COST, _ITEM + encoded) > self.capacity
        if full:
            self.full += 1
            if self.full % _REPLACE_EVERY:
                return 0  # decoded on every read instead, for now
        template = _shared(value)
        cost = _template_cost(template, encoded)
        change = 0
        if self.size + cost > self.capacity:
            if not full:
                self.full += 1
                if self.full % _REPLACE_EVERY:
                    return 0
            while self.size + cost > self.capacity and self.decoded:
                change -= self._forget(*self.decoded.popitem(last=False))
            if self.size + cost > self.capacity:
                return change
        if template is value and (type(value) is dict or type(value) is list):
            template = value.copy()  # never the object handed to the reader
            cost = _template_cost(template, encoded)  # (a copy's size, as _forget counts)
            if self.size + cost > self.capacity:
                return change
        self.decoded[cid] = template
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

    __slots__ = ("_shards", "capacity", "hits", "misses", "size")

    def __init__(self, capacity: int = DEFAULT_CACHE_BYTES) -> None:
        self._shards = [_Shard(capacity / SHARDS) for _ in range(SHARDS)]
        self.capacity = capacity
        self.size = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return sum(len(shard.data) for shard in self._shards)

    def peek(self, cid: bytes) -> bytes | None:
        """Like :meth:`get` but without counting or refreshing recency, for bulk reads."""
        return self._shards[cid[0] & (SHARDS - 1)].data.get(cid)

    def get(self, cid: bytes) -> bytes | None:
        shard = self._shards[cid[0] & (SHARDS - 1)]
        data = shard.data.get(cid)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
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
        if cid in shard.protected:  # read before: worth a template
            shard.protected.move_to_end(cid)
            self.size += shard.remember(cid, value)
        else:  # a first read costs what a plain decode does (a scan keeps no templates)
            shard.promote(cid)
        return value

    def put(self, cid: bytes, data: bytes) -> None:
        shard = self._shards[cid[0] & (SHARDS - 1)]
        cost = len(data) + _OVERHEAD
        if cost > shard.capacity or cid in shard.data:
            return
        self.size += cost - shard.put(cid, data, cost)
