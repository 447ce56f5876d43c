"""The database's authority: its node key, who its roots are, and every auth decision.

One collaborator of :class:`~koru.Database` holds what the face needs to decide who
may do what: the node identity (the database's own key pair, whose owner may do
anything here), the :class:`~koru.projections.AuthState` every event is folded into,
and an :class:`~koru.projections.Evaluator` over them, rebuilt when the state changes.
Live decisions are cached per identity for the window of time over which they cannot
change, so an authorized read costs a dictionary lookup and a glob match or two.

It also turns requests into the identity log's events, each checked before anything
is written (a bad one raises and changes nothing): registering an identity (proof of
work first: one hash), storing a grant (its signature, its grantee's registration, and
whether it could take effect: a root's, or an attenuation of a parent in effect, at
most ``MAX_DEPTH`` deep), storing a revocation (its signature and its revoker's
authority), and sealing this node's feeds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from koru.events import (
    IDENTITY,
    MAX_SEAL_POINTS,
    READ,
    AuthError,
    Event,
    Grant,
    GrantEvent,
    Header,
    IdentityEvent,
    InvalidArgumentError,
    InvalidGrantError,
    KoruError,
    ProofOfWorkError,
    PublicIdentity,
    Revocation,
    RevokeEvent,
    SealEvent,
    SealPoint,
    SignatureError,
    agent_index,
    is_public_key,
    short_key,
)
from koru.projections import AuthState, Effective, Evaluator, FeedState

from ._identity import Identity, check_difficulty
from ._sessions import Session

__all__ = ["Authority", "covers", "describe", "public_key_of", "whole", "whole_space"]

Emit = Callable[[str, Callable[[Header], Event]], tuple[Event, bytes]]


def usable_key(public_key: bytes) -> bool:
    """True if the 32 bytes are a point libsodium accepts as a public key."""
    import nacl.bindings
    import nacl.exceptions

    try:
        nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def public_key_of(who: Any) -> bytes:
    """The public key a caller names: an Identity, a PublicIdentity, a Session, 32
    bytes, or 64 hex digits.

    Raises:
        InvalidArgumentError: none of those.
    """
    if isinstance(who, Identity | PublicIdentity):
        return who.public_key
    if isinstance(who, Session):
        return who.identity
    if is_public_key(who):
        return who  # type: ignore[no-any-return]
    if type(who) is str and len(who) == 64:
        try:
            return bytes.fromhex(who)
        except ValueError:
            pass
    raise InvalidArgumentError(
        "an identity is an Identity, a PublicIdentity, a Session, a 32-byte public key "
        f"or its 64 hex digits, not {who!r}"
    )


class Authority:
    """See the module doc."""

    def __init__(
        self,
        *,
        state: AuthState,
        feeds: FeedState,
        node: Identity | None,
        node_id: bytes,
        difficulty: int,
        root: bytes | None = None,
    ) -> None:
        self.state = state
        self._feeds = feeds
        self._node = node
        self._node_id = node_id
        self.difficulty = check_difficulty(difficulty)
        # The node key is the root: a read-only database knows only its public half
        # (``root``), when it could read it.
        own = node.public_key if node is not None else root
        self.roots = frozenset(() if own is None else (own,))
        self._evaluator: Evaluator | None = None
        self._seen = -1
        self._live: dict[bytes, Effective] = {}
        self._then: dict[bytes, Effective] = {}

    # -- the node identity ---------------------------------------------------------------

    @property
    def node(self) -> Identity:
        """This database's node identity (its key pair).

        Raises:
            AuthError: the database was opened read-only (the key is not loaded).
        """
        if self._node is None:
            raise AuthError("a read-only database holds no node key: open it for writing")
        return self._node

    @node.setter
    def node(self, identity: Identity) -> None:
        """The same key with more proof of work (the roots do not change)."""
        assert self._node is not None and identity.public_key == self._node.public_key
        self._node = identity

    @property
    def public(self) -> PublicIdentity | None:
        return None if self._node is None else self._node.public

    # -- decisions -----------------------------------------------------------------------

    def evaluator(self) -> Evaluator:
        """An evaluator over the current state (a new one once the state changed)."""
        if self._evaluator is None or self._seen != self.state.changes:
            self._evaluator = Evaluator(self.state, self.roots)
            self._seen = self.state.changes
            self._live.clear()
            self._then.clear()
        return self._evaluator

    def effective(self, who: bytes, now: int) -> Effective:
        """What ``who`` may do now (live: every revocation held counts), cached for the
        window over which the answer cannot change."""
        return self._cached(self._live, who, now, live=True)

    def allows(self, who: bytes, action: int, namespace: str, key: str, now: int) -> bool:
        """True if ``who`` may do ``action`` on ``namespace``/``key`` now."""
        return self.effective(who, now).allows(action, namespace, key)

    def effective_at(self, who: bytes, at: int) -> Effective:
        """What ``who`` was allowed at ``at`` (for an event stamped then: a revocation
        counts from its own time, so the answer is the same on every node holding the
        same grants and revocations), cached for the window over which the answer
        holds: proven ingest asks once per event, mostly about a few authors whose
        events' times fall in one window."""
        return self._cached(self._then, who, at, live=False)

    def _cached(self, cache: dict[bytes, Effective], who: bytes, at: int, live: bool) -> Effective:
        """The evaluator's answer for ``who`` at ``at``, from ``cache`` while it holds."""
        if self._seen != self.state.changes:
            self.evaluator()  # a new evaluator clears both caches
        known = cache.get(who)
        if known is not None and known.since <= at < known.until:
            return known
        effective = self.evaluator().effective(who, at, live=live)
        if len(cache) > 4096:
            cache.clear()  # bounded: a cache, rebuilt on demand
        cache[who] = effective
        return effective

    def allowed_at(self, who: bytes, action: int, namespace: str, key: str, at: int) -> bool:
        """True if ``who`` was allowed ``action`` at ``at`` (see :meth:`effective_at`)."""
        return self.effective_at(who, at).allows(action, namespace, key)

    def participant_at(self, who: bytes, at: int) -> bool:
        """True if ``who`` held some capability in effect at ``at``."""
        return bool(self.effective_at(who, at).scopes)

    def reads_everything(self, who: bytes, now: int) -> bool:
        """True if ``who`` may read every key (what serving raw events needs)."""
        return any(
            s.actions & READ and s.namespace.pattern == "*" and s.key.pattern == "*"
            for s in self.effective(who, now).scopes
        )

    # -- requests that become events -------------------------------------------------------

    def registration(self, identity: Any) -> PublicIdentity | None:
        """The identity to register (None if it is registered already with as much
        work), checked: proof of work first, one hash."""
        if isinstance(identity, Identity):
            identity = identity.public
        if not isinstance(identity, PublicIdentity):
            raise InvalidArgumentError(f"register takes a PublicIdentity, not {identity!r}")
        try:
            identity = PublicIdentity.decode(list(identity))
        except Exception:
            raise InvalidArgumentError(f"not a well-formed public identity: {identity!r}") from None
        work = identity.work
        if work < self.difficulty:
            raise ProofOfWorkError(
                f"identity {short_key(identity.public_key)}... has {work} bits of proof of "
                f"work; this database requires {self.difficulty}"
            )
        if not usable_key(identity.public_key):
            raise InvalidArgumentError(
                f"{short_key(identity.public_key)}... is not a usable Ed25519 public key "
                "(not a point of the curve, or of small order): it could never sign"
            )
        held = self.state.work(identity.public_key)
        return None if held is not None and held >= work else identity

    def registered(self, public_key: bytes) -> bool:
        """True if the key is registered with enough proof of work for this database."""
        work = self.state.work(public_key)
        return work is not None and work >= self.difficulty

    def check_grant(self, grant: Any, now: int) -> Grant | None:
        """``grant`` checked for storing (None if it is held already).

        Raises:
            SignatureError: its granter did not sign it.
            InvalidGrantError: it could not take effect (see the module doc).
        """
        checked = self._terms(grant, now)
        if checked.id in self.state.grants:
            # Held already: nothing to store. Unless it was revoked, when storing it
            # again would silently grant nothing (a grant's id is its terms' hash, and
            # a revocation is for good): the caller is told, and how to grant anew.
            evaluator = self.evaluator()
            for revocation in self.state.revocations.get(checked.id, ()):
                if evaluator.may_revoke(revocation, checked):
                    raise InvalidGrantError(
                        f"the grant {checked.id.hex()[:16]}... was revoked, and a revocation"
                        " is for good: a grant with other terms (a not_before of now, say)"
                        " is a new grant"
                    )
            return None
        if not self.registered(checked.grantee) and checked.grantee not in self.roots:
            raise InvalidGrantError(
                f"the grantee {short_key(checked.grantee)}... is not a registered identity "
                "here: register it first (its proof of work is checked then)"
            )
        return checked

    def could_take_effect(self, grant: Any, now: int) -> bool:
        """True if ``grant`` would take effect here once its grantee is registered
        (so a handshake registers a presenting identity only for a grant that counts,
        never for junk)."""
        try:
            self._terms(grant, now)
        except KoruError:
            return False
        return True

    def _terms(self, grant: Any, now: int) -> Grant:
        """``grant``, well formed, signed by its granter, and within its granter's
        authority at ``now``."""
        if not isinstance(grant, Grant):
            raise InvalidArgumentError(f"grant takes a Grant, not {grant!r}")
        try:
            checked = Grant.decode(list(grant), check_signature=False)  # every field
        except Exception as exc:
            raise InvalidGrantError(f"not a well-formed grant: {exc}") from None
        if not checked.verified():
            raise SignatureError(
                f"the grant's signature does not verify with its granter's key "
                f"({short_key(grant.granter)}...)"
            )
        if checked.id not in self.state.grants:
            problem = self.evaluator().grant_problem(checked, now)
            if problem is not None:
                raise InvalidGrantError(f"the grant cannot take effect: {problem}")
        return checked

    def check_revocation(self, revocation: Any) -> Revocation | None:
        """``revocation`` checked for storing (None if held already).

        Raises:
            SignatureError: its revoker did not sign it.
            InvalidGrantError: no such grant here, or the revoker may not revoke it.
        """
        if not isinstance(revocation, Revocation):
            raise InvalidArgumentError(f"revoke takes a Revocation, not {revocation!r}")
        try:
            checked = Revocation.decode(list(revocation), check_signature=False)
        except Exception as exc:
            raise InvalidGrantError(f"not a well-formed revocation: {exc}") from None
        if not checked.verified():
            raise SignatureError(
                "the revocation's signature does not verify with its revoker's key "
                f"({short_key(checked.revoker)}...)"
            )
        if checked in self.state.revocations.get(checked.grant, ()):
            return None
        problem = self.evaluator().revocation_problem(checked)
        if problem is not None:
            raise InvalidGrantError(f"the revocation cannot take effect: {problem}")
        return checked

    def emit_registration(self, emit: Emit, identity: PublicIdentity) -> None:
        emit(IDENTITY, lambda h: IdentityEvent(*h, identity))

    def emit_grant(self, emit: Emit, grant: Grant) -> None:
        emit(IDENTITY, lambda h: GrantEvent(*h, grant))

    def emit_revocation(self, emit: Emit, revocation: Revocation) -> None:
        emit(IDENTITY, lambda h: RevokeEvent(*h, revocation))

    # -- seals -------------------------------------------------------------------------------

    def own_heads(self) -> dict[tuple[bytes, str], tuple[int, bytes]]:
        """The heads of this node's own feeds, as of now (a copy)."""
        node = self._node_id
        return {feed: head for feed, head in self._feeds.heads.items() if feed[0] == node}

    def unsealed(
        self, heads: Mapping[tuple[bytes, str], tuple[int, bytes]] | None = None
    ) -> list[SealPoint]:
        """Points to seal: the head (of ``heads``, default the current ones) of each of
        this node's feeds that no seal covers yet, in seal order; empty if everything
        is sealed."""
        node, sealed = self._node_id, self.state.sealed_to
        points = []
        for (origin, agent), (seq, eid) in (self._feeds.heads if heads is None else heads).items():
            if origin == node and sealed.get((origin, agent), 0) < seq:
                points.append(SealPoint(agent, seq, eid))
        if len(points) > 1:
            # The identity feed's head is covered by the new seal's own signed header;
            # it is named only when nothing else moved (a seal names one point at least).
            points = [p for p in points if p.agent != IDENTITY]
        points.sort(key=lambda p: agent_index(p.agent))
        return points

    def emit_seal(
        self,
        emit: Emit,
        heads: Mapping[tuple[bytes, str], tuple[int, bytes]] | None = None,
        marks: Mapping[tuple[bytes, str], list[tuple[int, bytes]]] | None = None,
    ) -> bool:
        """Append a seal over this node's unsealed feed heads (of ``heads``, default
        the current ones), naming ``marks`` too (points below the heads: see
        koru._seal_marks); False if none. Over ``MAX_SEAL_POINTS`` points take more
        than one seal, in order."""
        node = self.node
        if node.node_id != self._node_id.hex():
            raise AuthError("this node's key does not derive its node id: it cannot seal")
        points = self.unsealed(heads)
        if not points:
            return False
        if marks:
            sealed = self.state.sealed_to
            points += [
                SealPoint(agent, seq, eid)
                for (origin, agent), found in marks.items()
                for seq, eid in found
                if seq > sealed.get((origin, agent), 0)
            ]
            points.sort(key=lambda p: (agent_index(p.agent), p.seq))

        def build(group: tuple[SealPoint, ...], header: Header) -> Event:
            unsigned = SealEvent(*header, node.public_key, group, b"")
            return unsigned._replace(signature=node.sign(unsigned.message()))

        for start in range(0, len(points), MAX_SEAL_POINTS):
            emit(IDENTITY, partial(build, tuple(points[start : start + MAX_SEAL_POINTS])))
        return True


