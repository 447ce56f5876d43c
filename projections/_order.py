"""The one total order of values, for sorting, comparing, grouping and indexing.

Queries sort on fields that may be missing or hold any type, and an index must place
every value somewhere; both need one order that is total, documented and the same
everywhere (the scan, the indexes, the views, a remote client's expectations). Values
are ranked by kind, then compared within their kind:

    missing < null < false < true < numbers < strings < bytes < lists < maps

- numbers: ints and floats together, by numeric value (``1 == 1.0``; ``-0.0 == 0.0``;
  infinities at the ends). A bool is *not* a number here (Python's ``True == 1`` is not
  ours);
- strings: by Unicode code point; bytes: bytewise;
- lists: element by element in this order, a prefix before the longer list;
- maps: as their ``(key, value)`` pairs sorted by key, compared pair by pair.

Two values are *equal* for a query (``eq``, ``in``, ``contains``, ``distinct``,
``group_by``, index buckets) exactly when their :func:`order_key` is equal.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["MISSING", "NUMBER", "key_from_plain", "order_key", "plain_key", "rank", "same"]


class _Missing:
    """The value of a path that leads nowhere (distinct from null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


#: Stands for a field that is not there.
MISSING: Final = _Missing()

#: The rank of numbers (ints and floats).
NUMBER = 3

_RANK = {
    type(None): 1,
    bool: 2,
    int: NUMBER,
    float: NUMBER,
    str: 4,
    bytes: 5,
    list: 6,
    dict: 7,
}


def rank(value: Any) -> int:
    """The kind of ``value`` in the order (0 for MISSING)."""
    r = _RANK.get(type(value))
    if r is None:
        if value is MISSING:
            return 0
        raise TypeError(f"not a stored value: {type(value).__name__}")
    return r


def order_key(value: Any) -> tuple[Any, ...]:
    """A hashable key whose ``<``/``==`` is the total order above."""
    t = type(value)
    if t is str:
        return (4, value)
    if t is int or t is float:
        return (NUMBER, value)
    if value is None:
        return (1,)
    if t is bool:
        return (2, value)
    if t is dict:
        return (7, tuple(sorted((k, order_key(v)) for k, v in value.items())))
    if t is list:
        return (6, tuple(map(order_key, value)))
    if t is bytes:
        return (5, value)
    if value is MISSING:
        return (0,)
    raise TypeError(f"not a stored value: {t.__name__}")


def same(a: Any, b: Any) -> bool:
    """True if ``a`` and ``b`` are equal values for a query."""
    return order_key(a) == order_key(b)


def plain_key(key: tuple[Any, ...]) -> list[Any]:
    """An order key as plain data (nested lists), for checkpoints."""
    return [plain_key(x) if type(x) is tuple else x for x in key]


def key_from_plain(data: Any) -> tuple[Any, ...]:
    """The order key :func:`plain_key` gave (ValueError if it cannot be one)."""
    if type(data) is not list or not data or type(data[0]) is not int:
        raise ValueError(f"not an order key: {data!r}")
    return _tuples(data)


def _tuples(data: list[Any]) -> tuple[Any, ...]:
    return tuple(_tuples(x) if type(x) is list else x for x in data)
