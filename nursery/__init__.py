"""Supervision: the clock, group commit, checkpoints and the database's background tasks."""

from ._checkpointer import CHECKPOINT_FILE as CHECKPOINT_FILE
from ._checkpointer import Checkpointer as Checkpointer
from ._clock import Clock as Clock
from ._clock import SystemClock as SystemClock
from ._clock import TrioClock as TrioClock
from ._committer import INLINE_SYNC_MAX as INLINE_SYNC_MAX
from ._committer import SYNC_MODES as SYNC_MODES
from ._committer import Committer as Committer
from ._committer import SyncMode as SyncMode
from ._supervisor import Policy as Policy
from ._supervisor import ProcessInfo as ProcessInfo
from ._supervisor import Supervisor as Supervisor
from ._supervisor import supervise as supervise

__all__ = [
    "CHECKPOINT_FILE",
    "INLINE_SYNC_MAX",
    "SYNC_MODES",
    "Checkpointer",
    "Clock",
    "Committer",
    "Policy",
    "ProcessInfo",
    "Supervisor",
    "SyncMode",
    "SystemClock",
    "TrioClock",
    "supervise",
]
