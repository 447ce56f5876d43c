"""The grants workload: delegation chains, expiry on the database clock, revocations
racing with use, and a reference model of who may do what.

Through a node, a client does one of:

* **grant**: the owner grants one of a few identities ``read`` (or ``read`` and
  ``write``) on namespace ``gd``, every key or one, mostly expiring some seconds
  ahead on that node's clock (which is skewed and jumps);
* **delegate**: a grantee that holds a grant passes on part of it to another (a grant
  naming its parent): attenuated, or now and then escalating (an action, a key or a
  lifetime its parent does not give), which the node must refuse;
* **revoke**: the owner, or the grant's own granter, revokes a grant, as of that
  node's clock (sometimes while a delegation below it is being used elsewhere);
* **use**: a grantee reads or writes a key of ``gd`` through ``db.as_identity``, the
  handle every remote client's calls go through; the record keeps whether the node
  allowed it, its time (the handle's clock reading) and the grants and revocations
  the node held then.

:func:`allowed` is the reference model, written from the rules (docs/auth.md), not
from the evaluator: a grant is in effect at ``t`` if ``not_before <= t < expires``, no
entitled revocation counts (live: every one held; for an event's own time: those
with ``at <= t``), and it is parentless from a root or an attenuation of a parent in
effect given to its granter, at most 8 deep. The invariants compare every use, and
every node's answers at fixed times after convergence, with it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

import koru
from koru import Grant, InvalidGrantError, KoruError, PermissionDeniedError, Revocation

from ._trace import Trace

if TYPE_CHECKING:
    from koru import Database

    from ._node import SimNode

__all__ = ["GRANTEES", "NAMESPACE", "Grants", "Use", "allowed", "describe"]

#: Identities granted to and delegating; the namespace they are granted; its keys.
GRANTEES = 3
NAMESPACE = "gd"
GKEYS = 3
READ, WRITE, ADMIN = 1, 2, 4
MAX_DEPTH = 8


@attrs.define(slots=True, frozen=True)
class Use:
    """One operation of a grantee through a node's authorized handle."""

    node: str
    at: int  # the node's clock reading the handle decided at (ns)
    who: bytes
    action: int
    key: str
    allowed: bool
    grants: Mapping[bytes, Grant]
    revocations: Mapping[bytes, tuple[Revocation, ...]]
    roots: frozenset[bytes]


@attrs.define
class GrantRecord:
    """Every acknowledged grant and revocation, and every use."""

    grants: dict[bytes, Grant] = attrs.Factory(dict)
    revoked: set[bytes] = attrs.Factory(set)
    revoked_at: list[int] = attrs.Factory(list)
    uses: list[Use] = attrs.Factory(list)
    #: Grants a node refused (escalating, or from a parent not in effect there).
    refused: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "granted": len(self.grants),
            "delegated": sum(1 for g in self.grants.values() if g.parent is not None),
            "expiring": sum(1 for g in self.grants.values() if g.expires is not None),
            "refused": self.refused,
            "revoked": len(self.revoked),
            "uses": len(self.uses),
            "allowed": sum(1 for u in self.uses if u.allowed),
        }


def describe(counts: dict[str, int]) -> str:
    """What the grants workload did, in words."""
    c = counts
    return (
        f"{c['granted']} granted ({c['delegated']} delegated, {c['expiring']} expiring), "
        f"{c['refused']} refused, {c['revoked']} revoked, {c['uses']} uses "
        f"({c['allowed']} allowed)"
    )


def _expand(actions: int) -> int:
    return actions | READ | WRITE if actions & ADMIN else actions


def _covers(outer: str, inner: str) -> bool:
    """The workload's globs are ``*`` or one literal key."""
    return outer == "*" or outer == inner