def whole(effective: Effective, action: int, namespace: str) -> bool:
    """True if ``effective`` allows ``action`` on every key of ``namespace`` (a stored
    name): one scope whose key glob is ``*`` and whose namespace glob matches it."""
    return any(
        s.actions & action and s.key.pattern == "*" and s.namespace.match(namespace)
        for s in effective.scopes
    )


def whole_space(effective: Effective, action: int, prefix: str) -> bool:
    """True if ``effective`` allows ``action`` on every key of every namespace that
    starts with ``prefix`` (a workspace's; "" for the whole database)."""
    return any(
        s.actions & action and s.key.pattern == "*" and covers(s.namespace.pattern, prefix)
        for s in effective.scopes
    )


def covers(pattern: str, prefix: str) -> bool:
    """True if the namespace glob ``pattern`` matches every name starting with
    ``prefix`` ("" for every name at all): ``*``, or a literal start and one final
    ``*`` that ``prefix`` begins with."""
    if pattern == "*":
        return True
    head = pattern[:-1]
    return (
        bool(prefix)
        and pattern.endswith("*")
        and "*" not in head
        and "?" not in head
        and prefix.startswith(head)
    )


def describe(who: bytes) -> str:
    """An identity for messages."""
    return f"identity {short_key(who)}..."
