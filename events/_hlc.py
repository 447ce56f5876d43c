"""Hybrid logical clock: timestamps that follow wall time yet never go backwards.

A timestamp is one unsigned 64-bit integer of nanoseconds since the Unix epoch. The
logical part of a classic HLC lives in the low digits: when the wall clock has not
moved past the last timestamp (same nanosecond, a clock step backwards, or a peer
ahead of us), the next timestamp is the last one plus one. So timestamps stay
comparable with wall time (``get_at`` takes a datetime) and strictly increase on each
node, and a received timestamp pushes the local clock forward (causality: an event
written after seeing another has a larger timestamp).

Pure logic: the wall time is passed in, so replay and simulation stay deterministic.
"""

from __future__ import annotations

__all__ = ["HybridLogicalClock"]


class HybridLogicalClock:
    """Issues strictly increasing timestamps from wall-clock readings."""

    __slots__ = ("last",)

    def __init__(self, last: int = 0) -> None:
        #: The largest timestamp issued or observed so far.
        self.last = last

    def tick(self, wall_ns: int) -> int:
        """A timestamp for a local event, larger than every earlier one."""
        ts = wall_ns if wall_ns > self.last else self.last + 1
        self.last = ts
        return ts

    def observe(self, remote_ns: int) -> None:
        """Account for a timestamp seen on an event from elsewhere."""
        if remote_ns > self.last:
            self.last = remote_ns
