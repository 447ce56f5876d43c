"""The query object: filter, field selection, sort, offset/limit, aggregation.

Immutable and built step by step (each method returns a new query)::

    Query().where(F("age") >= 30, F("city") == "Paris").order_by("-age", "name").limit(10)
    Query().where(F("active") == True).group_by("city").count()
    Query().sum("amount")

A query returns rows (``Row(key, value)``), or with an aggregation one value, or with
``group_by`` one ``Group(group, value)`` per distinct group value. Rules (each part is
checked as it is added, how they combine by :meth:`Query.validate`, which the database
runs before any work):

- ``select`` (rows whose value is a map of the selected paths that are present) and
  ``order_by`` apply to rows only; with an aggregation there are no rows to order.
- ``offset``/``limit`` apply to rows, or to groups (which come sorted by group value
  in the total order); an aggregation without ``group_by`` gives one value.
- ``order_by`` sorts in the total order of :mod:`~koru.projections._order` (missing
  first ascending, last descending), ties broken by key; without it rows come by key.

Aggregations skip documents whose field is missing or null: ``count()`` counts
documents, ``count(path)`` documents with a value there; ``sum`` (0 over nothing) and
``avg`` (None over nothing) take numbers only and raise
:class:`~koru.InvalidQueryError` naming the field and a key holding anything else;
``min``/``max`` follow the total order (None over nothing); ``distinct`` lists the
distinct values in that order. ``group_by`` puts a missing field in the null group,
and without an aggregation counts each group's documents.

The data form (:meth:`Query.to_data`, :meth:`Query.from_data`) is a map whose entries
are left out when they hold their default::

    {"where": filter, "select": [path, ...], "order_by": [[path, "asc" | "desc"], ...],
     "offset": n, "limit": n, "aggregate": [op] | [op, path], "group_by": path}
"""

from __future__ import annotations

from typing import Any, NamedTuple

import attrs

from koru.events import InvalidQueryError

from ._filters import MAX_DEPTH as _MAX_DEPTH
from ._filters import MAX_IN_VALUES as _MAX_IN_VALUES
from ._filters import MAX_LEAVES as _MAX_LEAVES
from ._filters import And, Filter, In, Matches, Not, Or, filter_from_data
from ._paths import check_path
from ._regex import MAX_STATES

__all__ = ["AGGREGATES", "MAX_FIELDS", "Group", "Query", "Row"]

#: Aggregation operators: whether each takes a path (count may or may not).
AGGREGATES = {"count": None, "sum": True, "avg": True, "min": True, "max": True, "distinct": True}
_KEYS = ("where", "select", "order_by", "offset", "limit", "aggregate", "group_by")


class Row(NamedTuple):
    """One document a query returned: its key and value (or selected fields)."""

    key: str
    value: Any


class Group(NamedTuple):
    """One group of a ``group_by`` query: the group's value and its aggregate."""

    group: Any
    value: Any


def _known(op: Any) -> bool:
    """Whether ``op`` names an aggregation (whatever its type: it may be a list)."""
    return type(op) is str and op in AGGREGATES


#: The largest offset or limit: what a query's data form can carry (a view's definition
#: is stored, and CBOR ints stop at 64 bits), far beyond any namespace.
_MAX_COUNT = 2**64 - 1


