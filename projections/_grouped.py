"""A query's aggregation over a changing set of documents, grouped or not: pure, no
I/O. A scan adds every matching document; a materialized view adds and removes
contributions as documents change (see :mod:`._accumulators`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._accumulators import Equals, ExactSum, make_accumulator
from ._order import MISSING, order_key
from ._paths import get_path, split_path
from ._predicate import Doc
from ._query import Query

__all__ = ["Grouped"]


class Grouped:
    """The aggregation of a query over a changing set of documents, grouped or not:
    ``add(key, doc)``/``remove(key, doc)``, then ``result()``."""

    __slots__ = ("_agg_segs", "_count_docs", "_group_segs", "groups", "query", "simple", "whole")

    def __init__(self, q: Query) -> None:
        self.query = q
        path = q.aggregate[1] if q.aggregate is not None else None
        self._count_docs = path is None
        self._agg_segs = None if path is None else split_path(path)
        self._group_segs = None if q.group is None else split_path(q.group)
        self.whole = make_accumulator(q)
        #: Without groups, the one map key the value is read from ("" to count
        #: documents), when the path is a single non-numeric segment; else None.
        self.simple: str | None = None
        if self._group_segs is None:
            if path is None:
                self.simple = ""
            elif len(segs := self._agg_segs or ()) == 1 and not segs[0].isdecimal():
                self.simple = segs[0]
        #: group order key -> [the group's values, accumulator, members]
        self.groups: dict[tuple[Any, ...], list[Any]] = {}

    def contribution(self, doc: Doc) -> tuple[Any, Any]:
        """(group value, aggregated value) of ``doc``; the value is MISSING when the
        document does not take part (its field is missing or null)."""
        if self._count_docs:
            v: Any = True
        else:
            assert self._agg_segs is not None
            v = get_path(doc, self._agg_segs)
            if v is None:
                v = MISSING
        if self._group_segs is None:
            return None, v
        g = get_path(doc, self._group_segs)
        return (None if g is MISSING else g), v

    def add_doc(self, key: str, doc: Doc) -> tuple[Any, Any]:
        """Add ``doc``'s contribution and return it (the write path of a view)."""
        if self._group_segs is None:
            if self._count_docs:
                self.whole.add(key, True)
                return None, True
            v = get_path(doc, self._agg_segs)  # type: ignore[arg-type]
            if v is None or v is MISSING:
                return None, MISSING
            self.whole.add(key, v)
            return None, v
        group, v = self.contribution(doc)
        self.add_contribution(key, group, v)
        return group, v

    def add_contribution(self, key: str, group: Any, v: Any) -> None:
        if self._group_segs is None:
            if v is not MISSING:
                self.whole.add(key, v)
            return
        gk = order_key(group)
        entry = self.groups.get(gk)
        if entry is None:
            entry = self.groups[gk] = [Equals(), make_accumulator(self.query), 0]
        entry[0].add(group)
        entry[2] += 1
        if v is not MISSING:
            entry[1].add(key, v)

    def remove_contribution(self, key: str, group: Any, v: Any) -> None:
        if self._group_segs is None:
            if v is not MISSING:
                self.whole.remove(key, v)
            return
        gk = order_key(group)
        entry = self.groups[gk]
        entry[0].remove(group)
        entry[2] -= 1
        if v is not MISSING:
            entry[1].remove(key, v)
        if not entry[2]:
            del self.groups[gk]

    def result(self, weigh: Callable[[int, int], None] | None = None) -> Any:
        """The aggregate value, or for ``group_by`` a list of (group, value) pairs in
        group order, offset and limit applied.

        ``weigh``, if given, is told before the answer is built how many groups it
        holds and fewer bytes than their values take encoded (the group values' and
        the aggregates', each at least a byte), and may refuse it by raising."""
        if self._group_segs is None:
            if weigh is not None:
                weigh(0, self.whole.least_bytes())
            return self.whole.result()
        # A bad value in any group, shown or not, is an error, named by the least bad
        # key of all groups (not the first group's: the groups' order is their arrival
        # order, which differs between a scan, a view and a peer).
        bad = [acc for _, acc, _ in self.groups.values() if isinstance(acc, ExactSum) and acc.bad]
        if bad:
            min(bad, key=lambda acc: min(acc.bad)).check()
        keys = sorted(self.groups)
        q = self.query
        end = None if q.take is None else q.skip + q.take
        page = keys[q.skip : end]
        if weigh is not None:
            groups = self.groups
            weigh(
                len(page),
                sum(groups[gk][0].least_bytes() + groups[gk][1].least_bytes() for gk in page),
            )
        out = []
        for gk in page:
            group, acc, _ = self.groups[gk]
            out.append((group.value(), acc.result()))
        return out
