"""What a projection hands a checkpoint to be written as a table, and how a written
table is referred to in a checkpoint.

A projection's :meth:`capture` may put, anywhere in its plain data, a
:class:`NewTable` (items to write as a new table, produced lazily in the thread that
writes the checkpoint) or a :class:`~koru.events.Table` it already has (referred to by
name). The checkpoint holds only their names; :meth:`restore` gets the tables back, read
in place. After the checkpoint is durable, the projection's ``checkpointed`` (if it has
one) learns which table each of its new tables became.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

__all__ = ["TABLE_TAG", "NewTable", "TableRef"]

#: The CBOR tag of a table's name in a checkpoint (in the first-come range).
TABLE_TAG = 27_001


class NewTable:
    """Items to be written as a table: ``items()`` gives (namespace, key, bytes)
    triples, each (namespace, key) once. ``owner`` is whatever the projection wants to
    recognise it by later (compared by identity)."""

    __slots__ = ("items", "owner")

    def __init__(
        self, items: Callable[[], Iterable[tuple[str, str, bytes]]], owner: object = None
    ) -> None:
        self.items = items
        self.owner = owner


class TableRef(NamedTuple):
    """A table named in a decoded checkpoint, before the loader opens it: its name, and
    the hash of its index its header held when it was written (None in checkpoints
    written before it was recorded)."""

    name: str
    index_digest: bytes | None = None
