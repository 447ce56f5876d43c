"""The one interface of a koru-delta database, local or remote.

:class:`koru.Database` (a database in this process) satisfies it, and so will the
client of a database served by another node; code written against
:class:`DatabaseAPI` runs on either. Why every call is awaitable, even those a local
database answers from memory (``stats``, ``digest``, ``roots``): a remote database
answers over the network, and a call that is synchronous here could never be served
there without blocking the event loop. (``workspace`` and ``audit_workspace`` only
build a handle, with no I/O; the handle's calls are awaited.)

A workspace handle satisfies :class:`SpaceAPI`, the data calls; the calls about the
whole database (events, feeds, statistics, checkpoints, lifecycle) are the database's
alone, since through them one workspace could read or write another's data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from koru.events import Grant, PublicIdentity, Revocation
from koru.nursery import ProcessInfo
from koru.projections import Query, QueryPlan

from ._diff import Diff
from ._genome import Genome
from ._identity import Identity
from ._indexing import IndexInfo
from ._lineage import Connected
from ._subscriptions import KeyChange
from ._types import Expiring, IngestResult, Stats, Version, Versioned
from ._vectors import VectorHit
from ._viewing import ViewInfo
from ._workspace import WorkspaceInfo

__all__ = ["DatabaseAPI", "SpaceAPI"]


class SpaceAPI(Protocol):
    """The data calls, answered within one space: what a database answers in its
    default space and a workspace handle (``db.workspace(name)``) in its own. See
    :class:`koru.Database` for each call's full contract."""

    @property
    def readonly(self) -> bool:
        """True if every write raises ReadOnlyError."""
        ...

    async def put(
        self,
        namespace: str,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        parents: Iterable[Any] | None = None,
    ) -> Version: ...

    async def put_with_causal_links(
        self, namespace: str, key: str, value: Any, parents: Iterable[Any]
    ) -> Version: ...

    async def put_batch(
        self, items: Iterable[tuple[str, str, Any]], *, ttl: float | None = None
    ) -> list[Version]: ...

    async def delete(self, namespace: str, key: str) -> Version: ...

    async def get(self, namespace: str, key: str) -> Any: ...

    async def get_versioned(self, namespace: str, key: str) -> Versioned: ...

    async def get_at(self, namespace: str, key: str, at: Any) -> Versioned: ...

    async def history(
        self,
        namespace: str,
        key: str,
        since: Any = None,
        until: Any = None,
        latest: int | None = None,
    ) -> list[Versioned]: ...

    async def contains(self, namespace: str, key: str) -> bool: ...

    async def keys(self, namespace: str) -> list[str]: ...

    async def namespaces(self) -> list[str]: ...

    async def diff(
        self, namespace: str, key: str, from_version: int | str = -2, to_version: int | str = -1
    ) -> Diff: ...

    async def expiring(self, within: float = 0.0) -> list[Expiring]: ...

    async def query(self, namespace: str, query: Query | dict[str, Any], at: Any = None) -> Any: ...

    async def explain(
        self, namespace: str, query: Query | dict[str, Any], at: Any = None
    ) -> QueryPlan: ...

    async def create_index(self, namespace: str, field: str) -> bool: ...

    async def drop_index(self, namespace: str, field: str) -> None: ...

    async def list_indexes(self, namespace: str | None = None) -> list[IndexInfo]: ...

    async def create_view(
        self, name: str, namespace: str, query: Query | dict[str, Any]
    ) -> None: ...

    async def view(self, name: str) -> Any: ...

    async def refresh_view(self, name: str) -> None: ...

    async def list_views(self) -> list[ViewInfo]: ...

    async def delete_view(self, name: str) -> None: ...

    def subscribe(
        self,
        namespace: str | None = None,
        key: str | None = None,
        kinds: Iterable[str] = ...,
        where: Query | dict[str, Any] | None = None,
        from_position: int | None = None,
        buffer: int = ...,
    ) -> AbstractAsyncContextManager[AsyncIterator[KeyChange]]: ...

    async def are_connected(
        self, a: tuple[str, str], b: tuple[str, str], *, max_depth: int = ...
    ) -> bool: ...

    async def connection_path(
        self, a: tuple[str, str], b: tuple[str, str], *, max_depth: int = ...
    ) -> list[tuple[str, str]] | None: ...

    async def ancestors(
        self, node: tuple[str, str], depth: int | None = None
    ) -> list[tuple[str, str]]: ...

    async def descendants(
        self, node: tuple[str, str], depth: int | None = None
    ) -> list[tuple[str, str]]: ...

    async def most_connected(self, namespace: str, k: int = 10) -> list[Connected]: ...


