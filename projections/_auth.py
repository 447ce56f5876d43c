"""The auth state: every identity, grant, revocation and seal a database holds.

A pure fold of the identity log (``koru.events.IDENTITY``), fed like every projection
through the one seam, so identities, grants and revocations that arrive from other
nodes (through ingest) count exactly like local ones. It holds *facts*: each statement
was checked when its event was decoded (a grant's, revocation's or seal's signature,
an identity's shape), so nothing forged is here. Whether a grant *takes effect* is not
a fact of the log alone (it depends on who the checking database trusts as its roots,
and on the time): :mod:`koru.projections._capabilities` decides that from this state.

Every field is a set-like union (or a maximum), so the state is the same for the same
events in any order a feed allows, and applying an event twice changes nothing:

- ``identities``: public key -> nonce (of two registrations of one key, the one with
  more work, then the smaller nonce);
- ``grants``: grant id -> grant, and ``by_grantee``: public key -> grant ids;
- ``revocations``: grant id -> revocations (a revocation may arrive before its grant;
  nothing ever removes one, so a revocation cannot be undone);
- ``seals``: (origin, agent) -> {seq: sealed event ids} of the sealed points above
  the feed's head (one id, unless the origin forked its feed; points at or below the
  head prove nothing more and are dropped), ``sealed_to`` the highest point sealed,
  and
  ``node_keys``: origin -> the public key that sealed its feeds.

``changes`` counts new grants and revocations (not checkpointed): callers cache
decisions and recompute when it moves (identities and seals change no decision).
"""

from __future__ import annotations

import bisect
from typing import Any, ClassVar

from koru.events import (
    IDENTITY,
    NODE_ID_SIZE,
    Event,
    Grant,
    GrantEvent,
    IdentityEvent,
    PublicIdentity,
    PutRun,
    Revocation,
    RevokeEvent,
    SealEvent,
    work_of,
)

__all__ = ["AuthState"]

Feed = tuple[bytes, str]


