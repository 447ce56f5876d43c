"""Aggregations as accumulators with ``add`` and ``remove``: pure, no I/O.

Why both directions: a full scan only adds, a materialized view adds and removes as
documents change, and both finish the same way, so a view equals re-running its query
exactly (sums are kept exact, see :class:`ExactSum`; of values equal in the order but
written differently, min, max and distinct show the one of smallest canonical
encoding, whatever arrived first).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import cbor2

from koru.events import InvalidQueryError

from ._order import order_key
from ._query import AGGREGATES, Query
from ._rows import fresh

__all__ = [
    "Accumulator",
    "Count",
    "Distinct",
    "Equals",
    "ExactSum",
    "Extreme",
    "make_accumulator",
]

_SCALE = 1074  # 2**-1074 is the least positive float: every float is an int at this scale


class Accumulator(ABC):
    """One aggregation over a changing multiset of field values (missing and null are
    never given). ``add``/``remove`` take the document's key with the value."""

    __slots__ = ()

    @abstractmethod
    def add(self, key: str, v: Any) -> None:
        """Count ``v`` (of the document ``key``) in."""

    @abstractmethod
    def remove(self, key: str, v: Any) -> None:
        """Take ``v`` (of the document ``key``) out again."""

    @abstractmethod
    def result(self) -> Any:
        """The aggregate of the values in now."""

    def least_bytes(self) -> int:
        """Fewer bytes than :meth:`result` takes encoded (a value of one item: 1)."""
        return 1

    def check(self) -> None:  # noqa: B027 - by default nothing to check
        """Raise what :meth:`result` would for values it cannot combine."""


class Count(Accumulator):
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def add(self, key: str, v: Any) -> None:
        self.n += 1

    def remove(self, key: str, v: Any) -> None:
        self.n -= 1

    def result(self) -> int:
        return self.n


class ExactSum(Accumulator):
    """An exact running sum of ints and floats: ints in one Python int, floats as
    integers scaled by 2**1074 (exact for every float), infinities counted apart. So
    removing a value undoes adding it exactly, the order never matters, and the result
    is the correctly rounded exact sum (what :func:`math.fsum` gives), an int if no
    float took part. A non-number is remembered with its key; :meth:`result` then
    raises :class:`InvalidQueryError` naming the field and the least such key."""

    __slots__ = ("bad", "floats", "ints", "n", "ninf", "op", "path", "pinf", "scaled")

    def __init__(self, op: str, path: str) -> None:
        self.op, self.path = op, path
        self.ints = 0
        self.scaled = 0
        self.floats = 0  # how many floats (the result is a float if any)
        self.pinf = self.ninf = 0
        self.n = 0
        self.bad: dict[str, Any] = {}

    def _apply(self, key: str, v: Any, sign: int) -> None:
        t = type(v)
        if t is int:
            self.ints += sign * v
        elif t is float:
            self.floats += sign
            if v == math.inf:
                self.pinf += sign
            elif v == -math.inf:
                self.ninf += sign
            else:
                num, den = v.as_integer_ratio()
                self.scaled += sign * (num << (_SCALE - den.bit_length() + 1))
        else:
            if sign > 0:
                self.bad[key] = v
            else:
                self.bad.pop(key, None)
            return
        self.n += sign

    def add(self, key: str, v: Any) -> None:
        t = type(v)
        if t is int:  # the common cases, inline
            self.ints += v
            self.n += 1
        elif t is float and -math.inf < v < math.inf:
            num, den = v.as_integer_ratio()
            self.scaled += num << (_SCALE - den.bit_length() + 1)
            self.floats += 1
            self.n += 1
        else:
            self._apply(key, v, 1)

    def remove(self, key: str, v: Any) -> None:
        self._apply(key, v, -1)

    def check(self) -> None:
        if self.bad:
            key = min(self.bad)
            kind = "a bool" if type(self.bad[key]) is bool else type(self.bad[key]).__name__
            raise InvalidQueryError(
                self.path, f"{self.op} over a non-number: key {key!r} holds {kind}"
            )

    def _total(self, divisor: int) -> Any:
        if self.pinf and self.ninf:
            return math.nan
        if self.pinf or self.ninf:
            return math.inf if self.pinf else -math.inf
        total = (self.ints << _SCALE) + self.scaled
        try:
            return total / (divisor << _SCALE)
        except OverflowError:
            return math.inf if total > 0 else -math.inf

    def result(self) -> Any:
        self.check()
        if self.op == "avg":
            if not self.n:
                return None
            return self.ints / self.n if not self.floats else self._total(self.n)
        return self.ints if not self.floats else self._total(1)


