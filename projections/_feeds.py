"""Feeds: how far each origin's sequence of events for each agent has been seen.

Every node numbers its own events per agent (1, 2, 3, ...) and links each to the
previous one in that feed. This projection remembers, per (origin, agent), the last
sequence number and event id applied, which gives the next ``seq``/``prev`` for this
node's own events and lets sync ask a peer for exactly what is missing.
"""

from __future__ import annotations

from typing import Any

from koru.events import AGENTS, NODE_ID_SIZE, Event

__all__ = ["FeedState"]


class FeedState:
    """(origin, agent) -> (last seq, last event id)."""

    __slots__ = ("heads",)

    def __init__(self) -> None:
        self.heads: dict[tuple[bytes, str], tuple[int, bytes]] = {}

    def apply(self, event: Event, event_id: bytes) -> None:
        """Fold one event in (keeps the highest sequence number seen per feed)."""
        self.advance(event.origin, event.agent, event.seq, event_id)

    def advance(self, origin: bytes, agent: str, seq: int, event_id: bytes) -> None:
        """Record that event ``seq`` of the (origin, agent) feed has id ``event_id``."""
        feed = (origin, agent)
        head = self.heads.get(feed)
        if head is None or seq > head[0]:
            self.heads[feed] = (seq, event_id)

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

    def snapshot(self) -> list[Any]:
        return [[o, a, s, e] for (o, a), (s, e) in sorted(self.heads.items())]

    @classmethod
    def from_snapshot(cls, data: list[Any]) -> FeedState:
        """Rebuild from :meth:`snapshot` output (ValueError if malformed)."""
        state = cls()
        for origin, agent, seq, eid in data:
            if not (
                type(origin) is bytes
                and len(origin) == NODE_ID_SIZE
                and agent in AGENTS
                and type(seq) is int
                and seq >= 1
                and type(eid) is bytes
                and len(eid) == 32
            ):
                raise ValueError("malformed feed head")
            state.heads[(origin, agent)] = (seq, eid)
        return state
