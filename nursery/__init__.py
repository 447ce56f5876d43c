"""Supervision: the clock, group commit and the database's background tasks."""

from ._clock import Clock as Clock
from ._clock import SystemClock as SystemClock
from ._clock import TrioClock as TrioClock
from ._committer import SYNC_MODES as SYNC_MODES
from ._committer import Committer as Committer
from ._committer import SyncMode as SyncMode

__all__ = ["SYNC_MODES", "Clock", "Committer", "SyncMode", "SystemClock", "TrioClock"]
