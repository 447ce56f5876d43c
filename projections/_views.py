"""Materialized views: a query's answer kept up to date, write by write.

A view is defined by a ``view`` event (name, namespace, the query's data form) and
maintained incrementally: each document written to its namespace is tested against the
view's filter once, and only that document's contribution changes. No write re-runs a
query.

Maintenance is deferred: the fold only notes which keys of a namespace with views were
written (one set insertion per write, whatever the number of views, and no decoding,
so ten views cost puts little), and before any view of the namespace is read the
database hands the current documents of those keys to :meth:`Views.catch_up`, which
updates every view of the namespace once per key (several writes to a key between
reads cost one update). Values stay in the log: the projection holds keys and the
parts of documents its views need.

- A view of rows keeps its member keys, each with the order keys of its sort fields
  (values stay in the log: reading the view sorts the members, pages them and reads
  just those values through the database).
- A view with an aggregation keeps each member's contribution (its group and the value
  it adds) in the same add/remove accumulators a scan uses
  (:class:`~koru.projections._grouped.Grouped`), so it equals re-running the query
  exactly: sums are exact, ``min``/``max`` keep a count per distinct value and look at
  those counts again only when the last copy of the extreme leaves.

Every query shape is maintained this way. A full recompute (from the namespace's
current documents, by the database) happens only when a view's definition is folded
while the namespace may already hold documents: a pure fold cannot read them, so the
view starts *pending*, as an index does (right after ``create_view``, after a replay
or an ingested definition), and on ``refresh_view``.

Order independence comes free: catching up reads each key's current version, whatever
order its writes arrived in. Definitions are last-writer-wins by ``(hlc, origin, event
id)``. A definition whose query does not
parse (a crafted event) makes a view that raises its reason when read, never a fold
that fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import cbor2

from koru.events import Event, InvalidQueryError, PutEvent, PutRun, ViewEvent

from ._grouped import Grouped
from ._indexes import write_order
from ._order import MISSING, key_from_plain, order_key, plain_key
from ._paths import get_path, split_path
from ._predicate import Predicate, compile_filter
from ._query import Query

__all__ = ["View", "Views"]

Key = tuple[Any, ...]


class View:
    """One view: its query and its maintained state."""

    __slots__ = (
        "_order_segs",
        "_update",
        "error",
        "grouped",
        "members",
        "name",
        "namespace",
        "pending",
        "predicate",
        "query",
        "source",
    )

    def __init__(self, name: str, namespace: str, source: bytes) -> None:
        self.name = name
        self.namespace = namespace
        self.source = source
        self.query: Query | None = None
        self.error: str | None = None
        self.pending = True
        #: key -> sort keys (rows) or (group, value) contribution (aggregations)
        self.members: dict[str, Any] = {}
        self.grouped: Grouped | None = None
        self.predicate: Predicate = _nothing
        self._order_segs: tuple[tuple[str, ...], ...] = ()
        try:
            data = cbor2.loads(source)
            self.query = Query.from_data(data)
            self.predicate = compile_filter(self.query.filter)
            self._order_segs = tuple(split_path(p) for p, _ in self.query.order)
        except InvalidQueryError as exc:
            self.error = str(exc)
        except Exception as exc:  # a crafted event: the view reports it when read
            self.error = f"unusable view definition: {exc!r}"
        self.reset()

    @property
    def aggregated(self) -> bool:
        q = self.query
        return q is not None and (q.aggregate is not None or q.group is not None)

    def reset(self) -> None:
        self.members = {}
        self.grouped = Grouped(self.query) if self.aggregated else None  # type: ignore[arg-type]
        self._update = self._updater()

    def contribution(self, doc: Any) -> Any:
        """What ``doc`` adds to the view (None if it does not pass the filter)."""
        if not self.predicate(doc):
            return None
        if self.grouped is not None:
            return self.grouped.contribution(doc)
        return tuple(order_key(get_path(doc, segs)) for segs in self._order_segs)

    def change(self, key: str, new: Any) -> None:
        """Replace ``key``'s contribution (None: not a member)."""
        old = self.members.pop(key, None)
        grouped = self.grouped
        if old is not None and grouped is not None:
            grouped.remove_contribution(key, old[0], old[1])
        if new is not None:
            self.members[key] = new
            if grouped is not None:
                grouped.add_contribution(key, new[0], new[1])

    def update(self, key: str, doc: Any) -> None:
        """``key`` now holds ``doc`` (MISSING: deleted): the write path's one call,
        :meth:`contribution` and :meth:`change` in one (see :meth:`_updater`)."""
        self._update(key, doc)

    def _updater(self) -> Callable[[str, Any], None]:
        """The write path's update, specialised to the view's shape: a view is
        updated on every write to its namespace, ten views on every put, so each
        saved call counts (the bench holds puts with 10 views to 0.7x of none)."""
        members, predicate, grouped = self.members, self.predicate, self.grouped
        pop = members.pop
        if grouped is None:
            segs = self._order_segs
            if not segs:

                def rows(key: str, doc: Any) -> None:
                    pop(key, None)
                    if doc is not MISSING and predicate(doc):
                        members[key] = ()

                return rows

            def sorted_rows(key: str, doc: Any) -> None:
                pop(key, None)
                if doc is not MISSING and predicate(doc):
                    members[key] = tuple([order_key(get_path(doc, s)) for s in segs])

            return sorted_rows
        if grouped.simple is None:

            def groups(key: str, doc: Any) -> None:
                old = pop(key, None)
                if old is not None:
                    grouped.remove_contribution(key, old[0], old[1])
                if doc is not MISSING and predicate(doc):
                    members[key] = grouped.add_doc(key, doc)

            return groups
        # One value per document, no groups: the accumulator directly.
        add, remove = grouped.whole.add, grouped.whole.remove
        field = grouped.simple

        def whole(key: str, doc: Any) -> None:
            old = pop(key, None)
            if old is not None and old[1] is not MISSING:
                remove(key, old[1])
            if doc is not MISSING and predicate(doc):
                if field == "":
                    v: Any = True
                else:
                    v = doc.get(field, MISSING) if type(doc) is dict else MISSING
                    if v is None:
                        v = MISSING
                members[key] = (None, v)
                if v is not MISSING:
                    add(key, v)

        return whole

    def fill(self, docs: list[tuple[str, Any]]) -> None:
        """Recompute from the namespace's current documents (no longer pending)."""
        self.reset()
        if self.error is None:
            for key, doc in docs:
                self.change(key, self.contribution(doc))
        self.pending = False

    def ordered_members(self) -> list[str]:
        """The member keys in the query's order (ties by key), offset and limit applied."""
        q = self.query
        assert q is not None
        keys = sorted(self.members)
        members = self.members
        for i in range(len(q.order) - 1, -1, -1):
            keys.sort(key=lambda k: members[k][i], reverse=q.order[i][1])
        end = None if q.take is None else q.skip + q.take
        return keys[q.skip : end]


