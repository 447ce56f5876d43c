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
from functools import partial
from typing import Any

from koru.events import Event, check_name
from koru.projections import KvState
from koru.projections._answer import answer
from koru.projections._indexes import Indexes
from koru.projections._planner import QueryPlan
from koru.projections._predicate import Predicate, compile_filter
from koru.projections._query import Query, as_query
from koru.projections._rows import select_fields

from ._documents import DocumentCache, live_bytes, read_at, read_live, read_values
from ._indexing import Indexing
from ._reader import ValueReader
from ._reads import ANSWER_BYTES, Budget, least_bytes, refuse_past_answer
from ._time import to_ns
from ._writer import Writer

__all__ = ["QueryEngine"]

#: Fewer bytes than a row takes in an answer besides its key and value; and how to ask
#: for rows that fit an answer.
ROW_FIELDS = 8
LESS = "limit and offset, or select"

#: Fewer bytes than a group takes in an answer besides its group and aggregate values;
#: and how to ask for groups that fit an answer.
GROUP_FIELDS = 8
GROUPS_LESS = "limit and offset"


def refuse_selected(
    call: str, fields: tuple[str, ...], less: str, keys: list[str], docs: list[Any]
) -> None:
    """Refuse rows of the ``fields`` selected from ``docs`` (as held: only read) surely
    over the bytes a served answer holds, before they are built (a selected field of
    every document of a namespace of gigabytes was decoded afresh, packed, then
    refused)."""
    weigh_selected(Budget(call, less), fields, keys, docs)


def weigh_selected(
    budget: Budget, fields: tuple[str, ...], keys: list[str], docs: list[Any]
) -> None:
    """Count the rows of the ``fields`` selected from ``docs`` into ``budget``, row by
    row, stopped once over."""
    bound = budget.bound
    assert bound is not None
    add = budget.add
    for k, doc in zip(keys, docs, strict=True):
        add(len(k) + ROW_FIELDS + least_bytes(select_fields(doc, fields), bound - budget.used))


def refuse_grouped(call: str, groups: int, value_bytes: int) -> None:
    """Refuse an aggregation's answer (``groups`` groups, or one value when 0, of
    ``value_bytes`` bytes of values) surely over the bytes a served answer holds."""
    refuse_past_answer(call, value_bytes, groups, GROUP_FIELDS, GROUPS_LESS)


#: Compiled filters kept for queries seen lately (keyed by identity: queries may hold
#: unhashable values).
_COMPILED = 256


class QueryEngine:
    """Runs queries for one database."""

    __slots__ = ("_compiled", "_observers", "documents", "indexing", "kv", "now", "values")

    def __init__(self, kv: KvState, values: ValueReader, indexes: Indexes, writer: Writer) -> None:
        self.now = writer.read_time
        self.kv = kv
        self.values = values
        self.documents = DocumentCache(
            kv, values.value_bytes, values.cache.peek, first_use=self._watch_writes
        )
        self._observers = writer.observers
        self.indexing = Indexing(kv, indexes, self.documents, writer)
        self._compiled: OrderedDict[int, tuple[Query, Predicate]] = OrderedDict()

    def _watch_writes(self) -> None:
        """Become the write path's first observer, once documents are cached (until
        then a write has nothing here to mark dirty, and costs no call)."""
        if self.observe not in self._observers:
            self._observers.insert(0, self.observe)

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
        q, when = self.check(namespace, query, at)
        predicate = self.predicate(q)
        if when is not None:
            keys, values = self._at(namespace, when)
            owned = True  # decoded for this query alone
        else:
            gone = self.expired(namespace)
            _, candidates = self.indexing.plan(namespace, q.filter, gone)
            if candidates is None:
                docs = self.documents.get(namespace)
                keys, values, owned = docs.keys, docs.docs, False
                if gone:  # values with a time to live that has passed read as absent
                    kept = [i for i, k in enumerate(keys) if k not in gone]
                    keys, values = [keys[i] for i in kept], [values[i] for i in kept]
            else:
                keys, values = self._live(namespace, sorted(candidates))
                owned = True
        check: Any = None
        weigh = None
        if ANSWER_BYTES.get() is not None:  # (a served call)
            if q.fields is None:
                check = partial(self._bound, namespace, when)
            else:
                check = partial(refuse_selected, "query", q.fields, LESS)
            weigh = partial(refuse_grouped, "query")
        if owned:
            return answer(q, predicate, keys, values, None, check, weigh)
        # The cache's objects: rows are decoded afresh.
        reread = lambda ks: self._live(namespace, ks)[1]  # noqa: E731
        return answer(q, predicate, keys, values, reread, check, weigh)

    def _bound(self, namespace: str, when: int | None, keys: list[str], docs: Any) -> None:
        """Refuse rows of ``keys`` surely over the bytes a served answer holds, before
        they are built (a client's request of 50 bytes for a namespace of gigabytes)."""
        kv = self.kv
        if when is None:
            size = live_bytes(kv, namespace, keys)
        else:
            size = 0
            for k in keys:
                r = kv.at(namespace, k, when)
                size += 0 if r is None else r.size
        refuse_past_answer("query", size + sum(map(len, keys)), len(keys), ROW_FIELDS, LESS)

    def check(self, namespace: str, query: Any, at: Any) -> tuple[Query, int | None]:
        """The query and time, checked (before any work)."""
        check_name(namespace, "namespace")
        q = as_query(query)
        return q, None if at is None else to_ns(at)

    def explain(self, namespace: str, query: Any, at: Any = None) -> QueryPlan:
        """How ``query`` would read ``namespace`` (see ``Database.explain``)."""
        q, when = self.check(namespace, query, at)
        gone = self.expired(namespace) if when is None else frozenset()
        return self.indexing.describe(namespace, q.filter, when, gone)

    def _read(self, namespace: str, recs: list[tuple[str, bytes, int, int]]) -> list[Any]:
        return read_values(self.values.value_bytes, namespace, recs, self.values.cache.peek)

    def _live(self, namespace: str, keys: list[str]) -> tuple[list[str], list[Any]]:
        values = self.values
        return read_live(self.kv, namespace, keys, values.value_bytes, values.cache.peek)

    def expired(self, namespace: str) -> set[str]:
        """Keys of ``namespace`` whose current value's time to live has passed (by the
        database's read time, which never goes backwards)."""
        expiring = self.kv.expiring
        if not expiring:
            return set()
        now = self.now()
        return {k for (ns, k), _ in expiring.at_most(now) if ns == namespace}

    def _at(self, namespace: str, when: int) -> tuple[list[str], list[Any]]:
        """Every key's value at ``when`` (keys with none then are left out)."""
        values = self.values
        return read_at(self.kv, namespace, when, values.value_bytes, values.cache.peek)
