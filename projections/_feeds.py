"""Feeds: how far each origin's sequence of events for each agent has been seen, and
where each of those events is stored in this node's log.

Every node numbers its own events per agent (1, 2, 3, ...) and links each to the
previous one in that feed. This projection remembers, per (origin, agent), the last
sequence number and event id applied, which gives the next ``seq``/``prev`` for this
node's own events and lets sync ask a peer for exactly what is missing; and the location
of every event of the feed (8 bytes each), so that an event can be served by its
(origin, agent, seq), and a second, different event claiming a seq already held (a fork)
can be told apart from a duplicate.

Locations grow with the log (80 MB at ten million events), so they do not stay in
memory: they are cut into chunks of ``CHUNK`` events, and a checkpoint writes the chunks
completed since the last one to a table (a chunk never changes once complete). Memory
holds, per feed, its head and the locations past its last written chunk; the opening of
a database reads neither the tables nor the chunks, only their names.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from typing import Any, ClassVar

from koru.events import AGENTS, NODE_ID_SIZE, CorruptCheckpointError, Event, PutRun, Table

from ._merging import MAX_TABLES, merge_plan, replace_merged
from ._newtable import NewTable

__all__ = ["CHUNK", "FeedState"]

Feed = tuple[bytes, str]
#: Events per chunk of locations (32 KiB of them).
CHUNK = 4096
_CACHED_CHUNKS = 64


def _little(locations: array[int]) -> bytes:
    """Little-endian bytes of a location array (the on-disk byte order)."""
    if sys.byteorder == "little":
        return locations.tobytes()
    swapped = array("Q", locations)  # pragma: no cover - big-endian machines
    swapped.byteswap()  # pragma: no cover
    return swapped.tobytes()  # pragma: no cover


def _array(data: bytes) -> array[int]:
    locations = array("Q")
    locations.frombytes(data)
    if sys.byteorder != "little":  # pragma: no cover - big-endian machines
        locations.byteswap()
    return locations


def _chunk_name(feed: Feed) -> str:
    """A feed's name in the tables: its origin in hex and its agent."""
    return f"{feed[0].hex()}/{feed[1]}"


