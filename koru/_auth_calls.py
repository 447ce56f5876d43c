"""The database's auth calls: identities, grants, revocations, sessions, checks.

A part of :class:`koru.Database` (a base class, so that the handle's own module stays
about key/value data): every call here enters the database like any other operation,
checks its arguments before writing anything, and writes what it writes through the one
write path into the identity log (``Writer.emit``), then waits for durability.

Who may do what is decided by :class:`~koru._authority.Authority`; who someone is, by
challenge-response sessions (:mod:`koru._sessions`) or by the caller's word for it
(:meth:`as_identity` with an identity: a process that authenticated its user some other
way). The database's own node key is its root: a database opened by its owner may do
anything, and its grants start every chain.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import trio

from koru.events import (
    ACTIONS,
    InvalidArgumentError,
    PublicIdentity,
    Revocation,
    check_name,
)
from koru.events import Grant as _Grant

from ._authority import Authority, public_key_of
from ._identity import Identity, check_difficulty
from ._nodekey import NODE_KEY_FILE
from ._seal_marks import seal_marks
from ._sessions import DEFAULT_SESSION_TTL, Challenge, Response, Session, Sessions
from ._time import to_ns
from ._types import IngestResult

if TYPE_CHECKING:
    from koru.events import LogStore
    from koru.projections import FeedState

    from ._authorized import AuthorizedDatabase
    from ._lifecycle import Lifecycle
    from ._proven import ProvenIngest
    from ._writer import Writer

__all__ = ["AuthCalls", "action_bit"]


def action_bit(action: Any) -> int:
    """The bit of one action name (``"read"``, ``"write"`` or ``"admin"``)."""
    bit = ACTIONS.get(action) if type(action) is str else None
    if bit is None:
        raise InvalidArgumentError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    return bit


def _time_or_none(value: Any, what: str) -> int | None:
    if value is None:
        return None
    try:
        return to_ns(value)
    except Exception:
        raise InvalidArgumentError(
            f"{what} must be a datetime or ISO-8601 time with an offset, or int ns, not {value!r}"
        ) from None


class AuthCalls:
    """Identities, sessions and capabilities on a database (see the module doc)."""

    _life: Lifecycle
    _store: LogStore
    _feeds: FeedState
    #: At most this many events and bytes between two points a seal names (None: the
    #: defaults, koru._seal_marks).
    _seal_run: tuple[int, int] | None = None
    _writer: Writer
    _authority: Authority
    _sessions: Sessions
    _proven: ProvenIngest
    _batched: Callable[
        [Callable[[], IngestResult], Callable[[IngestResult], int]], Awaitable[IngestResult]
    ]

    # -- identity ------------------------------------------------------------------------

    @property
    def identity(self) -> PublicIdentity | None:
        """This database's node identity (public key; its proof of work is mined when
        first needed), or None when opened read-only."""
        return self._authority.public

    async def register(self, identity: Identity | PublicIdentity) -> bool:
        """Register an identity here (an ``identity`` event), so that it can be given
        grants. Its proof of work is checked first (one hash) against the database's
        ``difficulty``. Returns False if it was registered already.

        Raises:
            ProofOfWorkError: not enough proof of work (nothing is written).
        """
        await self._life.enter_write()
        public = self._authority.registration(identity)
        if public is None:
            return False
        self._authority.emit_registration(self._writer.emit, public)
        await self._writer.acknowledge()
        return True

    async def mine_identity(self, difficulty: int | None = None) -> PublicIdentity:
        """This database's node identity with a proof of work of at least
        ``difficulty`` bits (default: this database's own requirement), mined in a worker
        thread the first time and kept in ``node.key``: what a peer registers before
        granting this node anything, and what it checks when this node answers its
        challenges (:meth:`respond`)."""
        await self._life.enter_write()
        node = self._authority.node
        target = self._authority.difficulty if difficulty is None else check_difficulty(difficulty)
        if node.work < target:
            mined = await trio.to_thread.run_sync(node.mined, target)
            self._store.write_private(NODE_KEY_FILE, mined.key_file_bytes())
            self._authority.node = mined
        return self._authority.node.public

    async def respond(self, challenge: Challenge, server: bytes | None = None) -> Response:
        """This node's answer to another database's challenge (how a node opens a
        session on a peer; see :meth:`koru.Identity.respond`, and name the ``server``
        meant)."""
        await self._life.enter()
        return self._authority.node.respond(challenge, server)

    # -- capabilities ----------------------------------------------------------------------

    async def grant(
        self,
        grant_or_grantee: _Grant | Identity | PublicIdentity | bytes | str,
        *,
        namespace: str = "*",
        key: str = "*",
        actions: str | list[str] | tuple[str, ...] = "read",
        not_before: Any = None,
        expires: Any = None,
        parent: bytes | str | None = None,
        granter: Identity | None = None,
    ) -> _Grant:
        """Store a capability grant, and return it (``grant.id`` names it).

        Pass a signed :class:`koru.Grant` (made with ``koru.Grant.create``, by its
        granter, anywhere), or a grantee with the grant's terms: the grant is then made
        here and signed by ``granter`` (default: this database's node key, its root),
        from ``not_before`` until ``expires`` (defaults: from the beginning, so that a
        peer's earlier writes count too, with no end).
        ``namespace`` and ``key`` are globs (``*`` any run, ``?`` one character);
        ``actions`` are ``read``, ``write`` and ``admin`` (which implies both, and lets
        its holder revoke the grants within its reach). A grant with a ``parent`` (the
        parent's id) delegates part of the parent: it may only narrow it.

        Raises:
            SignatureError: the grant is not signed by its granter.
            InvalidGrantError: it could not take effect: its grantee is not registered,
                its granter is not a root and names no parent, it escalates beyond its
                parent, its chain is deeper than ``koru.projections.MAX_DEPTH``, or it
                has expired. Nothing is written.
        """
        await self._life.enter_write()
        now = self._writer.read_time()
        grant = signed_grant(
            grant_or_grantee,
            self._authority.node if granter is None else granter,
            namespace=namespace,
            key=key,
            actions=actions,
            not_before=not_before,
            expires=expires,
            parent=parent,
        )
        checked = self._authority.check_grant(grant, now)
        if checked is not None:
            self._authority.emit_grant(self._writer.emit, checked)
            await self._writer.acknowledge()
        return grant

    async def revoke(
        self,
        revocation_or_grant: Revocation | _Grant | bytes | str,
        *,
        revoker: Identity | None = None,
    ) -> Revocation:
        """Revoke a grant, for good (a ``revoke`` event), and return the revocation.

        Pass a signed :class:`koru.Revocation`, or the grant (or its id) to revoke: the
        revocation is then signed here by ``revoker`` (default: this database's node
        key) as of now. It counts on this database from the next operation, and on
        every other once synced; operations before it stay valid.

        Raises:
            SignatureError: the revocation is not signed by its revoker.
            InvalidGrantError: no such grant is held here, or the revoker is neither its
                granter, a granter above it, a root, nor an admin over all it covers.
        """
        await self._life.enter_write()
        revocation = signed_revocation(
            revocation_or_grant,
            self._authority.node if revoker is None else revoker,
            self._writer.read_time(),
        )
        checked = self._authority.check_revocation(revocation)
        if checked is not None:
            self._authority.emit_revocation(self._writer.emit, checked)
            await self._writer.acknowledge()
        return revocation

    async def check(self, who: Any, action: str, namespace: str, key: str) -> bool:
        """True if ``who`` (a :class:`Session` of this database, an identity, or a
        public key) may do ``action`` (``read``, ``write`` or ``admin``) on
        ``namespace``/``key`` now.

        Raises:
            SessionExpiredError, SessionError: ``who`` is a session that expired or that
                this database did not open.
        """
        await self._life.enter()
        bit = action_bit(action)
        check_name(namespace, "namespace")
        check_name(key, "key")
        if isinstance(who, Session):
            self._sessions.current(who)
        now = self._writer.read_time()
        return self._authority.allows(public_key_of(who), bit, namespace, key, now)

    def as_identity(self, who: Any) -> AuthorizedDatabase:
        """A handle on this database that acts as ``who`` (a :class:`Session` it
        opened, or an identity the caller vouches for) and checks its capabilities on
        every call (``PermissionDeniedError``); it satisfies :class:`koru.DatabaseAPI`.
        The peer server and remote clients get one of these per connection."""
        from ._authorized import AuthorizedDatabase

        return AuthorizedDatabase(self, who)  # type: ignore[arg-type]  # self is a Database

    async def _ingest_proven(self, events: Iterable[bytes], sender: bytes = b"") -> IngestResult:
        """:meth:`ingest` for events from an untrusted ``sender`` (an authorized
        handle's identity): only what its origin sealed and its author may write (see
        koru._proven). A write like :meth:`ingest`: it gives way to background
        checkpoints a bulk load left behind, and counts what it took towards the next
        yield (without, a relayed flood was held back only by the single writes'
        stall; h-ease review)."""
        if isinstance(events, str | bytes | bytearray | memoryview) or not isinstance(
            events, Iterable
        ):
            raise InvalidArgumentError(f"ingest takes an iterable of event bytes, not {events!r}")

        def offer() -> IngestResult:
            ingest = self._writer.ingest
            accepted, duplicates = ingest.accepted, ingest.duplicates
            now = self._writer.now()
            for data in events:
                self._proven.offer(data, now, sender)
            return IngestResult(
                ingest.accepted - accepted,
                ingest.duplicates - duplicates,
                ingest.held + self._proven.waiting,
                tuple(ingest.take_report()),
            )

        return await self._batched(offer, attrgetter("accepted"))

    # -- sessions ------------------------------------------------------------------------------

    async def challenge(self) -> Challenge:
        """A fresh challenge (32 random bytes bound to this database's node key,
        answerable for five minutes, once): the first step of a session."""
        await self._life.enter()
        self._authority.node  # noqa: B018 - a read-only database cannot serve sessions
        return self._sessions.challenge()

    async def open_session(
        self, response: Response, *, ttl: float = DEFAULT_SESSION_TTL
    ) -> Session:
        """Open a session for a client's response to a challenge of this database; it
        lasts ``ttl`` seconds by the database clock.

        Raises:
            WrongServerError: the response answers another server's challenge.
            ChallengeReplayedError: the challenge was not issued here, or was used.
            ChallengeExpiredError: the response came too late.
            ProofOfWorkError: the client's identity has too little proof of work.
            SignatureError: the response is not signed by the identity it names.
        """
        await self._life.enter()
        return self._sessions.open(response, ttl)

    async def end_session(self, session: Session) -> None:
        """End a session (idempotent): a handle acting through it is refused from now."""
        await self._life.enter()
        self._sessions.end(session)

    # -- proof of this node's writes ---------------------------------------------------------

    async def seal(self) -> bool:
        """Sign the heads of this node's feeds (a ``seal`` event), so that peers can
        prove every event this node wrote up to them; False if nothing new needs it.
        Sync seals before serving this node's feeds.

        A seal covers only durable events: it names the heads as they were before a
        sync that made them durable (events appended meanwhile wait for the next seal).
        Logs are separate files, synced together but torn independently by a power cut:
        a seal naming an unsynced event could survive the cut while that event does
        not, and the node's next event would take the lost one's seq, which every peer
        holding the seal then refuses for good (found by simulation seed 297). Naming
        the synced heads rather than waiting for a quiet moment keeps a node that never
        stops writing sealing all the same."""
        await self._life.enter_write()
        heads = self._authority.own_heads()
        await self._writer.settle()  # everything up to those heads is now durable
        # Points inside long unsealed stretches too: a peer can hold only so many
        # events waiting for their proof (see koru._seal_marks).
        marks = await seal_marks(
            heads,
            self._authority.state.sealed_to,
            self._feeds.location,
            self._store.read,
            self._life.check,
            self._seal_run,
        )
        if not self._authority.emit_seal(self._writer.emit, heads, marks):
            return False
        await self._writer.acknowledge()
        return True


def signed_grant(
    grant_or_grantee: Any,
    signer: Any,
    *,
    namespace: str,
    key: str,
    actions: str | list[str] | tuple[str, ...],
    not_before: Any,
    expires: Any,
    parent: bytes | str | None,
) -> _Grant:
    """``grant_or_grantee`` if it is a signed grant, else a grant to it with these
    terms, signed by ``signer`` (where the local and the remote database both make
    one: a secret key signs where it lives)."""
    if isinstance(grant_or_grantee, _Grant):
        return grant_or_grantee
    if not isinstance(signer, Identity):
        raise InvalidArgumentError(f"granter must be an Identity, not {signer!r}")
    return _Grant.create(
        signer,
        public_key_of(grant_or_grantee),
        namespace=namespace,
        key=key,
        actions=actions,
        not_before=_time_or_none(not_before, "not_before") or 0,
        expires=_time_or_none(expires, "expires"),
        parent=_grant_id(parent),
    )


def signed_revocation(revocation_or_grant: Any, signer: Any, at: int) -> Revocation:
    """``revocation_or_grant`` if it is a signed revocation, else one of that grant
    (or grant id) as of ``at``, signed by ``signer``."""
    if isinstance(revocation_or_grant, Revocation):
        return revocation_or_grant
    gid = (
        revocation_or_grant.id
        if isinstance(revocation_or_grant, _Grant)
        else _grant_id(revocation_or_grant)
    )
    if not isinstance(signer, Identity) or gid is None:
        raise InvalidArgumentError("revoke needs a grant (or its id) and an Identity")
    return Revocation.create(signer, gid, at)


def _grant_id(value: Any) -> bytes | None:
    if value is None:
        return None
    if type(value) is bytes and len(value) == 32:
        return value
    if type(value) is str and len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    raise InvalidArgumentError(f"a grant id is 32 bytes or 64 hex digits, not {value!r}")
