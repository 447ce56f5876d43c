"""Feeds: how far each origin's sequence of events for each agent has been seen, and
where each of those events is stored in this node's log.

Every node numbers its own events per agent (1, 2, 3, ...) and links each to the
previous one in that feed. This projection remembers, per (origin, agent), the last
sequence number and event id applied, which gives the next ``seq``/``prev`` for this
node's own events and lets sync ask a peer for exactly what is missing; and the location
of every event of the feed (8 bytes each), so that an event can be served by its
(origin, agent, seq), and a second, different event claiming a seq already held (a fork)
can be told apart from a duplicate.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any, ClassVar

from koru.events import AGENTS, NODE_ID_SIZE, Event

__all__ = ["FeedState"]

Feed = tuple[bytes, str]


def _locations_bytes(locations: array[int]) -> bytes:
    """Little-endian bytes of a location array (the checkpoint's byte order)."""
    if sys.byteorder == "little":
        return locations.tobytes()
    swapped = array("Q", locations)  # pragma: no cover - big-endian machines
    swapped.byteswap()  # pragma: no cover
    return swapped.tobytes()  # pragma: no cover


def _locations_from(data: bytes) -> array[int]:
    locations = array("Q")
    locations.frombytes(data)
    if sys.byteorder != "little":  # pragma: no cover - big-endian machines
        locations.byteswap()
    return locations


class FeedState:
    """(origin, agent) -> (last seq, last event id), and each event's location."""

    __slots__ = ("heads", "locations")

    #: The projection's name (its checkpoint section) and section format: version 2
    #: added the locations (a version-1 section is rebuilt from the log).
    name: ClassVar[str] = "feeds"
    version: ClassVar[int] = 2

    def __init__(self) -> None:
        self.heads: dict[Feed, tuple[int, bytes]] = {}
        #: Per feed, the location of event ``seq`` at index ``seq - 1``.
        self.locations: dict[Feed, array[int]] = {}

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        """Fold one event in: the next of its feed extends it; one already held changes
        nothing. (A local log holds every feed contiguously: the loader and the ingest
        path refuse anything else before it gets here.)"""
        feed = (event.origin, event.agent)
        head = self.heads.get(feed)
        if head is None:
            if event.seq == 1:
                self.heads[feed] = (1, event_id)
                self.locations[feed] = array("Q", (location,))
        elif event.seq == head[0] + 1:
            self.heads[feed] = (event.seq, event_id)
            self.locations[feed].append(location)

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
        """Where event ``seq`` of the (origin, agent) feed is stored; None if not held."""
        locations = self.locations.get((origin, agent))
        if locations is None or not 1 <= seq <= len(locations):
            return None
        return locations[seq - 1]

    def capture(self) -> list[Any]:
        return [
            [o, a, s, e, _locations_bytes(self.locations[(o, a)])]
            for (o, a), (s, e) in sorted(self.heads.items())
        ]

    @classmethod
    def restore(cls, data: Any) -> FeedState:
        """Rebuild from :meth:`capture` output (ValueError if malformed)."""
        state = cls()
        if type(data) is not list:
            raise ValueError("feeds must be a list")
        for origin, agent, seq, eid, locations in data:
            if not (
                type(origin) is bytes
                and len(origin) == NODE_ID_SIZE
                and agent in AGENTS
                and type(seq) is int
                and seq >= 1
                and type(eid) is bytes
                and len(eid) == 32
                and type(locations) is bytes
                and len(locations) == 8 * seq
            ):
                raise ValueError("malformed feed head")
            state.heads[(origin, agent)] = (seq, eid)
            state.locations[(origin, agent)] = _locations_from(locations)
        return state
