"""Secondary indexes from the face: define them (events), fill them, plan with them.

An index is the :class:`~koru.projections._indexes.Indexes` projection's; this
collaborator writes the definition events (``perspective`` agent, through
``Writer.emit``), fills an index that a definition left pending from the namespace's
current documents (read through the document cache, so values are proven), and plans
queries. Filling is synchronous: no write can slip between reading the documents and
recording them.
"""

from __future__ import annotations

from collections.abc import Callable, Set
from typing import Any, NamedTuple

from koru.events import IndexEvent, NotFoundError, check_name
from koru.projections import RECORD_SIZE, TOMBSTONE, KvState
from koru.projections._filters import Filter
from koru.projections._indexes import ORDER, Index, Indexes
from koru.projections._paths import check_path
from koru.projections._planner import QueryPlan, plan

from ._documents import DocumentCache
from ._space import DEFAULT, Space
from ._writer import Writer

__all__ = ["IndexInfo", "Indexing", "fill"]

_ORDER = 56  # the order key's bytes at the start of a packed version record


def fill(index: Index, kv: KvState, document: Callable[[str], Any]) -> None:
    """Build a pending ``index`` from ``kv``'s current versions of its namespace (a
    deleted key's entry holds no value), ``document(key)`` giving a live key's current
    value: how the database fills one, and how an audit fills a replayed one."""
    entries: list[tuple[str, bytes, tuple[Any, ...] | None]] = []
    for key, blob in kv.items(index.namespace):
        base = len(blob) - RECORD_SIZE
        order = bytes(blob[base : base + _ORDER])
        if blob[-1] & TOMBSTONE:
            entries.append((key, order, None))
        else:
            entries.append((key, order, index.extract(document(key))))
    index.fill(entries)


class IndexInfo(NamedTuple):
    """One secondary index (``db.list_indexes()``)."""

    namespace: str
    field: str
    #: Keys whose current value has the field.
    entries: int
    #: True until it has been filled from the namespace's documents.
    building: bool


class Indexing:
    """Index definitions, filling and planning for one database."""

    __slots__ = ("documents", "indexes", "kv", "writer")

    def __init__(
        self, kv: KvState, indexes: Indexes, documents: DocumentCache, writer: Writer
    ) -> None:
        self.kv = kv
        self.indexes = indexes
        self.documents = documents
        self.writer = writer

    def create(self, namespace: str, field: str) -> bool:
        """Define (and fill) an index; False if it exists already (nothing written)."""
        check_name(namespace, "namespace")
        check_path(field, "field")
        if self.indexes.get(namespace, field) is not None:
            return False
        self.writer.emit("perspective", lambda h: IndexEvent(*h, "create", namespace, field))
        index = self.indexes.get(namespace, field)
        assert index is not None
        self.fill(index)
        return True

    def drop(self, namespace: str, field: str) -> None:
        check_name(namespace, "namespace")
        check_path(field, "field")
        if self.indexes.get(namespace, field) is None:
            raise NotFoundError(f"no index on {namespace!r} field {field!r}")
        self.writer.emit("perspective", lambda h: IndexEvent(*h, "drop", namespace, field))

    def listing(self, namespace: str | None, space: Space = DEFAULT) -> list[IndexInfo]:
        """The indexes of ``space`` (of its namespace ``namespace``, stored form, or
        all), named as its callers name them."""
        if namespace is not None:
            check_name(namespace, "namespace")
        out = []
        # A value whose time to live is over is no value (as reads and stats() count),
        # its expiry recorded or not: its entry is not counted.
        expiring = self.kv.expiring
        gone: list[tuple[tuple[str, str], int]] | None = None if expiring else []
        for ns, path in self.indexes.listing():
            shown = space.outward(ns)
            if shown is not None and (namespace is None or ns == namespace):
                index = self.indexes.get(ns, path)
                assert index is not None
                entries = len(index)
                if not index.pending:
                    if gone is None:  # (once, and only for an index listed)
                        gone = expiring.at_most(self.writer.read_time())
                    held = index.entries
                    entries -= sum(
                        1 for (n, k), _ in gone if n == ns and len(held.get(k, b"")) > ORDER
                    )
                out.append(IndexInfo(shown, path, entries, index.pending))
        return out

    def fill(self, index: Index) -> None:
        """Build a pending index from the namespace's current versions."""
        docs = self.documents.get(index.namespace)
        fill(index, self.kv, dict(zip(docs.keys, docs.docs, strict=True)).__getitem__)

    def plan(
        self, namespace: str, f: Filter | None, gone: Set[str] = frozenset()
    ) -> tuple[QueryPlan, set[str] | None]:
        """How a query with filter ``f`` reads ``namespace`` now (filling any pending
        index it could use first), its keys ``gone`` left out (expired values)."""
        indexes = self.indexes.by_namespace.get(namespace)
        if indexes and f is not None:
            wanted = {leaf.path for leaf in f.leaves()}  # type: ignore[attr-defined]
            for path, index in indexes.items():
                if index.pending and path in wanted:
                    self.fill(index)
        return plan(indexes, f, gone)

    def describe(
        self, namespace: str, f: Filter | None, at: Any, gone: Set[str] = frozenset()
    ) -> QueryPlan:
        if at is not None:
            return QueryPlan((), None, "full scan: a query at a past time uses no index")
        return self.plan(namespace, f, gone)[0]
