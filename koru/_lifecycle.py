"""Whether a database handle may still be used, entering an operation, and closing.

Every operation starts here: a closed (or dead) handle raises at once, every operation
is a cancellation point, and every 64th yields to the scheduler, so that a tight loop
of puts or gets cannot starve other tasks without paying a full trio checkpoint
(~3.5 µs) on each call. A handle dies (closes itself) when a write or sync fails,
because after that the log's durable state is unknown; only a reopen, which recovers
from disk, may continue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from koru.events import (
    DatabaseClosedError,
    DurabilityError,
    LogStore,
    ReadOnlyError,
    StorageError,
    warn,
)
from koru.nursery import Checkpointer, Committer

__all__ = ["Lifecycle", "only_a_shortcut"]


@contextmanager
def only_a_shortcut(what: str) -> Iterator[None]:
    """Run work whose failure to store only loses a shortcut (a checkpoint, a merge
    of tables: the log is complete without them): a ``StorageError`` is logged as
    ``what`` and the caller goes on. A ``DurabilityError`` is never a shortcut: the
    log itself may have lost acknowledged writes, so it propagates."""
    try:
        yield
    except DurabilityError:
        raise
    except StorageError as exc:
        warn("koru: %s: %s", what, exc)


_YIELD_MASK = 63  # yield to the scheduler on every 64th operation


class Lifecycle:
    """Open, dead or closed, and the preamble of every operation."""

    __slots__ = ("_commit_yields", "_ops", "_readonly", "checkpointer", "closed", "fatal", "shut")

    def __init__(self, *, readonly: bool, commit_yields: bool) -> None:
        self._readonly = readonly
        # With sync="always" a write waits for an fsync, which yields anyway.
        self._commit_yields = commit_yields
        self._ops = 0
        #: Whose background checkpoints a single write waits for when they have
        #: fallen far behind (see :meth:`Checkpointer.stall`); set by the database.
        self.checkpointer: Checkpointer | None = None
        #: No more operations (closed, closing, or dead); ``fatal`` says why if dead.
        self.closed = False
        self.fatal: BaseException | None = None
        #: Closing has begun (``close`` runs once).
        self.shut = False

    def begin(self) -> bool:
        """Count an operation; True if this one should yield to the scheduler."""
        if self.closed:
            raise DatabaseClosedError("the database is closed") from self.fatal
        self._ops += 1
        return not self._ops & _YIELD_MASK

    async def pause(self) -> None:
        """Yield to the scheduler, then check the handle is still open."""
        await trio.lowlevel.checkpoint()
        self.check()

    def check(self) -> None:
        """Raise DatabaseClosedError if the handle closed (say, while an operation
        awaited something)."""
        if self.closed:
            raise DatabaseClosedError("the database is closed") from self.fatal

    async def enter(self) -> None:
        """Start an operation: closed check, cancellation point, sometimes a yield."""
        if self.begin():
            await self.pause()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    async def enter_write(self) -> None:
        """Start a write: as :meth:`enter`, and refused on a read-only handle."""
        if self.begin_write():
            await self.pause()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        checkpointer = self.checkpointer
        if checkpointer is not None and checkpointer.stalled:
            await self.stall(checkpointer)

    async def stall(self, checkpointer: Checkpointer) -> None:
        """Wait for the background checkpoints to catch up before a write (see
        :meth:`Checkpointer.stall`), then check the handle is still open."""
        await checkpointer.stall()
        self.check()

    def begin_write(self) -> bool:
        """:meth:`enter_write` without its await, for the hot path: raise if the handle
        is read-only or closed, count the operation; True if the caller should
        :meth:`pause` (yield), else it awaits ``trio.lowlevel.checkpoint_if_cancelled``."""
        if self._readonly:
            raise ReadOnlyError("the database is open read-only")
        if self._commit_yields:
            # Waiting for the fsync yields anyway; an extra yield here would only make
            # this writer miss the group-commit round it could have joined.
            if self.closed:
                raise DatabaseClosedError("the database is closed") from self.fatal
            return False
        # self.begin(), inlined (every put comes here)
        if self.closed:
            raise DatabaseClosedError("the database is closed") from self.fatal
        self._ops += 1
        return not self._ops & _YIELD_MASK

    def owe(self, work: int) -> None:
        """Count ``work`` more operations' worth of work just done without yielding (a
        batch's other writes, an ingest's other events): if it reached the next
        yield, the next operation yields. Why: the background tasks (the checkpointer,
        whose worker thread hands each chunk back through the event loop) run only
        when operations yield, and bulk loads of batches of a thousand writes, counted
        as one operation each, yielded every 64 batches: a checkpoint due never
        finished, and memory grew with every version written."""
        before = self._ops
        after = before + work
        self._ops = after | _YIELD_MASK if after >> 6 != before >> 6 else after

    def die(self, exc: BaseException) -> None:
        """Stop serving after ``exc`` (a failed write or sync, or a background task's
        failure): every later operation raises DatabaseClosedError from it. The first
        cause is kept: what a writer's wait raises after it (a failed sync's error
        handed to every waiter) is a consequence, not the cause."""
        if self.fatal is None:
            self.fatal = exc
        self.closed = True

    async def close(
        self,
        store: LogStore,
        committer: Committer,
        checkpointer: Checkpointer,
        keep: Callable[[], None] = lambda: None,
    ) -> None:
        """Flush, fsync, checkpoint if anything changed, run ``keep`` (in a worker
        thread: what else a clean close saves), and close the store. Runs once,
        shielded from cancellation so that a cancelled scope still closes cleanly."""
        if self.shut:
            return
        self.shut = self.closed = True
        with trio.CancelScope(shield=True):
            try:
                # Nothing of this handle may write into the directory once it is
                # closed: a merge or a checkpoint running in slices ends first.
                await checkpointer.settle()
                if self.fatal is None and not store.readonly:
                    await committer.sync_now()
                    if checkpointer.behind:
                        # The log is synced and complete: a checkpoint only makes
                        # the next open faster, so its failure is not an error here.
                        with only_a_shortcut("no checkpoint written at close"):
                            await checkpointer.save()
                    try:
                        await trio.to_thread.run_sync(keep)
                    except StorageError as exc:
                        warn("koru: not saved at close: %s", exc)
            finally:
                store.close()
