"""Breadth-first walks over a derivation graph: pure functions of a ``links`` lookup.

Each takes ``links(node, side) -> nodes``, a node's parents (side 0) or children
(side 1), sorted (so every walk is the same on every node holding the same graph), and
``keep(node) -> bool``, the nodes a walk may enter (a workspace walks its own nodes
only). Graphs of keys may hold cycles: every walk visits a node at most once.
"""

from __future__ import annotations

from collections.abc import Callable

from ._lineage import Node

__all__ = ["Keep", "LinksOf", "reach", "shortest_path"]

LinksOf = Callable[[Node, int], tuple[Node, ...]]
Keep = Callable[[Node], bool]


def reach(start: Node, links: LinksOf, side: int, depth: int | None, keep: Keep) -> list[Node]:
    """The nodes reachable from ``start`` through parents (``side`` 0) or children
    (``side`` 1) within ``depth`` links (None: any), ``start`` left out: nearest first,
    each distance in node order."""
    seen = {start}
    frontier = [start]
    found: list[Node] = []
    level = 0
    while frontier and (depth is None or level < depth):
        following = []
        for node in frontier:
            for other in links(node, side):
                if other not in seen and keep(other):
                    seen.add(other)
                    following.append(other)
        following.sort()
        found.extend(following)
        frontier = following
        level += 1
    return found


def shortest_path(
    a: Node, b: Node, links: LinksOf, max_depth: int, keep: Keep
) -> list[Node] | None:
    """A shortest chain of links from ``a`` to ``b`` (both ends included) of at most
    ``max_depth`` links, following children (``b`` derives from ``a``) or parents
    (``a`` derives from ``b``), or None. Of two shortest chains, the one through
    children is given."""
    if a == b:
        return [a]
    down = _meet(a, b, links, 1, max_depth, keep)
    limit = max_depth if down is None else len(down) - 2  # only a strictly shorter one
    up = _meet(a, b, links, 0, limit, keep) if limit >= 1 else None
    return up if up is not None else down


def _meet(
    a: Node, b: Node, links: LinksOf, side: int, max_depth: int, keep: Keep
) -> list[Node] | None:
    """Bidirectional breadth-first search from ``a`` along ``side`` and from ``b``
    against it, expanding the smaller frontier each step. Why it finds a shortest
    chain: both sides expand whole levels and test every node they discover against
    everything the other side has seen, so the first meeting is at the least total
    distance."""
    back_a: dict[Node, Node | None] = {a: None}
    back_b: dict[Node, Node | None] = {b: None}
    front_a, front_b = [a], [b]
    depth = 0
    while front_a and front_b and depth < max_depth:
        from_a = len(front_a) <= len(front_b)
        front, back, other = (front_a, back_a, back_b) if from_a else (front_b, back_b, back_a)
        direction = side if from_a else 1 - side
        following = []
        for node in front:
            for nxt in links(node, direction):
                if nxt in back or not keep(nxt):
                    continue
                back[nxt] = node
                if nxt in other:
                    return _join(nxt, back_a, back_b)
                following.append(nxt)
        if from_a:
            front_a = following
        else:
            front_b = following
        depth += 1
    return None


def _join(
    meet: Node, back_a: dict[Node, Node | None], back_b: dict[Node, Node | None]
) -> list[Node]:
    path: list[Node] = []
    node: Node | None = meet
    while node is not None:
        path.append(node)
        node = back_a[node]
    path.reverse()
    node = back_b[meet]
    while node is not None:
        path.append(node)
        node = back_b[node]
    return path
