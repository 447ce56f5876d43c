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


class ValueCache:
    """A least-recently-used map from content id to encoded value."""

    __slots__ = ("_data", "capacity", "hits", "misses", "peek", "size")

    def __init__(self, capacity: int = DEFAULT_CACHE_BYTES) -> None:
        self._data: OrderedDict[bytes, bytes] = OrderedDict()
        #: Like :meth:`get` but without counting or refreshing recency, for bulk reads
        #: (the dict's own ``get``: no Python frame per call).
        self.peek = self._data.get
        self.capacity = capacity
        self.size = 0
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
        self._data.move_to_end(cid)
        return data

    def put(self, cid: bytes, data: bytes) -> None:
        cost = len(data) + _OVERHEAD
        if cost > self.capacity:
            return
        old = self._data.get(cid)
        if old is not None:
            self._data.move_to_end(cid)
            return
        self._data[cid] = data
        self.size += cost
        while self.size > self.capacity:
            _, evicted = self._data.popitem(last=False)
            self.size -= len(evicted) + _OVERHEAD
