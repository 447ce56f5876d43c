"""Choosing the documents a query reads: the candidates its indexes allow, or all.

A filter is a conjunction at its top (``where(a, b)`` is ``a and b``). Every
conjunct that is an ``eq``, ``in`` or comparison on an indexed, built path narrows the
candidates to the keys that index lists for it (comparisons are type-bracketed, so a
range covers the operand's kind only); the candidates are the intersection of those
sets. The whole filter is then still evaluated on every candidate, so an index can
never change a result, only how many documents are decoded. Anything else (``or`` at
the top, ``ne``, ``not``, ``contains``, ``matches``, ``exists``, unindexed paths, a
query at a past time) reads every document.
"""

from __future__ import annotations

from collections.abc import Set
from typing import NamedTuple

from ._filters import And, Compare, Filter, In
from ._indexes import Index
from ._order import order_key, rank

__all__ = ["QueryPlan", "plan"]


class QueryPlan(NamedTuple):
    """How a query will read its namespace (``db.explain``)."""

    #: The indexed paths used, with the operator each answers (empty: a full scan).
    indexes: tuple[tuple[str, str], ...]
    #: How many documents the indexes leave to read, or None for every document.
    candidates: int | None
    #: One sentence for people.
    reason: str

    @property
    def uses_index(self) -> bool:
        """True if an index narrows the documents read."""
        return bool(self.indexes)


def _keys(index: Index, leaf: Filter) -> set[str] | None:
    if isinstance(leaf, In):
        out: set[str] = set()
        for v in leaf.values:
            out.update(index.equal(order_key(v)))
        return out
    assert isinstance(leaf, Compare)
    if leaf.op == "eq":
        return set(index.equal(order_key(leaf.value)))
    if leaf.op == "ne":
        return None
    k, r = order_key(leaf.value), rank(leaf.value)
    if leaf.op in ("gt", "gte"):
        buckets = index.between(k, leaf.op == "gt", (r + 1,), True)
    else:
        buckets = index.between((r,), False, k, leaf.op == "lt")
    found: set[str] = set()
    for bucket in buckets:
        found.update(bucket)
    return found


def plan(
    indexes: dict[str, Index] | None, f: Filter | None, gone: Set[str] = frozenset()
) -> tuple[QueryPlan, set[str] | None]:
    """The plan for filter ``f`` given a namespace's indexes by path, and the candidate
    keys (None: read every document), leaving out the keys ``gone`` (values whose time
    to live is over: they read as absent, so no query reads them)."""
    conjuncts = () if f is None else (f.parts if isinstance(f, And) else (f,))
    used: list[tuple[str, str, set[str]]] = []
    for leaf in conjuncts:
        if not isinstance(leaf, Compare | In) or not indexes:
            continue
        index = indexes.get(leaf.path)
        if index is None or index.pending:
            continue
        keys = _keys(index, leaf)
        if keys is not None:
            used.append((leaf.path, leaf.op, keys))
    if not used:
        why = "no filter" if f is None else "no indexed eq, in or comparison at the top"
        return QueryPlan((), None, f"full scan: {why}"), None
    used.sort(key=lambda u: len(u[2]))
    candidates = set(used[0][2])
    for _, _, keys in used[1:]:
        candidates &= keys
    candidates -= gone
    names = ", ".join(f"{p!r} ({op})" for p, op, _ in used)
    reason = f"index on {names}: {len(candidates)} candidate documents"
    return QueryPlan(tuple((p, op) for p, op, _ in used), len(candidates), reason), candidates
