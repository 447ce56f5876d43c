"""The database handle: the public key/value, history and time-travel API.

The handle is the face; the work is done by its collaborators, each one concept:
:class:`~koru._lifecycle.Lifecycle` (open or closed, the preamble of every operation,
closing), :class:`~koru._writer.Writer` (local writes and ingested events, through the
one write path), :class:`~koru._reader.ValueReader` (values, proven before they are
served) and :class:`~koru._stats.Statistics` (the counters). Reads are answered from the
projections and never touch the log unless a value is missing from the cache. Every
call is awaitable (:class:`~koru._api.DatabaseAPI`, which a remote client satisfies too).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from operator import attrgetter
from typing import Any, TypeVar, cast

import trio
from trio.lowlevel import enable_ki_protection

from koru.events import (
    AGENTS,
    MAX_NAME_BYTES,
    NODE_ID_SIZE,
    RESERVED,
    STORAGE,
    InvalidArgumentError,
    KeyNotFoundError,
    LogStore,
    check_name,
    check_user_name,
    event_id,
)
from koru.nursery import Clock, Committer, ProcessInfo
from koru.projections import (
    AuthState,
    FeedState,
    KvState,
    Projection,
    Projections,
    Query,
    QueryPlan,
    TierState,
    VectorState,
    state_digest,
)
from koru.projections._indexes import Indexes
from koru.projections._kv import LAST_CID, LAST_PLACE, PLACE, TOMBSTONE
from koru.projections._lineage import LineageState
from koru.projections._views import Views
from koru.projections._workspaces import WorkspaceState

from ._api import DatabaseAPI
from ._auth_calls import AuthCalls
from ._authority import Authority
from ._cache import MISSING, ValueCache
from ._diff import Diff
from ._embedders import Embedder, HashingEmbedder
from ._genome import Genome, genome_of
from ._identity import DEFAULT_DIFFICULTY, Identity
from ._indexing import IndexInfo
from ._lifecycle import Lifecycle
from ._lineage import DEFAULT_MAX_DEPTH, Connected, Lineage
from ._peer_calls import PeerCalls
from ._proven import ProvenIngest
from ._queries import QueryEngine
from ._read_floor import save_read_floor
from ._reader import ValueReader
from ._reads import VISIBLE, KeyReads, budgeted
from ._seal_marks import checked_prev, named_by_next, unlinked
from ._sessions import Entropy, Sessions
from ._space import DEFAULT, Space
from ._stats import OpenReport, Statistics
from ._subscriptions import DEFAULT_BUFFER, Hub, Subscription
from ._time import to_ns
from ._types import EXPIRING_FIELDS, Expiring, IngestResult, Stats, Version, Versioned
from ._vector_calls import EmbeddingCalls
from ._vectors import Vectors
from ._viewing import ViewInfo, Viewing
from ._workspace import Workspace, WorkspaceInfo, Workspaces
from ._writer import Writer, checked_ttl_ns

__all__ = ["Database"]

#: Every name a caller may pass is at least this (a reserved one is less).
_FIRST = chr(ord(RESERVED) + 1)
_W = TypeVar("_W")  # what a batched write returns (see Database._batched)


#: Bounds of the recent map's capacity (see Database.__init__).
_LEAST_RECENT, _MOST_RECENT = 1 << 10, 1 << 17


class Database(AuthCalls, EmbeddingCalls, PeerCalls):
    """An open koru-delta database. Obtain one with :func:`koru.open`."""

    def __init__(
        self,
        *,
        store: LogStore,
        path: str | None,
        node_id: bytes,
        clock: Clock,
        committer: Committer,
        projections: Projections,
        hlc: int,
        cache: ValueCache,
        max_value_size: int,
        checkpoint_every: int,
        opened: OpenReport,
        node_key: Identity | None = None,
        entropy: Entropy | None = None,
        difficulty: int = DEFAULT_DIFFICULTY,
        root: bytes | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self._store = store
        self._path = path
        self._node = node_id
        self._node_key = node_key
        #: The read floor the file holds (see _keep_read_floor).
        self._floor_saved = 0
        self._node_hex = node_id.hex()
        #: The supervisor's listing of periodic processes (set by koru.open).
        self._processes: Callable[[], list[ProcessInfo]] = list
        self._committer = committer
        self._projections = projections
        # The two built-in projections, held directly: every read consults them.
        self._kv = cast(KvState, projections["kv"])
        self._feeds = cast(FeedState, projections["feeds"])
        # The hot tier keeps the keys this node's distillation pinned (a live set).
        self._kv.pinned = cast(TierState, projections["tiers"]).of(node_id)
        self._cache = cache
        # The recent map (KvState.recent) is of use for values the cache holds: about
        # one entry per 512 bytes of its budget (an entry costs about 120 bytes), and
        # no more than can be emptied at once in about a millisecond.
        self._kv.recent_capacity = min(_MOST_RECENT, max(_LEAST_RECENT, cache.capacity // 512))
        self._values = ValueReader(store, cache, projections.placements)
        self._life = Lifecycle(readonly=store.readonly, commit_yields=committer.mode == "always")
        events = opened.from_checkpoint + opened.replayed
        self._writer = Writer(
            store=store,
            node_id=node_id,
            clock=clock,
            committer=committer,
            projections=projections,
            hlc=hlc,
            cache=cache,
            max_value_size=max_value_size,
            checkpoint_every=checkpoint_every,
            events=events,
            # A checkpoint holding less than the log, or rebuilt sections, is stale.
            saved_at=opened.from_checkpoint if not (opened.replayed or opened.rebuilt) else -1,
            die=self._life.die,
            former_id=None if node_key is None else node_key._previous,
            fatal=lambda: self._life.fatal,
        )
        self._checkpointer = self._writer.checkpointer
        self._life.checkpointer = self._checkpointer
        self._vector_state = cast(VectorState, projections["vectors"])
        self._vectors = Vectors(
            writer=self._writer,
            state=self._vector_state,
            store=store,
            life=self._life,
            max_value_size=max_value_size,
        )
        self._embedder = HashingEmbedder() if embedder is None else embedder
        self._reads = KeyReads(self._kv, self._values, self._writer.read_time)
        indexes = cast(Indexes, projections["indexes"])
        self._queries = QueryEngine(self._kv, self._values, indexes, self._writer)
        self._views = Viewing(
            self._kv,
            cast(Views, projections["views"]),
            self._queries.documents,
            self._values,
            self._writer,
            self._queries.expired,
        )
        self._hub = Hub(store, self._kv, self._values, self._writer.observers)
        self._lineage = Lineage(
            cast(LineageState, projections["lineage"]), self._kv, self._writer.read_time
        )
        self._workspaces = Workspaces(cast(WorkspaceState, projections["workspaces"]), self._writer)
        # Identities, grants, sessions (koru._auth_calls): the node key is the root.
        self._authority = Authority(
            state=cast(AuthState, projections["auth"]),
            feeds=self._feeds,
            node=node_key,
            node_id=node_id,
            difficulty=difficulty,
            root=root,
        )
        self._sessions_entropy = entropy if entropy is not None else Entropy(None)
        self._sessions = Sessions(
            lambda: self._authority.node,
            self._writer.now,
            self._sessions_entropy,
            difficulty,
        )
        self._proven = ProvenIngest(self._writer.ingest, self._feeds, self._authority, store.read)
        self._statistics = Statistics(
            path,
            self._node_hex,
            store,
            self._kv,
            committer,
            self._checkpointer,
            cache,
            self._values,
            self._writer.ingest,
            opened,
            lambda: self._processes(),
            self._writer.read_time,
        )

    # -- plumbing ----------------------------------------------------------------------

    @property
    def readonly(self) -> bool:
        """True if opened read-only."""
        return self._store.readonly

    @property
    def node_id(self) -> str:
        """This node's id (hex)."""
        return self._node_hex

    @property
    def path(self) -> str | None:
        """The database directory, or None for a memory-only database."""
        return self._path

    async def _enter_key(self, namespace: str, key: str) -> None:
        """Start a read of one key: enter, then both names checked."""
        await self._life.enter()
        check_user_name(namespace, "namespace")
        check_name(key, "key")

    def _die(self, exc: BaseException) -> None:
        """Stop serving (a background task failed; see Lifecycle.die)."""
        self._life.die(exc)

    # -- writes ------------------------------------------------------------------------

    # Shielded from KeyboardInterrupt (trio delivers it at the put's next checkpoint):
    # under sync="always" a put is queued for the round (Writer.join) and then awaited;
    # an interrupt between the two left it queued with nobody to withdraw it.
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
        """Store ``value`` as the new version of ``namespace/key``.

        Returns the new version's metadata once the write is durable under the
        database's sync mode. With ``ttl`` (seconds), the value is current only that
        long by the database's clock: then it reads as absent, and the expiry process
        records its expiry as a tombstone in its history. With ``parents`` (each a
        ``(namespace, key)`` pair, or a key of the same namespace), the value is
        recorded as derived from those keys, in the same event (see
        :meth:`ancestors`).

        Raises:
            InvalidDataError: bad namespace or key, unencodable or oversized value, a
                ttl that is not a positive number of seconds (nothing is written).
            InvalidParentError: a parent without a current value, the key itself, or
                over ``MAX_PARENTS`` of them (nothing is written).
            ReadOnlyError, DatabaseClosedError, DurabilityError.
        """
        # The hot path: Lifecycle.enter_write inlined (one coroutine frame less), and
        # no acknowledgement awaited where the sync mode has nothing to wait for.
        life = self._life
        if life.begin_write():
            await life.pause()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        if self._checkpointer.stalled:  # (Lifecycle.enter_write's, inlined)
            await life.stall(self._checkpointer)
        # check_user_name (stricter than the writer's check_name), its fast path inlined
        if not (
            type(namespace) is str
            and namespace.isascii()
            and 0 < len(namespace) <= MAX_NAME_BYTES
            and namespace[0] != RESERVED
        ):
            check_user_name(namespace, "namespace")
        writer = self._writer
        if parents is None:
            if writer.waits:  # sync="always": the round appends it (Writer.join)
                joined = writer.join(
                    namespace, key, value, None if ttl is None else checked_ttl_ns(ttl)
                )
                try:
                    await self._committer.wait_durable(joined)
                except BaseException as exc:
                    writer.leave(joined, exc)
                    raise
                return cast(Version, joined.version)
            ttl_ns = None if ttl is None else checked_ttl_ns(ttl)
            version = writer.put_plain(namespace, key, value, ttl_ns)
        else:
            links = (
                () if parents is None else self._lineage.parents(DEFAULT, namespace, key, parents)
            )
            version = writer.put(namespace, key, value, ttl, links)
        if writer.waits:
            await writer.acknowledge()
        return version

    async def put_batch(
        self, items: Iterable[tuple[str, str, Any]], *, ttl: float | None = None
    ) -> list[Version]:
        """Write several keys atomically: one event, one commit, all or nothing.

        Returns the versions in the order given. A key may appear only once. ``ttl``
        (seconds) gives every value of the batch that time to live, as for :meth:`put`.
        In a bulk load that outpaces the background checkpoints, a batch first gives
        way to them (for as long as the last batch took, or until the checkpoint in
        progress is written when they are far behind), so that memory stays bounded.

        Raises:
            InvalidDataError: any bad item, or a bad ttl (nothing is written).
        """
        return await self._batched(lambda: self._writer.put_batch(items, ttl), len)

    async def _batched(self, write: Callable[[], _W], count: Callable[[_W], int]) -> _W:
        """Run ``write`` (a batch or an ingest: many writes in one synchronous step) as
        a write: first giving way to background checkpoints a bulk load left behind
        (before it, so that a cancelled wait wrote nothing), then counting its
        ``count(result)`` writes towards the next yield, and acknowledging them."""
        await self._life.enter_write()
        checkpointer = self._checkpointer
        if checkpointer.behind_by:
            await checkpointer.give_way()
            self._life.check()
        began = trio.current_time()
        result = write()
        n = count(result)
        if n:
            checkpointer.took(trio.current_time() - began)
            self._life.owe(n - 1)
            await self._writer.acknowledge()
        return result

    async def put_with_causal_links(
        self, namespace: str, key: str, value: Any, parents: Iterable[Any]
    ) -> Version:
        """:meth:`put` with ``parents`` (the original's name): each parent a key of the
        same namespace, or a ``(namespace, key)`` pair."""
        return await self.put(namespace, key, value, parents=parents)

    async def delete(self, namespace: str, key: str) -> Version:
        """Delete a key by writing a tombstone version; its history keeps every version.

        Raises:
            KeyNotFoundError: the key has no current value (nothing is written).
        """
        await self._life.enter_write()
        check_user_name(namespace, "namespace")
        version = self._writer.delete(namespace, key)
        await self._writer.acknowledge()
        return version

    # -- reads -------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> Any:
        """The current value of ``namespace/key`` (a fresh object on every call).

        Raises:
            KeyNotFoundError: never written, or deleted.
        """
        # The hot path: Lifecycle.enter inlined (one coroutine frame less), then the
        # key's blob found and its current content id sliced out here (the probes of
        # KvState.live_content_id, without its call), then the cached template copied
        # (a decode the first time; see ValueCache.value).
        life = self._life
        if life.begin():
            await life.pause()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        return self._read(namespace, key)

    def _read(self, namespace: str, key: str) -> Any:
        """:meth:`get` once its lifecycle is entered (also ``AuthorizedDatabase.get``'s,
        once its checks passed)."""
        kv = self._kv
        # A key read lately and not written since: its content id from the recent map
        # (KvState.recent), no layer searched. Only exact str names are looked up
        # there: the map holds only names that passed every check.
        if type(key) is str and type(namespace) is str:
            read = kv.recent.get(namespace)
            if read is not None:
                cid = read.get(key)
                if cid is not None:
                    kv.recent_hits += 1
                    value = self._cache.value(cid)
                    if value is MISSING:  # (its blob's search may promote it)
                        value = self._uncached(namespace, key, cid)
                    hot = kv.hot
                    if hot:  # KvState.touch inlined: the key's fitness
                        slot = (namespace, key)
                        if slot in hot:
                            kv.reads[slot] += 1
                    return value
        return self._read_found(namespace, key)

    def _read_found(self, namespace: str, key: str) -> Any:
        """:meth:`_read` past the recent map: the key's blob probed, its value read."""
        kv = self._kv
        touched = False
        try:
            keys = kv.namespaces.get(namespace)
            blob = None if keys is None else keys.get(key)
            if blob is None and (kv.frozen or kv.tables):
                hot = kv.hot
                if hot:  # the hot tier (KvState._below's first probe), its read counted
                    slot = (namespace, key)
                    blob = hot.get(slot)
                    if blob is not None:
                        kv.hot_hits += 1
                        kv.reads[slot] += 1  # KvState.touch: the key's fitness
                        touched = True
                    else:  # a cold key: the layers past the hot tier, which it joins
                        blob = kv._beneath(namespace, key)
                        if blob is not None and slot in hot:
                            kv.reads[slot] += 1  # (as _live would count it)
                            touched = True
                else:
                    blob = kv._below(namespace, key)
        except TypeError:  # unhashable namespace or key
            blob = None
        cid = None if blob is None or blob[-1] & TOMBSTONE else bytes(blob[LAST_CID])
        if (
            cid is None
            or (kv.hot and not touched)
            or kv.expiring
            or type(namespace) is not str
            or type(key) is not str
            or namespace < _FIRST
        ):
            cid = self._live(namespace, key, cid, touched)  # the full rules
        value = self._cache.value(cid)
        if value is MISSING:  # a cold key: read it from the log, where the blob says
            assert blob is not None  # a content id came from it
            location, size = PLACE.unpack_from(blob, LAST_PLACE)
            return self._values.uncached(cid, location, namespace, key, size)
        if not kv.expiring:  # a value the cache holds: the next read finds it at once
            kv.remember(namespace, key, cid)
        return value

    def _uncached(self, namespace: str, key: str, cid: bytes) -> Any:
        """The value of a key found in the recent map (``cid``, current) that the value
        cache no longer holds: read from the log where the key's blob says."""
        blob = self._kv._blob(namespace, key)
        assert blob is not None and blob[LAST_CID] == cid  # (see KvState.recent)
        location, size = PLACE.unpack_from(blob, LAST_PLACE)
        return self._values.value(cid, location, namespace, key, size)

    def get_nowait(self, namespace: str, key: str) -> Any:
        """:meth:`get` without waiting, as trio's ``*_nowait`` calls: the current value
        if it is at hand (its record in memory and its bytes in the value cache), a
        fresh object as ``get`` gives; else ``trio.WouldBlock``, and ``await get`` reads
        it. Not a checkpoint: no cancellation, no yield to other tasks, so a loop of
        them starves the event loop. For a hot read path inside a task that already
        yields elsewhere; a database served remotely has no such call.

        Raises:
            trio.WouldBlock: the value needs I/O (a cold key, or bytes not cached).
            KeyNotFoundError: never written, or deleted (as far as memory tells).
            DatabaseClosedError: the database is closed.
        """
        if self._life.closed:
            self._life.check()
        kv = self._kv
        if type(key) is str and type(namespace) is str:  # as get's recent map
            read = kv.recent.get(namespace)
            if read is not None:
                cid = read.get(key)
                if cid is not None:
                    kv.recent_hits += 1
                    if kv.hot:
                        kv.touch(namespace, key)
                    value = self._cache.value(cid)
                    if value is MISSING:
                        raise trio.WouldBlock
                    return value
        # As get's probes (KvState.memory_content_id without its call): the layers
        # below memory are searched only as far as memory reaches.
        try:
            keys = kv.namespaces.get(namespace)
            blob = None if keys is None else keys.get(key)
            if blob is None and (kv.frozen or kv.tables):
                blob = kv._below(namespace, key, False)
        except TypeError:  # unhashable namespace or key
            blob = None
        except BlockingIOError:
            check_user_name(namespace, "namespace")
            check_name(key, "key")
            raise trio.WouldBlock from None
        cid = None if blob is None or blob[-1] & TOMBSTONE else bytes(blob[LAST_CID])
        if (
            cid is None
            or kv.hot
            or kv.expiring
            or type(namespace) is not str
            or type(key) is not str
            or namespace < _FIRST
        ):
            cid = self._live(namespace, key, cid)  # the full rules, as get's
        value = self._cache.value(cid)
        if value is MISSING:
            raise trio.WouldBlock
        if not kv.expiring:
            kv.remember(namespace, key, cid)
        return value

    def _live(self, namespace: str, key: str, cid: bytes | None, touched: bool = False) -> bytes:
        """``cid`` (the content id a probe found for the key, or None) under the rules
        of a read: the hot tier told (unless the caller did: ``touched``), the expiry
        checked, the names checked; KeyNotFoundError without a current value."""
        kv = self._kv
        if kv.hot and not touched:
            kv.touch(namespace, key)
        if kv.expiring and cid is not None and kv.expired(namespace, key, self._writer.read_time()):
            cid = None  # its time to live is over (the expiry process records it)
        if (
            cid is None
            or type(namespace) is not str
            or type(key) is not str
            or namespace < _FIRST  # a reserved name (a workspace's): never reached here
        ):
            # One rule for names everywhere: a str subclass that hashes like a stored
            # name is refused here too, as by every other call.
            check_user_name(namespace, "namespace")
            check_name(key, "key")
            raise KeyNotFoundError(namespace, key)
        return cid

    async def get_versioned(self, namespace: str, key: str) -> Versioned:
        """The current value with its version metadata.

        Raises:
            KeyNotFoundError: never written, or deleted.
        """
        await self._enter_key(namespace, key)
        return self._reads.versioned(namespace, key)

    async def get_at(self, namespace: str, key: str, at: Any) -> Versioned:
        """Time travel: the value the key had at ``at`` (datetime with offset, ISO-8601
        string with offset, or int nanoseconds since the epoch), with its metadata.

        Raises:
            NoValueAtTimeError: not yet written then, or deleted then.
            InvalidDataError: ``at`` is not a usable time.
        """
        # _enter_key inlined (one coroutine frame less), an int time taken as it is.
        life = self._life
        if life.begin():
            await life.pause()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        check_user_name(namespace, "namespace")
        check_name(key, "key")
        return self._reads.at_time(namespace, key, at if type(at) is int else to_ns(at))

    async def history(
        self,
        namespace: str,
        key: str,
        since: Any = None,
        until: Any = None,
        latest: int | None = None,
    ) -> list[Versioned]:
        """Every version of the key, oldest first, deletions included (value None).

        ``since``/``until`` bound the timestamps (inclusive; same forms as ``get_at``);
        ``latest`` keeps only the last N after that. Concurrent versions written by
        different nodes all appear (branches share a ``previous``). An unknown key has
        an empty history.
        """
        life = self._life
        if life.begin():
            await life.pause()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        check_user_name(namespace, "namespace")  # the reads check the key
        return self._reads.history(namespace, key, since, until, latest)

    async def contains(self, namespace: str, key: str) -> bool:
        """True if the key has a current value (not deleted, not expired)."""
        await self._enter_key(namespace, key)
        return self._reads.contains(namespace, key)

    async def keys(self, namespace: str) -> list[str]:
        """The namespace's keys that have a current value, sorted."""
        await self._life.enter()
        check_user_name(namespace, "namespace")
        return self._reads.keys(namespace)

    async def namespaces(self) -> list[str]:
        """Namespaces holding at least one current value, sorted (workspaces' apart)."""
        await self._life.enter()
        return self._reads.namespaces()

    async def diff(
        self, namespace: str, key: str, from_version: int | str = -2, to_version: int | str = -1
    ) -> Diff:
        """A structural diff between two versions of a key.

        A version is a history index (0 is the oldest, -1 the newest) or a write id
        (or a unique prefix of at least 4 hex digits). The default compares the last two.

        Raises:
            VersionNotFoundError: no such version of the key.
        """
        await self._enter_key(namespace, key)
        return self._reads.diff(namespace, key, from_version, to_version)

    # -- queries -----------------------------------------------------------------------

    async def query(self, namespace: str, query: Query | dict[str, Any], at: Any = None) -> Any:
        """Answer a :class:`~koru.Query` (or its data form) over the namespace's current
        documents, or over their values at time ``at`` (as ``get_at`` takes it).

        Returns a list of :class:`~koru.Row` (key, value), or with an aggregation its
        value, or with ``group_by`` a list of :class:`~koru.Group` (group, value).

        Raises:
            InvalidQueryError: a malformed query, or an aggregation over values it
                cannot combine (naming the field and a key); checked before any work.
            InvalidDataError: a bad namespace or time.
        """
        await self._life.enter()
        check_user_name(namespace, "namespace")
        return self._queries.query(namespace, query, at)

    async def explain(
        self, namespace: str, query: Query | dict[str, Any], at: Any = None
    ) -> QueryPlan:
        """How :meth:`query` would read the namespace: which indexes narrow the
        documents (and to how many), or why it scans them all."""
        await self._life.enter()
        check_user_name(namespace, "namespace")
        return self._queries.explain(namespace, query, at)

    async def create_index(self, namespace: str, field: str) -> bool:
        """Keep a secondary index of ``namespace`` on the field path ``field``, used by
        ``eq``, ``in`` and comparison filters from then on (results never change, only
        their speed). Defined by an event, so it exists again after a restart and on
        peers; filled from the current documents before this returns. Returns False
        (writing nothing) if the index exists already. The namespace may be empty.

        Raises:
            InvalidQueryError: ``field`` is not a path. InvalidDataError: bad namespace.
        """
        await self._life.enter_write()
        check_user_name(namespace, "namespace")
        created = self._queries.indexing.create(namespace, field)
        if created:
            await self._writer.acknowledge()
        return created

    async def drop_index(self, namespace: str, field: str) -> None:
        """Stop keeping the index (an event; queries scan again).

        Raises:
            NotFoundError: there is no such index.
        """
        await self._life.enter_write()
        check_user_name(namespace, "namespace")
        self._queries.indexing.drop(namespace, field)
        await self._writer.acknowledge()

    async def list_indexes(self, namespace: str | None = None) -> list[IndexInfo]:
        """The secondary indexes (of one namespace, or all), sorted."""
        await self._life.enter()
        if namespace is not None:
            check_user_name(namespace, "namespace")
        return self._queries.indexing.listing(namespace)

    # -- materialized views --------------------------------------------------------------

    async def create_view(self, name: str, namespace: str, query: Query | dict[str, Any]) -> None:
        """Keep the answer of ``query`` over ``namespace`` up to date as ``name``
        (replacing a view of that name). Every write updates it without re-running the
        query; defined by an event, so it exists again after a restart and on peers.

        Raises:
            InvalidQueryError: a malformed query. InvalidDataError: a bad name.
        """
        await self._life.enter_write()
        check_user_name(name, "view")
        check_user_name(namespace, "namespace")
        self._views.create(name, namespace, query)
        await self._writer.acknowledge()

    async def view(self, name: str) -> Any:
        """The view's answer, as :meth:`query` would give it now.

        Raises:
            NotFoundError: no such view.
        """
        await self._life.enter()
        check_user_name(name, "view")
        return self._views.read(name)

    async def refresh_view(self, name: str) -> None:
        """Recompute the view from the namespace's documents (it is kept up to date
        anyway; this is the fallback, and what a new or replayed definition gets)."""
        await self._life.enter()
        check_user_name(name, "view")
        self._views.refresh(name)

    async def list_views(self) -> list[ViewInfo]:
        """Every view, by name."""
        await self._life.enter()
        return self._views.listing()

    async def delete_view(self, name: str) -> None:
        """Stop keeping the view (an event).

        Raises:
            NotFoundError: no such view.
        """
        await self._life.enter_write()
        check_user_name(name, "view")
        self._views.delete(name)
        await self._writer.acknowledge()

    # -- subscriptions --------------------------------------------------------------------

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
        """Every change (of a namespace, of one key, of some kinds, whose value passes
        ``where``, a query holding a filter only) from now, or from log position
        ``from_position``, in log order, each exactly once::

            async with db.subscribe("users", where=Query().where(F("age") > 30)) as changes:
                async for change in changes:
                    ...

        Every write path delivers (puts, batches, deletes, expiries, ingested events).
        A writer never waits for a subscriber: one more than ``buffer`` events behind
        gets :class:`~koru.LaggedError` with the position to resume from (``buffer``:
        1 to ``MAX_BUFFER``, 10,000,000; the changes queued, values and keys, hold at
        most ``MAX_QUEUED_BYTES``, 128 MiB). The iteration raises DatabaseClosedError when
        the database closes.

        Raises:
            InvalidArgumentError: a bad namespace, key, kinds or buffer, or a position
                that is negative or past the log's end.
            InvalidQueryError: a bad ``where``, or one holding more than a filter.
        """
        await self._life.enter()
        async with self._hub.subscribe(namespace, key, kinds, where, from_position, buffer) as sub:
            yield sub

    # -- lineage -------------------------------------------------------------------------

    async def are_connected(
        self, a: tuple[str, str], b: tuple[str, str], *, max_depth: int = DEFAULT_MAX_DEPTH
    ) -> bool:
        """True if one of the two keys ((namespace, key) pairs) derives from the other
        through at most ``max_depth`` links (see :meth:`connection_path`)."""
        await self._life.enter()
        return self._lineage.path(DEFAULT, a, b, max_depth) is not None

    async def connection_path(
        self, a: tuple[str, str], b: tuple[str, str], *, max_depth: int = DEFAULT_MAX_DEPTH
    ) -> list[tuple[str, str]] | None:
        """A shortest chain of derivation links from ``a`` to ``b`` (both included),
        following children (``b`` derives from ``a``) or parents (``a`` derives from
        ``b``), of at most ``max_depth`` links; None if there is none. Breadth-first
        from both ends."""
        await self._life.enter()
        return self._lineage.path(DEFAULT, a, b, max_depth)

    async def ancestors(
        self, node: tuple[str, str], depth: int | None = None
    ) -> list[tuple[str, str]]:
        """Every key ``node`` derives from (its parents, theirs, ...) within ``depth``
        links (None: all), nearest first, each distance in (namespace, key) order."""
        await self._life.enter()
        return self._lineage.ancestors(DEFAULT, node, depth)

    async def descendants(
        self, node: tuple[str, str], depth: int | None = None
    ) -> list[tuple[str, str]]:
        """Every key derived from ``node``, as :meth:`ancestors` orders them."""
        await self._life.enter()
        return self._lineage.descendants(DEFAULT, node, depth)

    async def most_connected(self, namespace: str, k: int = 10) -> list[Connected]:
        """The ``k`` keys of ``namespace`` with the most links (parents and children),
        most first, ties by key."""
        await self._life.enter()
        return self._lineage.most_connected(DEFAULT, namespace, k)

    # -- workspaces ------------------------------------------------------------------------

    def workspace(self, name: str) -> Workspace:
        """The handle of workspace ``name``: the data API in a space of its own (see
        :class:`~koru._workspace.Workspace`). Its first write creates the workspace.

        Raises:
            InvalidDataError: not a usable workspace name.
        """
        return Workspace(self, name)

    def audit_workspace(self, name: str) -> Workspace:
        """A read-only handle of workspace ``name``, which reads its history also after
        it was dropped."""
        return Workspace(self, name, audit=True)

    async def create_workspace(self, name: str) -> bool:
        """Record the workspace's creation (an event); False if it exists already.

        Raises:
            WorkspaceDroppedError: it was dropped (a dropped name is never used again).
        """
        await self._life.enter_write()
        created = self._workspaces.create(name)
        if created:
            await self._writer.acknowledge()
        return created

    async def drop_workspace(self, name: str) -> None:
        """Drop the workspace (an event): its handles refuse every call from now on, its
        history stays readable through :meth:`audit_workspace`, and the name is never
        used again.

        Raises:
            NotFoundError: no such workspace. WorkspaceDroppedError: dropped already.
        """
        await self._life.enter_write()
        self._workspaces.drop(name)
        await self._writer.acknowledge()

    async def workspaces(self, *, dropped: bool = False) -> list[WorkspaceInfo]:
        """The workspaces, by name (with ``dropped``, the dropped ones too)."""
        await self._life.enter()
        return self._workspaces.listing(dropped)

    # -- events from elsewhere, and this node's feeds ------------------------------------

    async def ingest(self, events: Iterable[bytes]) -> IngestResult:
        """Take in events written by other nodes (or exported from any database), in
        any order, with duplicates: each is checked, sequenced in its feed, appended to
        the local log and folded, and the call returns once they are durable under the
        database's sync mode. Bad, forked or (beyond a bound) out-of-order events are
        refused and listed, never stored; the call itself raises only for its caller's
        mistakes. One call folds its events without yielding: offer large sets in
        chunks (a few thousand events).

        Raises:
            InvalidArgumentError: ``events`` is not an iterable of bytes.
            ReadOnlyError, DatabaseClosedError, DurabilityError.
        """
        return await self._batched(lambda: self._writer.take_in(events), attrgetter("accepted"))

    async def feed_heads(self) -> dict[tuple[str, str], int]:
        """How far each feed held here goes: ``(origin hex, agent) -> last seq``. What a
        peer compares with its own to know what to send."""
        await self._life.enter()
        return {(o.hex(), a): head[0] for (o, a), head in self._feeds.heads.items()}

    async def feed_events(
        self, origin: str, agent: str = STORAGE, after: int = 0, limit: int | None = None
    ) -> list[bytes]:
        """The events of one feed after seq ``after``, oldest first, as the bytes to
        hand to another database's :meth:`ingest` (at most ``limit`` of them). They are
        made durable first, whatever the sync mode: an event a peer holds and this node
        lost in a crash would fork this node's feed at that peer.

        Raises:
            InvalidArgumentError: a malformed origin, agent, ``after`` or ``limit``.
        """
        await self._life.enter()
        try:
            node = bytes.fromhex(origin) if type(origin) is str else b""
        except ValueError:
            node = b""
        if len(node) != NODE_ID_SIZE:
            raise InvalidArgumentError(f"origin must be a node id in hex, not {origin!r}")
        if agent not in AGENTS:
            raise InvalidArgumentError(f"agent must be one of {AGENTS}, not {agent!r}")
        if type(after) is not int or after < 0:
            raise InvalidArgumentError(f"after must be a non-negative int, not {after!r}")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise InvalidArgumentError(f"limit must be a non-negative int, not {limit!r}")
        return await self._feed_range(node, agent, after, limit)

    async def _feed_range(
        self,
        node: bytes,
        agent: str,
        after: int,
        limit: int | None,
        max_bytes: int | None = None,
    ) -> list[bytes]:
        """:meth:`feed_events` of checked arguments; with ``max_bytes``, the events
        stop once they hold that many bytes (at least one is read): a push reads no
        more of the log than its batch takes, not a whole range of large values."""
        head = self._feeds.heads.get((node, agent))
        last = 0 if head is None else head[0]
        if limit is not None:
            last = min(last, after + limit)
        # Only durable events leave the node (see Writer.settle): everything up to
        # ``last`` was appended before this sync began, so it covers them.
        await self._writer.settle()
        self._life.check()
        locate, read = self._feeds.location, self._store.read
        out: list[bytes] = []
        total = 0
        # The log's checksums prove damage, not intent: each event served links to the
        # one before it, and the last to the head or its successor, so a record
        # rewritten on disk is refused, never shipped as the feed's (h-seal).
        eid = b""
        location = 0
        feed = (node, agent)
        for seq in range(after + 1, last + 1):
            found = locate(node, agent, seq)
            assert found is not None
            location = found
            data = read(location)
            if checked_prev(data, feed, seq, location) != eid and out:
                unlinked(agent, seq - 1, location)
            total += len(data)
            if max_bytes is not None and total > max_bytes and out:
                return out  # ``data`` named the last one served
            out.append(data)
            eid = event_id(data)
        if out:
            assert head is not None
            if last == head[0]:
                if eid != head[1]:
                    unlinked(agent, last, location)
            else:
                named_by_next(locate, read, feed, last, eid)
        return out

    # -- whole-database views ----------------------------------------------------------

    async def stats(self) -> Stats:
        """Counters describing the database right now (also after it is closed)."""
        await trio.lowlevel.checkpoint()
        return self._statistics.snapshot()

    async def roots(self) -> dict[str, str]:
        """Each canonical agent's chain head (hex): this node's view of its local logs."""
        await self._life.enter()
        return {agent: self._store.cursor(agent).root.hex() for agent in AGENTS}

    async def digest(self) -> str:
        """One hash of the whole state (hex): equal on every node holding the same
        events, whatever order they arrived in."""
        await self._life.enter()
        return state_digest(self._kv, self._vector_state)

    async def expiring(self, within: float = 0.0) -> list[Expiring]:
        """Keys whose current value expires within ``within`` seconds from now (already
        expired ones too, until the expiry process has recorded them), soonest first.

        Raises:
            InvalidArgumentError: ``within`` is not a non-negative number of seconds.
        """
        await self._life.enter()
        return await self._expiring(within, DEFAULT)

    async def _expiring(self, within: float, space: Space) -> list[Expiring]:
        """:meth:`expiring` of ``space`` (stored names), listed under the bound of a
        served answer (see ``budgeted``)."""
        if type(within) not in (int, float) or not 0 <= within < float("inf"):
            raise InvalidArgumentError(f"within must be non-negative seconds, not {within!r}")
        horizon = self._writer.read_time() + int(within * 1e9)
        owns, shorter = space.owns, len(space.prefix)

        def size(item: tuple[int, str, str]) -> int:
            return EXPIRING_FIELDS + len(item[1]) - shorter + len(item[2])

        due = self._kv.expiring.iter_at_most(horizon)  # (streamed: not gathered first)
        keep = VISIBLE.get()  # only what the caller may see is gathered and counted
        found = ((t, ns, k) for (ns, k), t in due if owns(ns) and (keep is None or keep(ns, k)))
        soon = budgeted("expiring", found, size, "a smaller within")
        soon.sort()
        return [Expiring(ns, k, t) for t, ns, k in soon]

    async def genome(self) -> Genome:
        """The database's genome now: about a kilobyte (``to_bytes()``) that verifies a
        backup or a restored replica with :func:`koru.verify_genome`."""
        await self._life.enter()
        return genome_of(
            self._store,
            self._kv,
            self._vector_state,
            self._feeds,
            self._node,
            self._writer.hlc.last,
        )

    async def processes(self) -> list[ProcessInfo]:
        """The background processes (name, state, interval, runs, failures, restarts,
        last run, last error), in the order started; empty with ``processes=False``."""
        await trio.lowlevel.checkpoint()
        return self._processes()

    def projection(self, name: str) -> Projection:
        """The registered projection called ``name`` (``"kv"``, ``"feeds"``, or one
        passed to :func:`koru.open`), to read from. Its state is the database's own:
        read it, never change it. (Local only: not part of :class:`DatabaseAPI`.)

        Raises:
            InvalidArgumentError: no projection has that name.
        """
        try:
            return self._projections[name]
        except (KeyError, TypeError):
            raise InvalidArgumentError(f"no projection is called {name!r}") from None

    # -- checkpoints and lifecycle -----------------------------------------------------

    async def checkpoint(self) -> None:
        """Save projection state now, so the next open replays only what follows (and
        merge tables in the background if checkpoints left more than are kept)."""
        await self._life.enter_write()
        await self._checkpointer.save()
        self._checkpointer.merge_if_overgrown()

    async def aclose(self) -> None:
        """Flush, fsync, checkpoint if anything changed, and close. Idempotent.

        Runs shielded from cancellation so a cancelled scope still closes cleanly.
        """
        self._hub.close()
        await self._life.close(
            self._store, self._committer, self._checkpointer, self._keep_read_floor
        )

    def _restore_read_floor(self, floor: int) -> None:
        """Start reads from ``floor``, the one a clean close saved."""
        self._writer.raise_read_floor(floor)
        self._floor_saved = floor

    def _keep_read_floor(self) -> None:
        """Save the read floor if it is ahead of every timestamp the logs hold (what a
        reopen would start from otherwise): see ``koru._read_floor``."""
        floor, key = self._writer.read_floor, self._node_key
        if key is not None and floor > max(self._writer.hlc.last, self._floor_saved):
            save_read_floor(self._store, key, floor)
            self._floor_saved = floor


def _conforms(db: Database) -> DatabaseAPI:
    """Checked by mypy: the local database satisfies the one interface."""
    return db
