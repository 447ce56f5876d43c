"""The value cache: recently used value bytes, keyed by content id, within a byte budget.

Projections hold only where each value lives; values are read through this cache, so
memory is bounded by the budget rather than by the data set. Keyed by content id, one
copy serves every version (and every key) holding an equal value. It holds encoded
bytes, not Python objects: each read decodes a fresh object, so a caller mutating a
returned dict can never corrupt what the next reader sees.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["DEFAULT_CACHE_BYTES", "ValueCache"]

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


class _Shard:
    """One shard: a segmented LRU within its share of the budget."""

    __slots__ = ("capacity", "data", "probation", "protected", "protected_size", "size")

    def __init__(self, capacity: float) -> None:
        self.data: dict[bytes, bytes] = {}
        self.probation: OrderedDict[bytes, None] = OrderedDict()
        self.protected: OrderedDict[bytes, None] = OrderedDict()
        self.capacity = capacity
        self.size = 0
        self.protected_size = 0

    def promote(self, cid: bytes, data: bytes) -> None:
        """Move a value read again from probation to the protected segment, sending
        that segment's least recently used values back to probation past its share."""
        del self.probation[cid]
        self.protected[cid] = None
        self.protected_size += len(data) + _OVERHEAD
        limit = self.capacity * PROTECTED_SHARE
        while self.protected_size > limit:
            old, _ = self.protected.popitem(last=False)
            self.protected_size -= len(self.data[old]) + _OVERHEAD
            self.probation[old] = None

    def put(self, cid: bytes, data: bytes, cost: int) -> int:
        """Add a value; the bytes freed by the evictions it caused."""
        self.data[cid] = data
        self.probation[cid] = None
        self.size += cost
        freed = 0
        while self.size > self.capacity:
            if self.probation:
                old, _ = self.probation.popitem(last=False)
            else:
                old, _ = self.protected.popitem(last=False)
                self.protected_size -= len(self.data[old]) + _OVERHEAD
            gone = len(self.data.pop(old)) + _OVERHEAD
            self.size -= gone
            freed += gone
        return freed


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
        protected = shard.protected
        if cid in protected:
            protected.move_to_end(cid)
        else:
            shard.promote(cid, data)
        return data

    def put(self, cid: bytes, data: bytes) -> None:
        shard = self._shards[cid[0] & (SHARDS - 1)]
        cost = len(data) + _OVERHEAD
        if cost > shard.capacity or cid in shard.data:
            return
        self.size += cost - shard.put(cid, data, cost)