def _count(value: Any, field: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_COUNT:
        raise InvalidQueryError(
            field, f"must be a non-negative int of at most 64 bits, not {value!r}"
        )
    return value


def check_filter(f: Any, field: str) -> Filter:
    """``f`` if it is a filter of bounded depth and size (it may have been built in
    Python, say ``~`` ten thousand times), else :class:`InvalidQueryError`."""
    if not isinstance(f, Filter):
        raise InvalidQueryError(field, f"must be a filter (built with F), not {f!r}")
    stack: list[tuple[Filter, int]] = [(f, 0)]
    leaves = states = values = 0
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise InvalidQueryError(field, f"filters nest deeper than {_MAX_DEPTH} levels")
        if isinstance(node, And | Or):
            stack.extend((p, depth + 1) for p in node.parts)
        elif isinstance(node, Not):
            stack.append((node.part, depth + 1))
        else:
            leaves += 1
            if leaves > _MAX_LEAVES:
                raise InvalidQueryError(field, f"at most {_MAX_LEAVES} conditions")
            if isinstance(node, Matches):
                check_path(node.path, field)
                size = getattr(node.pattern, "size", None)
                if type(size) is not int:
                    raise InvalidQueryError(field, "matches holds no compiled pattern")
                states += size
                if states > MAX_STATES:
                    raise InvalidQueryError(
                        field,
                        f"the filter's patterns expand to over {MAX_STATES} automaton "
                        "states in all",
                    )
            else:
                data = _check_leaf(node, field)
                if isinstance(node, In):
                    # Counted in its data form, as read back: values held in a tuple
                    # subclass were not counted at all (h-last).
                    values += len(data[2])
                    if values > _MAX_IN_VALUES:
                        raise InvalidQueryError(
                            field,
                            f"the in conditions of a filter may list at most {_MAX_IN_VALUES} "
                            "values",
                        )
    return f


def _check_leaf(leaf: Filter, field: str) -> Any:
    """A condition is one its data form reads back as (operator, path and operand
    checked). Why: its classes are public, and a condition built by hand (an unknown
    operator, a path that is not text, an operand that is no value) raised KeyError,
    AttributeError or TypeError from the engine instead of InvalidQueryError."""
    try:
        data = leaf.to_data()
    except Exception:  # a condition of another shape: whatever its to_data raises
        raise InvalidQueryError(field, f"not a well-formed condition: {leaf!r}") from None
    if filter_from_data(data, field) != leaf:
        raise InvalidQueryError(field, f"not a well-formed condition: {leaf!r}")
    return data


#: The most paths a query may select or sort by. Why: each is looked up in every row,
#: and 100,000 of them held the event loop for seconds over 200 documents (h-views).
MAX_FIELDS = 1024


def _check_count(items: tuple[Any, ...], field: str) -> None:
    if len(items) > MAX_FIELDS:
        raise InvalidQueryError(field, f"at most {MAX_FIELDS} paths, not {len(items)}")


@attrs.frozen(slots=True)
class Query:
    """A query over the documents of a namespace (see the module documentation)."""

    filter: Filter | None = None
    fields: tuple[str, ...] | None = None
    order: tuple[tuple[str, bool], ...] = ()  # (path, descending)
    skip: int = 0
    take: int | None = None
    aggregate: tuple[str, str | None] | None = None
    group: str | None = None

    # -- building ----------------------------------------------------------------------

    def where(self, *filters: Filter) -> Query:
        """Keep documents matching every filter (and any filter given before)."""
        checked = [check_filter(f, f"where[{i}]") for i, f in enumerate(filters)]
        if not checked:
            return self
        if self.filter is not None:
            checked.insert(0, self.filter)
        combined = checked[0] if len(checked) == 1 else And(tuple(checked))
        return attrs.evolve(self, filter=check_filter(combined, "where"))

    def select(self, *paths: str) -> Query:
        """Return only these fields of each row (as a map path -> value), at most
        ``MAX_FIELDS`` of them."""
        _check_count(paths, "select")
        checked = tuple(check_path(p, f"select[{i}]") for i, p in enumerate(paths))
        return attrs.evolve(self, fields=checked)

    def order_by(self, *specs: str | tuple[str, str]) -> Query:
        """Sort rows by fields: ``"age"`` or ``("age", "asc")`` ascending, ``"-age"``
        or ``("age", "desc")`` descending; the first spec decides first (at most
        ``MAX_FIELDS`` of them)."""
        _check_count(specs, "order_by")
        order = []
        for i, spec in enumerate(specs):
            field = f"order_by[{i}]"
            if type(spec) is str and spec.startswith("-"):
                order.append((check_path(spec[1:], field), True))
            elif type(spec) is str:
                order.append((check_path(spec, field), False))
            elif type(spec) in (tuple, list) and len(spec) == 2 and spec[1] in ("asc", "desc"):
                order.append((check_path(spec[0], field), spec[1] == "desc"))
            else:
                raise InvalidQueryError(
                    field, f"a sort is 'path', '-path' or (path, 'asc'|'desc'), not {spec!r}"
                )
        return attrs.evolve(self, order=tuple(order))

    def offset(self, n: int) -> Query:
        """Skip the first ``n`` rows (or groups)."""
        return attrs.evolve(self, skip=_count(n, "offset"))

    def limit(self, n: int | None) -> Query:
        """Return at most ``n`` rows (or groups); None for no limit."""
        return attrs.evolve(self, take=None if n is None else _count(n, "limit"))

    def group_by(self, path: str) -> Query:
        """One result per distinct value of ``path``, each with the query's aggregation."""
        return attrs.evolve(self, group=check_path(path, "group_by"))

    def _agg(self, op: str, path: str | None) -> Query:
        if path is not None:
            path = check_path(path, "aggregate[1]")
        elif AGGREGATES[op]:
            raise InvalidQueryError("aggregate", f"{op} needs a path")
        return attrs.evolve(self, aggregate=(op, path))

    def count(self, path: str | None = None) -> Query:
        """The number of documents (with a value at ``path``, if given)."""
        return self._agg("count", path)

    def sum(self, path: str) -> Query:
        """The sum of the numbers at ``path`` (an int if all are ints)."""
        return self._agg("sum", path)

    def avg(self, path: str) -> Query:
        """The mean of the numbers at ``path`` (None over nothing)."""
        return self._agg("avg", path)

    def min(self, path: str) -> Query:
        """The least value at ``path`` in the total order."""
        return self._agg("min", path)

    def max(self, path: str) -> Query:
        """The greatest value at ``path`` in the total order."""
        return self._agg("max", path)

    def distinct(self, path: str) -> Query:
        """The distinct values at ``path``, in the total order."""
        return self._agg("distinct", path)

    # -- the data form -----------------------------------------------------------------

    def to_data(self) -> dict[str, Any]:
        """The plain data form (maps, lists, str, int, values), defaults left out."""
        out: dict[str, Any] = {}
        if self.filter is not None:
            out["where"] = self.filter.to_data()
        if self.fields is not None:
            out["select"] = list(self.fields)
        if self.order:
            out["order_by"] = [[p, "desc" if d else "asc"] for p, d in self.order]
        if self.skip:
            out["offset"] = self.skip
        if self.take is not None:
            out["limit"] = self.take
        if self.aggregate is not None:
            op, path = self.aggregate
            out["aggregate"] = [op] if path is None else [op, path]
        if self.group is not None:
            out["group_by"] = self.group
        return out

    @classmethod
    def from_data(cls, data: Any) -> Query:
        """Read a query from its data form.

        Raises:
            InvalidQueryError: anything but a well-formed query, naming the entry.
        """
        if type(data) is not dict:
            raise InvalidQueryError("query", f"a query is a map, not {type(data).__name__}")
        for k in data:
            if k not in _KEYS:
                raise InvalidQueryError(str(k), f"unknown query entry (known: {', '.join(_KEYS)})")
        q = cls()
        if "where" in data:
            q = attrs.evolve(q, filter=filter_from_data(data["where"]))
        if "select" in data:
            paths = data["select"]
            if type(paths) is not list:
                raise InvalidQueryError("select", f"must be a list of paths, not {paths!r}")
            q = q.select(*paths)
        if "order_by" in data:
            specs = data["order_by"]
            if type(specs) is not list or not all(type(s) is list for s in specs):
                raise InvalidQueryError(
                    "order_by", f"must be a list of [path, 'asc'|'desc'], not {specs!r}"
                )
            q = q.order_by(*(tuple(s) for s in specs))
        if "offset" in data:
            q = q.offset(data["offset"])
        if "limit" in data:
            limit = data["limit"]
            q = q.limit(_count(limit, "limit"))  # null is the default: leave it out
        if "aggregate" in data:
            agg = data["aggregate"]
            if type(agg) is not list or not 1 <= len(agg) <= 2 or not _known(agg[0]):
                raise InvalidQueryError(
                    "aggregate", f"must be [op] or [op, path] with op in {list(AGGREGATES)}"
                )
            q = q._agg(agg[0], agg[1] if len(agg) == 2 else None)
        if "group_by" in data:
            q = q.group_by(data["group_by"])
        return q.validate()

    def validate(self) -> Query:
        """This query, if its parts make sense together (see the module documentation);
        the database checks this before running one, :meth:`from_data` when reading.

        Raises:
            InvalidQueryError: naming the part that is malformed (a query built by
                calling ``Query(...)`` rather than its methods is checked here) or has no
                meaning with the others.
        """
        self._check_parts()
        if self.aggregate is not None:
            if self.fields is not None:
                raise InvalidQueryError("select", "an aggregation returns no rows to select from")
            if self.order:
                raise InvalidQueryError(
                    "order_by", "an aggregation returns no rows to order (groups come sorted)"
                )
            if self.group is None and (self.skip or self.take is not None):
                raise InvalidQueryError(
                    "offset" if self.skip else "limit",
                    "an aggregation without group_by is one value",
                )
        elif self.group is not None and (self.fields is not None or self.order):
            raise InvalidQueryError("group_by", "group_by returns groups, not rows")
        return self

    def _check_parts(self) -> None:
        """Each part as its building method would have checked it: the attributes are
        public, and ``Query(skip=-5)`` answered the last five rows, ``Query(filter=f)``
        with ``f`` nested 100,000 deep raised RecursionError."""
        if self.filter is not None:
            check_filter(self.filter, "where")
        if self.fields is not None:
            if type(self.fields) is not tuple:
                raise InvalidQueryError("select", f"must be a tuple of paths, not {self.fields!r}")
            _check_count(self.fields, "select")
            for i, p in enumerate(self.fields):
                check_path(p, f"select[{i}]")
        if type(self.order) is not tuple:
            raise InvalidQueryError("order_by", f"must be a tuple, not {self.order!r}")
        _check_count(self.order, "order_by")
        for i, spec in enumerate(self.order):
            if type(spec) is not tuple or len(spec) != 2 or type(spec[1]) is not bool:
                raise InvalidQueryError(
                    f"order_by[{i}]", f"must be (path, descending), not {spec!r}"
                )
            check_path(spec[0], f"order_by[{i}]")
        _count(self.skip, "offset")
        if self.take is not None:
            _count(self.take, "limit")
        if self.aggregate is not None:
            agg = self.aggregate
            if type(agg) is not tuple or len(agg) != 2 or not _known(agg[0]):
                raise InvalidQueryError("aggregate", f"must be (op, path or None), not {agg!r}")
            if agg[1] is not None:
                check_path(agg[1], "aggregate[1]")
            elif AGGREGATES[agg[0]]:
                raise InvalidQueryError("aggregate", f"{agg[0]} needs a path")
        if self.group is not None:
            check_path(self.group, "group_by")

    # -- introspection -----------------------------------------------------------------

    def paths(self) -> set[str]:
        """Every path the query reads (to know which writes can change its answer)."""
        found: set[str] = set(self.fields or ())
        if self.filter is not None:
            found.update(leaf.path for leaf in self.filter.leaves())  # type: ignore[attr-defined]
        found.update(p for p, _ in self.order)
        if self.aggregate is not None and self.aggregate[1] is not None:
            found.add(self.aggregate[1])
        if self.group is not None:
            found.add(self.group)
        return found


def as_query(q: Any, field: str = "query") -> Query:
    """A :class:`Query` from a query or its data form (what the database accepts)."""
    if isinstance(q, Query):
        return q.validate()
    if type(q) is dict:
        return Query.from_data(q)
    raise InvalidQueryError(field, f"must be a Query or its data form (a map), not {q!r}")