def allowed(
    grants: Mapping[bytes, Grant],
    revocations: Mapping[bytes, Sequence[Revocation]],
    roots: frozenset[bytes],
    who: bytes,
    action: int,
    namespace: str,
    key: str,
    at: int,
    *,
    live: bool = True,
) -> bool:
    """May ``who`` do ``action`` on ``namespace``/``key`` at ``at``, given these facts
    (the reference model: see the module docstring)?"""

    def is_root(identity: bytes, depth: int, rooting: frozenset[bytes]) -> bool:
        if identity in roots:
            return True
        if identity in rooting or depth > MAX_DEPTH:
            return False
        return any(
            g.grantee == identity
            and g.parent is None
            and g.actions & ADMIN
            and g.namespace == "*"
            and g.key == "*"
            and in_effect(gid, depth + 1, rooting | {identity}) is not None
            for gid, g in grants.items()
        )

    def chain_of(grant: Grant) -> list[bytes]:
        granters: list[bytes] = []
        parent = grant.parent
        while parent is not None and parent in grants and len(granters) < MAX_DEPTH:
            granters.append(grants[parent].granter)
            parent = grants[parent].parent
        return granters

    def revoked(gid: bytes, grant: Grant, rooting: frozenset[bytes]) -> bool:
        for r in revocations.get(gid, ()):
            if not live and r.at > at:
                continue
            if r.revoker == grant.granter or r.revoker in chain_of(grant):
                return True
            if is_root(r.revoker, 1, rooting):
                return True
        return False

    def in_effect(gid: bytes, depth: int, rooting: frozenset[bytes]) -> int | None:
        """The chain's length if grant ``gid`` is in effect at ``at``, else None."""
        grant = grants.get(gid)
        if grant is None or depth > MAX_DEPTH:
            return None
        if not grant.not_before <= at or (grant.expires is not None and at >= grant.expires):
            return None
        if revoked(gid, grant, rooting):
            return None
        if grant.parent is None:
            return 1 if is_root(grant.granter, depth, rooting) else None
        parent = grants.get(grant.parent)
        above = in_effect(grant.parent, depth + 1, rooting)
        if parent is None or above is None or parent.grantee != grant.granter:
            return None
        if (
            _expand(grant.actions) & ~_expand(parent.actions)
            or not _covers(parent.namespace, grant.namespace)
            or not _covers(parent.key, grant.key)
            or grant.not_before < parent.not_before
            or (
                parent.expires is not None
                and (grant.expires is None or grant.expires > parent.expires)
            )
        ):
            return None
        return None if above + 1 > MAX_DEPTH else above + 1

    if is_root(who, 0, frozenset()):
        return True
    return any(
        g.grantee == who
        and _expand(g.actions) & action
        and _covers(g.namespace, namespace)
        and _covers(g.key, key)
        and in_effect(gid, 1, frozenset()) is not None
        for gid, g in grants.items()
    )


#: The grants and revocations a node holds, as :func:`facts` copies them.
Facts = tuple[dict[bytes, Grant], dict[bytes, tuple[Revocation, ...]]]


def facts(db: Database) -> Facts:
    """The grants and revocations ``db`` holds (copies)."""
    state = db._authority.state
    return dict(state.grants), {g: tuple(rs) for g, rs in state.revocations.items()}