class DatabaseAPI(SpaceAPI, Protocol):
    """What every koru-delta database answers: the data calls of its default space
    (:class:`SpaceAPI`), its workspaces, and the calls about the whole database (its
    events, feeds, statistics, lifecycle), which a workspace handle does not have."""

    @property
    def node_id(self) -> str:
        """The id (hex) of the node that holds the database."""
        ...

    def workspace(self, name: str) -> SpaceAPI: ...

    def audit_workspace(self, name: str) -> SpaceAPI: ...

    async def create_workspace(self, name: str) -> bool: ...

    async def drop_workspace(self, name: str) -> None: ...

    async def workspaces(self, *, dropped: bool = False) -> list[WorkspaceInfo]: ...

    async def embed(
        self, namespace: str, key: str, vector: Any, model: str = ..., metadata: Any = ...
    ) -> Version: ...

    async def delete_embedding(self, namespace: str, key: str) -> Version: ...

    async def embed_search(
        self,
        namespace: str | None,
        query: Any,
        top_k: int = ...,
        threshold: float | None = ...,
        model: str | None = ...,
        metric: str = ...,
        approximate: bool | None = ...,
        where: Any = ...,
    ) -> list[VectorHit]: ...

    async def embed_search_batch(
        self,
        namespace: str | None,
        queries: Any,
        top_k: int = ...,
        threshold: float | None = ...,
        model: str | None = ...,
        metric: str = ...,
        approximate: bool | None = ...,
        where: Any = ...,
    ) -> list[list[VectorHit]]: ...

    async def similar_at(
        self,
        namespace: str | None,
        query: Any,
        at: Any,
        top_k: int = ...,
        threshold: float | None = ...,
        model: str | None = ...,
        metric: str = ...,
        where: Any = ...,
    ) -> list[VectorHit]: ...

    async def put_similar(
        self, namespace: str, key: str, content: Any, metadata: Any = ...
    ) -> Version: ...

    async def find_similar(
        self,
        namespace: str | None,
        content: Any,
        top_k: int = ...,
        threshold: float | None = ...,
        where: Any = ...,
    ) -> list[VectorHit]: ...

    async def ingest(self, events: Iterable[bytes]) -> IngestResult: ...

    async def feed_heads(self) -> dict[tuple[str, str], int]: ...

    async def feed_events(
        self, origin: str, agent: str = ..., after: int = 0, limit: int | None = None
    ) -> list[bytes]: ...

    async def stats(self) -> Stats: ...

    async def roots(self) -> dict[str, str]: ...

    async def digest(self) -> str: ...

    async def checkpoint(self) -> None: ...

    async def genome(self) -> Genome: ...

    async def processes(self) -> list[ProcessInfo]: ...

    async def register(self, identity: Identity | PublicIdentity) -> bool: ...

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
    ) -> Grant: ...

    async def revoke(
        self,
        revocation_or_grant: Revocation | Grant | bytes | str,
        *,
        revoker: Identity | None = None,
    ) -> Revocation: ...

    async def check(self, who: Any, action: str, namespace: str, key: str) -> bool: ...

    async def aclose(self) -> None: ...
