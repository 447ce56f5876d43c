"""The keys with a time to live, found by when they expire.

Why an index by time: once a minute the expiry process asks which keys are due, and
so do reads that count live keys (``keys``, ``namespaces``, ``stats``). A scan of
every key with a ttl (``LayeredDict.at_most``) held the event loop 62-77 ms for
1,000,000 of them, a put waiting all that time. Here each key is also filed in a
bucket of the times it expires in (``2**33`` ns, about 8.6 s), and the buckets are
kept in order, so the question reads only the buckets due: a handful of entries
rather than a million.

The buckets are dicts of the keys as the map holds them (strings) to their times
(ints): containers the cyclic garbage collector does not track. Ordered by a heap of
the bucket numbers not yet reached by a question and a sorted list of those reached
(some of their keys may stay due: another node's keys, recorded expired by their
writer). Every change of the map is filed at once, so the index always holds exactly
its entries.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from heapq import heapify, heappop, heappush
from itertools import chain
from typing import Any, cast

from ._layered import _MISSING, LayeredDict, PairKeyed, _joined, pair_of

__all__ = ["MOVED_MOST", "SHIFT", "Deadlines"]

#: A bucket holds the times that agree above their lowest ``SHIFT`` bits (in ns).
SHIFT = 33
_ABSENT: Any = object()  # (PairKeyed.pop's default when the key is not there)
#: The most buckets one question moves to the due list (about 9.8 hours of them).
MOVED_MOST = 4096


class Deadlines(PairKeyed[int]):
    """A :class:`PairKeyed` map of expiry times whose :meth:`at_most` and
    :meth:`count_at_most` read only the buckets of times at most the bound."""

    __slots__ = ("_buckets", "_due", "_future")

    def __init__(self) -> None:
        super().__init__()
        #: bucket number -> {key as held: its time}; no empty bucket is kept.
        self._buckets: dict[int, dict[str, int]] = {}
        #: Heap of bucket numbers above every number in ``_due`` (some may be of
        #: buckets emptied since, or twice over: skipped when they come up).
        self._future: list[int] = []
        #: Ascending numbers of the buckets a question's bound has reached (each of
        #: a bucket that exists).
        self._due: list[int] = []

    # -- the index ----------------------------------------------------------------------

    def _file(self, joined: str, time: int) -> None:
        number = time >> SHIFT
        bucket = self._buckets.get(number)
        if bucket is None:
            bucket = self._buckets[number] = {}
            due = self._due
            if due and number <= due[-1]:
                insort(due, number)
            else:
                future = self._future
                heappush(future, number)
                if len(future) > 2 * len(self._buckets) + 1024:  # numbers of emptied ones
                    self._refile()
        bucket[joined] = time

    def _unfile(self, joined: str, time: int) -> None:
        number = time >> SHIFT
        bucket = self._buckets.get(number)
        if bucket is None or bucket.pop(joined, None) is None or bucket:
            return
        del self._buckets[number]
        due = self._due
        if due and number <= due[-1]:
            i = bisect_left(due, number)
            if i < len(due) and due[i] == number:
                del due[i]

    def _refile(self) -> None:
        """The heap again from the buckets that exist (the numbers of emptied ones
        let go)."""
        due = self._due
        # (Without a due bucket, every one: a time before 1970, a bucket number below
        # zero, is an int a checkpoint may hold too.)
        self._future = [n for n in self._buckets if n > due[-1]] if due else list(self._buckets)
        heapify(self._future)

    def _numbers(self, bound: int) -> tuple[int, Iterable[int]]:
        """The bound's bucket number, and the numbers of the buckets up to it in
        ascending order (each of a bucket that exists). The buckets it reaches move
        from the heap to the due list, at most ``MOVED_MOST`` of them: a question far
        ahead (``expiring(within=...)`` of years) is answered from the heap as it is,
        and the due list stays short (each bucket made or emptied at or below its end
        costs a shift of the list)."""
        top = bound >> SHIFT
        future, due, buckets = self._future, self._due, self._buckets
        moved: list[int] = []
        while future and future[0] <= top and len(moved) < MOVED_MOST:
            number = heappop(future)
            if number in buckets and (not moved or moved[-1] < number):
                moved.append(number)
        if future and future[0] <= top:  # far ahead: nothing moves
            for number in moved:
                heappush(future, number)
            ahead = sorted({n for n in future if n <= top and n in buckets})
            return top, chain(due, ahead)
        due += moved
        return top, due

    def _found(self, bound: Any) -> list[tuple[str, int]]:
        if type(bound) is not int:  # (every caller passes ns; anything else, the scan)
            return LayeredDict.at_most(cast(Any, self), bound)
        top, numbers = self._numbers(bound)
        buckets = self._buckets
        found: list[tuple[str, int]] = []
        for number in numbers:
            if number >= top:
                if number == top:
                    found += [(k, t) for k, t in buckets[number].items() if t <= bound]
                break
            found += buckets[number].items()
        return found

    # -- questions ----------------------------------------------------------------------

    def at_most(self, bound: Any) -> list[tuple[tuple[str, str], int]]:
        return [(pair_of(k), t) for k, t in self._found(bound)]

    def count_at_most(self, bound: Any) -> int:
        if type(bound) is not int:
            return len(LayeredDict.at_most(cast(Any, self), bound))
        top, numbers = self._numbers(bound)
        buckets = self._buckets
        count = 0
        for number in numbers:
            if number >= top:
                if number == top:
                    count += sum([t <= bound for t in buckets[number].values()])
                break
            count += len(buckets[number])
        return count

    # -- every change of the map, filed ------------------------------------------------

    def __setitem__(self, key: tuple[str, str], value: int) -> None:
        joined: Any = _joined(key)
        old = self._find(joined)
        if old is _MISSING:
            self._length += 1
        else:
            self._unfile(joined, old)
        self._top[joined] = value
        if self._removed:
            self._removed.discard(joined)
        self._file(joined, value)

    def put_known(self, key: tuple[str, str], value: int, present: bool) -> None:
        self[key] = value  # (the old time is needed: one search either way)

    def __delitem__(self, key: tuple[str, str]) -> None:
        self.pop(key)

    def pop(self, key: tuple[str, str], default: Any = _MISSING) -> Any:
        old = PairKeyed.pop(self, key, _ABSENT)
        if old is _ABSENT:
            if default is _MISSING:
                raise KeyError(key)
            return default
        self._unfile(_joined(key), old)
        return old

    def clear(self) -> None:
        LayeredDict.clear(self)
        self._buckets, self._future, self._due = {}, [], []

    def load_joined(self, entries: dict[str, int]) -> None:
        PairKeyed.load_joined(self, entries)
        buckets = self._buckets
        for joined, time in entries.items():
            number = time >> SHIFT
            bucket = buckets.get(number)
            if bucket is None:
                bucket = buckets[number] = {}
            bucket[joined] = time
        self._refile()