class Equals:
    """The values of one equal group (``1`` and ``1.0``, ``0.0`` and ``-0.0``), each
    counted: an aggregate answers with the one of smallest canonical encoding, which
    depends on what is there, not on what arrived first or left."""

    __slots__ = ("forms",)

    def __init__(self) -> None:
        self.forms: dict[bytes, list[Any]] = {}

    def add(self, v: Any) -> None:
        form = cbor2.dumps(v, canonical=True)
        entry = self.forms.get(form)
        if entry is None:
            self.forms[form] = [1, v]
        else:
            entry[0] += 1

    def remove(self, v: Any) -> bool:
        """Remove one; True if the group is empty now."""
        form = cbor2.dumps(v, canonical=True)
        entry = self.forms[form]
        entry[0] -= 1
        if not entry[0]:
            del self.forms[form]
        return not self.forms

    def value(self) -> Any:
        return fresh(self.forms[min(self.forms)][1])

    def least_bytes(self) -> int:
        """Fewer bytes than :meth:`value` takes encoded (its canonical form's: the
        smallest CBOR gives it)."""
        return len(min(self.forms))


class Extreme(Accumulator):
    """min or max in the total order, with removal: each distinct value counted, the
    extreme recomputed only when the last copy of it leaves."""

    __slots__ = ("best", "counts", "lowest")

    def __init__(self, lowest: bool) -> None:
        self.lowest = lowest
        self.counts: dict[tuple[Any, ...], Equals] = {}
        self.best: tuple[Any, ...] | None = None

    def add(self, key: str, v: Any) -> None:
        k = order_key(v)
        group = self.counts.get(k)
        if group is None:
            group = self.counts[k] = Equals()
            best = self.best
            # A new extreme, or the first value (None with others present means the
            # extreme left and is recomputed on demand).
            if len(self.counts) == 1 or (
                best is not None and (k < best if self.lowest else k > best)
            ):
                self.best = k
        group.add(v)

    def remove(self, key: str, v: Any) -> None:
        k = order_key(v)
        if self.counts[k].remove(v):
            del self.counts[k]
            if k == self.best:
                self.best = None

    def result(self) -> Any:
        if not self.counts:
            return None
        if self.best is None:
            self.best = min(self.counts) if self.lowest else max(self.counts)
        return self.counts[self.best].value()


class Distinct(Accumulator):
    """The distinct values, in the total order (of an equal group, the one of smallest
    canonical encoding)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[Any, ...], Equals] = {}

    def add(self, key: str, v: Any) -> None:
        k = order_key(v)
        group = self.counts.get(k)
        if group is None:
            group = self.counts[k] = Equals()
        group.add(v)

    def remove(self, key: str, v: Any) -> None:
        k = order_key(v)
        if self.counts[k].remove(v):
            del self.counts[k]

    def result(self) -> list[Any]:
        return [self.counts[k].value() for k in sorted(self.counts)]

    def least_bytes(self) -> int:
        return 1 + sum(group.least_bytes() for group in self.counts.values())


def make_accumulator(q: Query) -> Accumulator:
    """A fresh accumulator for the query's aggregation (count when it has none)."""
    op, path = q.aggregate if q.aggregate is not None else ("count", None)
    if op == "count":
        return Count()
    if op in ("sum", "avg"):
        assert path is not None
        return ExactSum(op, path)
    if op in ("min", "max"):
        return Extreme(op == "min")
    assert op in AGGREGATES and op == "distinct"
    return Distinct()
