"""What the author of an event from a peer must have been allowed, by event type.

Proven ingest (:mod:`koru._proven`) takes a peer's event only if its author (the key
that sealed the event's origin) held, at the event's own timestamp, the right the
event's local call needs on an authorized handle (:mod:`koru._authorized`): whatever
a peer cannot do through a handle here, it cannot do by sending the event that call
would have written. One entry per registered event type (a test holds every type to
having one):

======================================  ==============================================
event                                   the author needed, at the event's timestamp
======================================  ==============================================
``put``, ``delete``, ``batch``,         ``write`` on every key written (what
``put-ttl``, ``batch-ttl``, ``expire``  ``put``/``put_batch``/``delete`` need)
``put-linked``                          that, and ``read`` on every parent it names
``embed``, ``unembed``                  ``write`` on the key (``embed``,
                                        ``delete_embedding``)
``embed-index``                         ``write`` on every key of its namespace: an
                                        approximate-index model changes how every
                                        search of the namespace ranks
``index``, ``view``                     ``admin`` on every key of the namespace
                                        (``create_index``, ``create_view``, ...)
``workspace`` drop                      ``admin`` over the whole workspace
                                        (``drop_workspace``)
``workspace`` create                    ``admin`` over the whole workspace
                                        (``create_workspace``), or ``write`` in it: a
                                        handle's first write into a workspace creates
                                        it
``identity``, ``grant``, ``revoke``     some capability (statements prove themselves,
                                        but each costs memory and evaluation here)
``tiering``, ``genome``,                some capability: a node's record of itself
``consolidation``                       (its hot tier, its digest, its compactions),
                                        folded per origin or not at all; no call of a
                                        handle writes one
``seal``                                nothing: a node revoked since must still prove
                                        what it wrote before (proven ingest refuses a
                                        seal of a node that holds no grant here)
======================================  ==============================================

"Every key of a namespace" is a scope whose key glob is ``*`` and whose namespace glob
matches the (stored) namespace, as the authorized handle decides it; "the whole
workspace" is one whose namespace glob covers every stored name of the workspace
(``koru.workspace_namespace(name)``, or ``*``).

A view's replacement or drop is decided on the namespace the event names: the local
handle also asks ``admin`` over the namespace of the definition it replaces, but which
definition an event replaces depends on what a node holds when it arrives, and a
decision that differs between nodes holding the same grants would split their logs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from koru.events import (
    ADMIN,
    READ,
    WRITE,
    BatchEvent,
    ConsolidationEvent,
    DeleteEvent,
    EmbedEvent,
    Event,
    ExpireEvent,
    ExpiringBatchEvent,
    ExpiringPutEvent,
    GenomeEvent,
    GrantEvent,
    IdentityEvent,
    IndexEvent,
    LinkedPutEvent,
    PutEvent,
    RevokeEvent,
    SealEvent,
    TieringEvent,
    UnembedEvent,
    VectorIndexEvent,
    ViewEvent,
    WorkspaceEvent,
    workspace_prefix,
)
from koru.projections import Effective

from ._authority import covers, whole, whole_space

__all__ = ["RIGHTS", "missing_right"]

#: What an author lacks to have written an event ("may not write 'ns'/'key'"), or None.
Check = Callable[[Effective, Any], str | None]


def _writes(effective: Effective, event: Event) -> str | None:
    for w in event.writes:
        if not effective.allows(WRITE, w.namespace, w.key):
            return f"may not write {w.namespace!r}/{w.key!r}"
    return None


def _linked(effective: Effective, event: LinkedPutEvent) -> str | None:
    problem = _writes(effective, event)
    if problem is not None:
        return problem
    for namespace, key in event.parents:
        if not effective.allows(READ, namespace, key):
            return f"may not read {namespace!r}/{key!r}, which it names as a parent"
    return None


def _key(effective: Effective, event: EmbedEvent | UnembedEvent) -> str | None:
    if effective.allows(WRITE, event.namespace, event.key):
        return None
    return f"may not write {event.namespace!r}/{event.key!r}"


def _whole(action: int, what: str) -> Check:
    def check(effective: Effective, event: VectorIndexEvent | IndexEvent | ViewEvent) -> str | None:
        if whole(effective, action, event.namespace):
            return None
        return f"may not {what} every key of {event.namespace!r}"

    return check


def _workspace(effective: Effective, event: WorkspaceEvent) -> str | None:
    prefix = workspace_prefix(event.name)
    if whole_space(effective, ADMIN, prefix):
        return None
    if event.action == "create" and any(
        s.actions & WRITE
        and (covers(s.namespace.pattern, prefix) or s.namespace.pattern.startswith(prefix))
        for s in effective.scopes
    ):
        return None  # what a handle's first write into the workspace needs
    return f"may not {event.action} workspace {event.name!r} (it needs admin over all of it)"


def _participant(effective: Effective, event: Event) -> str | None:
    return None if effective.scopes else "held no capability"


def _nothing(effective: Effective, event: Event) -> str | None:
    return None


#: The check of each event type (see the module doc).
RIGHTS: dict[type[Event], Check] = {
    PutEvent: _writes,
    DeleteEvent: _writes,
    BatchEvent: _writes,
    ExpiringPutEvent: _writes,
    ExpiringBatchEvent: _writes,
    ExpireEvent: _writes,
    LinkedPutEvent: _linked,
    EmbedEvent: _key,
    UnembedEvent: _key,
    VectorIndexEvent: _whole(WRITE, "write"),
    IndexEvent: _whole(ADMIN, "administer"),
    ViewEvent: _whole(ADMIN, "administer"),
    WorkspaceEvent: _workspace,
    IdentityEvent: _participant,
    GrantEvent: _participant,
    RevokeEvent: _participant,
    TieringEvent: _participant,
    GenomeEvent: _participant,
    ConsolidationEvent: _participant,
    SealEvent: _nothing,
}


def missing_right(effective: Effective, event: Event) -> str | None:
    """What an author allowed ``effective`` at the event's timestamp lacks to have
    written ``event`` ("may not write 'ns'/'key'"), or None if nothing.

    A type without an entry (none is registered: a test sees to it) needs ``write`` on
    every key it writes and, writing none, some capability."""
    check = RIGHTS.get(type(event))
    if check is None:
        check = _writes if event.writes else _participant
    return check(effective, event)