def _nothing(doc: Any) -> bool:
    return False


class Views:
    """Every materialized view, with their definitions and the keys written since
    the views of their namespace last caught up."""

    __slots__ = ("by_name", "by_namespace", "definitions", "dirty")

    name: ClassVar[str] = "views"
    version: ClassVar[int] = 1

    def __init__(self) -> None:
        #: view name -> (order of the latest definition event, the event's
        #: namespace, its query bytes or None for a drop)
        self.definitions: dict[str, tuple[bytes, str, bytes | None]] = {}
        self.by_name: dict[str, View] = {}
        self.by_namespace: dict[str, dict[str, View]] = {}
        #: namespace with views -> keys written since its views caught up
        self.dirty: dict[str, set[str]] = {}

    @property
    def put_namespaces(self) -> dict[str, set[str]]:
        """The namespaces whose plain puts the fold acts on (see ``Projections``):
        those with a view. Never rebound."""
        return self.dirty

    # -- the fold ----------------------------------------------------------------------

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        if type(event) is PutEvent:  # one set insertion, whatever the number of views
            dirty = self.dirty.get(event.namespace)
            if dirty is not None:
                dirty.add(event.key)
            return
        if type(event) is ViewEvent:
            self._define(event, event_id)
            return
        if self.dirty:
            for w in event.writes:
                dirty = self.dirty.get(w.namespace)
                if dirty is not None:
                    dirty.add(w.key)

    def apply_run(self, run: PutRun) -> None:
        """Fold a run of puts: the keys written in namespaces with views."""
        dirty = self.dirty
        if dirty:
            for _, (namespace, key, _, _), _, _ in run.rows:
                keys = dirty.get(namespace)
                if keys is not None:
                    keys.add(key)

    def _define(self, event: ViewEvent, event_id: bytes) -> None:
        order = write_order(event.hlc, event.origin, event_id)
        known = self.definitions.get(event.name)
        if known is not None and known[0] >= order:
            return  # an older (or the same) definition: the latest one stands
        self.definitions[event.name] = (order, event.namespace, event.query)
        self._drop(event.name)
        if event.action == "create" and event.query is not None:
            self._add(View(event.name, event.namespace, event.query))

    def _add(self, view: View) -> None:
        self.by_name[view.name] = view
        self.by_namespace.setdefault(view.namespace, {})[view.name] = view
        self.dirty.setdefault(view.namespace, set())

    def _drop(self, name: str) -> None:
        old = self.by_name.pop(name, None)
        if old is None:
            return
        views = self.by_namespace[old.namespace]
        del views[name]
        if not views:
            del self.by_namespace[old.namespace]
            del self.dirty[old.namespace]

    # -- catching up (the database reads the documents) --------------------------------

    def catch_up(self, namespace: str, docs: dict[str, Any], absent: Iterable[str] = ()) -> None:
        """Apply the current documents of the dirty keys of ``namespace`` (a key
        missing from ``docs`` has no current value) and of the keys in ``absent`` (no
        longer current, though nothing was written: an expired time to live) to its
        views, then forget the dirty keys but those in ``absent``: whether a value
        has expired depends on the reading it was judged by, which a crash forgets
        (the read floor after it may be behind that reading, the value current
        again), so a checkpoint keeps them to be judged again."""
        dirty = self.dirty.get(namespace)
        if dirty is None:
            return
        keys = dirty.union(absent) if absent else dirty
        if not keys:
            return
        for view in self.by_namespace[namespace].values():
            if not view.pending and view.error is None:
                update = view._update
                for key in keys:
                    update(key, docs.get(key, MISSING))
        dirty.clear()
        dirty.update(absent)

    # -- checkpoints -------------------------------------------------------------------

    def capture(self) -> dict[str, Any]:
        definitions = [[n, o, ns, q] for n, (o, ns, q) in self.definitions.items()]
        views = []
        for view in self.by_name.values():
            if view.aggregated:
                members = [
                    [k, g, None if v is MISSING else v] for k, (g, v) in view.members.items()
                ]
            else:
                members = [[k, [plain_key(x) for x in sk]] for k, sk in view.members.items()]
            views.append([view.name, view.pending, members])
        dirty = [[ns, sorted(keys)] for ns, keys in self.dirty.items()]
        return {"definitions": definitions, "views": views, "dirty": dirty}

    @classmethod
    def restore(cls, data: Any) -> Views:
        state = cls()
        for name, order, ns, query in data["definitions"]:
            if not (type(name) is str and type(order) is bytes and type(ns) is str):
                raise ValueError("malformed view definition")
            if not (query is None or type(query) is bytes):
                raise ValueError("malformed view definition")
            state.definitions[name] = (order, ns, query)
            if query is not None:
                state._add(View(name, ns, query))
        for name, pending, members in data["views"]:
            view = state.by_name[name]
            if type(pending) is not bool or type(members) is not list:
                raise ValueError("malformed view")
            view.reset()
            for member in members:
                key = member[0]
                if type(key) is not str:
                    raise ValueError("malformed view member")
                if view.aggregated:
                    v = MISSING if member[2] is None else member[2]
                    view.change(key, (member[1], v))
                else:
                    view.change(key, tuple(key_from_plain(x) for x in member[1]))
            view.pending = pending
        for ns, keys in data["dirty"]:
            if ns not in state.dirty or not all(type(k) is str for k in keys):
                raise ValueError("malformed dirty keys")
            state.dirty[ns].update(keys)
        return state