class Grants:
    """The grants workload's clients' steps (see the module docstring)."""

    def __init__(
        self,
        rng: random.Random,
        trace: Trace,
        owner: koru.Identity,
        note: Callable[[SimNode, str, str, str, str], None],
    ) -> None:
        self.rng = rng
        self.note = note
        self.trace = trace
        self.owner = owner
        self.grantees = [
            koru.Identity.mine(4, rng=random.Random(rng.getrandbits(64))) for _ in range(GRANTEES)
        ]
        self.record = GrantRecord()
        #: Per node, the facts its last use recorded and the auth state they were
        #: read from (see :meth:`_facts`).
        self._held: dict[str, tuple[object, int, Facts]] = {}

    async def step(self, node: SimNode, db: Database, client: str) -> None:
        roll = self.rng.random()
        if roll < 0.45:
            await self._use(node, db, client)
        elif roll < 0.7:
            await self._grant(node, db, client)
        elif roll < 0.85:
            await self._delegate(node, db, client)
        else:
            await self._revoke(node, db, client)

    def _expiry(self, now: int) -> int | None:
        if self.rng.random() < 0.25:
            return None
        return now + round(self.rng.uniform(2, 60) * 1e9)

    async def _stored(self, node: SimNode, client: str, grant: Grant, store: object) -> None:
        who = f"{node.name}/{client}"
        try:
            await store  # type: ignore[misc]
        except InvalidGrantError as exc:
            self.record.refused += 1
            self.trace.add(who, node.incarnation, "grant-refused", str(exc)[:60])
            return
        self.record.grants[grant.id] = grant
        parent = "-" if grant.parent is None else grant.parent.hex()[:8]
        self.trace.add(who, node.incarnation, "grant", grant.id.hex()[:16], parent)

    async def _grant(self, node: SimNode, db: Database, client: str) -> None:
        rng = self.rng
        grantee = rng.choice(self.grantees)
        await db.register(grantee.public)
        now = db._writer.read_time()
        actions = ["read"] if rng.random() < 0.5 else ["read", "write"]
        key = "*" if rng.random() < 0.5 else f"g{rng.randrange(GKEYS)}"
        grant = Grant.create(
            self.owner,
            grantee.public_key,
            namespace=NAMESPACE,
            key=key,
            actions=actions,
            not_before=max(0, now - round(rng.uniform(0, 5) * 1e9)),
            expires=self._expiry(now),
        )
        await self._stored(node, client, grant, db.grant(grant))

    async def _delegate(self, node: SimNode, db: Database, client: str) -> None:
        rng = self.rng
        held = list(self.record.grants.items())[-6:]  # recent: more likely still in effect
        mine = [
            (gid, g) for gid, g in held if any(g.grantee == i.public_key for i in self.grantees)
        ]
        if not mine:
            return
        gid, parent = rng.choice(mine)
        granter = next(i for i in self.grantees if i.public_key == parent.grantee)
        grantee = rng.choice([i for i in self.grantees if i is not granter])
        await db.register(grantee.public)
        now = db._writer.read_time()
        actions, key, expires = parent.actions & ~ADMIN or READ, parent.key, parent.expires
        if rng.random() < 0.5:
            actions = READ
        if key == "*" and rng.random() < 0.5:
            key = f"g{rng.randrange(GKEYS)}"
        if expires is not None or rng.random() < 0.5:
            mine_expires = now + round(rng.uniform(2, 40) * 1e9)
            expires = mine_expires if expires is None else min(expires, mine_expires)
        escalate = rng.random() < 0.2
        if escalate:  # the node must refuse it, and nothing may take effect through it
            which = rng.randrange(3)
            if which == 0:
                actions = READ | WRITE | ADMIN
            elif which == 1 and parent.key != "*":
                key = "*"
            elif parent.expires is not None:
                expires = parent.expires + 10**9
        if expires is not None and expires <= parent.not_before:
            return
        grant = Grant.create(
            granter,
            grantee.public_key,
            namespace=NAMESPACE,
            key=key,
            actions=actions,
            not_before=parent.not_before,
            expires=expires,
            parent=gid,
        )
        await self._stored(node, client, grant, db.grant(grant))

    async def _revoke(self, node: SimNode, db: Database, client: str) -> None:
        rng = self.rng
        live = sorted(g for g in self.record.grants if g not in self.record.revoked)
        if not live:
            return
        gid = rng.choice(live)
        grant = self.record.grants[gid]
        if grant.granter == self.owner.public_key or rng.random() < 0.3:
            revoker = self.owner
        else:
            revoker = next(i for i in self.grantees if i.public_key == grant.granter)
        try:
            revocation = await db.revoke(gid, revoker=revoker)
        except InvalidGrantError as exc:  # the grant has not reached this node yet
            self.trace.add(f"{node.name}/{client}", "revoke-refused", str(exc)[:40])
            return
        self.record.revoked.add(gid)
        self.record.revoked_at.append(revocation.at)
        self.trace.add(f"{node.name}/{client}", node.incarnation, "revoke", gid.hex()[:16])

    def _facts(self, node: SimNode, db: Database) -> Facts:
        """:func:`facts` of ``db``, the same copies as its last use recorded while its
        grants and revocations are unchanged: every use keeps the facts it was judged
        by, and a copy each made memory grow with uses times grants (a five-node run
        of five virtual minutes at 20 operations per second was killed at 24 GB)."""
        state = db._authority.state
        kept = self._held.get(node.name)
        if kept is not None and kept[0] is state and kept[1] == state.changes:
            return kept[2]
        found = facts(db)
        self._held[node.name] = (state, state.changes, found)
        return found

    async def _use(self, node: SimNode, db: Database, client: str) -> None:
        rng = self.rng
        who = rng.choice(self.grantees)
        action = READ if rng.random() < 0.5 else WRITE
        key = f"g{rng.randrange(GKEYS)}"
        recent = list(self.record.grants.values())[-3:]
        if recent and rng.random() < 0.7:  # mostly what a recent grant allows
            grant = rng.choice(recent)
            who = next(i for i in self.grantees if i.public_key == grant.grantee)
            action = WRITE if grant.actions & WRITE and rng.random() < 0.5 else READ
            key = grant.key if grant.key != "*" else key
        handle = db.as_identity(who.public)
        grants, revocations = self._facts(node, db)
        roots = db._authority.roots
        at = db._writer.read_time()  # what the handle judges by, with no yield between
        try:
            if action == READ:
                await handle.history(NAMESPACE, key, latest=1)
            else:
                version = await handle.put(NAMESPACE, key, {"by": who.public_key.hex()[:8]})
                self.note(node, client, NAMESPACE, key, version.write_id)
        except PermissionDeniedError:
            ok = False
        except KoruError as exc:  # e.g. the node is closing: no decision to judge
            self.trace.add(f"{node.name}/{client}", "use-failed", type(exc).__name__)
            return
        else:
            ok = True
        self.record.uses.append(
            Use(node.name, at, who.public_key, action, key, ok, grants, revocations, roots)
        )
        self.trace.add(
            f"{node.name}/{client}",
            node.incarnation,
            "use",
            who.public_key.hex()[:8],
            action,
            key,
            ok,
        )
