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


class ValueCache:
    """A segmented least-recently-used map from content id to encoded value.

    Why segmented: a plain LRU lets one pass over cold keys (a scan, an export, a burst
    of one-off reads) push out every value that is read again and again. A value
    enters on probation; read again while cached it moves to the protected segment
    (most of the budget), and only the protected segment's least recently used values
    go back to probation. So one-off reads compete with each other, and frequently
    read values, the hot tier, leave only when other values are read more often.
    """

    __slots__ = (
        "_data",
        "_probation",
        "_protected",
        "_protected_size",
        "capacity",
        "hits",
        "misses",
        "peek",
        "size",
    )

    def __init__(self, capacity: int = DEFAULT_CACHE_BYTES) -> None:
        self._data: dict[bytes, bytes] = {}
        self._probation: OrderedDict[bytes, None] = OrderedDict()
        self._protected: OrderedDict[bytes, None] = OrderedDict()
        #: Like :meth:`get` but without counting or refreshing recency, for bulk reads
        #: (the dict's own ``get``: no Python frame per call).
        self.peek = self._data.get
        self.capacity = capacity
        self.size = 0
        self._protected_size = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, cid: bytes) -> bytes | None:
        data = self._data.get(cid)
        if data is None:
            self.misses += 1
            return None
        self.hits += 1
        protected = self._protected
        if cid in protected:
            protected.move_to_end(cid)
        else:
            self._promote(cid, data)
        return data

    def _promote(self, cid: bytes, data: bytes) -> None:
        """Move a value read again from probation to the protected segment, sending
        that segment's least recently used values back to probation past its share."""
        del self._probation[cid]
        self._protected[cid] = None
        self._protected_size += len(data) + _OVERHEAD
        limit = self.capacity * PROTECTED_SHARE
        while self._protected_size > limit:
            old, _ = self._protected.popitem(last=False)
            self._protected_size -= len(self._data[old]) + _OVERHEAD
            self._probation[old] = None

    def put(self, cid: bytes, data: bytes) -> None:
        cost = len(data) + _OVERHEAD
        if cost > self.capacity:
            return
        if cid in self._data:
            return
        self._data[cid] = data
        self._probation[cid] = None
        self.size += cost
        while self.size > self.capacity:
            if self._probation:
                old, _ = self._probation.popitem(last=False)
            else:
                old, _ = self._protected.popitem(last=False)
                self._protected_size -= len(self._data[old]) + _OVERHEAD
            self.size -= len(self._data.pop(old)) + _OVERHEAD
