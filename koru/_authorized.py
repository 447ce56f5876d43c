"""A database handle that acts as one identity and checks its capabilities every call.

:meth:`koru.Database.as_identity` gives one: the peer server and remote clients use one
per connection, so every message is checked where data crosses the boundary. It
satisfies :class:`koru.DatabaseAPI`; each call first checks (``PermissionDeniedError``
otherwise, before anything is read or written):

- key reads (``get``, ``get_versioned``, ``get_at``, ``history``, ``contains``,
  ``diff``): ``read`` on that key; ``keys``, ``namespaces`` and ``expiring`` list only
  what the identity may read;
- queries (``query``, ``explain``, ``view``; aggregates sum every document):
  ``read`` on the whole namespace; indexes and views (``create_index``,
  ``drop_index``, ``create_view``, ``refresh_view``, ``delete_view``): ``admin`` on
  the whole namespace; listings show only wholly readable namespaces;
- ``subscribe``: read on the key, the namespace, or everything it asks for, and each
  change delivered is checked again (a revocation ends the stream);
- writes (``put``, ``put_batch``, ``delete``): ``write`` on every key written;
- ``ingest``: the identity holds ``write`` somewhere, and every event is proven by its
  origin's seal and written by an author allowed to write it at its own time
  (:mod:`koru._proven`);
- the whole log and its summaries (``feed_heads``, ``feed_events``, ``roots``,
  ``digest``, ``genome``): ``read`` on every key; ``stats``: any capability;
  ``checkpoint``, ``processes``: ``admin`` on every key;
- ``register``: any capability (or registering itself); ``grant``/``revoke``: only the
  identity's own signed statements (checked as by the database); ``check``: itself,
  or anyone for an admin.

With a session, each call also checks the session is current (``SessionExpiredError``
once its time is up). Decisions are cached for as long as they cannot change, so an
authorized ``get`` costs about a glob match more than a plain one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from koru.events import (
    ADMIN,
    READ,
    WRITE,
    DatabaseClosedError,
    Grant,
    InvalidArgumentError,
    PermissionDeniedError,
    PublicIdentity,
    Revocation,
    check_name,
)
from koru.nursery import ProcessInfo
from koru.projections import NEVER, Query, QueryPlan

from ._api import DatabaseAPI
from ._authority import describe, public_key_of
from ._diff import Diff
from ._genome import Genome
from ._identity import Identity
from ._indexing import IndexInfo
from ._sessions import Session
from ._subscriptions import DEFAULT_BUFFER, KeyChange, Subscription
from ._types import Expiring, IngestResult, Stats, Version, Versioned
from ._viewing import ViewInfo

if TYPE_CHECKING:
    from koru.projections import Effective

    from ._database import Database

__all__ = ["AuthorizedDatabase"]

_EVERYTHING = "*"


class AuthorizedDatabase:
    """A database as seen by one identity (see the module doc)."""

    __slots__ = (
        "_authority",
        "_checks",
        "_closed",
        "_db",
        "_effective",
        "_name",
        "_now",
        "_open",
        "_seen",
        "_session",
        "_sessions",
        "_signer",
        "_since",
        "_state",
        "_until",
        "_who",
    )

    def __init__(self, db: Database, who: Session | Identity | PublicIdentity | bytes | str):
        self._db = db
        self._who = public_key_of(who)
        self._session = who if isinstance(who, Session) else None
        self._signer = who if isinstance(who, Identity) else None
        self._authority = db._authority
        self._sessions = db._sessions
        self._now = db._writer.now
        self._state = db._authority.state
        self._open = db._sessions._open
        self._effective: Effective | None = None
        self._seen = -1
        self._since, self._until = 1, 0  # an empty window: decided on first use
        #: (action, namespace) -> the check of a key: what the decision for a namespace
        #: comes to (usually one glob, or "any key"), compiled once per window.
        self._checks: dict[tuple[int, str], Callable[[str], bool]] = {}
        self._closed = False
        self._name = describe(self._who)
        if self._session is not None:
            self._sessions.current(self._session)

    @property
    def identity(self) -> bytes:
        """The public key this handle acts as."""
        return self._who

    @property
    def node_id(self) -> str:
        return self._db.node_id

    @property
    def readonly(self) -> bool:
        return self._db.readonly

    # -- the checks ------------------------------------------------------------------------

    def _scopes(self) -> Effective:
        """What the identity may do now (after checking the handle is open and its
        session current)."""
        if self._closed:
            raise DatabaseClosedError("this authorized handle is closed")
        now = self._now()
        session = self._session
        if session is not None and (
            now >= session.expires or self._open.get(session.id) is not session
        ):
            self._sessions.current(session)  # raises the precise error
        if not self._since <= now < self._until or self._seen != self._state.changes:
            self._refresh(now)
        assert self._effective is not None
        return self._effective

    def _refresh(self, now: int) -> None:
        effective = self._effective = self._authority.effective(self._who, now)
        self._seen = self._state.changes
        self._since, self._until = effective.since, effective.until
        self._checks.clear()

    def _allow(self, action: int, namespace: str, key: str) -> None:
        """Raise PermissionDeniedError unless the identity may ``action`` the key now.

        The hot path of every authorized call: the decision for (action, namespace) is
        compiled into one key check per window of validity (see _compile)."""
        if type(namespace) is not str or type(key) is not str:
            check_name(namespace, "namespace")  # the typed error every call gives
            check_name(key, "key")
        session = self._session
        if session is not None:
            # A session: one clock reading for its expiry and the decision's window.
            now = self._now()
            if (
                now >= session.expires
                or self._open.get(session.id) is not session
                or self._closed
                or self._seen != self._state.changes
                or not self._since <= now < self._until
            ):
                self._scopes()
        elif self._until != NEVER or self._seen != self._state.changes or self._closed:
            # Else the decision holds for every later time (until the state changes),
            # so the clock need not even be read.
            self._scopes()
        check = self._checks.get((action, namespace))
        if check is None:
            check = self._compile(action, namespace)
        if check is not _ANY_KEY and not check(key):
            raise PermissionDeniedError(self._name, _NAMES[action], namespace, key)

    def _compile(self, action: int, namespace: str) -> Callable[[str], bool]:
        assert self._effective is not None
        matches = [
            s.key
            for s in self._effective.scopes
            if s.actions & action and s.namespace.match(namespace)
        ]
        check: Callable[[str], bool]
        if any(g.pattern == "*" for g in matches):
            check = _ANY_KEY
        elif not matches:
            check = _NO_KEY
        elif len(matches) == 1:
            check = matches[0].match
        else:
            funcs = tuple(g.match for g in matches)
            check = lambda key: any(f(key) for f in funcs)  # noqa: E731
        if len(self._checks) >= 4096:
            self._checks.clear()  # a cache: many namespaces only cost recompiling
        self._checks[(action, namespace)] = check
        return check

    def _allow_everything(self, action: int) -> None:
        if not any(
            s.actions & action and s.namespace.pattern == "*" and s.key.pattern == "*"
            for s in self._scopes().scopes
        ):
            raise PermissionDeniedError(self._name, _NAMES[action], _EVERYTHING, _EVERYTHING)

    def _participant(self, action: int = READ | WRITE | ADMIN) -> None:
        if not any(s.actions & action for s in self._scopes().scopes):
            raise PermissionDeniedError(self._name, _NAMES[action], _EVERYTHING, _EVERYTHING)

    # -- writes ----------------------------------------------------------------------------

    async def put(
        self, namespace: str, key: str, value: Any, *, ttl: float | None = None
    ) -> Version:
        self._allow(WRITE, namespace, key)
        return await self._db.put(namespace, key, value, ttl=ttl)

    async def put_batch(
        self, items: Iterable[tuple[str, str, Any]], *, ttl: float | None = None
    ) -> list[Version]:
        if isinstance(items, str | bytes | bytearray) or not isinstance(items, Iterable):
            return await self._db.put_batch(items, ttl=ttl)  # its typed refusal
        # Each item is read once, into a plain tuple: what is checked is exactly what is
        # written (an item that answers differently when read again gains nothing).
        fixed: list[Any] = []
        for item in items:
            if isinstance(item, Sequence) and not isinstance(item, str | bytes) and len(item) == 3:
                item = (item[0], item[1], item[2])
                self._allow(WRITE, item[0], item[1])
            fixed.append(item)  # anything else: the database refuses it, typed
        return await self._db.put_batch(fixed, ttl=ttl)

    async def delete(self, namespace: str, key: str) -> Version:
        self._allow(WRITE, namespace, key)
        return await self._db.delete(namespace, key)

    # -- reads -------------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> Any:
        self._allow(READ, namespace, key)
        return await self._db.get(namespace, key)

    async def get_versioned(self, namespace: str, key: str) -> Versioned:
        self._allow(READ, namespace, key)
        return await self._db.get_versioned(namespace, key)

    async def get_at(self, namespace: str, key: str, at: Any) -> Versioned:
        self._allow(READ, namespace, key)
        return await self._db.get_at(namespace, key, at)

    async def history(
        self,
        namespace: str,
        key: str,
        since: Any = None,
        until: Any = None,
        latest: int | None = None,
    ) -> list[Versioned]:
        self._allow(READ, namespace, key)
        return await self._db.history(namespace, key, since, until, latest)

    async def contains(self, namespace: str, key: str) -> bool:
        self._allow(READ, namespace, key)
        return await self._db.contains(namespace, key)

    async def keys(self, namespace: str) -> list[str]:
        keys = await self._db.keys(namespace)
        scopes = self._scopes()
        return [k for k in keys if scopes.allows(READ, namespace, k)]

    async def namespaces(self) -> list[str]:
        names = await self._db.namespaces()
        scopes = [s for s in self._scopes().scopes if s.actions & READ]
        return [n for n in names if any(s.namespace.match(n) for s in scopes)]

    async def diff(
        self, namespace: str, key: str, from_version: int | str = -2, to_version: int | str = -1
    ) -> Diff:
        self._allow(READ, namespace, key)
        return await self._db.diff(namespace, key, from_version, to_version)

    async def expiring(self, within: float = 0.0) -> list[Expiring]:
        soon = await self._db.expiring(within)
        scopes = self._scopes()
        return [e for e in soon if scopes.allows(READ, e.namespace, e.key)]

    # -- queries, indexes, views, subscriptions -------------------------------------------------
    # A query reads (and an aggregate sums up) every document of its namespace, so it
    # needs read on all of it; defining indexes and views needs admin there.

    def _allow_namespace(self, action: int, namespace: str) -> None:
        if type(namespace) is not str:
            check_name(namespace, "namespace")
        if not any(
            s.actions & action and s.key.pattern == "*" and s.namespace.match(namespace)
            for s in self._scopes().scopes
        ):
            raise PermissionDeniedError(self._name, _NAMES[action], namespace, _EVERYTHING)

    def _whole(self, action: int, namespace: str) -> bool:
        try:
            self._allow_namespace(action, namespace)
        except PermissionDeniedError:
            return False
        return True

    async def _view_namespace(self, name: str) -> str | None:
        for info in await self._db.list_views():
            if info.name == name:
                return info.namespace
        return None

    async def query(self, namespace: str, query: Query | dict[str, Any], at: Any = None) -> Any:
        self._allow_namespace(READ, namespace)
        return await self._db.query(namespace, query, at)

    async def explain(
        self, namespace: str, query: Query | dict[str, Any], at: Any = None
    ) -> QueryPlan:
        self._allow_namespace(READ, namespace)
        return await self._db.explain(namespace, query, at)

    async def create_index(self, namespace: str, field: str) -> bool:
        self._allow_namespace(ADMIN, namespace)
        return await self._db.create_index(namespace, field)

    async def drop_index(self, namespace: str, field: str) -> None:
        self._allow_namespace(ADMIN, namespace)
        await self._db.drop_index(namespace, field)

    async def list_indexes(self, namespace: str | None = None) -> list[IndexInfo]:
        if namespace is not None:
            self._allow_namespace(READ, namespace)
        found = await self._db.list_indexes(namespace)
        return [i for i in found if self._whole(READ, i.namespace)]

    async def create_view(self, name: str, namespace: str, query: Query | dict[str, Any]) -> None:
        self._allow_namespace(ADMIN, namespace)
        held = await self._view_namespace(name)
        if held is not None:  # replacing a view is administering its namespace too
            self._allow_namespace(ADMIN, held)
        await self._db.create_view(name, namespace, query)

    async def view(self, name: str) -> Any:
        held = await self._view_namespace(name)
        if held is not None:
            self._allow_namespace(READ, held)
        return await self._db.view(name)

    async def refresh_view(self, name: str) -> None:
        held = await self._view_namespace(name)
        if held is not None:
            self._allow_namespace(ADMIN, held)
        await self._db.refresh_view(name)

    async def list_views(self) -> list[ViewInfo]:
        return [v for v in await self._db.list_views() if self._whole(READ, v.namespace)]

    async def delete_view(self, name: str) -> None:
        held = await self._view_namespace(name)
        if held is not None:
            self._allow_namespace(ADMIN, held)
        await self._db.delete_view(name)

    @asynccontextmanager
    async def subscribe(
        self,
        namespace: str | None = None,
        key: str | None = None,
        kinds: Iterable[str] = ("put", "delete"),
        where: Query | dict[str, Any] | None = None,
        from_position: int | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> AsyncIterator[Subscription]:
        """Changes the identity may read: one key needs read on it, a namespace read on
        all of it, everything read on everything; and every change delivered is checked
        again, so a revocation ends the stream (PermissionDeniedError) at the next one."""
        if namespace is not None and key is not None:
            self._allow(READ, namespace, key)
        elif namespace is not None:
            self._allow_namespace(READ, namespace)
        else:
            self._allow_everything(READ)
        async with self._db.subscribe(
            namespace, key, kinds, where, from_position, buffer
        ) as subscription:
            changes = subscription._changes
            allow = self._allow

            def checked(item: Any) -> list[KeyChange]:
                out = changes(item)
                for change in out:
                    allow(READ, change.namespace, change.key)
                return out

            # The one place every change passes on its way out (an instance attribute:
            # this subscription alone is checked).
            subscription._changes = checked  # type: ignore[method-assign]
            yield subscription

    # -- events ------------------------------------------------------------------------------

    async def ingest(self, events: Iterable[bytes]) -> IngestResult:
        """Take in events from this identity (a peer): each proven by its origin's seal
        and allowed to its author at its own time (see :mod:`koru._proven`)."""
        self._participant(WRITE)
        return await self._db._ingest_proven(events)

    async def feed_heads(self) -> dict[tuple[str, str], int]:
        self._allow_everything(READ)
        return await self._db.feed_heads()

    async def feed_events(
        self, origin: str, agent: str = "storage", after: int = 0, limit: int | None = None
    ) -> list[bytes]:
        self._allow_everything(READ)
        return await self._db.feed_events(origin, agent, after, limit)

    # -- whole-database views ------------------------------------------------------------------

    async def stats(self) -> Stats:
        self._participant()
        return await self._db.stats()

    async def roots(self) -> dict[str, str]:
        self._allow_everything(READ)
        return await self._db.roots()

    async def digest(self) -> str:
        self._allow_everything(READ)
        return await self._db.digest()

    async def genome(self) -> Genome:
        self._allow_everything(READ)
        return await self._db.genome()

    async def processes(self) -> list[ProcessInfo]:
        self._allow_everything(ADMIN)
        return await self._db.processes()

    async def checkpoint(self) -> None:
        self._allow_everything(ADMIN)
        await self._db.checkpoint()

    # -- identities and capabilities -------------------------------------------------------------

    async def register(self, identity: Identity | PublicIdentity) -> bool:
        if not (
            isinstance(identity, Identity | PublicIdentity) and identity.public_key == self._who
        ):
            self._participant()
        return await self._db.register(identity)

    async def grant(
        self,
        grant_or_grantee: Grant | Identity | PublicIdentity | bytes | str,
        *,
        namespace: str = "*",
        key: str = "*",
        actions: str | list[str] | tuple[str, ...] = "read",
        not_before: Any = None,
        expires: Any = None,
        parent: bytes | str | None = None,
        granter: Identity | None = None,
    ) -> Grant:
        """Store a grant this identity signed (or, for a handle made with an
        :class:`Identity`, a grant it signs here); see :meth:`koru.Database.grant`."""
        self._scopes()  # closed, expired
        if isinstance(grant_or_grantee, Grant):
            if grant_or_grantee.granter != self._who:
                raise PermissionDeniedError(self._name, "store grants of", "another", "identity")
        elif self._signer is None or granter not in (None, self._signer):
            raise InvalidArgumentError(
                "an authorized handle stores the grants of its own identity: sign one with "
                "koru.Grant.create(identity, grantee, ...)"
            )
        return await self._db.grant(
            grant_or_grantee,
            namespace=namespace,
            key=key,
            actions=actions,
            not_before=not_before,
            expires=expires,
            parent=parent,
            granter=self._signer,
        )

    async def revoke(
        self,
        revocation_or_grant: Revocation | Grant | bytes | str,
        *,
        revoker: Identity | None = None,
    ) -> Revocation:
        """Store a revocation this identity signed (see :meth:`grant`)."""
        self._scopes()
        if isinstance(revocation_or_grant, Revocation):
            if revocation_or_grant.revoker != self._who:
                raise PermissionDeniedError(
                    self._name, "store revocations of", "another", "identity"
                )
        elif self._signer is None or revoker not in (None, self._signer):
            raise InvalidArgumentError(
                "an authorized handle stores the revocations of its own identity: sign one "
                "with koru.Revocation.create(identity, grant_id, at)"
            )
        return await self._db.revoke(revocation_or_grant, revoker=self._signer)

    async def check(self, who: Any, action: str, namespace: str, key: str) -> bool:
        if public_key_of(who) != self._who:
            self._allow_everything(ADMIN)
        return await self._db.check(who, action, namespace, key)

    async def aclose(self) -> None:
        """Close this handle (and end its session); the database stays open."""
        if not self._closed:
            self._closed = True
            if self._session is not None:
                self._sessions.end(self._session)

    def __repr__(self) -> str:
        return f"AuthorizedDatabase({self._name} on node {self._db.node_id[:12]})"


_NAMES = {READ: "read", WRITE: "write", ADMIN: "administer", READ | WRITE | ADMIN: "use"}


def _ANY_KEY(key: str) -> bool:
    return True


def _NO_KEY(key: str) -> bool:
    return False


def _conforms(db: AuthorizedDatabase) -> DatabaseAPI:
    """Checked by mypy: the authorized handle satisfies the one interface."""
    return db