class AuthState:
    """Identities, grants, revocations and seals (see the module doc)."""

    __slots__ = (
        "by_grantee",
        "changes",
        "grants",
        "heads",
        "identities",
        "node_keys",
        "revocations",
        "sealed_to",
        "seals",
    )

    name: ClassVar[str] = "auth"
    version: ClassVar[int] = 1

    def __init__(self) -> None:
        self.identities: dict[bytes, bytes] = {}
        self.grants: dict[bytes, Grant] = {}
        self.by_grantee: dict[bytes, list[bytes]] = {}
        self.revocations: dict[bytes, list[Revocation]] = {}
        self.seals: dict[Feed, dict[int, tuple[bytes, ...]]] = {}
        self.node_keys: dict[bytes, bytes] = {}
        #: The highest seq folded per feed, and the highest sealed: a sealed point at or
        #: below a feed's head proves nothing more (its event is held) and is dropped,
        #: so proof points stay few however long a node lives.
        self.heads: dict[Feed, int] = {}
        self.sealed_to: dict[Feed, int] = {}
        self.changes = 0

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        """Fold one event: every event moves its feed's head (and passes the proof
        points at or below it); the identity log's statements and seals are kept."""
        # Every event passes here (every put): kept to a few dictionary operations.
        agent = event.agent
        feed = (event.origin, agent)
        seq = event.seq
        heads = self.heads
        if heads.get(feed, 0) < seq:
            heads[feed] = seq
            if self.seals:
                points = self.seals.get(feed)
                if points is not None:
                    self._passed(feed, points, seq)
        if agent != IDENTITY:
            return
        kind = type(event)
        if kind is GrantEvent:
            self._grant(event.grant)  # type: ignore[attr-defined]
        elif kind is RevokeEvent:
            self._revoke(event.revocation)  # type: ignore[attr-defined]
        elif kind is IdentityEvent:
            self._identity(event.identity)  # type: ignore[attr-defined]
        elif kind is SealEvent:
            self._seal(event, event_id)  # type: ignore[arg-type]

    def apply_run(self, run: PutRun) -> None:
        """Fold a run of puts: only the feed's head moves, once, to the run's last seq
        (the same as :meth:`apply` of each in order: heads only grow, and the proof
        points a head passes are those at or below it; no statement is a put)."""
        feed = (run.origin, run.agent)
        seq = run.last_seq
        if self.heads.get(feed, 0) < seq:
            self.heads[feed] = seq
            if self.seals:
                points = self.seals.get(feed)
                if points is not None:
                    self._passed(feed, points, seq)

    def _identity(self, identity: PublicIdentity) -> None:
        key, nonce = identity
        held = self.identities.get(key)
        if held is None or (work_of(key, nonce), held) > (work_of(key, held), nonce):
            self.identities[key] = nonce

    def _grant(self, grant: Grant) -> None:
        gid = grant.id
        if gid not in self.grants:
            self.grants[gid] = grant
            # Sorted by id: every node decides a grantee's grants in the same order.
            bisect.insort(self.by_grantee.setdefault(grant.grantee, []), gid)
            self.changes += 1

    def _revoke(self, revocation: Revocation) -> None:
        held = self.revocations.setdefault(revocation.grant, [])
        if revocation not in held:
            held.append(revocation)
            held.sort()
            self.changes += 1

    def _seal(self, seal: SealEvent, event_id: bytes) -> None:
        origin = seal.origin
        self.node_keys[origin] = seal.public_key
        # The seal is itself a signed point of its own feed (its header is signed).
        self._point((origin, IDENTITY), seal.seq, event_id)
        for point in seal.points:
            self._point((origin, point.agent), point.seq, point.event_id)

    def _point(self, feed: Feed, seq: int, event_id: bytes) -> None:
        if seq > self.sealed_to.get(feed, 0):
            self.sealed_to[feed] = seq
        if seq <= self.heads.get(feed, 0):
            return  # its event is held already: nothing left to prove
        # A node that sealed two ids for one seq forked its feed: both are kept (in
        # order, so the state does not depend on which seal came first), and the
        # ingest path refuses whichever event comes second as a fork.
        points = self.seals.setdefault(feed, {})
        held = points.get(seq, ())
        if event_id not in held:
            points[seq] = tuple(sorted((*held, event_id)))

    def _passed(self, feed: Feed, points: dict[int, tuple[bytes, ...]], head: int) -> None:
        for seq in [s for s in points if s <= head]:
            del points[seq]
        if not points:
            del self.seals[feed]

    def work(self, public_key: bytes) -> int | None:
        """The registered identity's proof of work in bits, or None if unregistered."""
        nonce = self.identities.get(public_key)
        return None if nonce is None else work_of(public_key, nonce)

    # -- checkpoints -------------------------------------------------------------------

    def capture(self) -> Any:
        return {
            "identities": [[k, n] for k, n in self.identities.items()],
            "grants": [list(g) for g in self.grants.values()],
            "revocations": [list(r) for rs in self.revocations.values() for r in rs],
            "seals": [
                [origin, agent, [[seq, *ids] for seq, ids in points.items()]]
                for (origin, agent), points in self.seals.items()
            ],
            "node_keys": [[o, k] for o, k in self.node_keys.items()],
            # Sorted: the order feeds of different logs were folded in is not in any
            # log's bytes (a peer's events of two agents may be taken in either order),
            # and a checkpoint must not depend on it (a simulation's disk digest did,
            # with the interpreter's hash seed).
            "heads": [[o, a, n] for (o, a), n in sorted(self.heads.items())],
            "sealed_to": [[o, a, n] for (o, a), n in sorted(self.sealed_to.items())],
        }

    @classmethod
    def restore(cls, data: Any) -> AuthState:
        """From :meth:`capture`'s data; every field's shape is checked (a checkpoint is
        this node's own, so signatures are not checked again)."""
        state = cls()
        for name in ("heads", "sealed_to"):
            table = getattr(state, name)
            for origin, agent, seq in data[name]:
                if type(origin) is not bytes or type(agent) is not str or type(seq) is not int:
                    raise ValueError(f"malformed {name} entry")
                table[(origin, agent)] = seq
        for key, nonce in data["identities"]:
            state._identity(PublicIdentity.decode([key, nonce]))
        for body in data["grants"]:
            state._grant(Grant.decode(body, check_signature=False))
        for body in data["revocations"]:
            state._revoke(Revocation.decode(body, check_signature=False))
        for origin, agent, points in data["seals"]:
            if type(origin) is not bytes or len(origin) != NODE_ID_SIZE or type(agent) is not str:
                raise ValueError("malformed seal entry")
            for seq, *ids in points:
                if type(seq) is not int or not ids:
                    raise ValueError("malformed seal point")
                for eid in ids:
                    if type(eid) is not bytes or len(eid) != 32:
                        raise ValueError("malformed seal point")
                    state._point((origin, agent), seq, eid)
        for origin, key in data["node_keys"]:
            if type(origin) is not bytes or type(key) is not bytes or len(key) != 32:
                raise ValueError("malformed node key")
            state.node_keys[origin] = key
        return state
