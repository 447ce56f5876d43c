"""Workspaces from the face: the handle of one workspace, and their creation, listing
and dropping (events of the ``workspace`` agent).

A :class:`Workspace` has the data API of the database (:class:`~koru._api.SpaceAPI`)
scoped to its own space (:class:`~koru._space.Space`): every name it takes is stored
under the workspace's prefix, every listing it gives keeps to that prefix, so no call
through it reads or writes another workspace's data or the default space's. It calls
the database's collaborators directly (the database's own calls refuse the stored
names of a workspace, as they must), and gives results back in the names its caller
used.

Its first write creates the workspace (an event) if no create was folded yet; a drop
is final. After a drop the handle refuses every call (:class:`WorkspaceDroppedError`);
``Database.audit_workspace`` gives a read-only handle that still reads the history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import trio
from trio.lowlevel import enable_ki_protection

from koru.events import (
    WORKSPACE,
    KeyNotFoundError,
    NotFoundError,
    NoValueAtTimeError,
    ReadOnlyError,
    WorkspaceDroppedError,
    WorkspaceEvent,
    check_name,
    check_workspace,
)
from koru.projections import Query, QueryPlan
from koru.projections._workspaces import WorkspaceState

from ._diff import Diff
from ._indexing import IndexInfo
from ._lineage import DEFAULT_MAX_DEPTH, Connected
from ._space import Space
from ._subscriptions import DEFAULT_BUFFER, Subscription
from ._types import Expiring, Version, Versioned
from ._viewing import ViewInfo
from ._writer import Writer

if TYPE_CHECKING:
    from ._api import SpaceAPI
    from ._database import Database

__all__ = ["Workspace", "WorkspaceInfo", "Workspaces"]

_REMEMBERED = 256  # stored names a handle remembers


class WorkspaceInfo(NamedTuple):
    """One workspace (``db.workspaces()``)."""

    name: str
    #: When it was created (hlc, ns since the epoch), or None if only its drop is known.
    created: int | None
    #: When it was dropped, or None while it is live.
    dropped: int | None


class Workspaces:
    """Workspace events and listing for one database."""

    __slots__ = ("state", "writer")

    def __init__(self, state: WorkspaceState, writer: Writer) -> None:
        self.state = state
        self.writer = writer

    def create(self, name: str) -> bool:
        """Record the workspace's creation; False (nothing written) if it exists.

        Raises:
            WorkspaceDroppedError: it was dropped (a name is never used again).
        """
        check_workspace(name)
        if self.state.dropped(name):
            raise WorkspaceDroppedError(name)
        if self.state.created(name):
            return False
        self.writer.emit(WORKSPACE, lambda h: WorkspaceEvent(*h, "create", name))
        return True

    def drop(self, name: str) -> None:
        check_workspace(name)
        if self.state.dropped(name):
            raise WorkspaceDroppedError(name)
        if not self.state.created(name):
            raise NotFoundError(f"no workspace called {name!r}")
        self.writer.emit(WORKSPACE, lambda h: WorkspaceEvent(*h, "drop", name))

    def listing(self, dropped: bool) -> list[WorkspaceInfo]:
        out = []
        for name, entry in sorted(self.state.entries.items()):
            if entry.dropped is not None and not dropped:
                continue
            out.append(
                WorkspaceInfo(
                    name,
                    None if entry.created is None else entry.created[0],
                    None if entry.dropped is None else entry.dropped[0],
                )
            )
        return out


class Workspace:
    """One workspace of a database: the data API in an isolated space. Obtain one with
    :meth:`koru.Database.workspace` (or, read-only and also once dropped,
    :meth:`koru.Database.audit_workspace`). See :class:`koru.Database` for each call's
    contract; names and results are the workspace's own."""

    __slots__ = ("_audit", "_db", "_names", "_space", "name")

    def __init__(self, db: Database, name: str, *, audit: bool = False) -> None:
        self._space = Space(name)  # checks the name
        self._db = db
        #: Namespaces named lately -> their stored form (checked already).
        self._names: dict[str, str] = {}
        self._audit = audit
        #: The workspace's name.
        self.name = name

    def __repr__(self) -> str:
        return f"<Workspace {self.name!r}{' (audit)' if self._audit else ''}>"

    @property
    def readonly(self) -> bool:
        """True if every write raises (an audit handle, or a read-only database)."""
        return self._audit or self._db.readonly

    # -- plumbing --------------------------------------------------------------------------

    async def _enter(self) -> None:
        await self._db._life.enter()
        if self.name in self._db._workspaces.state.gone and not self._audit:
            raise WorkspaceDroppedError(self.name)

    async def _enter_write(self) -> None:
        await self._db._life.enter_write()
        if self._audit:
            raise ReadOnlyError(f"workspace {self.name!r} is open for audit: read-only")
        if self._db._workspaces.state.dropped(self.name):
            raise WorkspaceDroppedError(self.name)

    def _written(self) -> None:
        """A write went through: the workspace exists from now on (its first write
        records its creation, after the write, so a refused write creates nothing)."""
        if not self._db._workspaces.state.created(self.name):
            self._db._workspaces.create(self.name)

    async def _acknowledged(self) -> None:
        self._written()
        await self._db._writer.acknowledge()

    def _ns(self, namespace: Any) -> str:
        """The stored form of a namespace, checked (and remembered, for the next call
        that names it)."""
        stored = self._space.inward(namespace)
        names = self._names
        if len(names) >= _REMEMBERED:
            names.clear()
        names[namespace] = stored
        return stored

    @staticmethod
    @contextmanager
    def _named(namespace: Any) -> Iterator[None]:
        """Errors that name a key say it in the caller's names."""
        try:
            yield
        except KeyNotFoundError as exc:
            raise KeyNotFoundError(namespace, exc.key) from None
        except NoValueAtTimeError as exc:
            raise NoValueAtTimeError(namespace, exc.key, exc.at_ns) from None

    # -- writes ------------------------------------------------------------------------------

    # The writes below are shielded from KeyboardInterrupt (trio delivers it at their
    # next checkpoint instead): Ctrl-C between a write's append and _written left a
    # workspace holding a value that workspaces() did not list and drop_workspace
    # refused as unknown.
    @enable_ki_protection
    async def put(
        self,
        namespace: str,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        parents: Iterable[Any] | None = None,
    ) -> Version:
        await self._enter_write()
        db = self._db
        stored = self._ns(namespace)
        check_name(key, "key")
        links = db._lineage.parents(self._space, stored, key, parents)
        version = db._writer.put(stored, key, value, ttl, links)
        await self._acknowledged()
        return version._replace(namespace=namespace)

    async def put_with_causal_links(
        self, namespace: str, key: str, value: Any, parents: Iterable[Any]
    ) -> Version:
        return await self.put(namespace, key, value, parents=parents)

    @enable_ki_protection
    async def put_batch(
        self, items: Iterable[tuple[str, str, Any]], *, ttl: float | None = None
    ) -> list[Version]:
        await self._enter_write()
        versions = self._db._writer.put_batch(items, ttl, self._space.inward)
        if versions:
            await self._acknowledged()
        prefix = len(self._space.prefix)  # every name written here is this space's
        return [v._replace(namespace=v.namespace[prefix:]) for v in versions]

    @enable_ki_protection
    async def delete(self, namespace: str, key: str) -> Version:
        await self._enter_write()
        stored = self._ns(namespace)
        with self._named(namespace):
            version = self._db._writer.delete(stored, key)
        await self._acknowledged()
        return version._replace(namespace=namespace)

    # -- reads -------------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> Any:
        # The hot path: the preamble inlined, the stored name remembered.
        db = self._db
        life = db._life
        if life.begin():
            await life.pause()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if self.name in db._workspaces.state.gone and not self._audit:
            raise WorkspaceDroppedError(self.name)
        stored = self._names.get(namespace) if type(namespace) is str else None
        if stored is None:
            stored = self._ns(namespace)
        try:
            return db._reads.value(stored, key)
        except KeyNotFoundError:
            check_name(key, "key")
            raise KeyNotFoundError(namespace, key) from None

    async def get_versioned(self, namespace: str, key: str) -> Versioned:
        await self._enter()
        stored = self._ns(namespace)
        with self._named(namespace):
            return self._db._reads.versioned(stored, key)._replace(namespace=namespace)

    async def get_at(self, namespace: str, key: str, at: Any) -> Versioned:
        await self._enter()
        stored = self._ns(namespace)
        with self._named(namespace):
            return self._db._reads.at(stored, key, at)._replace(namespace=namespace)

    async def history(
        self,
        namespace: str,
        key: str,
        since: Any = None,
        until: Any = None,
        latest: int | None = None,
    ) -> list[Versioned]:
        await self._enter()
        rows = self._db._reads.history(self._ns(namespace), key, since, until, latest)
        return [r._replace(namespace=namespace) for r in rows]

    async def contains(self, namespace: str, key: str) -> bool:
        await self._enter()
        return self._db._reads.contains(self._ns(namespace), key)

    async def keys(self, namespace: str) -> list[str]:
        await self._enter()
        return self._db._reads.keys(self._ns(namespace))

    async def namespaces(self) -> list[str]:
        await self._enter()
        return self._db._reads.namespaces(self._space)

    async def diff(
        self, namespace: str, key: str, from_version: int | str = -2, to_version: int | str = -1
    ) -> Diff:
        await self._enter()
        found = self._db._reads.diff(self._ns(namespace), key, from_version, to_version)
        return found._replace(
            old=found.old._replace(namespace=namespace), new=found.new._replace(namespace=namespace)
        )

    async def expiring(self, within: float = 0.0) -> list[Expiring]:
        await self._enter()
        out = []
        for e in await self._db._expiring(within, self._space):
            shown = self._space.outward(e.namespace)
            if shown is not None:
                out.append(e._replace(namespace=shown))
        return out

    # -- queries, indexes, views ---------------------------------------------------------

    async def query(self, namespace: str, query: Query | dict[str, Any], at: Any = None) -> Any:
        await self._enter()
        return self._db._queries.query(self._ns(namespace), query, at)

    async def explain(
        self, namespace: str, query: Query | dict[str, Any], at: Any = None
    ) -> QueryPlan:
        await self._enter()
        return self._db._queries.explain(self._ns(namespace), query, at)

    @enable_ki_protection
    async def create_index(self, namespace: str, field: str) -> bool:
        await self._enter_write()
        created = self._db._queries.indexing.create(self._ns(namespace), field)
        if created:
            await self._acknowledged()
        return created

    @enable_ki_protection
    async def drop_index(self, namespace: str, field: str) -> None:
        await self._enter_write()
        self._db._queries.indexing.drop(self._ns(namespace), field)
        await self._acknowledged()

    async def list_indexes(self, namespace: str | None = None) -> list[IndexInfo]:
        await self._enter()
        stored = None if namespace is None else self._ns(namespace)
        return self._db._queries.indexing.listing(stored, self._space)

    @enable_ki_protection
    async def create_view(self, name: str, namespace: str, query: Query | dict[str, Any]) -> None:
        await self._enter_write()
        self._db._views.create(self._space.inward(name, "view"), self._ns(namespace), query)
        await self._acknowledged()

    async def view(self, name: str) -> Any:
        await self._enter()
        return self._db._views.read(self._space.inward(name, "view"), self._space)

    async def refresh_view(self, name: str) -> None:
        await self._enter()
        self._db._views.refresh(self._space.inward(name, "view"), self._space)

    async def list_views(self) -> list[ViewInfo]:
        await self._enter()
        return self._db._views.listing(self._space)

    @enable_ki_protection
    async def delete_view(self, name: str) -> None:
        await self._enter_write()
        self._db._views.delete(self._space.inward(name, "view"), self._space)
        await self._acknowledged()

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
        await self._enter()
        hub = self._db._hub
        async with hub.subscribe(
            namespace, key, kinds, where, from_position, buffer, self._space
        ) as sub:
            yield sub

    # -- lineage -------------------------------------------------------------------------

    async def are_connected(
        self, a: tuple[str, str], b: tuple[str, str], *, max_depth: int = DEFAULT_MAX_DEPTH
    ) -> bool:
        await self._enter()
        return self._db._lineage.path(self._space, a, b, max_depth) is not None

    async def connection_path(
        self, a: tuple[str, str], b: tuple[str, str], *, max_depth: int = DEFAULT_MAX_DEPTH
    ) -> list[tuple[str, str]] | None:
        await self._enter()
        return self._db._lineage.path(self._space, a, b, max_depth)

    async def ancestors(
        self, node: tuple[str, str], depth: int | None = None
    ) -> list[tuple[str, str]]:
        await self._enter()
        return self._db._lineage.ancestors(self._space, node, depth)

    async def descendants(
        self, node: tuple[str, str], depth: int | None = None
    ) -> list[tuple[str, str]]:
        await self._enter()
        return self._db._lineage.descendants(self._space, node, depth)

    async def most_connected(self, namespace: str, k: int = 10) -> list[Connected]:
        await self._enter()
        return self._db._lineage.most_connected(self._space, namespace, k)


def _conforms(ws: Workspace) -> SpaceAPI:
    """Checked by mypy: a workspace handle satisfies the data interface."""
    return ws
