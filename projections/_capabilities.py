"""Which grants take effect: capability chains, attenuation, revocation, time.

Given the facts of an :class:`~koru.projections.AuthState` and the *roots* of the
database deciding (its own node key: the owner of a node may do anything on it), an
:class:`Evaluator` answers what an identity may do at a time. A grant takes effect at
time ``t`` when all of these hold:

- ``not_before <= t < expires``;
- no authorized revocation of it counts: for a live check (an operation now) any
  revocation held counts at once; for an event that carries its own time (a peer's
  write, checked at its timestamp) a revocation counts from its ``at``, so what was
  written before a revocation stays valid and what was written after is refused, on
  every node, whatever order the events arrived in. A revocation is authorized when
  it is signed by the grant's granter, by a granter further up its chain, by a root,
  or by an identity holding ``admin`` over all the grant covers (as of the
  revocation's ``at``);
- its granter is a root (no parent), or its parent takes effect at ``t``, was granted
  to this grant's granter, and covers it (attenuation only: actions, namespace and key
  globs, and time window all within the parent's), with at most :data:`MAX_DEPTH`
  grants in the chain.

A root grant that gives ``admin`` over ``*``/``*`` makes its grantee an *owner*: a root
too, so that one owner identity can administer every node that made it one.

Bounded time: chains stop at ``MAX_DEPTH``; each evaluation memoizes grants it has
decided and spends at most :data:`MAX_STEPS` steps on each grant of the identity asked
about, taken in a fixed order (a pathological web of grants and revocations behind
one grant voids that grant, never waited for, and never the others); a recursion that
comes back to a question it is answering takes the safe answer (not a root; a
revocation counts).

Each answer comes with the window of times around ``t`` over which it cannot change
(every time comparison made narrows it), so a caller can cache a decision until the
clock leaves the window or the state changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from koru.events import ADMIN, READ, WRITE, Glob, Grant, Revocation, covers

from ._auth import AuthState

__all__ = ["MAX_DEPTH", "MAX_STEPS", "NEVER", "Effective", "Evaluator", "Scope", "expand"]

#: Most grants in a chain, the root grant included.
MAX_DEPTH = 8
#: Work allowed to decide one grant of the identity asked about (grant visits along its
#: chain, its roots and the authority of its revocations).
MAX_STEPS = 10_000
#: A time after every other (no expiry).
NEVER = 2**64

_EVERYTHING = READ | WRITE | ADMIN


def expand(actions: int) -> int:
    """An action mask with what ``admin`` implies (read and write) added."""
    return _EVERYTHING if actions & ADMIN else actions


class Scope(NamedTuple):
    """One thing an identity may do: actions (expanded) on the names two globs match."""

    actions: int
    namespace: Glob
    key: Glob
    #: The grant it comes from (None: the identity is a root).
    grant: bytes | None

    def allows(self, action: int, namespace: str, key: str) -> bool:
        return (
            bool(self.actions & action)
            and self.namespace.match(namespace)
            and (self.key.match(key))
        )


class Effective(NamedTuple):
    """What an identity may do at a time, valid for every time in ``[since, until)``
    while the auth state does not change."""

    scopes: tuple[Scope, ...]
    since: int
    until: int

    def allows(self, action: int, namespace: str, key: str) -> bool:
        """True if some scope allows ``action`` on ``namespace``/``key``."""
        # A loop, not any(): a generator costs ~0.3 µs on every authorized call.
        for scope in self.scopes:  # noqa: SIM110
            if scope.allows(action, namespace, key):
                return True
        return False


_ROOT_GLOB = Glob("*")


class _OutOfSteps(Exception):
    """An evaluation spent its budget: the answer is "no"."""


class _TooDeep(Exception):
    """The chain from the grant an evaluation started at is longer than MAX_DEPTH. Not
    a fact about the grants passed on the way (each may be fine on its own), so it
    unwinds without memoizing them."""


Found = tuple[Grant, int]


class _Run:
    """One evaluation at one time: its window, memo, budget and recursion guards."""

    __slots__ = ("active", "at", "ev", "hi", "live", "lo", "memo", "rooting", "track")

    def __init__(self, ev: Evaluator, at: int, *, live: bool, track: bool = True) -> None:
        self.ev = ev
        self.at = at
        self.live = live
        self.track = track
        self.lo, self.hi = 0, NEVER
        self.memo: dict[bytes, Found | None] = {}
        self.rooting: set[bytes] = set()
        self.active: set[bytes] = set()

    # Each comparison with ``at`` narrows the window in which the answer holds.
    def _le(self, t: int) -> bool:
        """t <= at."""
        if t <= self.at:
            if self.track and t > self.lo:
                self.lo = t
            return True
        if self.track and t < self.hi:
            self.hi = t
        return False

    def _lt(self, t: int) -> bool:
        """at < t."""
        if self.at < t:
            if self.track and t < self.hi:
                self.hi = t
            return True
        if self.track and t > self.lo:
            self.lo = t
        return False

    def found(self, gid: bytes, depth: int) -> Found | None:
        """:meth:`valid`, with a chain too deep from here counted as "not in effect"."""
        try:
            return self.valid(gid, depth)
        except _TooDeep:
            return None

    def valid(self, gid: bytes, depth: int) -> Found | None:
        """(grant, chain length) if the grant takes effect at ``at``, else None.

        Raises:
            _TooDeep: ``depth`` (grants from where the evaluation started) passed the
                limit before the chain reached a root.
        """
        if gid in self.memo:
            return self.memo[gid]
        if depth > MAX_DEPTH:
            raise _TooDeep
        if gid in self.active:
            return None  # a grant whose validity hangs on itself is not in effect
        self.ev.spend()
        grant = self.ev.state.grants.get(gid)
        result: Found | None = None
        if grant is not None:
            self.active.add(gid)
            try:
                result = self._decide(gid, grant, depth)
            finally:
                self.active.discard(gid)
        self.memo[gid] = result
        return result

    def _decide(self, gid: bytes, grant: Grant, depth: int) -> Found | None:
        if not self._le(grant.not_before):
            return None
        if grant.expires is not None and not self._lt(grant.expires):
            return None
        if self.revoked(gid, grant):
            return None
        if grant.parent is None:
            return (grant, 1) if self.root(grant.granter, depth) else None
        above = self.valid(grant.parent, depth + 1)
        if above is None:
            return None
        parent, length = above
        if parent.grantee != grant.granter or not self.ev.attenuates(gid, grant, parent):
            return None
        if length + 1 > MAX_DEPTH:
            return None
        return grant, length + 1

    def root(self, key: bytes, depth: int) -> bool:
        """True if ``key`` is a root at ``at``: the database's own, or an owner."""
        if key in self.ev.roots:
            return True
        if key in self.rooting:
            return False  # a cycle of owners making each other owners roots nothing
        self.rooting.add(key)
        try:
            for gid in self.ev.state.by_grantee.get(key, ()):
                grant = self.ev.state.grants[gid]
                if (
                    grant.parent is None
                    and grant.actions & ADMIN
                    and grant.namespace == "*"
                    and grant.key == "*"
                    and self.found(gid, depth + 1) is not None
                ):
                    return True
            return False
        finally:
            self.rooting.discard(key)

    def revoked(self, gid: bytes, grant: Grant) -> bool:
        for revocation in self.ev.state.revocations.get(gid, ()):
            if not self.live and not self._le(revocation.at):
                continue
            if self.ev.may_revoke(revocation, grant):
                return True
        return False


