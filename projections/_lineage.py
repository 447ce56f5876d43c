"""Lineage: which keys each key was derived from, as a pure fold of linked puts.

Every ``put-linked`` event adds links parent -> key for each of its parents. The graph
is of keys ((namespace, key) nodes), not of versions: a key derived from another once
stays linked to it (later versions, a deletion, do not undo the record of a
derivation), so links are only ever added. That makes the fold a union of sets: the same
events in any order, or twice, give the same graph. Keys change, so a graph of keys may
hold cycles (``a`` derived from ``b``, then a later ``b`` from ``a``); traversals visit
each node once.

Why layers and tables, as :class:`~koru.projections.KvState` keeps its records: the
graph grows with the data. Memory holds each node changed since the last checkpoint
(its complete parents and children, copied up from below on its first change); a
checkpoint freezes that layer and writes it as a table (each side of a node, parents
and children, an entry of its own), newest table first, merged as the key/value tables
are (:mod:`._merging`). A node nobody asks about costs no memory; sides read from
tables lately are kept decoded in a small cache.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, ClassVar

import cbor2

from koru.events import CorruptCheckpointError, Event, LinkedPutEvent, Table

from ._merging import MAX_TABLES, merge_plan, replace_merged
from ._newtable import NewTable

__all__ = ["LineageState", "Links", "Node"]

Node = tuple[str, str]
#: A node's (parents, children), each sorted.
Links = tuple[tuple[Node, ...], tuple[Node, ...]]
# A node's links in the memory layers: [parents, children], changed in place.
_Mutable = list[set[Node]]
_Layer = dict[Node, _Mutable]
#: Each side of a node is its own table entry, under its namespace marked by side:
#: asking a key's parents never decodes the children of a parent with millions.
_SIDES = ("<", ">")
_COUNT = struct.Struct("<I")
#: Sides of nodes read from tables kept decoded.
_CACHED = 4096


def _encode(side: set[Node]) -> bytes:
    """One side of a node: how many links (read alone by ``most_connected``), then
    the links, sorted."""
    return _COUNT.pack(len(side)) + cbor2.dumps([list(n) for n in sorted(side)])


def _decode(data: bytes) -> tuple[Node, ...]:
    """One side's links (CorruptCheckpointError if the entry is not one: a table is
    checked against its name, but a crafted one is refused here too, never misread)."""
    try:
        (count,) = _COUNT.unpack_from(data)
        found = tuple((ns, key) for ns, key in cbor2.loads(data[_COUNT.size :]))
    except (ValueError, TypeError, struct.error, cbor2.CBORDecodeError) as exc:
        raise CorruptCheckpointError(f"a lineage table entry is malformed: {exc}") from None
    if len(found) != count or not all(type(ns) is str and type(k) is str for ns, k in found):
        raise CorruptCheckpointError("a lineage table entry is malformed")
    return found


def _count(data: bytes) -> int:
    if len(data) < _COUNT.size:
        raise CorruptCheckpointError("a lineage table entry is malformed")
    return int(_COUNT.unpack_from(data)[0])


class LineageState:
    """The derivation graph: per node, its parents and its children."""

    __slots__ = ("_capturing", "cache", "edges", "frozen", "max_tables", "memory", "tables")

    name: ClassVar[str] = "lineage"
    version: ClassVar[int] = 1
    #: The only events it folds (the seam calls it for no other).
    kinds: ClassVar[frozenset[type[Event]]] = frozenset({LinkedPutEvent})

    def __init__(self) -> None:
        #: Nodes changed since the last checkpoint (or all, before the first table).
        self.memory: _Layer = {}
        #: Layers frozen by checkpoints not yet written (newest first).
        self.frozen: list[_Layer] = []
        #: Tables written by checkpoints (newest first).
        self.tables: list[Table] = []
        self.max_tables = MAX_TABLES
        #: Sides of nodes read from tables lately, decoded: (node, side) -> links.
        self.cache: OrderedDict[tuple[Node, int], tuple[Node, ...]] = OrderedDict()
        #: Distinct links in the graph.
        self.edges = 0
        self._capturing: list[_Layer] = []

    # -- the fold ---------------------------------------------------------------------

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        if type(event) is not LinkedPutEvent:
            return
        child = (event.namespace, event.key)
        above = self._writable(child)[0]
        for parent in event.parents:
            if parent in above:
                continue  # applied before
            above.add(parent)
            self._writable(parent)[1].add(child)
            self.edges += 1

    def _writable(self, node: Node) -> _Mutable:
        """The node's links in the memory layer, copied up from below first."""
        entry = self.memory.get(node)
        if entry is None:
            entry = self.memory[node] = [set(self._below(node, 0)), set(self._below(node, 1))]
            self.cache.pop((node, 0), None)
            self.cache.pop((node, 1), None)
        return entry

    # -- reads ------------------------------------------------------------------------

    def side(self, node: Node, side: int) -> tuple[Node, ...]:
        """The node's parents (``side`` 0) or children (1), sorted; empty for a node
        never linked."""
        entry = self.memory.get(node)
        if entry is not None:
            return tuple(sorted(entry[side]))
        return self._below(node, side)

    def _below(self, node: Node, side: int) -> tuple[Node, ...]:
        for layer in self.frozen:
            entry = layer.get(node)
            if entry is not None:
                return tuple(sorted(entry[side]))
        if not self.tables:
            return ()
        slot = (node, side)
        found = self.cache.get(slot)
        if found is not None:
            self.cache.move_to_end(slot)
            return found
        marked = _SIDES[side] + node[0]
        for table in self.tables:
            data = table.get(marked, node[1])
            if data is not None:
                found = _decode(data)
                self.cache[slot] = found
                if len(self.cache) > _CACHED:
                    self.cache.popitem(last=False)
                return found
        return ()

    def links(self, node: Node) -> Links:
        """The node's (parents, children), each sorted."""
        return self.side(node, 0), self.side(node, 1)

    def counts(self, namespace: str) -> Iterator[tuple[str, int, int]]:
        """(key, parents, children) of every linked node of ``namespace``, in key order
        (by UTF-8 bytes), without decoding any list of links."""
        merged: dict[str, list[int]] = {}
        for table in reversed(self.tables):
            for side in (0, 1):
                for key, data in table.items(_SIDES[side] + namespace):
                    merged.setdefault(key, [0, 0])[side] = _count(data)
        for layer in [*reversed(self.frozen), self.memory]:
            for (ns, key), entry in layer.items():
                if ns == namespace:
                    merged[key] = [len(entry[0]), len(entry[1])]
        for key in sorted(merged, key=str.encode):
            parents, children = merged[key]
            yield key, parents, children

    def content(self) -> list[tuple[Node, Links]]:
        """Every node with its links, in order: the whole graph, for checks that
        compare two states."""
        nodes: set[Node] = set()
        for table in self.tables:
            nodes.update((ns[1:], key) for ns, key, _ in table.entries())
        for layer in [*self.frozen, self.memory]:
            nodes.update(layer)
        return [(node, self.links(node)) for node in sorted(nodes)]

    # -- checkpoints --------------------------------------------------------------------

    def capture(self) -> dict[str, Any]:
        """The graph for a checkpoint: the memory layer frozen and handed over (with
        any frozen before it whose table was not written) as one new table, the tables
        already written referred to by name."""
        if self.memory:
            self.frozen.insert(0, self.memory)
            self.memory = {}
        self._capturing = list(self.frozen)
        layers = self._capturing
        return {
            "tables": list(self.tables),
            "new": NewTable(lambda: _merged(layers), owner=layers) if layers else None,
            "edges": self.edges,
        }

    def checkpointed(self, written: dict[NewTable, Table]) -> None:
        """The checkpoint of the last capture is durable: its table replaces the
        layers it holds."""
        for new, table in written.items():
            if new.owner is self._capturing:
                self.tables.insert(0, table)
                done = self._capturing
                self.frozen = [f for f in self.frozen if all(f is not c for c in done)]
                self._capturing = []

    def compaction(self) -> tuple[list[Table], NewTable] | None:
        return merge_plan(self.tables, self.max_tables)

    def compacted(self, inputs: list[Table], merged: Table) -> None:
        replace_merged(self.tables, inputs, merged)

    @classmethod
    def restore(cls, data: Any) -> LineageState:
        state = cls()
        new, tables = data["new"], data["tables"]
        if type(tables) is not list:
            raise ValueError("tables must be a list")
        tables = ([] if new is None else [new]) + tables
        if not all(isinstance(t, Table) for t in tables):
            raise ValueError("tables must be tables")
        for table in tables:
            table.verify()
        if type(data["edges"]) is not int or data["edges"] < 0:
            raise ValueError("edges must be a non-negative int")
        state.tables = tables
        state.edges = data["edges"]
        return state


def _merged(layers: list[_Layer]) -> Iterator[tuple[str, str, bytes]]:
    """The (marked namespace, key, links) of each side of the nodes of frozen layers
    (newest first), newest wins. A side with no links is left out: links only grow, so
    no older table holds one for it either."""
    seen: set[Node] = set()
    for layer in layers:
        for node, entry in layer.items():
            if node not in seen:
                seen.add(node)
                for side in (0, 1):
                    if entry[side]:
                        yield _SIDES[side] + node[0], node[1], _encode(entry[side])
