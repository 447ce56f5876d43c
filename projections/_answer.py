"""A query's answer from the documents it reads: pure, no I/O.

Shared by the database's query engine and the one-shot command line (which reads the
documents from a snapshot, without trio): the same filter, sort, paging, selection
and aggregation, so ``kdelta query`` answers exactly what ``db.query`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import compress
from typing import Any

from ._grouped import Grouped
from ._predicate import Predicate
from ._query import Group, Query, Row
from ._rows import select_fields, sort_rows

__all__ = ["answer"]


def answer(
    q: Query,
    predicate: Predicate,
    keys: list[str],
    values: list[Any],
    reread: Callable[[list[str]], list[Any]] | None = None,
    check: Callable[[list[str], list[Any]], None] | None = None,
    weigh: Callable[[int, int], None] | None = None,
) -> Any:
    """The answer of ``q`` over the documents ``values`` of ``keys`` (in key order).

    ``reread`` gives fresh copies of the documents of some keys (in that order), when
    ``values`` are objects the caller must not hand out (a cache's): rows are built from
    those. Without it, ``values`` are the caller's to give away.

    ``check`` is given the keys of the rows and their documents (as held: to be read
    only) and ``weigh`` an aggregation's groups and the bytes their values take
    encoded (see ``Grouped.result``), before the answer is built: either may refuse it.
    """
    hits = list(compress(range(len(keys)), map(predicate, values)))
    if q.aggregate is not None or q.group is not None:
        grouped = Grouped(q)
        for i in hits:
            group, v = grouped.contribution(values[i])
            grouped.add_contribution(keys[i], group, v)
        result = grouped.result(weigh)
        return [Group(g, v) for g, v in result] if q.group is not None else result
    rows = [(keys[i], values[i]) for i in hits]  # in key order
    if q.order:
        rows = sort_rows(rows, q.order)
    end = None if q.take is None else q.skip + q.take
    rows = rows[q.skip : end]
    if check is not None:
        check([k for k, _ in rows], [v for _, v in rows])
    if reread is not None:
        picked = [k for k, _ in rows]
        rows = list(zip(picked, reread(picked), strict=True))
    new = tuple.__new__
    if q.fields is not None:
        fields = q.fields
        return [new(Row, (k, select_fields(v, fields))) for k, v in rows]
    return [new(Row, r) for r in rows]
