"""Materialized views from the face: define them (events), fill them, read them.

A view is the :class:`~koru.projections._views.Views` projection's; this collaborator
writes the definition events (``perspective`` agent, through ``Writer.emit``), fills a
view its definition left pending from the namespace's current documents (through the
document cache, so values are proven), and reads a view: rows are the maintained
members, sorted and paged, with their values read afresh; aggregations are the
maintained accumulators' results.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from functools import partial
from typing import Any, NamedTuple

from koru.events import (
    InvalidDataError,
    InvalidQueryError,
    NotFoundError,
    ViewEvent,
    check_name,
    encode_value,
)
from koru.projections import KvState
from koru.projections._query import Group, Row, as_query
from koru.projections._rows import select_fields
from koru.projections._views import View, Views

from ._documents import DocumentCache, live_bytes, read_live
from ._queries import ROW_FIELDS, refuse_grouped, weigh_selected
from ._reader import ValueReader
from ._reads import ANSWER_BYTES, Budget, refuse_past_answer
from ._space import DEFAULT, Space
from ._writer import Writer

__all__ = ["VIEW_GUARD", "ViewInfo", "Viewing"]

#: Set by an authorized handle around its view calls (per task): called with the stored
#: namespace of the view a call is about to read, replace, drop or recompute, right
#: before it does, with no await between. Why: the handle checked that namespace before the call,
#: and the call may yield first; meanwhile another task could replace the view by one
#: over a namespace the identity may not administer (h-auth2).
VIEW_GUARD: ContextVar[Callable[[str], None] | None] = ContextVar("koru_view_guard", default=None)

#: Members of a served view with select read at a time, between counts of its bytes.
_SLICE = 256


def _guard(namespace: str) -> None:
    guard = VIEW_GUARD.get()
    if guard is not None:
        guard(namespace)


class ViewInfo(NamedTuple):
    """One materialized view (``db.list_views()``)."""

    name: str
    namespace: str
    #: The query's data form.
    query: dict[str, Any]
    #: True until it has been computed from the namespace's documents.
    building: bool
    #: Why the view cannot be read (a definition that does not parse), or None.
    error: str | None


class Viewing:
    """View definitions, filling and reading for one database."""

    __slots__ = ("documents", "expired", "kv", "values", "views", "writer")

    def __init__(
        self,
        kv: KvState,
        views: Views,
        documents: DocumentCache,
        values: ValueReader,
        writer: Writer,
        expired: Callable[[str], set[str]],
    ) -> None:
        self.expired = expired
        self.kv = kv
        self.views = views
        self.documents = documents
        self.values = values
        self.writer = writer

    def create(self, name: str, namespace: str, query: Any) -> None:
        check_name(name, "view")
        check_name(namespace, "namespace")
        q = as_query(query)
        try:
            data = encode_value(q.to_data())
        except InvalidDataError as exc:  # a valid query the log cannot hold as a value
            raise InvalidQueryError(
                "query", f"cannot be stored as a view definition: {exc}"
            ) from None
        replaced = self.views.by_name.get(name)
        if replaced is not None:
            _guard(replaced.namespace)
        self.writer.emit("perspective", lambda h: ViewEvent(*h, "create", name, namespace, data))
        view = self.views.by_name[name]
        self.fill(view)

    def delete(self, name: str, space: Space = DEFAULT) -> None:
        self._get(name, space)
        namespace = self.views.by_name[name].namespace
        _guard(namespace)
        self.writer.emit("perspective", lambda h: ViewEvent(*h, "drop", name, namespace, None))

    def refresh(self, name: str, space: Space = DEFAULT) -> None:
        view = self._get(name, space)
        _guard(view.namespace)
        self.fill(view)

    def listing(self, space: Space = DEFAULT) -> list[ViewInfo]:
        """The views of ``space``, by name, named as its callers name them."""
        out = []
        for stored in self.views.by_name:
            view = self.views.by_name[stored]
            name, namespace = space.outward(stored), space.outward(view.namespace)
            if name is None or namespace is None:
                continue
            data = view.query.to_data() if view.query is not None else {}
            out.append(ViewInfo(name, namespace, data, view.pending, view.error))
        return sorted(out)

    def _get(self, name: str, space: Space = DEFAULT) -> View:
        """The view stored as ``name``, if it reads a namespace of ``space`` (a crafted
        definition naming one space's view over another's namespace is no view)."""
        check_name(name, "view")
        view = self.views.by_name.get(name)
        if view is None or not space.owns(view.namespace):
            raise NotFoundError(f"no view called {space.outward(name) or name!r}")
        return view

    def fill(self, view: View) -> None:
        """Recompute ``view`` from its namespace's current documents."""
        self.catch_up(view.namespace)
        docs = self.documents.get(view.namespace)
        gone = self.expired(view.namespace)
        view.fill([(k, d) for k, d in zip(docs.keys, docs.docs, strict=True) if k not in gone])

    def catch_up(self, namespace: str) -> None:
        """Hand the views of ``namespace`` the current documents of the keys written
        since they last caught up (read through the database, so proven), and take out
        the values whose time to live has passed (no write says so until the expiry
        process records it)."""
        dirty = self.views.dirty.get(namespace)
        gone = self.expired(namespace)
        if dirty or gone:
            values = self.values
            wanted = sorted((dirty or set()) - gone)
            keys, docs = read_live(
                self.kv, namespace, wanted, values.value_bytes, values.cache.peek
            )
            self.views.catch_up(namespace, dict(zip(keys, docs, strict=True)), gone)

    def read(self, name: str, space: Space = DEFAULT) -> Any:
        """The view's answer, as ``db.query`` would give it now."""
        view = self._get(name, space)
        _guard(view.namespace)
        if view.error is not None or view.query is None:
            raise InvalidQueryError("view", view.error or "unusable definition")
        self.catch_up(view.namespace)
        if view.pending:
            self.fill(view)
        q = view.query
        served = ANSWER_BYTES.get() is not None
        if view.grouped is not None:
            result = view.grouped.result(partial(refuse_grouped, "view") if served else None)
            return [Group(g, v) for g, v in result] if q.group is not None else result
        keys = view.ordered_members()
        less = "query its namespace with limit and offset"
        if served and q.fields is None:
            size = live_bytes(self.kv, view.namespace, keys) + sum(map(len, keys))
            refuse_past_answer("view", size, len(keys), ROW_FIELDS, less)
        values = self.values
        if served and q.fields is not None:
            # Read and weighed in slices: refused once over, not after reading all.
            budget = Budget("view", less)
            found, docs = [], []
            for at in range(0, len(keys), _SLICE):
                part = read_live(
                    self.kv, view.namespace, keys[at : at + _SLICE], values.value_bytes,
                    values.cache.peek,
                )  # fmt: skip
                weigh_selected(budget, q.fields, *part)
                found += part[0]
                docs += part[1]
        else:
            found, docs = read_live(
                self.kv, view.namespace, keys, values.value_bytes, values.cache.peek
            )
        assert found == keys, "a member without a current value"
        if q.fields is not None:
            return [Row(k, select_fields(d, q.fields)) for k, d in zip(found, docs, strict=True)]
        return [Row(k, d) for k, d in zip(found, docs, strict=True)]
