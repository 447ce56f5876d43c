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
- writes (``put``, ``put_batch``, ``delete``): ``write`` on every key written, and
  ``read`` on every parent a put names;
- lineage walks (``ancestors``, ``descendants``, ``connection_path``,
  ``are_connected``): ``read`` on the keys named, and a walk passes only through keys
  the identity may read; ``most_connected``: ``read`` on the whole namespace;
- workspaces: ``workspace(name)`` and ``audit_workspace(name)`` give authorized
  handles of the workspace (every name checked in its stored form,
  ``koru.workspace_namespace(name, namespace)``; see :mod:`koru._authorized_space`);
  ``create_workspace``/``drop_workspace``: ``admin`` on the whole workspace;
  ``workspaces`` lists those the identity holds any capability in;
- ``ingest``: the identity holds ``write`` somewhere, and every event is proven by its
  origin's seal and written by an author allowed, at its own time, what its local call
  here would need (:mod:`koru._proven`, :mod:`koru._authorship`);
- the whole log and its summaries (``feed_heads``, ``feed_events``, ``roots``,
  ``digest``, ``genome``): ``read`` on every key; ``stats``: any capability;
  ``checkpoint``, ``processes``: ``admin`` on every key;
- embeddings (``embed``, ``delete_embedding``, ``put_similar``): ``write`` on the key;
  searches (``embed_search``, ``embed_search_batch``, ``similar_at``,
  ``find_similar``): ``read`` on the whole namespace (everything, for None);
- ``register``: any capability (or registering itself); ``grant``/``revoke``: only the
  identity's own signed statements (checked as by the database); ``check``: itself,
  or anyone for an admin.

