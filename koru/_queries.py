"""The query engine: answers ``db.query`` now or at a past time.

The pure parts (filters, the total order, sorting, aggregation) live in
``koru.projections``; this collaborator of the database chooses the documents (the
namespace's current documents from the :class:`~koru._documents.DocumentCache`, or
each key's version at a past time from the key/value projection), runs the pure
evaluation, and builds the results from freshly decoded value bytes, so a caller can
mutate what it gets without touching anything the database holds.

Everything a query can get wrong about its input (the namespace, the query, the time)
is checked before any document is read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from itertools import compress
from typing import Any

from koru.events import Event, check_name
from koru.projections import KvState
from koru.projections._evaluate import Grouped, Predicate, compile_filter, select_fields, sort_rows
from koru.projections._query import Group, Query, Row, as_query

from ._documents import DocumentCache, live_records, read_values
from ._history import decode_all
from ._reader import ValueReader
from ._time import to_ns

__all__ = ["QueryEngine"]

#: Compiled filters kept for queries seen lately (keyed by identity: queries may hold
#: unhashable values).
_COMPILED = 256


class QueryEngine:
    """Runs queries for one database."""

    __slots__ = ("_compiled", "documents", "kv", "now", "values")

    def __init__(self, kv: KvState, values: ValueReader, now: Callable[[], int]) -> None:
        self.now = now
        self.kv = kv
        self.values = values
        self.documents = DocumentCache(kv, values.value_bytes)
        self._compiled: OrderedDict[int, tuple[Query, Predicate]] = OrderedDict()

    def observe(self, event: Event, event_id: bytes, location: int) -> None:
        """An event was folded (the write path's observer): its keys are dirty."""
        if self.documents.by_namespace:
            touch = self.documents.touch
            for w in event.writes:
                touch(w.namespace, w.key)

    def predicate(self, q: Query) -> Predicate:
        """The compiled filter of ``q`` (cached by identity)."""
        found = self._compiled.get(id(q))
        if found is not None and found[0] is q:
            self._compiled.move_to_end(id(q))
            return found[1]
        predicate = compile_filter(q.filter)
        self._compiled[id(q)] = (q, predicate)
        if len(self._compiled) > _COMPILED:
            self._compiled.popitem(last=False)
        return predicate

    def query(self, namespace: str, query: Any, at: Any = None) -> Any:
        """Answer ``query`` over ``namespace`` (see ``Database.query``)."""
        check_name(namespace, "namespace")
        q = as_query(query)
        when = None if at is None else to_ns(at)
        predicate = self.predicate(q)
        if when is None:
            docs = self.documents.get(namespace)
            keys, values = docs.keys, docs.docs
            gone = self.expired(namespace)
            if gone:  # values with a time to live that has passed read as absent
                kept = [i for i, k in enumerate(keys) if k not in gone]
                keys, values = [keys[i] for i in kept], [values[i] for i in kept]
        else:
            keys, values = self._at(namespace, when)
        hits = list(compress(range(len(keys)), map(predicate, values)))
        if q.aggregate is not None or q.group is not None:
            grouped = Grouped(q)
            for i in hits:
                key = keys[i]
                group, v = grouped.contribution(values[i])
                grouped.add_contribution(key, group, v)
            result = grouped.result()
            return [Group(g, v) for g, v in result] if q.group is not None else result
        rows = [(keys[i], values[i]) for i in hits]  # in key order
        if q.order:
            rows = sort_rows(rows, q.order)
        end = None if q.take is None else q.skip + q.take
        rows = rows[q.skip : end]
        return self._rows(namespace, q, [k for k, _ in rows], when)

    def expired(self, namespace: str) -> set[str]:
        """Keys of ``namespace`` whose current value's time to live has passed (by the
        database's read time, which never goes backwards)."""
        expiring = self.kv.expiring
        if not expiring:
            return set()
        now = self.now()
        return {k for (ns, k), t in expiring.items() if ns == namespace and now >= t}

    def _at(self, namespace: str, when: int) -> tuple[list[str], list[Any]]:
        """Every key's value at ``when`` (keys with none then are left out)."""
        recs = []
        for key, _ in self.kv.items(namespace):
            r = self.kv.at(namespace, key, when)
            if r is not None and r.content_id is not None and not r.expired(when):
                recs.append((key, r.content_id, r.location, r.size))
        return [r[0] for r in recs], read_values(self.values.value_bytes, namespace, recs)

    def _rows(self, namespace: str, q: Query, keys: list[str], when: int | None) -> list[Row]:
        """Result rows for ``keys``, their values decoded afresh."""
        if when is None:
            recs = live_records(self.kv, namespace, keys)
        else:
            recs = []
            for key in keys:
                r = self.kv.at(namespace, key, when)
                assert r is not None and r.content_id is not None
                recs.append((key, r.content_id, r.location, r.size))
        read = self.values.value_bytes
        values = decode_all([read(cid, loc, namespace, key) for key, cid, loc, _ in recs])
        if q.fields is not None:
            fields = q.fields
            return [Row(k, select_fields(v, fields)) for k, v in zip(keys, values, strict=True)]
        return [Row(k, v) for k, v in zip(keys, values, strict=True)]
