"""Lineage in the log: a put that records which keys its value was derived from.

A linked put is a put (it sets ``namespace/key`` like any other, optionally with a time
to live) that also names its parents, in one event, so the derivation is recorded
atomically with the value::

    put-linked [namespace, key, value, previous, expires | null, [[namespace, key], ...]]

It is a type of its own, not a longer ``put``: a ``put`` keeps its wire form, so every
log written before lineage existed reads exactly as it did. Rules the decoder holds
every event to (a crafted event from a peer included): 1 to :data:`MAX_PARENTS`
parents, no parent twice, never the key itself, and every parent in the key's space
(the default space, or the same workspace: see :mod:`._workspaces`), so no link can
lead out of a workspace.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from ._errors import CodecError
from ._event import Event, Write
from ._fields import UINT64_MAX, id_or_none, name, raw_bytes, uint
from ._names import RESERVED
from ._registry import Header, register_event_type
from ._workspaces import split_workspace

__all__ = ["MAX_PARENTS", "LinkedPutEvent", "parents_problem", "space_of"]

#: Most parents one put may name.
MAX_PARENTS = 1000

Node = tuple[str, str]


class _LinkedPut(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    namespace: str
    key: str
    value: bytes
    previous: bytes | None
    expires: int | None
    parents: tuple[Node, ...]


class LinkedPutEvent(_LinkedPut, Event):
    """Set ``namespace/key`` to a value derived from ``parents`` ((namespace, key)
    pairs), current until ``expires`` if that is set."""

    __slots__ = ()
    TAG: ClassVar[str] = "put-linked"

    @property
    def writes(self) -> tuple[Write, ...]:
        return (Write(self.namespace, self.key, self.value, self.previous, self.expires),)


def space_of(namespace: str) -> str | None:
    """The space a stored namespace belongs to: "" for the default space, the
    workspace's name, or None for a malformed reserved name (no space)."""
    if namespace[0] != RESERVED:
        return ""
    found = split_workspace(namespace)
    return None if found is None else found[0]


def parents_problem(node: Node, parents: tuple[Node, ...]) -> str | None:
    """Why ``parents`` cannot be the parents of ``node`` (stored names), or None."""
    if not 1 <= len(parents) <= MAX_PARENTS:
        return f"a linked put names 1 to {MAX_PARENTS} parents, not {len(parents)}"
    if len(set(parents)) != len(parents):
        return "a linked put names a parent twice"
    if node in parents:
        return "a key cannot be its own parent"
    space = space_of(node[0])
    if space is None or any(space_of(ns) != space for ns, _ in parents):
        return "a key's parents must be in its own space"
    return None


def _decode(header: Header, body: Any) -> Event:
    if type(body) is not list or len(body) != 6:
        raise CodecError(
            "put-linked body must be [namespace, key, value, previous, expires, parents]"
        )
    namespace, key = name(body[0], "namespace"), name(body[1], "key")
    expires = None if body[4] is None else uint(body[4], "expires", 1, UINT64_MAX)
    items = body[5]
    if type(items) is not list or len(items) > MAX_PARENTS:
        raise CodecError(f"parents must be a list of at most {MAX_PARENTS} [namespace, key]")
    parents = []
    for pair in items:
        if type(pair) is not list or len(pair) != 2:
            raise CodecError("parents must list [namespace, key] pairs")
        parents.append((name(pair[0], "parent namespace"), name(pair[1], "parent key")))
    found = tuple(parents)
    problem = parents_problem((namespace, key), found)
    if problem is not None:
        raise CodecError(problem)
    return LinkedPutEvent(
        *header,
        namespace,
        key,
        raw_bytes(body[2], "value"),
        id_or_none(body[3]),
        expires,
        found,
    )


register_event_type(
    LinkedPutEvent,
    # Tuples encode as CBOR arrays: the parents go as they are, not copied to lists.
    lambda e: [e.namespace, e.key, e.value, e.previous, e.expires, e.parents],
    _decode,
)
