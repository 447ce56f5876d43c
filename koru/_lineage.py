"""Lineage from the face: checking a put's parents, and walking the derivation graph.

The graph is the :class:`~koru.projections._lineage.LineageState` projection's; this
collaborator checks what a caller passes (before anything is written), walks the graph
inside one space (:class:`~koru._space.Space`: a workspace's walk never leaves it) and
gives nodes back in the caller's names.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from koru.events import (
    MAX_NAME_BYTES,
    MAX_PARENTS,
    InvalidArgumentError,
    InvalidDataError,
    InvalidParentError,
    check_name,
)
from koru.projections import KvState
from koru.projections._lineage import LineageState, Node
from koru.projections._traversal import LinksOf, reach, shortest_path

from ._reads import ANSWER_BYTES, Budget, refuse_past_answer
from ._space import Space

__all__ = ["DEFAULT_MAX_DEPTH", "Connected", "Lineage"]

#: Which nodes (stored names) a walk may pass through besides its space's rule; None: all.
Allowed = Callable[[Node], bool] | None

#: Fewer bytes than a node (a tuple) and a Connected take in an answer besides their
#: namespace and key.
NODE_FIELDS = 6
CONNECTED_FIELDS = 18

#: How many links ``are_connected`` and ``connection_path`` follow at most by default.
DEFAULT_MAX_DEPTH = 100


class Connected(NamedTuple):
    """A key with how many links it has (``db.most_connected``)."""

    namespace: str
    key: str
    parents: int
    children: int

    @property
    def links(self) -> int:
        """Parents and children together."""
        return self.parents + self.children


class Lineage:
    """Parent checks and graph walks for one database."""

    __slots__ = ("graph", "kv", "now")

    def __init__(self, graph: LineageState, kv: KvState, now: Callable[[], int]) -> None:
        self.graph = graph
        self.kv = kv
        self.now = now

    # -- a put's parents ------------------------------------------------------------------

    def parents(self, space: Space, namespace: str, key: str, parents: Any) -> tuple[Node, ...]:
        """The stored form of ``parents`` for a put of ``namespace/key`` (stored names),
        checked: each a (namespace, key) pair, or a key of the same namespace, with a
        current value, never the key itself, at most ``MAX_PARENTS`` (a parent listed
        twice counts once). Empty for no parents.

        Raises:
            InvalidParentError: naming the parent at fault (nothing is written).
        """
        if parents is None:
            return ()
        if isinstance(parents, str | bytes | bytearray | dict) or not isinstance(parents, Iterable):
            raise InvalidParentError(
                None, f"parents must be a list of (namespace, key), not {parents!r}"
            )
        found: dict[Node, None] = {}  # in the order given, once each
        kv, inward = self.kv, space.inward
        for item in parents:
            pkey = item[1] if type(item) is tuple and len(item) == 2 else None
            if type(pkey) is str and 0 < len(pkey) <= MAX_NAME_BYTES and pkey.isascii():
                try:
                    node = (inward(item[0]), pkey)  # the common form, checked inline
                except InvalidDataError:
                    node = self._parent(space, namespace, item)  # raises, naming it
            else:
                node = self._parent(space, namespace, item)
            if node in found:
                continue
            if node == (namespace, key):
                raise InvalidParentError(_shown(space, node), "a key cannot be its own parent")
            if len(found) == MAX_PARENTS:
                raise InvalidParentError(None, f"a put names at most {MAX_PARENTS} parents")
            if kv.live_content_id(*node) is None or (
                kv.expiring and kv.expired(node[0], node[1], self.now())
            ):
                raise InvalidParentError(_shown(space, node), "it has no current value")
            found[node] = None
        return tuple(found)

    def _parent(self, space: Space, namespace: str, item: Any) -> Node:
        if type(item) is str:
            pns, pkey = namespace, item
        elif isinstance(item, tuple | list) and len(item) == 2:
            try:
                pns, pkey = space.inward(item[0]), item[1]
            except InvalidDataError as exc:
                raise InvalidParentError(None, f"{item!r}: {exc}") from None
        else:
            raise InvalidParentError(
                None, f"a parent is a (namespace, key) pair or a key, not {item!r}"
            )
        try:
            check_name(pkey, "key")
        except InvalidDataError as exc:
            raise InvalidParentError(None, f"{item!r}: {exc}") from None
        return pns, pkey

    # -- walks ------------------------------------------------------------------------------

    def _node(self, space: Space, node: Any, what: str) -> Node:
        if not isinstance(node, tuple | list) or len(node) != 2:
            raise InvalidArgumentError(f"{what} must be a (namespace, key) pair, not {node!r}")
        ns = space.inward(node[0])
        check_name(node[1], "key")
        return ns, node[1]

    @staticmethod
    def _depth(depth: Any, what: str, none: bool) -> int | None:
        if depth is None and none:
            return None
        if type(depth) is not int or depth < 0:
            raise InvalidArgumentError(f"{what} must be a non-negative int, not {depth!r}")
        return depth

    def _walker(self, space: Space, allowed: Allowed) -> tuple[LinksOf, Callable[[Node], bool]]:
        """The links, and which nodes a walk may pass: those of the space (and, for an
        authorized handle, those its identity may read)."""
        owns = space.owns
        if allowed is None:
            return self.graph.side, lambda node: owns(node[0])
        return self.graph.side, lambda node: owns(node[0]) and allowed(node)

    def _out(self, space: Space, nodes: Iterable[Node]) -> list[tuple[str, str]]:
        out = []
        for ns, key in nodes:
            shown = space.outward(ns)
            assert shown is not None  # walks keep to the space
            out.append((shown, key))
        return out

    def ancestors(
        self, space: Space, node: Any, depth: Any, allowed: Allowed = None
    ) -> list[tuple[str, str]]:
        return self._reach(space, node, depth, allowed, 0, "ancestors")

    def descendants(
        self, space: Space, node: Any, depth: Any, allowed: Allowed = None
    ) -> list[tuple[str, str]]:
        return self._reach(space, node, depth, allowed, 1, "descendants")

    def _reach(
        self, space: Space, node: Any, depth: Any, allowed: Allowed, side: int, call: str
    ) -> list[tuple[str, str]]:
        start = self._node(space, node, "node")
        links, keep = self._walker(space, allowed)
        if ANSWER_BYTES.get() is not None:  # (a served call)
            keep = self._budget(space, keep, call)
        return self._out(space, reach(start, links, side, self._depth(depth, "depth", True), keep))

    @staticmethod
    def _budget(space: Space, keep: Callable[[Node], bool], call: str) -> Callable[[Node], bool]:
        """``keep``, counting the bytes of the nodes it lets a walk find: refused as
        soon as they pass the bound of a served answer (a walk of the whole graph, for
        a request of some 50 bytes, was built, packed, then refused)."""
        shorter = NODE_FIELDS - len(space.prefix)
        add = Budget(call, "a depth").add

        def counted(node: Node) -> bool:
            if not keep(node):
                return False
            add(shorter + len(node[0]) + len(node[1]))
            return True

        return counted

    def path(
        self, space: Space, a: Any, b: Any, max_depth: Any, allowed: Allowed = None
    ) -> list[tuple[str, str]] | None:
        start, end = self._node(space, a, "a"), self._node(space, b, "b")
        limit = self._depth(max_depth, "max_depth", False)
        assert limit is not None
        links, keep = self._walker(space, allowed)
        found = shortest_path(start, end, links, limit, keep)
        return None if found is None else self._out(space, found)

    def most_connected(self, space: Space, namespace: Any, k: Any) -> list[Connected]:
        stored = space.inward(namespace)
        if type(k) is not int or k < 0:
            raise InvalidArgumentError(f"k must be a non-negative int, not {k!r}")
        shown = space.outward(stored)
        assert shown is not None
        counts = self.graph.counts(stored)
        each = CONNECTED_FIELDS + len(shown)
        if ANSWER_BYTES.get() is not None:  # (a served call)
            counts = _bounded(counts, k, each)
        ranked = heapq.nsmallest(
            k,
            (
                (-(parents + children), key.encode(), key, parents, children)
                for key, parents, children in counts
            ),
        )
        if ANSWER_BYTES.get() is not None:
            refuse_past_answer(
                "most_connected", sum(len(r[2]) for r in ranked), len(ranked), each, LESS_K
            )
        return [Connected(shown, key, p, c) for _, _, key, p, c in ranked]


#: How to ask for less than a served ``most_connected`` refused as too large.
LESS_K = "a smaller k"


def _bounded(
    counts: Iterator[tuple[str, int, int]], k: int, each: int
) -> Iterator[tuple[str, int, int]]:
    """``counts``, refused as soon as the answer of ``k`` of them surely passes the
    bound of a served answer (each at least ``each`` bytes and its key's): with k of a
    billion, every linked key of the namespace was ranked, built, packed, then
    refused."""
    add = Budget("most_connected", LESS_K).add
    for seen, item in enumerate(counts):
        if seen < k:
            add(each + 1)  # (which keys are ranked first is not known yet)
        yield item


def _shown(space: Space, node: Node) -> tuple[str, str]:
    """A parent in the caller's names, for an error message."""
    return space.outward(node[0]) or node[0], node[1]