class Evaluator:
    """Decisions over one auth state and a database's roots (see the module doc).

    Statically true facts (attenuation between two grants, a revocation's authority)
    are remembered for the evaluator's life; make a new one when the state changes.
    """

    def __init__(self, state: AuthState, roots: Iterable[bytes]) -> None:
        self.state = state
        self.roots = frozenset(roots)
        self._attenuates: dict[tuple[bytes, bytes], bool] = {}
        self._may_revoke: dict[Revocation, bool] = {}
        self._revoking: set[Revocation] = set()
        #: How many times a revocation's authority was found to hang on itself.
        self._cycles = 0
        self._globs: dict[str, Glob] = {}
        self._steps = 0

    def spend(self) -> None:
        self._steps += 1
        if self._steps > MAX_STEPS:
            raise _OutOfSteps

    def _glob(self, pattern: str) -> Glob:
        glob = self._globs.get(pattern)
        if glob is None:
            glob = self._globs[pattern] = Glob(pattern)
        return glob

    # -- static facts --------------------------------------------------------------------

    def attenuates(self, gid: bytes, grant: Grant, parent: Grant) -> bool:
        """True if ``grant`` asks for nothing beyond ``parent``."""
        key = (gid, grant.parent or b"")
        known = self._attenuates.get(key)
        if known is None:
            known = self._attenuates[key] = escalation(grant, parent) is None
        return known

    def may_revoke(self, revocation: Revocation, grant: Grant) -> bool:
        """True if the revoker was entitled to revoke ``grant`` (as of its ``at``)."""
        known = self._may_revoke.get(revocation)
        if known is not None:
            return known
        if revocation in self._revoking:
            self._cycles += 1
            return True  # a revocation whose authority hangs on itself: it counts
        cycles = self._cycles
        self._revoking.add(revocation)
        try:
            known = self._entitled(revocation, grant)
        finally:
            self._revoking.discard(revocation)
        if self._cycles == cycles:
            # Remembered only if no cycle was met on the way: an answer inside a cycle
            # depends on where the question entered it, and a later question must get
            # the answer a fresh evaluator gives (every node, whatever it asked before).
            self._may_revoke[revocation] = known
        return known

    def _entitled(self, revocation: Revocation, grant: Grant) -> bool:
        who = revocation.revoker
        if who == grant.granter or who in self.roots:
            return True
        # A granter further up the chain could revoke that grant instead.
        seen, parent = 0, grant.parent
        while parent is not None and seen < MAX_DEPTH:
            above = self.state.grants.get(parent)
            if above is None:
                break
            if above.granter == who:
                return True
            parent, seen = above.parent, seen + 1
        run = _Run(self, revocation.at, live=False, track=False)
        if run.root(who, 1):
            return True
        for gid in self.state.by_grantee.get(who, ()):
            found = run.found(gid, 1)
            if found is None:
                continue
            held = found[0]
            if (
                held.actions & ADMIN
                and covers(held.namespace, grant.namespace)
                and covers(held.key, grant.key)
            ):
                return True
        return False

    # -- questions -------------------------------------------------------------------------

    def effective(self, who: bytes, at: int, *, live: bool) -> Effective:
        """What ``who`` may do at ``at`` (see :class:`Effective`)."""
        run = _Run(self, at, live=live)
        scopes: list[Scope] = []
        self._steps = 0
        try:
            rooted = run.root(who, 0)
        except _OutOfSteps:
            rooted = False
        if rooted:
            return Effective((Scope(_EVERYTHING, _ROOT_GLOB, _ROOT_GLOB, None),), run.lo, run.hi)
        # Each grant of ``who`` gets a budget of its own, in a fixed order (by id): a
        # heap of grants given to someone (thousands of valid delegations, or junk) costs
        # time in proportion, and never locks its holder out of what its good grants give.
        for gid in self.state.by_grantee.get(who, ()):
            self._steps = 0
            try:
                found = run.found(gid, 1)
            except _OutOfSteps:
                continue
            if found is not None:
                g = found[0]
                scopes.append(
                    Scope(expand(g.actions), self._glob(g.namespace), self._glob(g.key), gid)
                )
        return Effective(tuple(scopes), run.lo, run.hi)

    def in_effect(self, gid: bytes, at: int, *, live: bool = True) -> bool:
        """True if the grant with id ``gid`` takes effect at ``at``."""
        self._steps = 0
        try:
            return _Run(self, at, live=live).found(gid, 1) is not None
        except _OutOfSteps:
            return False

    def grant_problem(self, grant: Grant, at: int) -> str | None:
        """Why ``grant`` (not yet held) could not take effect from ``at`` on, or None.
        Its signature is the caller's to check."""
        if grant.expires is not None and grant.expires <= at:
            return "it has expired already"
        when = max(at, grant.not_before)
        self._steps = 0
        run = _Run(self, when, live=True)
        parent = None if grant.parent is None else self.state.grants.get(grant.parent)
        try:
            if grant.parent is None:
                if run.root(grant.granter, 1):
                    return None
                return (
                    "its granter is not a root of this database (the node's key or an "
                    "owner), so it must name the parent grant it delegates from"
                )
            if parent is None:
                return f"its parent grant {grant.parent.hex()[:16]} is not held here"
            found = run.valid(grant.parent, 2)
        except _OutOfSteps:
            return "its chain is too tangled to verify in bounded time"
        except _TooDeep:
            return f"its chain of grants would be more than {MAX_DEPTH} deep"
        if found is not None and found[1] + 1 > MAX_DEPTH:
            return f"its chain of grants would be more than {MAX_DEPTH} deep"
        if found is None:
            return "its parent grant is not in effect (revoked, expired, or itself invalid)"
        if parent.grantee != grant.granter:
            return "its parent grant was given to another identity than its granter"
        return escalation(grant, parent)

    def revocation_problem(self, revocation: Revocation) -> str | None:
        """Why ``revocation`` could not take effect, or None. Its signature is the
        caller's to check."""
        grant = self.state.grants.get(revocation.grant)
        if grant is None:
            return f"no grant with id {revocation.grant.hex()[:16]} is held here"
        self._steps = 0
        try:
            if self.may_revoke(revocation, grant):
                return None
        except _OutOfSteps:
            return "its authority is too tangled to verify in bounded time"
        return (
            "its revoker is neither the grant's granter, a granter above it, a root, "
            "nor an admin over everything the grant covers"
        )


def escalation(grant: Grant, parent: Grant) -> str | None:
    """How ``grant`` asks for more than ``parent`` gives, or None (attenuation)."""
    extra = expand(grant.actions) & ~expand(parent.actions)
    if extra:
        return "it escalates beyond its parent grant: actions the parent does not give"
    if not covers(parent.namespace, grant.namespace):
        return (
            f"it escalates beyond its parent grant: namespace {grant.namespace!r} is not "
            f"within {parent.namespace!r}"
        )
    if not covers(parent.key, grant.key):
        return (
            f"it escalates beyond its parent grant: key {grant.key!r} is not within {parent.key!r}"
        )
    if grant.not_before < parent.not_before:
        return "it escalates beyond its parent grant: it starts before its parent"
    if parent.expires is not None and (grant.expires is None or grant.expires > parent.expires):
        return "it escalates beyond its parent grant: it outlives its parent"
    return None
