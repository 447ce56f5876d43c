"""Group commit: when a write is acknowledged, and who pays for the fsync.

Durability modes (``sync=``):

* ``"always"`` -- acknowledged only after the record is on stable storage (fsync).
  Concurrent writers share one fsync: the first waiter leads a round that syncs
  everything appended so far and wakes the rest (see :meth:`Committer.wait_durable`).
* ``"os"`` -- acknowledged once the bytes are in the operating system (a ``write``
  returned): survives a killed process, not a power cut.
* ``"never"`` -- records collect in a user-space buffer, flushed every
  ``flush_interval`` seconds, when the buffer fills, and on close (for bulk loads).

A failed fsync is fatal: the error is remembered, every waiter and every later write
gets :class:`~koru.DurabilityError`, and nothing is retried and then acknowledged.

Where the fsync runs: handing it to a worker thread costs ~100 µs here, as much as the
fsync itself, so while the device syncs fast (the fastest of the last 3 syncs under
``inline_sync_max``) it runs inline; on a slow device it moves to a worker thread so
the event loop is never held for long.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Literal, Protocol, TypeVar

import trio
from trio.lowlevel import enable_ki_protection

from koru.events import DurabilityError, InvalidArgumentError, KoruError, LogStore

__all__ = ["INLINE_SYNC_MAX", "SYNC_MODES", "Committer", "Joined", "SyncMode"]

_E = TypeVar("_E", bound=BaseException)

SyncMode = Literal["always", "os", "never"]
SYNC_MODES: tuple[str, ...] = ("always", "os", "never")
#: A sync that takes longer than this (s) is run in a worker thread next time: a thread
#: hop costs ~100 µs here, so faster devices sync inline.
INLINE_SYNC_MAX = 0.001


class Joined(Protocol):
    """A write handed to the next group-commit round rather than appended by its
    caller (see :meth:`Committer.wait_durable`): the round's ``gather`` hook appends it
    and sets ``target`` (the count of appended records it is durable at), or ``error``."""

    target: int | None
    error: BaseException | None


def _leave(
    waiting: list[trio.lowlevel.Task], task: trio.lowlevel.Task, _: object
) -> trio.lowlevel.Abort:
    """A parked waiter is cancelled: it leaves its round (the round's record stays)."""
    waiting.remove(task)
    return trio.lowlevel.Abort.SUCCEEDED


class Committer:
    """Tracks appended vs durable records, leads group-commit rounds, runs the flusher."""

    def __init__(
        self,
        store: LogStore,
        mode: SyncMode,
        *,
        flush_interval: float,
        inline_sync_max: float = INLINE_SYNC_MAX,
    ) -> None:
        if mode not in SYNC_MODES:
            raise InvalidArgumentError(f"sync must be one of {SYNC_MODES}, not {mode!r}")
        self.store = store
        self.mode = mode
        self.flush_interval = flush_interval
        self.inline_sync_max = inline_sync_max
        self.appended = 0
        self.durable = 0
        self.syncs = 0
        self.error: DurabilityError | None = None
        self._leading = False
        #: The tasks parked until the round in progress ends (woken together by its
        #: leader, however it ends).
        self._waiting: list[trio.lowlevel.Task] = []
        self._recent: deque[float] = deque([0.0], maxlen=3)
        #: Appends the writes handed to the round (:class:`Joined`) before each sync;
        #: set by the writer under ``"always"``. Never raises (a failed write's error
        #: goes to its :class:`Joined`).
        self.gather: Callable[[], None] | None = None
        #: Writes handed to a round so far (the leader's yield heuristic counts them
        #: with the appended records).
        self.joined = 0

    def mark_appended(self) -> None:
        """Count one record appended to the store."""
        self.appended += 1

    # Shielded from KeyboardInterrupt (see sync_now): an interrupt in a leader's
    # ``finally``, after it took the list of parked writers and before it woke them,
    # stranded them parked on a round that was over.
    @enable_ki_protection
    async def wait_durable(self, joined: Joined | None = None) -> None:
        """Return once everything appended so far is durable under the mode; with
        ``joined``, once that write (handed to the round, not yet appended) is
        appended and durable, raising its error if appending it failed.

        Group commit without a middleman: the first waiter to find no sync in progress
        leads a round. It yields, so writers that are already runnable append (or hand
        their writes to the round) and join, then syncs everything appended so far and
        wakes the others; a waiter whose record the round did not cover leads the next
        one. A single writer so pays one fsync and one scheduler pass, not two task
        switches through a flusher.

        The others park on the round directly (no Event, no ParkingLot: one reschedule
        each, woken in one pass), the cheapest wait trio has: under ``always`` every
        put waits once, so the wait is part of every put's cost.
        """
        if self.mode != "always":
            return
        target = self.appended if joined is None else None
        while True:
            if joined is not None:
                if joined.error is not None:
                    raise _fresh(joined.error)
                target = joined.target
            if target is not None and self.durable >= target:
                return
            if self.error is not None:
                raise _fresh(self.error)
            if self._leading:
                # Park until the round ends (inlined: one coroutine frame less to
                # suspend and resume through); a cancelled waiter leaves the round.
                task = trio.lowlevel.current_task()
                waiting = self._waiting
                waiting.append(task)
                await trio.lowlevel.wait_task_rescheduled(partial(_leave, waiting, task))
                continue
            self._leading = True
            try:
                # Yield so that writers still due to run in this scheduler batch append
                # first and share the sync. If others were already queued for the next
                # batch, trio may run this task ahead of them (it reverses half its
                # batches): yield once more, unless they have all appended already.
                queued = trio.lowlevel.current_statistics().tasks_runnable
                before = self.appended + self.joined
                await trio.lowlevel.checkpoint()
                if queued and self.appended + self.joined - before < queued:
                    await trio.lowlevel.checkpoint()
                await self.sync_now()
            finally:
                # Also on cancellation or failure: wake the others, who then find the
                # error, their record durable, or no leader (and one of them leads).
                self._leading = False
                waiting, self._waiting = self._waiting, []
                reschedule = trio.lowlevel.reschedule
                for task in waiting:
                    reschedule(task)

    @enable_ki_protection  # (its flush: see sync_now)
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The flusher for ``sync="never"``: pushes buffers to the OS every
        ``flush_interval`` seconds until cancelled. Never raises a storage error out."""
        task_status.started()
        if self.mode != "never":
            return
        while True:
            await trio.sleep(self.flush_interval)
            try:
                self.store.flush()
            except DurabilityError as exc:
                self.error = exc
                return

    # Shielded from KeyboardInterrupt (trio delivers it at the main task's next
    # checkpoint instead), as Writer.write is: a Ctrl-C between the store's flush
    # taking its buffer and writing it, or between a sync clearing a log's dirty flag
    # and its fsync, left the store usable but short of records the next round then
    # acknowledged (and later records chained past the gap).
    @enable_ki_protection
    async def sync_now(self, *, in_thread: bool = False) -> None:
        """Make everything appended so far durable; a sync once begun runs to its end,
        even if the caller is cancelled (its outcome is never left unknown). With
        ``in_thread`` the sync runs in a worker thread however fast the device is (a
        sync of many appends, which the event loop must not wait for).

        Raises:
            DurabilityError: the sync failed, now or earlier; fatal for the handle.
        """
        if self.error is not None:
            raise _fresh(self.error)
        if self.gather is not None:
            self.gather()  # the writes handed to this round, appended first
        target = self.appended
        if target == self.durable:
            return  # nothing appended since the last sync
        try:
            # Buffers are pushed here, on the event loop: the sync itself may run in a
            # worker thread while more appends land in the buffers.
            self.store.flush()
            await self._sync(in_thread)
        except DurabilityError as exc:
            # Kept as a copy made now: the caller gets ``exc`` itself, and the notes it
            # adds to it must not show in every later waiter's copy.
            self.error = _fresh(exc)
            raise
        self.durable = max(self.durable, target)

    async def _sync(self, in_thread: bool = False) -> None:
        # Judge the device by its fastest recent sync: a slow device is slow every
        # time, while a fast one has occasional spikes that should not send every
        # following sync through the ~100 µs thread hop.
        # Timed by trio's clock, as sleeps are: under MockClock a sync takes no time,
        # so where a simulated run syncs never depends on the machine's speed (timed
        # by the CPU's, a slow moment sent a sync through the thread, an extra turn
        # of the loop, and one seed gave different runs on a loaded machine).
        began = trio.current_time()
        if not in_thread and min(self._recent) <= self.inline_sync_max:
            self.store.sync()
        else:
            # Not abandoned on cancellation (trio's default): the sync runs to its end
            # and its result counts, so a cancelled caller never leaves it half-known.
            await trio.to_thread.run_sync(self.store.sync)
        self._recent.append(trio.current_time() - began)
        self.syncs += 1


def _fresh(error: _E) -> _E:
    """A copy of a stored ``error``, to raise in one more task: every writer of a failed
    round, and every write after a failed sync, gets its own. Why: raising one object in
    many tasks chains each raise's frames onto its one traceback (after a failed sync it
    grew with every refused put, and each caller's traceback showed the others' frames),
    and one caller's notes or context showed in every other's. The copy keeps the
    message, the attributes and the cause; its notes (``add_note``) are a list of its
    own (the shallow copy shared the stored error's: each caller's note showed in every
    later copy). Errors of koru-delta are copied; anything else (none is stored today)
    is raised as it is."""
    if not isinstance(error, KoruError):
        return error
    copied = copy.copy(error)
    notes = copied.__dict__.get("__notes__")
    if type(notes) is list:  # (shared with the stored error by the shallow copy)
        copied.__notes__ = list(notes)
    copied.__cause__ = error.__cause__
    copied.__suppress_context__ = error.__suppress_context__
    return copied
