"""The one injectable clock.

All wall time the database uses (hybrid-logical-clock timestamps) comes from a
:class:`Clock`. Sleeping and timeouts use trio's own clock, so a test that runs under
``trio.testing.MockClock`` and gives the database a :class:`TrioClock` gets a fully
deterministic run: hours of background work pass in milliseconds, and the same seed
gives the same bytes.
"""

from __future__ import annotations

import time
from typing import Protocol

import trio

__all__ = ["Clock", "SystemClock", "TrioClock"]


class Clock(Protocol):
    """Something that tells wall-clock time."""

    def now_ns(self) -> int:
        """Nanoseconds since the Unix epoch."""
        ...


class SystemClock:
    """The operating system's wall clock (the default)."""

    #: ``time.time_ns`` itself, not a method calling it: every put reads the clock,
    #: and a bound builtin is one Python call fewer.
    now_ns = staticmethod(time.time_ns)  # clock-ok: the one real wall-clock read


class TrioClock:
    """Wall time derived from trio's clock: ``epoch_ns`` plus trio's current time.

    Under ``trio.testing.MockClock`` this is deterministic and jumps with the mock.
    """

    def __init__(self, epoch_ns: int = 1_767_225_600 * 10**9) -> None:
        self.epoch_ns = epoch_ns

    def now_ns(self) -> int:
        return self.epoch_ns + round(trio.current_time() * 1e9)
