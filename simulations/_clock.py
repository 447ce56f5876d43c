"""A node's wall clock in the simulator: virtual time, skewed, and able to jump.

Each node reads wall time as ``epoch + trio.current_time() + offset``: under
``MockClock`` this is deterministic. ``offset`` is the node's skew (drawn per seed) and
changes when a fault makes the clock jump, forward or backward, as NTP steps or a
mis-set clock do. The hybrid logical clock must keep each node's timestamps
increasing through a backward jump, and ingest refuses events more than an hour
ahead, so skews and jumps stay within minutes.
"""

from __future__ import annotations

import trio

__all__ = ["EPOCH_NS", "SimClock"]

#: 2026-01-01T00:00:00Z, the virtual epoch every run starts at.
EPOCH_NS = 1_767_225_600 * 10**9


class SimClock:
    """Wall time of one simulated node (a :class:`koru.nursery.Clock`)."""

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_ns = round(offset_s * 1e9)

    def jump(self, seconds: float) -> None:
        """Step the clock by ``seconds`` (negative: backward)."""
        self.offset_ns += round(seconds * 1e9)

    def now_ns(self) -> int:
        return EPOCH_NS + round(trio.current_time() * 1e9) + self.offset_ns
