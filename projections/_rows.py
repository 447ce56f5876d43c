"""Rows of a query's answer: sorting, field selection, and copies that share nothing.

Sorting is a stable pass per sort field, last field first, after ordering by key (so
ties are broken by key), each pass on the raw values when a column holds only numbers
or only strings and on :func:`~koru.projections._order.order_key` otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter
from typing import Any

import cbor2

from ._order import MISSING, order_key
from ._paths import get_path, split_path
from ._predicate import NUMBERS as _NUM
from ._predicate import Doc

__all__ = ["fresh", "select_fields", "sort_rows"]


def fresh(value: Any) -> Any:
    """A copy of ``value`` that shares nothing mutable with it (results must never
    alias the documents a scan or a view holds)."""
    if type(value) in (list, dict):
        return cbor2.loads(cbor2.dumps(value))
    return value


def sort_rows(
    rows: list[tuple[str, Doc]], order: Iterable[tuple[str, bool]]
) -> list[tuple[str, Doc]]:
    """Rows sorted by key, then stably by each ``(path, descending)`` from last to first:
    the total order, ties broken by key."""
    rows = sorted(rows, key=itemgetter(0))
    for path, desc in reversed(tuple(order)):
        segs = split_path(path)
        if len(segs) == 1 and not segs[0].isdecimal():
            k = segs[0]
            col = [d.get(k, MISSING) if type(d) is dict else MISSING for _, d in rows]
        else:
            col = [get_path(d, segs) for _, d in rows]
        kinds = set(map(type, col))
        if not (kinds <= _NUM or kinds == {str}):
            col = list(map(order_key, col))
        index = sorted(range(len(rows)), key=col.__getitem__, reverse=desc)  # type: ignore[arg-type]
        rows = [rows[i] for i in index]
    return rows


def select_fields(doc: Doc, paths: tuple[str, ...]) -> dict[str, Any]:
    """The selected paths that are present in ``doc``, as a map path -> value."""
    out = {}
    for p in paths:
        v = get_path(doc, split_path(p))
        if v is not MISSING:
            out[p] = v
    return out
