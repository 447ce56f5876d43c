"""Group commit: when a write is acknowledged, and who pays for the fsync.

Durability modes (``sync=``):

* ``"always"`` -- acknowledged only after the record is on stable storage (fsync).
  Concurrent writers share one fsync: each appends, then waits for the next sync to
  finish; one flusher task syncs everything appended so far and wakes them all.
* ``"os"`` -- acknowledged once the bytes are in the operating system (a ``write``
  returned): survives a killed process, not a power cut.
* ``"never"`` -- records collect in a user-space buffer, flushed every
  ``flush_interval`` seconds, when the buffer fills, and on close (for bulk loads).

A failed fsync is fatal: the error is remembered, every waiter and every later write
gets :class:`~koru.DurabilityError`, and nothing is retried and then acknowledged.

Where the fsync runs: handing it to a worker thread costs ~100 µs here, as much as the
fsync itself, so while the device syncs fast (moving average under
``inline_sync_max``) the flusher calls it inline; on a slow device it moves to a thread
so the event loop is never held for long.
"""

from __future__ import annotations

import time
from typing import Literal

import trio

from koru._errors import DurabilityError
from koru.events import LogStore

__all__ = ["SYNC_MODES", "Committer", "SyncMode"]

SyncMode = Literal["always", "os", "never"]
SYNC_MODES: tuple[str, ...] = ("always", "os", "never")


class Committer:
    """Tracks appended vs durable records and runs the flusher."""

    def __init__(
        self,
        store: LogStore,
        mode: SyncMode,
        *,
        flush_interval: float = 1.0,
        inline_sync_max: float = 0.001,
    ) -> None:
        if mode not in SYNC_MODES:
            raise ValueError(f"sync must be one of {SYNC_MODES}, not {mode!r}")
        self.store = store
        self.mode = mode
        self.flush_interval = flush_interval
        self.inline_sync_max = inline_sync_max
        self.appended = 0
        self.durable = 0
        self.syncs = 0
        self.error: DurabilityError | None = None
        self._wakeup = trio.Event()
        self._done = trio.Event()
        self._sync_avg = 0.0

    def mark_appended(self) -> None:
        """Count one record appended to the store."""
        self.appended += 1

    async def wait_durable(self) -> None:
        """Return once everything appended so far is durable under the mode."""
        if self.mode != "always":
            return
        target = self.appended
        while self.durable < target:
            if self.error is not None:
                raise self.error
            done = self._done
            self._wakeup.set()
            await done.wait()
        if self.error is not None and self.durable < target:
            raise self.error

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The flusher: runs until cancelled; never raises a storage error out."""
        task_status.started()
        if self.mode == "always":
            await self._group_commit()
        elif self.mode == "never":
            while True:
                await trio.sleep(self.flush_interval)
                try:
                    self.store.flush()
                except DurabilityError as exc:
                    self.error = exc
                    return
        else:
            await trio.sleep_forever()

    async def _group_commit(self) -> None:
        while self.error is None:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            # Let writers that are already runnable append first, so they share this sync.
            await trio.lowlevel.checkpoint()
            try:
                await self.sync_now()
            except DurabilityError:
                return

    async def sync_now(self) -> None:
        """Make everything appended so far durable, then wake the writers waiting on it."""
        target = self.appended
        done, self._done = self._done, trio.Event()
        try:
            with trio.CancelScope(shield=True):
                await self._sync()
            self.durable = max(self.durable, target)
        except DurabilityError as exc:
            self.error = exc
        finally:
            done.set()
        if self.error is not None:
            raise self.error

    def _timed_sync(self) -> float:
        began = time.perf_counter()
        self.store.sync()
        return time.perf_counter() - began

    async def _sync(self) -> None:
        if self._sync_avg <= self.inline_sync_max:
            took = self._timed_sync()
        else:
            took = await trio.to_thread.run_sync(self._timed_sync)
        self._sync_avg = took if not self.syncs else 0.8 * self._sync_avg + 0.2 * took
        self.syncs += 1