class FeedState:
    """(origin, agent) -> (last seq, last event id), and each event's location."""

    __slots__ = ("_cache", "_flushing", "heads", "max_tables", "recent", "tables", "written")

    #: The projection's name (its checkpoint section) and section format: version 2
    #: added the locations, version 3 keeps them in tables (older sections are rebuilt
    #: from the log).
    name: ClassVar[str] = "feeds"
    version: ClassVar[int] = 3

    def __init__(self) -> None:
        self.heads: dict[Feed, tuple[int, bytes]] = {}
        #: Per feed, how many of its first events have their locations in tables (a
        #: multiple of CHUNK), and the locations of the events after those.
        self.written: dict[Feed, int] = {}
        self.recent: dict[Feed, array[int]] = {}
        #: Tables of chunks written by checkpoints (newest first).
        self.tables: list[Table] = []
        self.max_tables = MAX_TABLES
        self._flushing: dict[Feed, int] = {}
        self._cache: OrderedDict[tuple[Feed, int], array[int]] = OrderedDict()

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        """Fold one event in: the next of its feed extends it; one already held changes
        nothing. (A local log holds every feed contiguously: the loader and the ingest
        path refuse anything else before it gets here.)"""
        feed = (event.origin, event.agent)
        head = self.heads.get(feed)
        if head is None:
            if event.seq == 1:
                self.heads[feed] = (1, event_id)
                self.recent[feed] = array("Q", (location,))
                self.written[feed] = 0
        elif event.seq == head[0] + 1:
            self.heads[feed] = (event.seq, event_id)
            self.recent[feed].append(location)

    def apply_run(self, run: PutRun) -> None:
        """Fold a run of puts (consecutive events of one feed): the same as
        :meth:`apply` of each in order, in a few steps. The events the feed holds
        already change nothing, and after a gap none extends it."""
        feed = (run.origin, run.agent)
        head = self.heads.get(feed)
        skip = 0 if head is None else head[0] + 1 - run.seq  # events held already
        if (head is None and run.seq != 1) or not 0 <= skip < len(run):
            return
        if head is None:
            self.recent[feed] = array("Q")
            self.written[feed] = 0
        self.heads[feed] = (run.last_seq, run.last_id)
        self.recent[feed].extend(run.locations[skip:])

    def follows(self, origin: bytes, agent: str, seq: int, prev: bytes | None) -> bool:
        """True if event ``seq`` (linked to ``prev``) is the next of its feed: every feed
        in a local log is contiguous, so anything else is a gap or a fork."""
        head = self.heads.get((origin, agent))
        if head is None:
            return seq == 1 and prev is None
        return seq == head[0] + 1 and prev == head[1]

    def next(self, origin: bytes, agent: str) -> tuple[int, bytes | None]:
        """The (seq, prev) that the origin's next event for ``agent`` must carry."""
        head = self.heads.get((origin, agent))
        return (1, None) if head is None else (head[0] + 1, head[1])

    def location(self, origin: bytes, agent: str, seq: int) -> int | None:
        """Where event ``seq`` of the (origin, agent) feed is stored; None if not held.

        Raises:
            CorruptCheckpointError: the table holding it is damaged.
        """
        feed = (origin, agent)
        head = self.heads.get(feed)
        if head is None or not 1 <= seq <= head[0]:
            return None
        written = self.written[feed]
        if seq > written:
            return self.recent[feed][seq - written - 1]
        chunk = (seq - 1) // CHUNK
        return self._chunk(feed, chunk)[(seq - 1) % CHUNK]

    def _chunk(self, feed: Feed, chunk: int) -> array[int]:
        cached = self._cache.get((feed, chunk))
        if cached is not None:
            self._cache.move_to_end((feed, chunk))
            return cached
        name, key = _chunk_name(feed), f"{chunk:012x}"
        for table in self.tables:
            data = table.get(name, key)
            if data is not None:
                break
        else:
            raise CorruptCheckpointError(f"the locations of {name} chunk {chunk} are in no table")
        locations = _array(data)
        self._cache[(feed, chunk)] = locations
        if len(self._cache) > _CACHED_CHUNKS:
            self._cache.popitem(last=False)
        return locations

    def content(self) -> list[tuple[Feed, int, bytes, list[int]]]:
        """Every feed with its head and the location of each of its events, in order,
        wherever they are held (tables or memory): for checks that compare two states.

        Raises:
            CorruptCheckpointError: a table holding a chunk is damaged.
        """
        return [
            (
                feed,
                seq,
                eid,
                [loc for c in range(self.written[feed] // CHUNK) for loc in self._chunk(feed, c)]
                + list(self.recent[feed]),
            )
            for feed, (seq, eid) in sorted(self.heads.items())
        ]

    # -- checkpoints ---------------------------------------------------------------------

    def capture(self) -> dict[str, Any]:
        """Heads, the locations past each feed's last full chunk, and the chunks
        completed since the last checkpoint as a new table (copied: a feed only grows,
        so the copies stay right while it does)."""
        items: list[tuple[str, str, bytes]] = []
        flushing: dict[Feed, int] = {}
        feeds = []
        for feed, (seq, eid) in sorted(self.heads.items()):
            recent, written = self.recent[feed], self.written[feed]
            full = len(recent) // CHUNK
            for n in range(full):
                chunk = written // CHUNK + n
                piece = recent[n * CHUNK : (n + 1) * CHUNK]
                items.append((_chunk_name(feed), f"{chunk:012x}", _little(piece)))
            if full:
                flushing[feed] = full * CHUNK
            done = written + full * CHUNK
            feeds.append([feed[0], feed[1], seq, eid, done, _little(recent[full * CHUNK :])])
        self._flushing = flushing
        return {
            "feeds": feeds,
            "tables": list(self.tables),
            "new": NewTable(lambda: items, owner=flushing) if items else None,
        }

    def checkpointed(self, written: dict[NewTable, Table]) -> None:
        """The chunks of the last capture are in a durable table now: out of memory."""
        for new, table in written.items():
            if new.owner is self._flushing:
                self.tables.insert(0, table)
                for feed, n in self._flushing.items():
                    del self.recent[feed][:n]
                    self.written[feed] += n
                self._flushing = {}

    def compaction(self) -> tuple[list[Table], NewTable] | None:
        """Tables worth merging now (see :mod:`._merging`)."""
        return merge_plan(self.tables, self.max_tables)

    def compacted(self, inputs: list[Table], merged: Table) -> None:
        replace_merged(self.tables, inputs, merged)

    @classmethod
    def restore(cls, data: Any) -> FeedState:
        """Rebuild from :meth:`capture` output, its tables opened (ValueError if
        malformed)."""
        state = cls()
        new, tables = data["new"], data["tables"]
        if type(tables) is not list:
            raise ValueError("tables must be a list")
        state.tables = ([] if new is None else [new]) + tables
        if not all(isinstance(t, Table) for t in state.tables):
            raise ValueError("tables must be tables")
        for table in state.tables:
            table.verify()
        if type(data["feeds"]) is not list:
            raise ValueError("feeds must be a list")
        for origin, agent, seq, eid, written, recent in data["feeds"]:
            if not (
                type(origin) is bytes
                and len(origin) == NODE_ID_SIZE
                and agent in AGENTS
                and type(seq) is int
                and seq >= 1
                and type(eid) is bytes
                and len(eid) == 32
                and type(written) is int
                and 0 <= written <= seq
                and written % CHUNK == 0
                and type(recent) is bytes
                and len(recent) == 8 * (seq - written)
            ):
                raise ValueError("malformed feed head")
            feed = (origin, agent)
            state.heads[feed] = (seq, eid)
            state.written[feed] = written
            state.recent[feed] = _array(recent)
        return state
