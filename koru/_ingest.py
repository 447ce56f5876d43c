"""The one way in for events this node did not write: peer sync, imports, simulations.

An event from elsewhere is untrusted bytes. It is decoded strictly (values too), its
id is computed from those bytes, and it must continue its feed, the (origin, agent)
sequence it belongs to:

- the next one (its ``seq`` one past the feed's head, its ``prev`` the head's id) is
  appended to the local log, chained into the agent's root, and folded through every
  projection, exactly as a local write is;
- one already held, with the same id, is a duplicate and changes nothing;
- a different event for a ``seq`` already held, or a next one whose ``prev`` names
  another event, is a **fork**: the origin (or someone speaking for it) wrote two
  histories. It is refused, reported and counted, never folded;
- one further ahead is held back in memory until the events before it arrive (a feed is
  never folded out of order), up to a bound; past it, the events held longest make room
  (refused as gaps, reported in the call that evicts them: the sender can offer them
  again later). Why the longest held: a gap an honest sender leaves closes soon, so
  what waits longest is mostly what nobody will complete (a peer that fills the room
  with gaps it never closes); refusing the newcomer instead let such a peer stop every
  later out-of-order event from being held, until the database was reopened.

Every event's timestamp moves this node's hybrid logical clock forward, so that what
this node writes next is ordered after what it has seen; a timestamp too far ahead of
this node's wall clock is refused, so that one lying peer cannot push every later
timestamp to the end of time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from koru.events import (
    AGENTS,
    MAX_EVENT_SIZE,
    STORAGE,
    CodecError,
    CorruptLogError,
    Event,
    HybridLogicalClock,
    LogStore,
    decode_event,
    decode_trusted,
    event_id,
)
from koru.projections import FeedState

from ._seal_marks import checked_prev, named_by_next
from ._types import Refused

__all__ = ["MAX_CLOCK_AHEAD_NS", "MAX_HELD_BYTES", "MAX_HELD_EVENTS", "Ingest"]

_log = logging.getLogger("koru")

#: How far (ns) an event's timestamp may be ahead of this node's wall clock: one hour.
MAX_CLOCK_AHEAD_NS = 3600 * 10**9
#: Bounds on events held back for a gap in their feed (all feeds together): their
#: count, and the memory they take (their bytes and a fixed cost each, below).
MAX_HELD_EVENTS = 100_000
MAX_HELD_BYTES = 256 * 1024 * 1024
#: What holding one event costs besides its bytes (its entry, key and ids).
_HELD_COST = 512

Feed = tuple[bytes, str]


class _Held(NamedTuple):
    """An event held back: only its bytes and what placing it needs. Why not the
    decoded event: that can take ~15 times the bytes (a batch of tiny writes), so a
    bound on bytes would not bound memory; it is decoded again when released."""

    data: bytes
    eid: bytes
    prev: bytes | None


class Ingest:
    """Sequences events from other origins into the local log (see the module doc).

    ``append`` is the database's one write path for bytes already encoded: store,
    fold into every projection, count for the checkpointer.
    """

    def __init__(
        self,
        store: LogStore,
        feeds: FeedState,
        hlc: HybridLogicalClock,
        append: Callable[[Event, bytes, bytes], None],
    ) -> None:
        self._store = store
        self._feeds = feeds
        self._hlc = hlc
        self._append = append
        self._held: dict[tuple[Feed, int], _Held] = {}
        self._held_bytes = 0
        self._report: list[Refused] = []
        #: Totals since the open.
        self.accepted = 0
        self.duplicates = 0
        self.forks = 0
        #: Forks refused per origin, for the warnings (see _fork).
        self._forks_of: dict[bytes, int] = {}
        self.refused = 0

    @property
    def held(self) -> int:
        """Events waiting for their predecessors."""
        return len(self._held)

    def take_report(self) -> list[Refused]:
        """The refusals since the last call (also of held events released, and refused,
        by a later event, or evicted to make room for one)."""
        report, self._report = self._report, []
        return report

    def offer(self, data: object, now_ns: int) -> Refused | None:
        """Take one event's bytes: appended (with any held events it releases), held
        back, or a duplicate give None; anything else, a :class:`Refused` (also kept
        for :meth:`take_report`)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            return self._refuse(None, f"an event is bytes, not {type(data).__name__}")
        data = bytes(data)
        if len(data) > MAX_EVENT_SIZE:
            return self._refuse(None, f"{len(data)} bytes is over the {MAX_EVENT_SIZE}-byte limit")
        try:
            event = decode_event(data, check_values=True)
        except CodecError as exc:
            return self._refuse(None, f"not a valid event: {exc}")
        return self.admit(event, data, event_id(data), now_ns)

    def admit(self, event: Event, data: bytes, eid: bytes, now_ns: int) -> Refused | None:
        """:meth:`offer` for an event already decoded strictly from ``data`` (whose id
        is ``eid``): the proven ingest of an authorized handle decodes first."""
        if event.agent not in AGENTS:
            return self._refuse(eid, f"unknown agent {event.agent!r}")
        if event.writes and event.agent != STORAGE:
            # Key/value writes belong to the storage agent's log; anywhere else they
            # would change the key/value state behind that log's back.
            return self._refuse(eid, f"a key/value write in the {event.agent!r} log")
        if event.hlc > now_ns + MAX_CLOCK_AHEAD_NS:
            ahead = (event.hlc - now_ns) / 1e9
            return self._refuse(eid, f"its timestamp is {ahead:.0f} s ahead of this node's clock")
        return self._place(event, data, eid)

    def _place(self, event: Event, data: bytes, eid: bytes) -> Refused | None:
        feed = (event.origin, event.agent)
        head = self._feeds.heads.get(feed)
        expected = 1 if head is None else head[0] + 1
        if event.seq < expected:
            assert head is not None
            held_id = head[1] if event.seq == head[0] else self._id_at(feed, event.seq, eid)
            if held_id is None:
                return self._refuse(
                    eid, f"this node's own record of event {event.seq} of its feed is damaged"
                )
            if held_id == eid:
                self.duplicates += 1
                return None
            return self._fork(
                feed, eid, f"event {event.seq} of its feed is already {held_id.hex()}"
            )
        if event.seq > expected:
            return self._hold(feed, event.seq, _Held(data, eid, event.prev), expected)
        if event.prev != (None if head is None else head[1]):
            why = f"its prev does not name event {event.seq - 1} of its feed"
            return self._fork(feed, eid, why)
        self._accept(event, data, eid)
        self._release(feed)
        return None

    def _accept(self, event: Event, data: bytes, eid: bytes) -> None:
        self._append(event, data, eid)
        self._hlc.observe(event.hlc)
        self.accepted += 1

    def _release(self, feed: Feed) -> None:
        """Accept held events of ``feed`` that now follow it."""
        while self._held:
            head = self._feeds.heads[feed]
            item = self._held.pop((feed, head[0] + 1), None)
            if item is None:
                return
            self._held_bytes -= len(item.data) + _HELD_COST
            if item.prev != head[1]:
                self._fork(feed, item.eid, f"its prev does not name event {head[0]} of its feed")
                return
            # Checked in full (values too) when offered: decoded again, trusted.
            self._accept(decode_trusted(item.data), item.data, item.eid)

    def _hold(self, feed: Feed, seq: int, item: _Held, expected: int) -> Refused | None:
        slot = (feed, seq)
        other = self._held.get(slot)
        if other is not None:
            if other.eid == item.eid:
                self.duplicates += 1
                return None
            return self._fork(feed, item.eid, f"another event {seq} of its feed is held")
        cost = len(item.data) + _HELD_COST
        if cost > MAX_HELD_BYTES or MAX_HELD_EVENTS < 1:
            return self._refuse(
                item.eid,
                f"a gap: event {seq} of its feed, {expected} expected, and no room "
                "to hold it; offer it again after the events before it",
            )
        held = self._held
        while len(held) >= MAX_HELD_EVENTS or self._held_bytes + cost > MAX_HELD_BYTES:
            # The room is full: the event held longest makes room (see the module doc).
            (old_feed, old_seq), old = next(iter(held.items()))
            del held[(old_feed, old_seq)]
            self._held_bytes -= len(old.data) + _HELD_COST
            self._refuse(
                old.eid,
                f"a gap: event {old_seq} of its feed was held longest without the events "
                "before it, and made room for a newer one; offer it again after them",
            )
        held[slot] = item
        self._held_bytes += cost
        return None

    def _id_at(self, feed: Feed, seq: int, offered: bytes) -> bytes | None:
        """The id of the held event ``seq`` of ``feed`` (not the head), from the log;
        None if the log's record of it is damaged. The log's checksums prove damage,
        not intent: an id that is not the ``offered`` one is believed only once the
        record is the feed's event of that seq and the next event names it, so a
        record rewritten on disk is not taken for the peer's fork (blamed on it and
        counted as one; h-seal)."""
        location = self._feeds.location(feed[0], feed[1], seq)
        assert location is not None  # every seq up to the head is held
        try:
            data = self._store.read(location)
            held = event_id(data)
            if held != offered:
                checked_prev(data, feed, seq, location)
                named_by_next(self._feeds.location, self._store.read, feed, seq, held)
        except CorruptLogError as exc:
            _log.error("koru: %s", exc)
            return None
        return held

    def _fork(self, feed: Feed, eid: bytes, why: str) -> Refused:
        self.forks += 1
        origin = feed[0].hex()
        n = self._forks_of[feed[0]] = self._forks_of.get(feed[0], 0) + 1
        # The 1st, 2nd, 4th, 8th... of an origin only: a peer offering forks by the
        # thousand cannot flood the application's log (every one is counted and
        # reported to the caller).
        if not n & (n - 1):
            _log.warning("koru: refused a fork from origin %s (%d so far): %s", origin, n, why)
        return self._refuse(eid, f"a fork of origin {origin}'s feed: {why}", fork=True)

    def refuse(self, eid: bytes | None, reason: str) -> Refused:
        """Refuse an event for ``reason`` (counted and reported as ingest's own)."""
        return self._refuse(eid, reason)

    def _refuse(self, eid: bytes | None, reason: str, *, fork: bool = False) -> Refused:
        self.refused += 1
        refused = Refused(None if eid is None else eid.hex(), reason, fork)
        self._report.append(refused)
        return refused
