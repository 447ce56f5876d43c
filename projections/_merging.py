"""When to merge a projection's tables, and how: shared by every projection that keeps
its cold state in tables (the key/value state, the feeds' locations).

Why a binary counter: each checkpoint adds a small table on top, and a lookup searches
the tables newest first. Merging the newest tables while the newer of the top two is at
least half the size of the older keeps sizes growing geometrically, so there are about
log2(data / checkpoint) tables and each byte is rewritten about as many times (as in
log-structured merge trees); past ``max_tables`` tables, the newest are merged whatever
their sizes.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from koru.events import Table

from ._newtable import NewTable

__all__ = ["MAX_TABLES", "merge_plan", "merge_tables", "replace_merged"]

#: Tables a projection keeps before merging regardless of their sizes.
MAX_TABLES = 12


def merge_plan(tables: list[Table], max_tables: int) -> tuple[list[Table], NewTable] | None:
    """The newest tables worth merging now (see the module doc) and their merge, or
    None."""
    k = 1
    total = tables[0].size if tables else 0
    while k < len(tables) and (2 * total >= tables[k].size or len(tables) - k >= max_tables):
        total += tables[k].size
        k += 1
    if k < 2:
        return None
    inputs = tables[:k]
    return inputs, NewTable(lambda: merge_tables(inputs), owner=inputs)


def replace_merged(tables: list[Table], inputs: list[Table], merged: Table) -> None:
    """Put ``merged`` in the place of ``inputs`` in ``tables`` (newest first):
    checkpoints taken since the plan only added tables on top of them.

    Raises:
        ValueError: ``inputs`` are no longer consecutive in ``tables``.
    """
    at = next((i for i, t in enumerate(tables) if t is inputs[0]), None)
    if at is None or tables[at : at + len(inputs)] != inputs:
        raise ValueError("the tables merged are no longer consecutive")
    tables[at : at + len(inputs)] = [merged]


def merge_tables(tables: list[Table]) -> Iterator[tuple[str, str, bytes]]:
    """Every entry of ``tables`` (newest first), in order, the newest table winning for
    a (namespace, key) held by several."""
    streams = [_aged(table, age) for age, table in enumerate(tables)]
    last: tuple[bytes, bytes] | None = None
    for ns_b, key_b, _, ns, key, blob in heapq.merge(*streams):
        if (ns_b, key_b) != last:
            last = (ns_b, key_b)
            yield ns, key, blob


def _aged(table: Table, age: int) -> Iterator[tuple[bytes, bytes, int, str, str, bytes]]:
    """A table's entries with their sort key and the table's age (0 the newest): ties
    between tables are broken by age alone, never by comparing the values."""
    for ns, key, blob in table.entries():
        yield ns.encode(), key.encode(), age, ns, key, blob
