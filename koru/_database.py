"""The database handle: the public key/value, history and time-travel API.

Every write goes through :meth:`Database._append`, the one choke point: it encodes the
event, hands it to the store (which frames, checksums, chains and writes it), then
folds it into the projections. The writer is acknowledged only when the committer says
the record is durable under the chosen sync mode. Reads never touch the log unless a
value is missing from the cache.

Scheduling: every operation is a cancellation point, and at least every 64th yields to
the scheduler, so a tight loop of puts or gets cannot starve other tasks, without
paying a full trio checkpoint (~3.5 µs) on each call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, cast

import blake3
import cbor2
import trio

from koru.events import (
    AGENTS,
    STORAGE,
    BatchEvent,
    DatabaseClosedError,
    DeleteEvent,
    DurabilityError,
    Event,
    HybridLogicalClock,
    InvalidArgumentError,
    InvalidDataError,
    KeyNotFoundError,
    LogStore,
    NoValueAtTimeError,
    PutEvent,
    ReadOnlyError,
    StorageError,
    Write,
    check_name,
    content_id,
    decode_value,
    encode_event,
    encode_value,
    event_id,
    write_id,
)
from koru.nursery import Checkpointer, Clock, Committer
from koru.projections import (
    TOMBSTONE,
    FeedState,
    KvState,
    Projection,
    Projections,
    VersionRecord,
    capture_checkpoint,
)

from ._cache import ValueCache
from ._diff import Diff, diff_values, pick_version
from ._history import NULL, decode_all, history_rows
from ._ingest import Ingest
from ._reader import ValueReader
from ._time import to_ns
from ._types import IngestResult, Stats, Version, Versioned

__all__ = ["Database"]

_log = logging.getLogger("koru")

_YIELD_MASK = 63  # yield to the scheduler on every 64th operation
_NS_LIMIT = 2**64 - 2**32  # room for the HLC's logical increments below 2**64


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


class Database:
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
        from_checkpoint: int,
        replayed: int,
        checkpoint_problem: str | None = None,
        rebuilt: dict[str, str] | None = None,
    ) -> None:
        self._store = store
        self._readonly = store.readonly
        self._path = path
        self._node = node_id
        self._node_hex = node_id.hex()
        self._clock = clock
        self._committer = committer
        self._commit_yields = committer.mode == "always"
        self._projections = projections
        # The two built-in projections, held directly: every read consults them.
        self._kv = cast(KvState, projections["kv"])
        self._feeds = cast(FeedState, projections["feeds"])
        self._fold = projections.apply
        self._hlc = HybridLogicalClock(hlc)
        self._cache = cache
        self._values = ValueReader(store, cache)
        self._max_value_size = max_value_size
        self._from_checkpoint = from_checkpoint
        self._replayed = replayed
        self._checkpoint_problem = checkpoint_problem
        self._rebuilt = dict(rebuilt or {})
        self._checkpointer = Checkpointer(
            store,
            committer,
            self._capture,
            every=checkpoint_every,
            events=from_checkpoint + replayed,
            saved_at=from_checkpoint if not (replayed or self._rebuilt) else -1,
        )
        self._ingest = Ingest(store, self._feeds, self._hlc, self._write)
        self._ops = 0
        self._closed = False
        self._shut = False
        self._fatal: BaseException | None = None

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

    def _begin(self) -> bool:
        """Count an operation; True if this one should yield to the scheduler."""
        if self._closed:
            raise DatabaseClosedError("the database is closed") from self._fatal
        self._ops += 1
        return not self._ops & _YIELD_MASK

    async def _yield(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise DatabaseClosedError("the database is closed") from self._fatal

    async def _enter(self) -> None:
        """Start an operation: closed check, cancellation point, sometimes a yield."""
        if self._begin():
            await self._yield()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    async def _enter_key(self, namespace: str, key: str) -> None:
        """Start a read of one key: :meth:`_enter`, then both names checked."""
        await self._enter()
        check_name(namespace, "namespace")
        check_name(key, "key")

    async def _enter_write(self) -> None:
        if self._readonly:
            raise ReadOnlyError("the database is open read-only")
        if self._commit_yields:
            # Waiting for the fsync yields anyway; an extra yield here would only make
            # this writer miss the group-commit round it could have joined.
            if self._closed:
                raise DatabaseClosedError("the database is closed") from self._fatal
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            await self._enter()

    def _append(self, event: Event) -> bytes:
        """A local write: encode the event, then the one write path."""
        data = encode_event(event)
        eid = event_id(data)
        self._write(event, data, eid)
        return eid

    def _write(self, event: Event, data: bytes, eid: bytes) -> None:
        """The one write path, for local events and ingested ones: store (frame,
        checksum, chain, write), fold into every projection, count for checkpoints."""
        try:
            location, _ = self._store.append(event.agent, data, eid)
        except DurabilityError as exc:
            self._die(exc)
            raise
        self._committer.mark_appended()
        self._fold(event, eid, location)
        self._checkpointer.note_event()

    async def _acknowledge(self) -> None:
        try:
            await self._committer.wait_durable()
        except DurabilityError as exc:
            self._die(exc)
            raise

    def _die(self, exc: BaseException) -> None:
        # Why: after a failed write or fsync the log's durable state is unknown; the
        # only safe continuation is to stop and let a reopen recover from disk.
        self._fatal = exc
        self._closed = True

    def _header(self) -> tuple[bytes, str, int, bytes | None, int]:
        seq, prev = self._feeds.next(self._node, STORAGE)
        return self._node, STORAGE, seq, prev, self._hlc.tick(self._now())

    def _now(self) -> int:
        now = self._clock.now_ns()
        if type(now) is not int or not 0 <= now < _NS_LIMIT:
            # Checked before the HLC sees it: one bad reading must not poison every
            # later timestamp.
            raise InvalidArgumentError(
                f"the clock's now_ns() must return int nanoseconds since the epoch, not {now!r}"
            )
        return now

    def _value_bytes(self, cid: bytes, location: int, namespace: str, key: str) -> bytes:
        return self._values.value_bytes(cid, location, namespace, key)

    def _version(self, namespace: str, key: str, r: VersionRecord) -> Version:
        return Version(
            namespace,
            key,
            r.write_id.hex(),
            _hex(r.content_id),
            r.hlc,
            _hex(r.previous),
            r.origin.hex(),
            r.deleted,
        )

    def _versioned(self, namespace: str, key: str, r: VersionRecord, value: Any) -> Versioned:
        return Versioned(value, *self._version(namespace, key, r))

    # -- writes ------------------------------------------------------------------------

    async def put(self, namespace: str, key: str, value: Any) -> Version:
        """Store ``value`` as the new version of ``namespace/key``.

        Returns the new version's metadata once the write is durable under the
        database's sync mode.

        Raises:
            InvalidDataError: bad namespace or key, unencodable or oversized value
                (nothing is written).
            ReadOnlyError, DatabaseClosedError, DurabilityError.
        """
        await self._enter_write()
        check_name(namespace, "namespace")
        check_name(key, "key")
        data = encode_value(value, self._max_value_size)
        previous = self._kv.current_write_id(namespace, key)
        event = PutEvent(*self._header(), namespace, key, data, previous)
        cid = content_id(data)
        eid = self._append(event)
        self._cache.put(cid, data)
        await self._acknowledge()
        return Version(
            namespace, key, eid.hex(), cid.hex(), event.hlc, _hex(previous), self._node_hex, False
        )

    async def put_batch(self, items: Iterable[tuple[str, str, Any]]) -> list[Version]:
        """Write several keys atomically: one event, one commit, all or nothing.

        Returns the versions in the order given. A key may appear only once.

        Raises:
            InvalidDataError: any bad item (nothing is written).
        """
        await self._enter_write()
        if isinstance(items, str | bytes | bytearray) or not isinstance(items, Iterable):
            raise InvalidDataError(
                f"put_batch takes an iterable of (namespace, key, value), not {items!r}"
            )
        writes: list[Write] = []
        seen: set[tuple[str, str]] = set()
        for item in items:
            if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 3:
                raise InvalidDataError(f"batch items are (namespace, key, value), not {item!r}")
            namespace, key, value = item
            check_name(namespace, "namespace")
            check_name(key, "key")
            if (namespace, key) in seen:
                raise InvalidDataError(f"{namespace!r}/{key!r} appears twice in one batch")
            seen.add((namespace, key))
            data = encode_value(value, self._max_value_size)
            writes.append(Write(namespace, key, data, self._kv.current_write_id(namespace, key)))
        if not writes:
            return []
        event = BatchEvent(*self._header(), tuple(writes))
        cids = [content_id(w.value) for w in writes if w.value is not None]
        eid = self._append(event)
        versions = []
        for i, (w, cid) in enumerate(zip(writes, cids, strict=True)):
            assert w.value is not None
            self._cache.put(cid, w.value)
            versions.append(
                Version(
                    w.namespace,
                    w.key,
                    write_id(eid, i).hex(),
                    cid.hex(),
                    event.hlc,
                    _hex(w.previous),
                    self._node_hex,
                    False,
                )
            )
        await self._acknowledge()
        return versions

    async def delete(self, namespace: str, key: str) -> Version:
        """Delete a key by writing a tombstone version; its history keeps every version.

        Raises:
            KeyNotFoundError: the key has no current value (nothing is written).
        """
        await self._enter_write()
        check_name(namespace, "namespace")
        check_name(key, "key")
        cur = self._kv.current(namespace, key)
        if cur is None or cur.deleted:
            raise KeyNotFoundError(namespace, key)
        event = DeleteEvent(*self._header(), namespace, key, cur.write_id)
        eid = self._append(event)
        await self._acknowledge()
        return Version(
            namespace, key, eid.hex(), None, event.hlc, cur.write_id.hex(), self._node_hex, True
        )

    # -- reads -------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> Any:
        """The current value of ``namespace/key`` (a fresh object on every call).

        Raises:
            KeyNotFoundError: never written, or deleted.
        """
        # The hot path: _enter inlined (one coroutine frame less), one probe, one decode.
        if self._begin():
            await self._yield()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        try:
            cid = self._kv.live_content_id(namespace, key)
        except TypeError:  # unhashable namespace or key
            cid = None
        if cid is None or type(namespace) is not str or type(key) is not str:
            # One rule for names everywhere: a str subclass that hashes like a stored
            # name is refused here too, as by every other call.
            check_name(namespace, "namespace")
            check_name(key, "key")
            raise KeyNotFoundError(namespace, key)
        data = self._cache.get(cid)
        if data is None:  # rare: the value left the cache; read it from the log
            current = self._kv.current(namespace, key)
            assert current is not None
            data = self._value_bytes(cid, current.location, namespace, key)
        return cbor2.loads(data)

    async def get_versioned(self, namespace: str, key: str) -> Versioned:
        """The current value with its version metadata.

        Raises:
            KeyNotFoundError: never written, or deleted.
        """
        await self._enter_key(namespace, key)
        r = self._kv.current(namespace, key)
        if r is None or r.deleted or r.content_id is None:
            raise KeyNotFoundError(namespace, key)
        value = decode_value(self._value_bytes(r.content_id, r.location, namespace, key))
        return self._versioned(namespace, key, r, value)

    async def get_at(self, namespace: str, key: str, at: Any) -> Versioned:
        """Time travel: the value the key had at ``at`` (datetime with offset, ISO-8601
        string with offset, or int nanoseconds since the epoch), with its metadata.

        Raises:
            NoValueAtTimeError: not yet written then, or deleted then.
            InvalidDataError: ``at`` is not a usable time.
        """
        await self._enter_key(namespace, key)
        ns = to_ns(at)
        r = self._kv.at(namespace, key, ns)
        if r is None or r.deleted or r.content_id is None:
            raise NoValueAtTimeError(namespace, key, ns)
        value = decode_value(self._value_bytes(r.content_id, r.location, namespace, key))
        return self._versioned(namespace, key, r, value)

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
        await self._enter_key(namespace, key)
        if latest is not None and (type(latest) is not int or latest < 0):
            raise InvalidDataError(f"latest must be a non-negative int, not {latest!r}")
        recs = self._kv.history_raw(namespace, key)
        if since is not None:
            lo = to_ns(since, end=False)
            recs = [r for r in recs if r[0] >= lo]
        if until is not None:
            hi = to_ns(until)
            recs = [r for r in recs if r[0] <= hi]
        if latest is not None:
            recs = recs[len(recs) - latest :] if latest else []
        # A key may have thousands of versions: raw records, one cbor2 call for all
        # values, rows built in bulk (see _history).
        parts: list[bytes | None] = list(map(self._cache.peek, [r[3] for r in recs]))
        if None in parts:  # deletions, and values not in the cache
            for i, r in enumerate(recs):
                if parts[i] is None:
                    parts[i] = (
                        NULL if r[7] & TOMBSTONE else self._value_bytes(r[3], r[5], namespace, key)
                    )
        return history_rows(namespace, key, recs, decode_all(cast("list[bytes]", parts)))

    async def contains(self, namespace: str, key: str) -> bool:
        """True if the key has a current (not deleted) value."""
        await self._enter_key(namespace, key)
        return self._kv.live_content_id(namespace, key) is not None

    async def keys(self, namespace: str) -> list[str]:
        """The namespace's keys that have a current value, sorted."""
        await self._enter()
        check_name(namespace, "namespace")
        return self._kv.keys(namespace)

    async def namespaces(self) -> list[str]:
        """Namespaces holding at least one current value, sorted."""
        await self._enter()
        return self._kv.live_namespaces()

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
        recs = self._kv.history(namespace, key)
        old, new = pick_version(recs, from_version), pick_version(recs, to_version)
        values = [
            None
            if r.content_id is None
            else decode_value(self._value_bytes(r.content_id, r.location, namespace, key))
            for r in (old, new)
        ]
        return Diff(
            self._version(namespace, key, old),
            self._version(namespace, key, new),
            diff_values(values[0], values[1]),
        )

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
        await self._enter_write()
        if isinstance(events, str | bytes | bytearray | memoryview) or not isinstance(
            events, Iterable
        ):
            raise InvalidArgumentError(f"ingest takes an iterable of event bytes, not {events!r}")
        ingest = self._ingest
        accepted, duplicates = ingest.accepted, ingest.duplicates
        now = self._now()
        for data in events:
            ingest.offer(data, now)
        if ingest.accepted != accepted:
            await self._acknowledge()
        return IngestResult(
            ingest.accepted - accepted,
            ingest.duplicates - duplicates,
            ingest.held,
            tuple(ingest.take_report()),
        )

    async def feed_heads(self) -> dict[tuple[str, str], int]:
        """How far each feed held here goes: ``(origin hex, agent) -> last seq``. What a
        peer compares with its own to know what to send."""
        await self._enter()
        return {(o.hex(), a): head[0] for (o, a), head in self._feeds.heads.items()}

    async def feed_events(
        self, origin: str, agent: str = STORAGE, after: int = 0, limit: int | None = None
    ) -> list[bytes]:
        """The events of one feed after seq ``after``, oldest first, as the bytes to
        hand to another database's :meth:`ingest` (at most ``limit`` of them).

        Raises:
            InvalidArgumentError: a malformed origin, agent, ``after`` or ``limit``.
        """
        await self._enter()
        try:
            node = bytes.fromhex(origin) if type(origin) is str else b""
        except ValueError:
            node = b""
        if len(node) != len(self._node):
            raise InvalidArgumentError(f"origin must be a node id in hex, not {origin!r}")
        if agent not in AGENTS:
            raise InvalidArgumentError(f"agent must be one of {AGENTS}, not {agent!r}")
        if type(after) is not int or after < 0:
            raise InvalidArgumentError(f"after must be a non-negative int, not {after!r}")
        if limit is not None and (type(limit) is not int or limit < 0):
            raise InvalidArgumentError(f"limit must be a non-negative int, not {limit!r}")
        head = self._feeds.heads.get((node, agent))
        last = 0 if head is None else head[0]
        if limit is not None:
            last = min(last, after + limit)
        locate = self._feeds.location
        out = []
        for seq in range(after + 1, last + 1):
            location = locate(node, agent, seq)
            assert location is not None
            out.append(self._store.read(location))
        return out

    # -- whole-database views ----------------------------------------------------------

    def stats(self) -> Stats:
        """Counters describing the database right now."""
        s = self._store.stats()
        kv = self._kv
        return Stats(
            path=self._path,
            node_id=self._node_hex,
            sync=self._committer.mode,
            keys=kv.live,
            deleted_keys=kv.key_count() - kv.live,
            namespaces=len(kv.live_namespaces()),
            versions=kv.versions,
            events=self._checkpointer.events,
            log_bytes=s.get("bytes_appended", 0),
            syncs=self._committer.syncs,
            cache_entries=len(self._cache),
            cache_bytes=self._cache.size,
            cache_hits=self._cache.hits,
            cache_misses=self._cache.misses,
            checkpoints=self._checkpointer.written,
            checkpoint_failures=self._checkpointer.failures,
            checkpoint_events=self._from_checkpoint,
            replayed_events=self._replayed,
            checkpoint_ignored=self._checkpoint_problem,
            projections_rebuilt=dict(self._rebuilt),
            corruptions=self._values.corruptions,
            set_aside_files=s.get("set_aside_files", 0),
            set_aside_bytes=s.get("set_aside_bytes", 0),
            ingested=self._ingest.accepted,
            forks=self._ingest.forks,
            held=self._ingest.held,
        )

    def roots(self) -> dict[str, str]:
        """Each canonical agent's chain head (hex): this node's view of its local logs."""
        return {agent: self._store.cursor(agent).root.hex() for agent in AGENTS}

    def projection(self, name: str) -> Projection:
        """The registered projection called ``name`` (``"kv"``, ``"feeds"``, or one
        passed to :func:`koru.open`), to read from. Its state is the database's own:
        read it, never change it.

        Raises:
            InvalidArgumentError: no projection has that name.
        """
        try:
            return self._projections[name]
        except (KeyError, TypeError):
            raise InvalidArgumentError(f"no projection is called {name!r}") from None

    def digest(self) -> str:
        """One hash of the whole state (hex): equal on every node holding the same
        events, whatever order they arrived in."""
        return blake3.blake3(b"koru-delta/digest/v1" + self._kv.digest()).hexdigest()

    # -- checkpoints and lifecycle -----------------------------------------------------

    async def checkpoint(self) -> None:
        """Save projection state now, so the next open replays only what follows."""
        await self._enter_write()
        await self._checkpointer.save()

    def _capture(self) -> dict[str, Any]:
        cursors = {a: self._store.cursor(a) for a in self._store.agents()}
        return capture_checkpoint(self._projections, cursors, self._hlc.last, self._node)

    async def run_background(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The database's background task: periodic checkpoints."""
        await self._checkpointer.run(self._die, task_status=task_status)

    async def aclose(self) -> None:
        """Flush, fsync, checkpoint if anything changed, and close. Idempotent.

        Runs shielded from cancellation so a cancelled scope still closes cleanly.
        """
        if self._shut:
            return
        self._shut = self._closed = True
        with trio.CancelScope(shield=True):
            try:
                if self._fatal is None and not self._store.readonly:
                    await self._committer.sync_now()
                    if self._checkpointer.behind:
                        try:
                            await self._checkpointer.save()
                        except DurabilityError:
                            raise
                        except StorageError as exc:
                            # The log is synced and complete: a checkpoint only makes
                            # the next open faster, so its failure is not an error here.
                            _log.warning("koru: no checkpoint written at close: %s", exc)
            finally:
                self._store.close()