With a session, each call also checks the session is current (``SessionExpiredError``
once its time is up). Decisions are cached for as long as they cannot change: until the
auth state's next change (a grant or a revocation stored) or the end of their
window of validity on the read time. ``get`` takes a shortcut while the cached decision
holds (the state unchanged, the handle open, and with a session: the session still open
and the read time before both its expiry and the decision's end, the clock read once):
the namespace's check, usually a key prefix, is tested inline and the database's read
runs without a coroutine of its own; anything else goes the whole way.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio

from koru.events import (
    ADMIN,
    READ,
    WRITE,
    Grant,
    InvalidArgumentError,
    PermissionDeniedError,
    PublicIdentity,
    Revocation,
)
from koru.nursery import ProcessInfo

from ._api import DatabaseAPI, SpaceAPI
from ._authority import covers, public_key_of, whole_space
from ._authorized_space import _ANY_KEY, EVERYTHING, NAMES, AuthorizedSpace
from ._genome import Genome
from ._identity import Identity
from ._space import Space
from ._types import IngestResult, Stats, Version
from ._vectors import VectorHit
from ._workspace import WorkspaceInfo

if TYPE_CHECKING:
    from ._database import Database
    from ._sessions import Session

__all__ = ["AuthorizedDatabase"]


class AuthorizedDatabase(AuthorizedSpace):
    """A database as seen by one identity (see the module doc)."""

    __slots__ = ("_children",)

    def __init__(
        self, db: Database, who: Session | Identity | PublicIdentity | bytes | str
    ) -> None:
        super().__init__(db, who)
        self._children: weakref.WeakSet[AuthorizedSpace] = weakref.WeakSet()

    @property
    def node_id(self) -> str:
        return self._db.node_id

    # -- reads -------------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> Any:
        """Needs read on the key. The hot path of an authorized handle: the checks of
        _allow while nothing they depend on changed (the state's change count, the
        session's end and the decision's, the handle and the session open), then the
        database's get without its coroutine (its lifecycle entered here)."""
        session = self._session
        if session is None:
            fresh = self._fresh == self._state.changes
        else:
            # The read time (Writer.read_time: the latest of the clock, the newest
            # timestamp and the floor) before the limit, without the call: each of the
            # three before it. A clock reading that is not an int in range goes the
            # whole way (Writer.now refuses it there).
            now = self._clock_ns()
            limit = self._limit
            fresh = (
                self._fresh == self._state.changes
                and type(now) is int
                and 0 <= now < limit
                and self._writer._read_floor < limit
                and self._hlc.last < limit
                and self._open.get(session.id) is session
            )
        if not fresh or type(namespace) is not str or type(key) is not str:
            self._allow(READ, namespace, key)  # the whole way
        else:
            rule = self._reads.get(namespace)
            if rule is None:
                rule = self._read_rule(namespace)
            # A prefix (a grant on "u*": the usual one) is tested here; else the check.
            if rule is not _ANY_KEY and not (
                key.startswith(rule) if isinstance(rule, str) else rule(key)
            ):
                raise self._denied(READ, namespace, key)
        db = self._db
        life = db._life
        if life.begin():
            await life.pause()
            self._allow(READ, namespace, key)  # again: the yield let other tasks run
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        return db._read(namespace, key)

    def _allow_everything(self, action: int) -> None:
        self._allow_space(action)

    # -- workspaces --------------------------------------------------------------------------

    def _child(self, name: str, audit: bool) -> AuthorizedSpace:
        who: Any = self._session or self._signer or self._who
        target = self._db.audit_workspace(name) if audit else self._db.workspace(name)
        child = AuthorizedSpace(self._db, who, target, Space(name))
        if self._closed:
            child._close()
        self._children.add(child)
        return child

    def workspace(self, name: str) -> SpaceAPI:
        """An authorized handle of workspace ``name`` (its calls checked as this
        handle's, on the stored names; closed with this handle)."""
        return self._child(name, audit=False)

    def audit_workspace(self, name: str) -> SpaceAPI:
        """A read-only authorized handle of workspace ``name`` (also once dropped)."""
        return self._child(name, audit=True)

    def _allow_workspace(self, action: int, name: str) -> None:
        prefix = Space(name).prefix  # checks the name
        if not whole_space(self._scopes(), action, prefix):
            raise PermissionDeniedError(self._name, NAMES[action], EVERYTHING, EVERYTHING, name)

    async def create_workspace(self, name: str) -> bool:
        self._allow_workspace(ADMIN, name)
        return await self._db.create_workspace(name)

    async def drop_workspace(self, name: str) -> None:
        self._allow_workspace(ADMIN, name)
        await self._db.drop_workspace(name)

    async def workspaces(self, *, dropped: bool = False) -> list[WorkspaceInfo]:
        found = await self._db.workspaces(dropped=dropped)
        patterns = [s.namespace.pattern for s in self._scopes().scopes]
        out = []
        for info in found:
            prefix = Space(info.name).prefix
            if any(p.startswith(prefix) or covers(p, prefix) for p in patterns):
                out.append(info)
        return out

    # -- embeddings --------------------------------------------------------------------------
    # An embedding is a key's, so writing one needs write on the key; a search ranks
    # every embedding of its namespace (None: of every namespace), so it needs read on
    # all of them.

    def _allow_search(self, namespace: str | None) -> None:
        if namespace is None:
            self._allow_everything(READ)
        else:
            self._allow_namespace(READ, namespace)

    async def embed(
        self, namespace: str, key: str, vector: Any, model: str = "default", metadata: Any = None
    ) -> Version:
        self._allow(WRITE, namespace, key)
        return await self._db.embed(namespace, key, vector, model, metadata)

    async def delete_embedding(self, namespace: str, key: str) -> Version:
        self._allow(WRITE, namespace, key)
        return await self._db.delete_embedding(namespace, key)

    async def embed_search(
        self,
        namespace: str | None,
        query: Any,
        top_k: int = 10,
        threshold: float | None = None,
        model: str | None = None,
        metric: str = "cosine",
        approximate: bool | None = None,
        where: Any = None,
    ) -> list[VectorHit]:
        self._allow_search(namespace)
        return await self._db.embed_search(
            namespace, query, top_k, threshold, model, metric, approximate, where
        )

    async def embed_search_batch(
        self,
        namespace: str | None,
        queries: Any,
        top_k: int = 10,
        threshold: float | None = None,
        model: str | None = None,
        metric: str = "cosine",
        approximate: bool | None = None,
        where: Any = None,
    ) -> list[list[VectorHit]]:
        self._allow_search(namespace)
        return await self._db.embed_search_batch(
            namespace, queries, top_k, threshold, model, metric, approximate, where
        )

    async def similar_at(
        self,
        namespace: str | None,
        query: Any,
        at: Any,
        top_k: int = 10,
        threshold: float | None = None,
        model: str | None = None,
        metric: str = "cosine",
        where: Any = None,
    ) -> list[VectorHit]:
        self._allow_search(namespace)
        return await self._db.similar_at(
            namespace, query, at, top_k, threshold, model, metric, where
        )

    async def put_similar(
        self, namespace: str, key: str, content: Any, metadata: Any = None
    ) -> Version:
        self._allow(WRITE, namespace, key)
        return await self._db.put_similar(namespace, key, content, metadata)

    async def find_similar(
        self,
        namespace: str | None,
        content: Any,
        top_k: int = 10,
        threshold: float | None = None,
        where: Any = None,
    ) -> list[VectorHit]:
        self._allow_search(namespace)
        return await self._db.find_similar(namespace, content, top_k, threshold, where)

    # -- events ------------------------------------------------------------------------------

    async def ingest(self, events: Iterable[bytes]) -> IngestResult:
        """Take in events from this identity (a peer): each proven by its origin's seal
        and allowed to its author at its own time (see :mod:`koru._proven`)."""
        self._participant(WRITE)
        return await self._db._ingest_proven(events, self._who)

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
        """Close this handle and its workspace handles (and end its session); the
        database stays open."""
        for child in list(self._children):
            child._close()
        if not self._closed:
            self._close()
            if self._session is not None:
                self._sessions.end(self._session)
            # What it offered and left waiting for a seal goes with it.
            self._db._proven.forget(self._who)

    def __repr__(self) -> str:
        return f"AuthorizedDatabase({self._name} on node {self._db.node_id[:12]})"


def _conforms(db: AuthorizedDatabase) -> DatabaseAPI:
    """Checked by mypy: the authorized handle satisfies the one interface."""
    return db
