"""Filters: typed, composable conditions on document fields, and their data form.

Build them with Python operators on :class:`F` (``F("age") >= 30``, ``F("tags")
.contains("x")``, ``(a & b) | ~c``) or read them from the plain data form the command
line and remote clients send (:func:`filter_from_data`, the inverse of
``Filter.to_data()``)::

    ["eq", path, value]      also "ne", "gt", "gte", "lt", "lte"
    ["in", path, [value, ...]]
    ["contains", path, value]
    ["exists", path, true | false]
    ["matches", path, pattern]
    ["and", filter, ...]  ["or", filter, ...]  ["not", filter]

Semantics (with the total order of :mod:`~koru.projections._order`): ``eq`` and ``in``
compare by that order's equality (``1 == 1.0``, ``True != 1``); ``gt``/``gte``/``lt``/
``lte`` match only values of the operand's kind (numbers with numbers, strings with
strings, ...), so ``age > 30`` never matches ``"abc"``; a missing field matches no
comparison, no ``in``, ``contains`` or ``matches``, and matches ``ne`` (it is ``not
eq``); ``contains`` is a substring test on a string field with a string operand and
a membership test on a list field; ``exists`` tests presence (null is present);
``matches`` searches a string field with a linear-time regular expression
(:mod:`~koru.projections._regex`). ``and()`` of nothing matches everything, ``or()``
of nothing matches nothing.

Every constructor checks its input (paths are dotted strings, operands are storable
values, patterns are valid and safe) and raises :class:`~koru.InvalidQueryError`
naming the field, so a bad filter fails where it is built, before any work.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import attrs

from koru.events import InvalidDataError, InvalidQueryError, encode_value

from ._paths import check_path
from ._regex import MAX_STATES, Pattern, compile_pattern

__all__ = [
    "COMPARISONS",
    "And",
    "Compare",
    "Contains",
    "Exists",
    "F",
    "Filter",
    "In",
    "Matches",
    "Not",
    "Or",
    "check_value",
    "filter_from_data",
]

#: The comparison operators, by data-form name.
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte")
#: Deepest nesting of and/or/not accepted (a query is data from a client).
MAX_DEPTH = 64
#: Most leaves one filter may hold.
MAX_LEAVES = 10_000
#: Most values the ``in`` conditions of one filter may list, all together. Why: each
#: costs a check and a conversion (about 1.5 µs), so a view definition from a peer
#: listing 3,500,000 (16 MiB) held the event loop some 5 s (h-subck); within this,
#: about 0.1 s.
MAX_IN_VALUES = 65_536


def check_value(value: Any, field: str) -> Any:
    """``value`` if it is a storable value (what ``put`` accepts), else
    :class:`InvalidQueryError` naming ``field``."""
    try:
        encode_value(value)
    except InvalidDataError as exc:
        raise InvalidQueryError(field, f"not a storable value: {exc}") from None
    except RecursionError:
        raise InvalidQueryError(field, "not a storable value: nests too deeply") from None
    return value


class Filter(ABC):
    """A condition on a document. Combine with ``&``, ``|`` and ``~``."""

    __slots__ = ()
    op: ClassVar[str]

    def __and__(self, other: Filter) -> Filter:
        return And((*_flat(self, And), *_flat(_checked(other, "&"), And)))

    def __or__(self, other: Filter) -> Filter:
        return Or((*_flat(self, Or), *_flat(_checked(other, "|"), Or)))

    def __invert__(self) -> Filter:
        return Not(self)

    @abstractmethod
    def to_data(self) -> list[Any]:
        """The plain data form (lists, str, values): what :func:`filter_from_data` reads."""

    def leaves(self) -> Iterable[Filter]:
        """The conditions on single fields inside this filter."""
        yield self


def _checked(other: Any, op: str) -> Filter:
    if not isinstance(other, Filter):
        raise InvalidQueryError(op, f"a filter combines with a filter, not {other!r}")
    return other


def _flat(f: Filter, kind: type[And] | type[Or]) -> tuple[Filter, ...]:
    return f.parts if isinstance(f, kind) else (f,)


@attrs.frozen(slots=True)
class Compare(Filter):
    """``path <op> value`` for op in eq, ne, gt, gte, lt, lte."""

    op: str  # type: ignore[misc]
    path: str
    value: Any

    def to_data(self) -> list[Any]:
        return [self.op, self.path, self.value]


@attrs.frozen(slots=True)
class In(Filter):
    """The field equals one of ``values``."""

    op: ClassVar[str] = "in"
    path: str
    values: tuple[Any, ...]

    def to_data(self) -> list[Any]:
        return ["in", self.path, list(self.values)]


@attrs.frozen(slots=True)
class Contains(Filter):
    """A string field holds ``value`` as a substring, or a list field holds it."""

    op: ClassVar[str] = "contains"
    path: str
    value: Any

    def to_data(self) -> list[Any]:
        return ["contains", self.path, self.value]


@attrs.frozen(slots=True)
class Exists(Filter):
    """The field is present (``present=True``) or missing."""

    op: ClassVar[str] = "exists"
    path: str
    present: bool

    def to_data(self) -> list[Any]:
        return ["exists", self.path, self.present]


@attrs.frozen(slots=True)
class Matches(Filter):
    """A string field matches the regular expression (searched, linear time)."""

    op: ClassVar[str] = "matches"
    path: str
    pattern: Pattern = attrs.field(eq=False)
    source: str = attrs.field()

    def to_data(self) -> list[Any]:
        return ["matches", self.path, self.source]


@attrs.frozen(slots=True)
class And(Filter):
    """Every part holds (true when there are none)."""

    op: ClassVar[str] = "and"
    parts: tuple[Filter, ...]

    def to_data(self) -> list[Any]:
        return ["and", *(p.to_data() for p in self.parts)]

    def leaves(self) -> Iterable[Filter]:
        for p in self.parts:
            yield from p.leaves()


@attrs.frozen(slots=True)
class Or(Filter):
    """Some part holds (false when there are none)."""

    op: ClassVar[str] = "or"
    parts: tuple[Filter, ...]

    def to_data(self) -> list[Any]:
        return ["or", *(p.to_data() for p in self.parts)]

    def leaves(self) -> Iterable[Filter]:
        for p in self.parts:
            yield from p.leaves()


@attrs.frozen(slots=True)
class Not(Filter):
    """The part does not hold."""

    op: ClassVar[str] = "not"
    part: Filter

    def to_data(self) -> list[Any]:
        return ["not", self.part.to_data()]

    def leaves(self) -> Iterable[Filter]:
        yield from self.part.leaves()


class F:
    """A field of a document, by path (``F("address.city")``), to build filters::

    F("age") >= 30
    (F("city") == "Paris") & ~F("banned").exists()
    F("tags").contains("admin") | F("role").is_in(["root", "admin"])
    """

    __slots__ = ("path",)
    __hash__ = None  # type: ignore[assignment]  # == builds a filter

    def __init__(self, path: str) -> None:
        self.path = check_path(path, "path")

    def __repr__(self) -> str:
        return f"F({self.path!r})"

    def _cmp(self, op: str, value: Any) -> Compare:
        return Compare(op, self.path, check_value(value, "value"))

    def __eq__(self, value: Any) -> Compare:  # type: ignore[override]
        return self._cmp("eq", value)

    def __ne__(self, value: Any) -> Compare:  # type: ignore[override]
        return self._cmp("ne", value)

    def __gt__(self, value: Any) -> Compare:
        return self._cmp("gt", value)

    def __ge__(self, value: Any) -> Compare:
        return self._cmp("gte", value)

    def __lt__(self, value: Any) -> Compare:
        return self._cmp("lt", value)

    def __le__(self, value: Any) -> Compare:
        return self._cmp("lte", value)

    def is_in(self, values: Iterable[Any]) -> In:
        """The field equals one of ``values``."""
        return In(self.path, _values(values, "values"))

    def contains(self, value: Any) -> Contains:
        """Substring of a string field, or member of a list field."""
        return Contains(self.path, check_value(value, "value"))

    def exists(self, present: bool = True) -> Exists:
        """The field is present (or, with ``present=False``, missing)."""
        if type(present) is not bool:
            raise InvalidQueryError("present", f"must be a bool, not {present!r}")
        return Exists(self.path, present)

    def matches(self, pattern: str) -> Matches:
        """A string field matches ``pattern`` (Python syntax, searched anywhere; see
        :mod:`~koru.projections._regex` for what is refused)."""
        return Matches(self.path, compile_pattern(pattern, "pattern"), pattern)


def _values(values: Any, field: str) -> tuple[Any, ...]:
    if isinstance(values, str | bytes | dict) or not isinstance(values, Iterable):
        raise InvalidQueryError(field, f"must be a list of values, not {values!r}")
    out = tuple(values)
    for i, v in enumerate(out):
        check_value(v, f"{field}[{i}]")
    return out


def filter_from_data(data: Any, field: str = "where") -> Filter:
    """Read a filter from its data form.

    Raises:
        InvalidQueryError: anything but a well-formed filter, naming where in ``data``.
    """
    leaves = [0, 0, 0]  # conditions, automaton states of the patterns, in's values
    return _read(data, field, 0, leaves)


def _read(data: Any, field: str, depth: int, leaves: list[int]) -> Filter:
    if depth > MAX_DEPTH:
        raise InvalidQueryError(field, f"filters nest deeper than {MAX_DEPTH} levels")
    if type(data) is not list or not data:
        raise InvalidQueryError(
            field, f"a filter is a non-empty list [operator, ...], not {data!r}"
        )
    op = data[0]
    if op in ("and", "or"):
        parts = tuple(
            _read(d, f"{field}[{i}]", depth + 1, leaves) for i, d in enumerate(data[1:], 1)
        )
        return And(parts) if op == "and" else Or(parts)
    if op == "not":
        if len(data) != 2:
            raise InvalidQueryError(field, "not takes exactly one filter")
        return Not(_read(data[1], f"{field}[1]", depth + 1, leaves))
    if type(op) is not str or (op not in COMPARISONS and op not in _LEAVES):
        raise InvalidQueryError(f"{field}[0]", f"unknown operator {op!r}")
    if len(data) != 3:
        raise InvalidQueryError(field, f"{op} takes a path and one operand: [{op!r}, path, x]")
    leaves[0] += 1
    if leaves[0] > MAX_LEAVES:
        raise InvalidQueryError(field, f"a filter may hold at most {MAX_LEAVES} conditions")
    path = check_path(data[1], f"{field}[1]")
    arg, where = data[2], f"{field}[2]"
    if op in COMPARISONS:
        return Compare(op, path, check_value(arg, where))
    if op == "in":
        if type(arg) is not list:
            raise InvalidQueryError(where, f"in takes a list of values, not {arg!r}")
        leaves[2] += len(arg)
        if leaves[2] > MAX_IN_VALUES:
            raise InvalidQueryError(
                where, f"the in conditions of a filter may list at most {MAX_IN_VALUES} values"
            )
        return In(path, _values(arg, where))
    if op == "contains":
        return Contains(path, check_value(arg, where))
    if op == "exists":
        if type(arg) is not bool:
            raise InvalidQueryError(where, f"exists takes true or false, not {arg!r}")
        return Exists(path, arg)
    pattern = compile_pattern(arg, where, MAX_STATES - leaves[1])
    leaves[1] += pattern.size
    return Matches(path, pattern, arg)


_LEAVES = ("in", "contains", "exists", "matches")
