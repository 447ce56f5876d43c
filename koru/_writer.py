"""Writing: local writes become events, events from elsewhere are ingested, and both
take the one write path.

The one write path (:meth:`Writer.write`) hands an encoded event to the store (which
frames, checksums, chains and writes it), folds it through every projection, and counts
it for the checkpointer. A writer is acknowledged only when the committer says the
record is durable under the database's sync mode (:meth:`Writer.acknowledge`); the
caller awaits that, so building and appending an event never yields, and the state a
write saw as current is still current when it is appended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, cast

from blake3 import blake3
from trio.lowlevel import enable_ki_protection

from koru.events import (
    AGENTS,
    MAX_NAME_BYTES,
    SEGMENT_HEADER_SIZE,
    STORAGE,
    BatchEvent,
    CodecError,
    DatabaseClosedError,
    DeleteEvent,
    DurabilityError,
    Event,
    ExpireEvent,
    ExpiringBatchEvent,
    ExpiringPutEvent,
    Header,
    HybridLogicalClock,
    InvalidArgumentError,
    InvalidDataError,
    InvalidParentError,
    KeyNotFoundError,
    LinkedPutEvent,
    LogStore,
    PutEncoder,
    PutEvent,
    Write,
    check_name,
    content_id,
    decode_event,
    encode_event,
    encode_value,
    event_id,
    parents_problem,
)
from koru.nursery import Checkpointer, Clock, Committer
from koru.projections import FeedState, KvState, Projections, capture_checkpoint

from ._cache import ValueCache
from ._ingest import Ingest
from ._reads import ANSWER_BYTES, refuse_past_answer
from ._space import DEFAULT
from ._types import IngestResult, Version

__all__ = ["Writer", "checked_ttl_ns"]

_new = tuple.__new__
_UINT64_MAX = 2**64 - 1  # the largest expiry the decoders take
_NS_LIMIT = 2**64 - 2**32  # room for the HLC's logical increments below 2**64
_MAX_TTL = 100 * 365 * 86400  # a century: longer is a mistake, not a time to live
#: Events that carry several writes (each a version in memory until a checkpoint).
_BATCHES = frozenset((BatchEvent, ExpiringBatchEvent))
#: The last this many bytes of each segment are synced in the background as they fill,
#: a step at a time (see ``Checkpointer.writeback``); not for segments under
#: ``_WRITEBACK_MIN_SEGMENT`` (sealing a small one is cheap) nor under sync="always"
#: (every write is synced already).
_WRITEBACK_WINDOW = 8 * 1024 * 1024
_WRITEBACK_STEP = 1024 * 1024
_WRITEBACK_MIN_SEGMENT = 16 * 1024 * 1024
_OFFSET = 0xFFFFFFFF  # a location's byte offset in its segment


def checked_ttl_ns(ttl: Any) -> int:
    """A time to live in ns, checked (a positive number of seconds, under a century)."""
    if type(ttl) not in (int, float) or not 0 < ttl <= _MAX_TTL:
        raise InvalidDataError(
            f"ttl must be a positive number of seconds up to a century, not {ttl!r}"
        )
    return max(1, int(ttl * 1e9))


def _expiry(start: int, ttl_ns: int) -> int:
    """When a value put at ``start`` with a time to live of ``ttl_ns`` expires, checked
    as the decoders check it (64 bits): CBOR would encode a larger one as a bignum, an
    event every replay refuses."""
    expires = start + ttl_ns
    if expires > _UINT64_MAX:
        raise InvalidDataError(f"expires {expires!r} is not a positive 64-bit integer")
    return expires


def _bad_clock(now: Any) -> NoReturn:
    """Refuse a reading of the injected clock (see :meth:`Writer.now`)."""
    raise InvalidArgumentError(
        f"the clock's now_ns() must return int nanoseconds since the epoch, not {now!r}"
    )


#: Fewer bytes than a version takes in an answer besides its names (about 194 for
#: the first version of a key): a batch whose versions surely pass a served answer's
#: bound is refused before it is written (it was written, then its answer refused).
_VERSION_BYTES = 160


#: At most this many bytes of values and names in one round's batch of handed-over
#: puts (a larger value goes alone, as its own put event): a round's event stays far
#: below ``MAX_EVENT_SIZE`` and its encoding short.
GROUP_BYTES = 1 << 20
#: What a write adds to a batch event besides its value and names (CBOR heads, the
#: previous version's id), counted against ``GROUP_BYTES``. Why names count: 33,000
#: one-byte puts under 1 KiB names made one batch of 69 MB, past ``MAX_EVENT_SIZE``,
#: and every put of the round failed (names counted in characters: a batch is still
#: under 4 x ``GROUP_BYTES``, whatever their UTF-8 takes).
_WRITE_BYTES = 48
#: Batches one round builds by scanning what is queued (see ``Writer._append_joined``).
_GROUP_PASSES = 8


class _Joined:
    """A put handed to the next group-commit round (see :meth:`Writer.join`), with its
    time to live in ns if it has one."""

    __slots__ = ("data", "error", "key", "namespace", "target", "ttl_ns", "version", "withdrawn")

    def __init__(self, namespace: str, key: str, data: bytes, ttl_ns: int | None) -> None:
        self.namespace = namespace
        self.key = key
        self.data = data
        self.ttl_ns = ttl_ns
        #: Set when the round appends it: the appended count it is durable at, and its
        #: version; or the error appending it raised.
        self.target: int | None = None
        self.version: Version | None = None
        self.error: BaseException | None = None
        #: Its writer stopped waiting before a round took it: never appended.
        self.withdrawn = False


class Writer:
    """Builds this node's events, ingests other nodes', and appends both."""

    def __init__(
        self,
        *,
        store: LogStore,
        node_id: bytes,
        clock: Clock,
        committer: Committer,
        projections: Projections,
        hlc: int,
        cache: ValueCache,
        max_value_size: int,
        checkpoint_every: int,
        events: int,
        saved_at: int,
        die: Callable[[BaseException], None],
        former_id: bytes | None = None,
        fatal: Callable[[], BaseException | None] = lambda: None,
    ) -> None:
        self._store = store
        self._node = node_id
        #: The node ids whose versions this node records the expiry of: its own, and
        #: the one it wrote as before its node key (see ``koru._nodekey``), which no
        #: other node writes as.
        self._own = frozenset((node_id,) if former_id is None else (node_id, former_id))
        self._node_hex = node_id.hex()
        self._put_encoder = PutEncoder(node_id)
        #: A blake3 hasher for put_plain, used on the event loop's thread only.
        hasher = blake3()
        self._hash_reset, self._hash_update = hasher.reset, hasher.update
        self._clock = clock
        #: The latest time a read judged expiry by (see read_time).
        self._read_floor = 0
        self._now_ns = clock.now_ns
        self._committer = committer
        self._projections = projections
        self._kv = cast(KvState, projections["kv"])
        self._feeds = cast(FeedState, projections["feeds"])
        self._fold = projections.apply
        self._fold_put = projections.apply_put
        self._cache = cache
        self._max_value_size = max_value_size
        self._die = die
        #: Why the handle died, if it did (no round appends a put queued for it then).
        self._fatal = fatal
        self.hlc = HybridLogicalClock(hlc)
        #: Whether an acknowledgement waits for anything (a sync): with ``"os"`` and
        #: ``"never"`` a write is acknowledged once appended, and the caller need not
        #: await :meth:`acknowledge` (it returns at once).
        self.waits = committer.mode == "always"
        #: Puts handed to the next group-commit round (:meth:`join`) rather than
        #: appended by their callers: under ``"always"`` (``waits``), where each waits
        #: for a sync anyway.
        self._joined: list[_Joined] = []
        #: How many of them their writers withdrew (see :meth:`leave`).
        self._withdrawn = 0
        if self.waits:
            committer.gather = self._append_joined
        self.checkpointer = Checkpointer(
            store,
            committer,
            self.capture,
            every=checkpoint_every,
            events=events,
            saved_at=saved_at,
            checkpointed=projections.checkpointed,
            compactions=projections.compactions,
            retired=projections.retired,
        )
        self.ingest = Ingest(store, self._feeds, self.hlc, self.write)
        # Bound once: every write calls them (one attribute lookup each fewer).
        self._store_append = store.append
        size = store.segment_size
        #: Offset in a segment from which writes ask for background syncs, and per
        #: agent (a location's top byte) the location of the next one.
        self._writeback_from = (
            size - _WRITEBACK_WINDOW
            if size is not None and size >= _WRITEBACK_MIN_SEGMENT and committer.mode != "always"
            else 1 << 64
        )
        self._writeback_at: dict[int, int] = {}
        #: Ask for a background sync after a roll (under sync="always" the write's
        #: own sync finishes it).
        self._finish_rolls = committer.mode != "always"
        #: Called with every event once it is appended and folded, local or ingested
        #: (query caches, views, subscriptions): the one place that sees every write.
        self.observers: list[Callable[[Event, bytes, int], None]] = []

    # -- the one write path -------------------------------------------------------------

    # Why shielded from KeyboardInterrupt: Ctrl-C raises it at whatever line the main
    # thread is running, and here that would leave an appended event unfolded (or half
    # folded), a state the checkpoint written on close would then make permanent. trio
    # delivers it at the next checkpoint instead; nothing here yields.
    @enable_ki_protection
    def write(
        self,
        event: Event,
        data: bytes,
        eid: bytes,
        cid: bytes | None = None,
        cids: Sequence[bytes] | None = None,
        wids: Sequence[bytes] | None = None,
    ) -> None:
        """Store (frame, checksum, chain, write), fold into every projection, count for
        checkpoints: for local events and ingested ones alike. ``cid``: for a plain put
        of this node, its value's content id, which the fold then takes rather than
        hashing the value again (``Projections.apply_put``); ``cids``: for a batch of
        this node, its values' content ids in order (``Projections.apply_writes``), and
        ``wids`` their write ids, if the caller has them."""
        try:
            location, _ = self._store_append(event.agent, data, eid)
        except DurabilityError as exc:
            self._die(exc)
            raise
        self._committer.appended += 1  # (Committer.mark_appended, inlined)
        offset = location & _OFFSET
        if offset >= self._writeback_from:
            self._near_segment_end(location)
        elif offset == SEGMENT_HEADER_SIZE and self._finish_rolls:
            # The first record of a segment: a roll's last steps wait for a sync
            # (FileStore._open_for_append); ask for one now, in the background.
            self.checkpointer.writeback()
        try:
            if cid is not None:  # (a PutEvent: no cast(), a call on every put)
                self._fold_put(event, eid, location, cid)  # type: ignore[arg-type]
            elif cids is None:
                self._fold(event, eid, location)
                if type(event) in _BATCHES:  # a peer's batch
                    self.checkpointer.note_versions(len(cast(BatchEvent, event).writes) - 1)
            else:
                self._projections.apply_writes(event, eid, location, cids, wids)
                self.checkpointer.note_versions(len(cids) - 1)
        except BaseException as exc:
            # The event is in the log; a projection that could not fold it no longer
            # matches the log, and a checkpoint would make that permanent. The handle
            # stops, as for a failed write (the exception still reaches the caller).
            self._die(exc)
            raise
        # Checkpointer.note_event, inlined (every write comes here; see note_due).
        checkpointer = self.checkpointer
        checkpointer.events += 1
        if checkpointer.events - checkpointer.saved_at >= checkpointer.every:
            checkpointer.note_due()
        for observe in self.observers:
            observe(event, eid, location)

    def _near_segment_end(self, location: int) -> None:
        """Ask for a background sync once per ``_WRITEBACK_STEP`` bytes of the last
        part of a segment (a new segment's locations are larger: it starts afresh)."""
        agent = location >> 56
        if location >= self._writeback_at.get(agent, 0):
            self._writeback_at[agent] = location + _WRITEBACK_STEP
            self.checkpointer.writeback()

    async def acknowledge(self) -> None:
        """Return once everything written so far is durable under the sync mode."""
        try:
            await self._committer.wait_durable()
        except DurabilityError as exc:
            self._die(exc)
            raise

    async def settle(self) -> None:
        """Make everything written so far durable, whatever the sync mode: before any
        of this node's events leaves it. Why: an event a peer holds and this node then
        loses in a crash forks this node's own feed at that peer (its next event takes
        the lost one's seq), and the peer refuses every later event of it."""
        try:
            await self._committer.sync_now()
        except DurabilityError as exc:
            self._die(exc)
            raise

    def emit(self, agent: str, build: Callable[[Header], Event]) -> tuple[Event, bytes]:
        """Append an event of this node to its feed for ``agent`` (not yet
        acknowledged): ``build`` turns the header (origin, agent, seq, prev, hlc) into
        an event of a registered type. How every capability writes its own events
        (index and view definitions, embeddings, identities, tier moves); returns the
        event as stored (decoded from its bytes) and its id.

        Raises:
            InvalidArgumentError: an unknown agent, an event for another agent's log,
                or key/value writes outside the storage log.
            InvalidDataError: the event breaks a limit, or its type's decoder refuses
                its bytes (nothing is written).
        """
        if agent not in AGENTS:
            raise InvalidArgumentError(f"agent must be one of {AGENTS}, not {agent!r}")
        built = build(self._header(agent))
        data = encode_event(built)
        # Read back as every later reader will (replay, peers, which check values too):
        # an event its own type's decoder refuses would be acknowledged, then make every
        # replay past it refuse the log as corrupt; a value that is not canonical CBOR
        # would be served as corruption; and what is folded is what they will fold, not
        # the object built (a decoder may tidy a field).
        try:
            event = decode_event(data, check_values=True)
        except CodecError as exc:
            raise InvalidDataError(f"the event would not read back: {exc}") from None
        if event.agent != agent or (event.writes and agent != STORAGE):
            # The ingest path refuses both; a local event must never be one a peer refuses.
            raise InvalidArgumentError(
                f"an event for the {agent!r} log must carry that agent and no key/value writes"
            )
        eid = event_id(data)
        self.write(event, data, eid)
        return event, eid

    def _append(self, event: Event) -> bytes:
        data = encode_event(event)
        eid = event_id(data)
        self.write(event, data, eid)
        return eid

    # -- local writes --------------------------------------------------------------------

    def put(
        self,
        namespace: str,
        key: str,
        value: Any,
        ttl: float | None = None,
        parents: tuple[tuple[str, str], ...] = (),
    ) -> Version:
        """Append a new version of ``namespace/key`` (not yet acknowledged), derived
        from ``parents`` (stored names, checked by the caller) if any."""
        check_name(namespace, "namespace")
        if not parents:
            ttl_ns = None if ttl is None else checked_ttl_ns(ttl)
            return self.put_plain(namespace, key, value, ttl_ns)
        check_name(key, "key")
        data = encode_value(value, self._max_value_size)
        previous = self._kv.current_write_id(namespace, key)
        ttl_ns = None if ttl is None else checked_ttl_ns(ttl)
        # The decoder's rules, held here too: an event every replay would refuse must
        # never be acknowledged.
        problem = parents_problem((namespace, key), parents)
        if problem is not None:
            raise InvalidParentError(None, problem)
        header = self._header()
        # From the read floor when the clock went back behind it (a read judged a later
        # time): from the timestamp, the value would read as expired at once (h-seal).
        expires = None if ttl_ns is None else _expiry(max(header[4], self._read_floor), ttl_ns)
        event = LinkedPutEvent(*header, namespace, key, data, previous, expires, parents)
        cid = content_id(data)
        encoded = encode_event(event)
        eid = event_id(encoded)
        self.write(event, encoded, eid, cids=(cid,))  # the fold takes the content id
        self._cache.put(cid, data)
        return self.version_of(namespace, key, eid, cid, event.hlc, previous, expires)

    def put_plain(
        self,
        namespace: str,
        key: str,
        value: Any,
        ttl_ns: int | None = None,
        data: bytes | None = None,
    ) -> Version:
        """:meth:`put` of a value without parents (nearly every put), with a time to
        live of ``ttl_ns`` (checked) or none, in a namespace the caller checked already
        (``check_name`` or stricter), fused: the event built as a tuple, encoded by the
        precomputed put encoder (the same bytes as ``encode_event``), its content id
        handed to the fold, and the version built without intermediate objects.
        ``data``: the value already encoded (and the key checked), if it was."""
        if data is None:
            if not (type(key) is str and key.isascii() and 0 < len(key) <= MAX_NAME_BYTES):
                check_name(key, "key")  # (its fast path above, inlined)
            data = encode_value(value, self._max_value_size)
        previous = self._kv.current_write_id(namespace, key)
        node = self._node
        # FeedState.next, self.now() and HybridLogicalClock.tick, inlined (one call
        # each fewer).
        head = self._feeds.heads.get((node, STORAGE))
        seq, prev = (1, None) if head is None else (head[0] + 1, head[1])
        now, clock = self._now_ns(), self.hlc
        if type(now) is not int or not 0 <= now < _NS_LIMIT:
            _bad_clock(now)
        hlc = now if now > clock.last else clock.last + 1
        clock.last = hlc
        event: Event
        if ttl_ns is None:
            expires = None
            event = _new(PutEvent, (node, STORAGE, seq, prev, hlc, namespace, key, data, previous))
        else:
            # From the read floor when the clock went back behind it (a read judged a
            # later time): from the timestamp, it would read as expired at once.
            expires = _expiry(max(hlc, self._read_floor), ttl_ns)
            event = _new(
                ExpiringPutEvent,
                (node, STORAGE, seq, prev, hlc, namespace, key, data, previous, expires),
            )
        encoded = self._put_encoder.encode(seq, prev, hlc, namespace, key, data, previous, expires)
        # content_id(data) and event_id(encoded), inlined, with the writer's hasher
        # (reset before each use; reusing one is a third cheaper than a new one).
        reset, update = self._hash_reset, self._hash_update
        reset()
        cid = update(data).digest()
        reset()
        eid = update(encoded).digest()
        if expires is None:
            self.write(event, encoded, eid, cid)
        else:  # (the fold of a put with a time to live takes the content ids of a batch)
            self.write(event, encoded, eid, cids=(cid,))
        self._cache.put(cid, data)
        return _new(
            Version,
            (
                namespace,
                key,
                eid.hex(),
                cid.hex(),
                hlc,
                None if previous is None else previous.hex(),
                self._node_hex,
                False,
                expires,
            ),
        )

    def put_batch(
        self,
        items: Iterable[tuple[str, str, Any]],
        ttl: float | None = None,
        inward: Callable[[Any], str] = DEFAULT.inward,
    ) -> list[Version]:
        """Append several versions as one event, all or nothing (not yet acknowledged).
        ``inward`` checks each namespace and gives its stored form (its space's)."""
        if isinstance(items, str | bytes | bytearray) or not isinstance(items, Iterable):
            raise InvalidDataError(
                f"put_batch takes an iterable of (namespace, key, value), not {items!r}"
            )
        writes: list[Write] = []
        seen: set[tuple[str, str]] = set()
        for item in items:
            if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 3:
                raise InvalidDataError(f"batch items are (namespace, key, value), not {item!r}")
            shown, key, value = item
            namespace = inward(shown)
            check_name(key, "key")
            if (namespace, key) in seen:
                raise InvalidDataError(f"{shown!r}/{key!r} appears twice in one batch")
            seen.add((namespace, key))
            data = encode_value(value, self._max_value_size)
            writes.append(Write(namespace, key, data, self._kv.current_write_id(namespace, key)))
        ttl_ns = None if ttl is None else checked_ttl_ns(ttl)
        if not writes:
            return []
        if ANSWER_BYTES.get() is not None:  # a served call: refused before it is written
            names = sum(len(w.namespace) + len(w.key) for w in writes)
            refuse_past_answer(
                "put_batch", names, len(writes), _VERSION_BYTES, "fewer items a batch"
            )
        return self._write_batch(writes, ttl_ns)

    def _write_batch(
        self, writes: list[Write], ttl_ns: int | None, joined: bool = False
    ) -> list[Version]:
        """Append checked writes of distinct keys as one batch event (not yet
        acknowledged): their versions, in order. ``joined``: the writes are puts a
        round appends together, each counted as an event towards the checkpoints."""
        header = self._header()
        expires = None if ttl_ns is None else _expiry(max(header[4], self._read_floor), ttl_ns)
        event: Event
        if expires is None:
            event = BatchEvent(*header, tuple(writes))
        else:
            event = ExpiringBatchEvent(*header, expires, tuple(writes))
        # content_id, event_id and write_id inlined with the writer's hasher (see
        # put_plain): a round of joined puts comes here, one write per waiting writer.
        reset, update = self._hash_reset, self._hash_update
        cids = []
        for w in writes:
            reset()
            cids.append(update(cast(bytes, w.value)).digest())
        if expires is None:  # values only (put_batch writes no tombstones)
            encoded = self._put_encoder.encode_batch(header[2], header[3], header[4], writes)
        else:
            encoded = encode_event(event)
        reset()
        eid = update(encoded).digest()
        wids = [eid]
        for i in range(1, len(writes)):
            reset()
            wids.append(update(eid + i.to_bytes(4, "big")).digest())  # write_id(eid, i)
        self.write(event, encoded, eid, cids=cids, wids=wids)  # the fold takes the ids
        if joined:
            self.checkpointer.note_joined(len(writes) - 1)
        cache_put, version, hlc = self._cache.put, self.version_of, header[4]
        versions = []
        for w, cid, wid in zip(writes, cids, wids, strict=True):
            cache_put(cid, cast(bytes, w.value))
            versions.append(version(w.namespace, w.key, wid, cid, hlc, w.previous, expires))
        return versions

    def join(self, namespace: str, key: str, value: Any, ttl_ns: int | None = None) -> _Joined:
        """:meth:`put_plain` under ``"always"``: the value checked and encoded here
        (errors reach the caller, nothing is written), then handed to the next
        group-commit round, which appends every put handed to it as batch events
        (:meth:`_append_joined`) before its sync; ``ttl_ns``: its time to live
        (checked), the same for every put of a batch. The caller awaits
        ``Committer.wait_durable`` of what this returns, then takes its ``version``,
        or calls :meth:`leave` with what that raised.

        Why: each writer then pays for its value and its wait, and the round for one
        event's encoding, hashing, framing and write, where each put paid for its own
        (issue #14: 16 writers under ``"always"``)."""
        if not (type(key) is str and key.isascii() and 0 < len(key) <= MAX_NAME_BYTES):
            check_name(key, "key")
        joined = _Joined(namespace, key, encode_value(value, self._max_value_size), ttl_ns)
        self._joined.append(joined)
        self._committer.joined += 1
        return joined

    def leave(self, joined: _Joined, exc: BaseException) -> None:
        """A joined put's wait raised ``exc``: withdrawn if no round has taken it yet
        (nothing is written); once taken it is written, as a put cancelled while it
        waits for its sync is. A failed sync is fatal, as for :meth:`acknowledge`."""
        if isinstance(exc, DurabilityError):
            self._die(exc)
        elif joined.target is None and joined.error is None and not joined.withdrawn:
            # Marked, not removed: removing is a search of the queue, and a timeout
            # that cancels thousands of queued writers made that quadratic. The next
            # round drops it (_append_joined).
            joined.withdrawn = True
            self._withdrawn += 1

    def _append_joined(self) -> None:
        """The committer's ``gather`` hook: append the puts handed to the round, in
        the order they came, as batch events of distinct keys, one time to live (or
        none) and at most ``GROUP_BYTES`` of values and names each (a lone put as a
        plain put event, or one with a ttl), each put's outcome recorded in it. Never
        raises."""
        pending = self._joined
        if self._withdrawn:
            pending[:] = [j for j in pending if not j.withdrawn]
            self._withdrawn = 0
        dead = self._fatal() if pending else None
        if dead is not None:  # died with puts queued: each fails, none is written
            for joined in pending:
                joined.error = DatabaseClosedError("the database is closed")
                joined.error.__cause__ = dead
            pending.clear()
        passes = 0
        while pending:
            passes += 1
            if passes > _GROUP_PASSES:
                # Many ttls in one round: the rest go one by one, in the order they
                # came (each batch scans what is left: n puts of n ttls scanned n * n).
                rest = list(pending)
                pending.clear()
                for joined in rest:
                    self._append_one(joined)
                return
            # The first put's time to live picks the batch's; a put of another ttl, a
            # second put of a key taken, and every put past the byte budget wait for a
            # later batch, as does any later put of their keys (a key's puts are
            # appended in the order they came).
            taken: list[_Joined] = []
            later: list[_Joined] = []
            seen: set[tuple[str, str]] = set()
            size = 0
            full = False
            ttl_ns = pending[0].ttl_ns
            for joined in pending:
                name = (joined.namespace, joined.key)
                if not full and name not in seen and joined.ttl_ns == ttl_ns:
                    size += (
                        len(joined.data) + len(joined.namespace) + len(joined.key) + _WRITE_BYTES
                    )
                    if taken and size > GROUP_BYTES:
                        full = True  # this put and every later one wait
                    else:
                        seen.add(name)
                        taken.append(joined)
                        continue
                seen.add(name)
                later.append(joined)
            pending[:] = later
            if len(taken) == 1:
                self._append_one(taken[0])
                continue
            try:
                current = self._kv.current_write_id
                writes = [
                    _new(Write, (j.namespace, j.key, j.data, current(j.namespace, j.key), None))
                    for j in taken
                ]
                versions = self._write_batch(writes, ttl_ns, joined=True)
            except BaseException as exc:
                for joined in taken:
                    joined.error = exc
                continue
            target = self._committer.appended
            for joined, version in zip(taken, versions, strict=True):
                joined.version = version
                joined.target = target

    def _append_one(self, joined: _Joined) -> None:
        """Append one joined put as its own event, its outcome recorded in it."""
        try:
            joined.version = self.put_plain(
                joined.namespace, joined.key, None, joined.ttl_ns, joined.data
            )
        except BaseException as exc:
            joined.error = exc
            return
        joined.target = self._committer.appended

    def delete(self, namespace: str, key: str) -> Version:
        """Append a tombstone for a key with a current value (not yet acknowledged)."""
        check_name(namespace, "namespace")
        check_name(key, "key")
        cur = self._kv.current(namespace, key)
        # A value whose time to live is over has no current value either (as every
        # read judges it; the expiry process records it).
        if (
            cur is None
            or cur.deleted
            or (cur.expires is not None and cur.expired(self.read_time()))
        ):
            raise KeyNotFoundError(namespace, key)
        event = DeleteEvent(*self._header(), namespace, key, cur.write_id)
        eid = self._append(event)
        return self.version_of(namespace, key, eid, None, event.hlc, cur.write_id)

    # -- events from elsewhere -----------------------------------------------------------

    # Shielded from KeyboardInterrupt like write(), and for a second reason: decoding
    # runs callbacks from C (cbor2), and an interrupt raised inside one is reported as
    # "Exception ignored" and lost. A call takes in one chunk; Ctrl-C comes after it.
    @enable_ki_protection
    def take_in(self, events: Iterable[bytes]) -> IngestResult:
        """Offer each event to the ingest path (not yet acknowledged when any was
        accepted: ``result.accepted``)."""
        if isinstance(events, str | bytes | bytearray | memoryview) or not isinstance(
            events, Iterable
        ):
            raise InvalidArgumentError(f"ingest takes an iterable of event bytes, not {events!r}")
        ingest = self.ingest
        accepted, duplicates = ingest.accepted, ingest.duplicates
        now = self.now()
        for data in events:
            ingest.offer(data, now)
        return IngestResult(
            ingest.accepted - accepted,
            ingest.duplicates - duplicates,
            ingest.held,
            tuple(ingest.take_report()),
        )

    # -- pieces ----------------------------------------------------------------------------

    def now(self) -> int:
        """The injected clock's reading, checked before the HLC sees it: one bad
        reading must not poison every later timestamp."""
        now = self._clock.now_ns()
        if type(now) is not int or not 0 <= now < _NS_LIMIT:
            _bad_clock(now)
        return now

    def _header(self, agent: str = STORAGE) -> Header:
        seq, prev = self._feeds.next(self._node, agent)
        return self._node, agent, seq, prev, self.hlc.tick(self.now())

    def expire(self, namespace: str, key: str, now: int) -> bool:
        """Append the expiry of the key's current version if its time to live is over
        at ``now`` (not yet acknowledged); False if there is nothing to expire, or if
        another node wrote that version. The tombstone is dated by the clock: a ``now``
        past the timestamp it takes would date it before the version expired (see the
        ``expiry`` process).

        Why only the writer's node records an expiry: every node reads the value as
        absent once its time is over, whoever records it; a node that may read a
        peer's key but not write it recorded the expiry in its own feed, which the
        peer then refused, holding every later event of that feed (h-ttl); and every
        replica recorded its own tombstone of the same version. A version written under
        the node id this node had before its node key is this node's too: no other
        node writes as that id, so its expiry would otherwise never be recorded."""
        current = self._kv.current(namespace, key)
        if (
            current is None
            or current.deleted
            or current.origin not in self._own
            or not current.expired(now)
        ):
            return False
        self._append(ExpireEvent(*self._header(), namespace, key, current.write_id))
        return True

    @property
    def read_floor(self) -> int:
        """The latest time a read judged expiry by (0 before any)."""
        return self._read_floor

    def raise_read_floor(self, floor: int) -> None:
        """Judge no read before ``floor`` (a floor kept across a reopen: see
        ``koru._read_floor``)."""
        self._read_floor = max(self._read_floor, floor)

    def read_time(self) -> int:
        """The time values with a time to live are judged by: the latest of the clock,
        the newest timestamp seen and this time as last returned, so it never goes
        backwards (an expired value cannot come back when the clock is set back)."""
        # The read floor: a value a read found expired at some time stays expired when
        # the clock is then set back, even with nothing written since. Kept beside the
        # HLC, not fed to it: timestamps would then depend on whether a background
        # process read the clock before a put at the same instant (not deterministic).
        now = self.now()
        floor = self._read_floor
        last = self.hlc.last
        if last > floor:
            floor = last
        if now > floor:
            floor = now
        self._read_floor = floor
        return floor

    def version_of(
        self,
        namespace: str,
        key: str,
        wid: bytes,
        cid: bytes | None,
        hlc: int,
        previous: bytes | None,
        expires: int | None = None,
    ) -> Version:
        """The metadata of a version this node just wrote."""
        return _new(
            Version,
            (
                namespace,
                key,
                wid.hex(),
                None if cid is None else cid.hex(),
                hlc,
                None if previous is None else previous.hex(),
                self._node_hex,
                cid is None,
                expires,
            ),
        )

    def capture(self) -> dict[str, Any]:
        """Every projection's section and every agent's cursor, together (the
        checkpointer calls this without yielding, so they agree)."""
        cursors = {a: self._store.cursor(a) for a in self._store.agents()}
        return capture_checkpoint(self._projections, cursors, self.hlc.last, self._node)
