"""When to save projection state, and saving it safely, one checkpoint at a time."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import trio
from trio.lowlevel import enable_ki_protection

from koru.events import DurabilityError, LogStore, StorageError, Table, TableEncoder
from koru.projections import CHECKPOINT_FILE, NewTable, encode_captured, table_names

from ._committer import Committer
from ._pacer import dismantle, let_go
from ._slicer import Slicer

__all__ = ["CHECKPOINT_FILE", "Checkpointer", "prepare_checkpoints"]

#: What writing the tables of a large checkpoint imports (their directories are sorted
#: with numpy past a few thousand keys, see ``events._table``).
_NEEDED = ("numpy",)


def _import_needed() -> bool:
    """Import :data:`_NEEDED`; True if anything was imported."""
    missing = [name for name in _NEEDED if name not in sys.modules]
    for name in missing:
        __import__(name)
    return bool(missing)


async def prepare_checkpoints() -> None:
    """Import what checkpoints need, in a worker thread, before the database serves a
    write; then let the collector file the imported objects as long-lived.

    Why: the first checkpoint of more than a few thousand keys imported numpy in its
    worker thread, and loading its extension modules holds the GIL for milliseconds
    at a time (shortening the switch interval does not help: the time is in C), which
    held a put 6 to 21 ms. The imported module objects (about 7,000 tracked by the
    cyclic collector) then also counted towards its next full collection, which ran
    amid the puts (10 to 16 ms). Done at open, both cost the open instead (once per
    process: 70 to 100 ms), and the full collection that follows finds them there, so
    the puts after it promote too little to start another one for a long time.

    Called for every writable handle that runs its background processes, whatever
    its size: a new database that grows past a few thousand keys would import numpy
    amid its puts otherwise. A one-shot command, a read-only handle or one opened with
    ``processes=False`` does not call it (it pays for numpy only if a checkpoint of
    its own needs it).
    """
    if await trio.to_thread.run_sync(_import_needed):
        gc.collect()


#: Checkpoint intervals that the background checkpoints may fall behind before a
#: writer of batches waits for them (see :meth:`Checkpointer.catch_up`).
LAG = 4
#: Intervals behind from which a batch writer shares the loop with the checkpoint's
#: worker (see :meth:`Checkpointer.give_way`).
SLOW = 2
#: Intervals behind from which each single write sleeps a little first, and the
#: longest such sleep (seconds, reached at ``LAG``; see :meth:`Checkpointer.stall`).
EASE = 3
EASE_MOST = 0.001
#: The checkpoint's slice beside busy writers once ``SLOW`` intervals behind, and the
#: most it grows to further behind (seconds; see :meth:`Checkpointer._slice`).
SLICE_BEHIND = 0.0005
SLICE_MOST = 0.004
#: A batch's other writes count towards a checkpoint interval (``every``) at one for
#: this many. Why not one each: with writers waiting at ``LAG`` alone (before
#: :meth:`Checkpointer.give_way`), a checkpoint every ``every`` versions made a bulk
#: load of 3,000,000 versions in batches of 1,000 take 93 s instead of 39 (tables
#: written and merged 30 times), a quarter 53 s at 0.8 GB of memory (1.36 GB counting
#: events alone, growing with the load); docs/speed.md has the figures since.
VERSION_SHARE = 4


class Checkpointer:
    """Counts events and writes a checkpoint every ``every`` of them, on request, and
    on close if anything changed.

    ``capture`` returns the state and log cursors as immutable plain data; it is called
    without yielding, so state and cursors agree.
    """

    def __init__(
        self,
        store: LogStore,
        committer: Committer,
        capture: Callable[[], dict[str, Any]],
        *,
        every: int,
        events: int,
        saved_at: int,
        checkpointed: Callable[[dict[NewTable, Table]], None] = lambda written: None,
        compactions: Callable[[], list[tuple[Any, list[Table], NewTable]]] = list,
        retired: Callable[[], list[Any]] = list,
    ) -> None:
        self._store = store
        self._committer = committer
        self._capture = capture
        self._checkpointed = checkpointed
        self._compactions = compactions
        self._retired = retired
        #: Table merges done by this handle.
        self.compactions = 0
        #: Set by :meth:`settle` (closing): no merge or background checkpoint starts.
        self.settled = False
        self.every = every
        #: Events in the log, and how many the newest checkpoint holds (-1: none valid).
        self.events = events
        self.saved_at = saved_at
        #: Versions that events of this handle carried beyond their first (a batch's
        #: other writes), and how many of them the newest checkpoint holds.
        self.extra = 0
        self.extra_saved = 0
        #: Set while the background task runs (only then does a due checkpoint get
        #: written, and only then may writers wait for one: see :meth:`lagging`).
        self.running = False
        #: Set (and replaced) whenever a background checkpoint ends, written or failed.
        self._ended = trio.Event()
        #: Writes that waited for a checkpoint to catch up (see :meth:`catch_up`), and
        #: batches that gave way to one (see :meth:`give_way`).
        self.stalls = 0
        self.slowed = 0
        #: Single writes slowed while the checkpoints were EASE intervals behind.
        self.eased = 0
        #: Set while the background checkpoints are ``EASE`` intervals behind (see
        #: :meth:`easing`), for the single writes' cheap look at it (see
        #: :meth:`stall`); cleared whenever a background checkpoint ends.
        self.stalled = False
        self._last_batch = 0.0
        #: After a background checkpoint failed, the :attr:`lag` from which the next
        #: one is due (an interval later), and below which no writer waits for one;
        #: 0 once a checkpoint is written.
        self._retry = 0
        #: Checkpoints written by this handle, and background attempts that failed.
        self.written = 0
        self.failures = 0
        self._due = trio.Event()
        self._lock = trio.Lock()
        #: Merges one at a time (see :meth:`compact`); set after each background
        #: checkpoint, for the background merges.
        self._merge_lock = trio.Lock()
        self._merge_due = trio.Event()
        #: Merged tables written (or being written) that no projection names yet, and
        #: the lock under which a checkpoint's clean-up looks at that count and removes
        #: table files (see :meth:`_remove_tables`).
        self._unnamed = 0
        self._files = trio.Lock()
        self._writeback = trio.Event()
        #: Background syncs of a segment's last part asked for (:meth:`writeback`).
        self.writebacks = 0

    @property
    def behind(self) -> bool:
        """True if the log holds events the newest checkpoint does not."""
        return self.events != self.saved_at

    def note_event(self) -> None:
        """Count one appended event; wake the background task when one is due."""
        self.events += 1
        if self.events - self.saved_at >= self.every:
            self.note_due()

    def note_due(self) -> None:
        """Wake the background task if a checkpoint is due. The writer counts an event
        (``events``) and calls this once ``events - saved_at`` reaches ``every``, a
        cheap test that holds whenever one is due (``saved_at`` is at least -1)."""
        if self.events - max(self.saved_at, 0) >= self.every and self.lag >= self._retry:
            self._due.set()
            self.stalled = self.easing

    def note_versions(self, extra: int) -> None:
        """Count the versions an appended event carried beyond its first (the other
        writes of a batch), towards the next checkpoint (see ``VERSION_SHARE``). Why:
        memory holds every version written since the last checkpoint, so counting
        events alone let a bulk load of batches (a thousand writes each) hold a
        hundred million versions in memory before its first checkpoint."""
        self.extra += extra
        if self.lag >= max(self.every, self._retry):
            self._due.set()
            self.stalled = self.easing

    def note_joined(self, puts: int) -> None:
        """Count ``puts`` writes of an event beyond its first, already noted as a
        batch's (:meth:`note_versions`), as whole events towards the next checkpoint:
        they were a round's joined puts (``Writer._append_joined``), each of which
        counted as an event when it was appended alone, so the cadence a user sets
        (``checkpoint_every``) counts their puts however a round groups them."""
        self.note_versions(puts * (VERSION_SHARE - 1))

    @property
    def lag(self) -> int:
        """Events since the newest checkpoint, and the other writes of batches since
        then at a ``VERSION_SHARE`` each."""
        extra = (self.extra - self.extra_saved) // VERSION_SHARE
        return self.events - max(self.saved_at, 0) + extra

    @property
    def lagging(self) -> bool:
        """True if the background checkpoints have fallen ``LAG`` intervals behind
        the versions written (memory holds every one of them until a checkpoint):
        the writer should :meth:`catch_up` before it writes more."""
        lag = self.lag
        return self.running and lag >= LAG * self.every and lag >= self._retry

    def _slice(self) -> float:
        """The slice (s) the checkpoint in progress gets beside busy writers: none of
        its own below ``SLOW`` intervals behind, then ``SLICE_BEHIND``, growing
        eightfold per interval further behind, up to ``SLICE_MOST``. Why: a loop of
        single puts (a yield every 64th) left the checkpoint's 20 µs slices about 3%
        of the loop, so under ``sync="os"`` a million puts stalled three or four
        times at ``LAG``, 0.4 to 1.4 s each; a slice bounds each put's wait instead."""
        behind = self.lag / self.every - SLOW
        if behind < 0:
            return 0.0
        # (The exponent bounded: a log hundreds of intervals beyond its checkpoint, as
        # at the open after one was lost, overflowed the float and killed the handle.)
        return float(min(SLICE_BEHIND * 8 ** min(behind, 8.0), SLICE_MOST))

    @property
    def easing(self) -> bool:
        """True while the background checkpoints have fallen ``EASE`` intervals behind
        the versions written: single writes are slowed (see :meth:`stall`)."""
        lag = self.lag
        return self.running and lag >= EASE * self.every and lag >= self._retry

    @property
    def behind_by(self) -> int:
        """0 while a batch writer may go on at once; else the intervals the
        background checkpoints are behind (at least ``SLOW``): see :meth:`give_way`."""
        if not self.running:
            return 0
        intervals = self.lag // self.every
        return intervals if intervals >= SLOW else 0

    def took(self, seconds: float) -> None:
        """How long the last batch (or ingest) took on the event loop."""
        self._last_batch = seconds

    async def give_way(self) -> None:
        """Before a batch, with checkpoints ``SLOW`` or more intervals behind: let the
        checkpoint run for as long as the last batch held the loop (it runs on the
        loop in slices, see Slicer, so it advances only while the loop is idle),
        or, ``LAG`` intervals behind, wait for it to end (:meth:`catch_up`). Why the
        first: waiting only at ``LAG`` made a bulk load stop for seconds at a time
        while a checkpoint of millions of versions was written; sharing the loop
        from ``SLOW`` on keeps the checkpoints up with the writer instead."""
        if self.lagging:
            await self.catch_up()
        else:
            self.slowed += 1
            with trio.move_on_after(self._last_batch):  # (or less, if it ends sooner)
                await self._ended.wait()

    async def stall(self) -> None:
        """Before a single write (a put, a deletion), with :attr:`stalled` set: sleep
        a little (``EASE`` intervals behind, see below), or, ``LAG`` intervals behind,
        wait for the background checkpoint in progress to end (:meth:`catch_up`). Why: a
        checkpoint runs on the loop in slices, one short slice per turn of the loop,
        and a loop of puts (a put yields every 64th call under ``sync="os"``; a
        hundred writers share each commit round under ``"always"``) gave it too few:
        each checkpoint captured more than the one before it had, and 60,000 puts
        with one due every 2,000 wrote one or two, holding up to 58,000 versions in
        memory, a backlog that grew with the load. Batches wait the same way (see
        :meth:`give_way`)."""
        if self.lagging:
            await self.catch_up()
            return
        behind = self.lag / self.every - EASE
        if not self.running or behind < 0:
            self.stalled = False
            return
        # Between EASE and LAG intervals behind, each write first sleeps a little,
        # longer the further behind (up to EASE_MOST at LAG): the writers slow down
        # smoothly while the checkpoint (its slices, and its writes and syncs in
        # worker threads) catches up, instead of running at full speed into LAG and
        # stopping there for the rest of a checkpoint: 0.4 to 0.5 s under
        # ``sync="os"``, 1.4 s under ``"never"`` (what an LSM tree's delayed writes
        # do before its stall).
        self.eased += 1
        await trio.sleep(EASE_MOST * behind / (LAG - EASE))

    async def catch_up(self) -> None:
        """Wait for the background checkpoint in progress to end. Why: a checkpoint
        runs on the event loop in slices (see Slicer), and a writer of large
        batches keeps the loop busy, so the checkpoint fell ever further behind while
        memory grew with every version; waiting here (what an LSM tree's write stall
        does) bounds memory, and while the writer waits the checkpoint runs unhindered.

        The wait makes a checkpoint due, if none is: only an appended event marks one
        due, and a database opened with its log this far beyond its checkpoint had
        none due while every writer waited here (batches of ingest: a node found by a
        simulation seed that never took in another event)."""
        self.stalls += 1
        if self.lag >= max(self.every, self._retry):
            self._due.set()
        await self._ended.wait()

    def writeback(self) -> None:
        """Ask for the log to be synced now, in the background (a worker thread): the
        active segment is nearly full, and the write that seals it (truncate, fsync,
        on the event loop, before the next segment may exist) then finds little left
        to sync. Not a durability step (the seal still syncs), a latency one: sealing
        a segment with tens of megabytes unsynced under ``sync="os"`` held a put for
        tens of milliseconds."""
        self._writeback.set()

    async def save(self) -> None:
        """Write a checkpoint now.

        Raises:
            DurabilityError: syncing the log failed (fatal for the handle).
            StorageError: writing the checkpoint file failed (the log is untouched).
        """
        # One at a time: two interleaved saves could let an older checkpoint replace a
        # newer one.
        async with self._lock:
            await self._save_locked()

    async def _save_locked(self) -> None:
        # Capture first (state and cursors together), then make the log durable at
        # least up to those cursors, and only then write the checkpoint naming them.
        captured = _uninterrupted(self._capture)
        events, extra = self.events, self.extra
        # Flushes buffers first; the sync itself in a worker thread, whatever the
        # committer's judgement of the device: a checkpoint's sync covers every event
        # since the last one (megabytes under sync="os"), too long for the event loop.
        await self._committer.sync_now(in_thread=True)
        # Encoded on the event loop in slices, written by worker threads (see Slicer);
        # the capture is immutable.
        # Beside busy writers its slices are short, one per turn of the loop; once
        # the checkpoints are SLOW intervals behind they grow (see _slice).
        slicer = Slicer(urgent=self._slice)
        written = await slicer.run(self._write, captured, slicer)
        # Recorded before anything else may be cancelled: a checkpoint written is one
        # saved (a cancellation used to arrive before this, and the close wrote the
        # same checkpoint again).
        self.saved_at, self.extra_saved = events, extra
        self._retry = 0
        self.written += 1
        # The projections learn which tables their new ones became; what they let go
        # of then is freed a slice at a time (see dismantle).
        _uninterrupted(self._checkpointed, written)
        with trio.CancelScope(shield=True):
            await self._remove_tables(table_names(captured) | {t.name for t in written.values()})
        await dismantle(self._retired())

    async def settle(self) -> None:
        """Wait for the merge and the checkpoint in progress, if any, to end. Why:
        both run in slices on the loop and write into the database's directory (a
        table, the checkpoint file, removals) until they end; a close that closed the
        store while one ran returned, released the directory's lock, and the work then
        wrote its table and replaced the checkpoint behind it (a cancelled merge, as
        at the end of ``koru.open``'s block, holds neither lock: it ended already).

        No merge and no background checkpoint starts after it (the close's own save
        still runs): one that began after this wait (the consolidation process's step,
        fired while the close synced the log) wrote a checkpoint and removed tables
        after the store was closed and the directory's lock released (h-proc)."""
        self.settled = True
        async with self._merge_lock, self._lock:
            pass

    def overgrown(self) -> bool:
        """True if a projection holds more tables than it keeps before merging whatever
        their sizes (``max_tables``): what a writable open merges before it serves,
        and an explicit checkpoint has merged in the background."""
        return any(
            len(getattr(projection, "tables", ())) > getattr(projection, "max_tables", 1 << 30)
            for projection, _, _ in self._compactions()
        )

    def merge_if_overgrown(self) -> None:
        """Have the background merges run if a projection holds more tables than it
        keeps (:meth:`overgrown`). Why: an explicit checkpoint adds a table as a
        background one does, but only background ones were followed by merges, so a
        session checkpointing by hand after each small unit of work grew a table each
        time until it closed (60 checkpoints: 60 tables, each cold lookup searching
        them all; h-proc)."""
        if self.overgrown():
            self._merge_due.set()

    async def compact(self) -> int:
        """Merge the tables the projections want merged, then checkpoint, so that the
        merged tables are named and the tables they replace can go. Returns the merges
        made. One merge at a time, but not under the checkpoints' lock: a merge of a
        ten-million-key load takes tens of seconds, and checkpoints waiting behind it
        left writers waiting (see :meth:`catch_up`). Checkpoints written meanwhile add
        tables on top of the ones being merged (which stay named until the merge's own
        checkpoint), and leave every table file in place while a merge is unnamed (see
        :meth:`_write`): their clean-up would remove the merged table otherwise."""
        async with self._merge_lock:
            if self.settled:
                return 0  # closing (see settle)
            plans = self._compactions()
            count = len(plans)
            replaced: list[Table] = []
            while plans:
                projection, inputs, new = plans.pop(0)
                # A merge of tables comes sorted: it streams, never held whole.
                slicer = Slicer()
                encoder = TableEncoder(
                    new.items(), presorted=True, pace=slicer, offload=slicer.offload
                )
                # Counted as unnamed before its file exists (see _remove_tables).
                async with self._files:
                    self._unnamed += 1
                try:
                    merged = await slicer.run(self._write_merged, encoder, slicer)
                    async with self._lock:  # (not amid a checkpoint's capture and write)
                        _uninterrupted(projection.compacted, inputs, merged)
                finally:
                    # Named from here on by every capture (or, if that failed, never
                    # named: an orphan the next clean-up removes).
                    self._unnamed -= 1
                replaced += inputs
                # Nothing here may keep the merged tables alive: see let_go below.
                del projection, inputs, new, encoder
            if count:
                self.compactions += count
                async with self._lock:
                    await self._save_locked()
            # The tables merged away (their files removed by that checkpoint) are
            # closed where their last reference goes: in a worker thread.
            await let_go(replaced)
            return count

    def _write_merged(self, encoder: TableEncoder, slicer: Slicer) -> Table:
        """Write a merged table and read its index (see :meth:`_ready`)."""
        return _ready(self._store.write_table(encoder, slicer.offload), slicer)

    def _write(self, captured: dict[str, Any], slicer: Slicer) -> dict[NewTable, Table]:
        """New tables first, then the checkpoint naming them (a crash in between
        leaves tables no checkpoint names, removed later)."""
        try:
            pieces, written = encode_captured(
                captured,
                write_table=partial(self._store.write_table, offload=slicer.offload),
                pace=slicer,
                offload=slicer.offload,
            )
            for table in written.values():
                _ready(table, slicer)
            slicer.offload(self._store.write_file, CHECKPOINT_FILE, *pieces)
        except OSError as exc:
            raise StorageError(f"writing the checkpoint failed: {exc}") from exc
        return written

    async def _remove_tables(self, keep: set[str]) -> None:
        """Remove the table files no longer named (``keep`` are), once the checkpoint
        that stopped naming them is durable; none while a merged table is written or
        being written but not yet named (a merge counts it, under the same lock,
        before its file exists). In a worker thread: the last unlink of a large table
        frees its blocks, tens of milliseconds."""
        async with self._files:
            if not self._unnamed:
                await trio.to_thread.run_sync(self._store.remove_tables, keep)

    async def run(
        self,
        on_fatal: Callable[[BaseException], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Background task: save whenever ``every`` events have been appended since the
        last checkpoint, then merge tables if the projections' plans say so (each
        checkpoint adds tables; without merges a lookup would search ever more of them);
        beside it, sync the log whenever :meth:`writeback` asks (a checkpoint can take
        seconds, a segment fills meanwhile). Never raises a storage error out of the
        nursery."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writebacks, on_fatal, nursery.cancel_scope)
            nursery.start_soon(self._merges, on_fatal, nursery.cancel_scope)
            task_status.started()
            await self._checkpoints(on_fatal)
            nursery.cancel_scope.cancel()

    async def _checkpoints(self, on_fatal: Callable[[BaseException], None]) -> None:
        self.running = True
        try:
            while True:
                await self._due.wait()
                self._due = trio.Event()
                try:
                    try:
                        async with self._lock:
                            if self.settled:
                                return  # closing (see settle)
                            await self._save_locked()
                        self._merge_due.set()  # merged beside the next checkpoints
                        if self.lag < self.every:
                            # Set during the save by events counted against the
                            # checkpoint before it: not due yet (see note_event).
                            self._due = trio.Event()
                    finally:
                        self.stalled = False  # (set again by the next event if due)
                        self._ended.set()
                        self._ended = trio.Event()
                except DurabilityError as exc:
                    on_fatal(exc)
                    return
                except StorageError:
                    # A checkpoint is only a shortcut (the log is the truth): keep
                    # serving and try again. From LAG intervals behind, only after the
                    # next ``every`` events, writers not waiting for one until then.
                    # Why: writers waiting there each wrote an event as a failure
                    # ended, which made the next one due at once, and every single
                    # write waited for a whole failed checkpoint (2,000 puts: 1,809
                    # of them, 18 s; h-ease).
                    self.failures += 1
                    if self.lagging:
                        self._retry = self.lag + self.every
                        self._due = trio.Event()
        finally:
            self.running = self.stalled = False
            self._ended.set()  # nobody waits for a checkpoint that will not come

    async def _merges(
        self, on_fatal: Callable[[BaseException], None], done: trio.CancelScope
    ) -> None:
        """Background task: merge tables after each background checkpoint, beside the
        checkpoints that follow (see :meth:`compact`)."""
        while True:
            await self._merge_due.wait()
            self._merge_due = trio.Event()
            try:
                await self.compact()
            except DurabilityError as exc:
                on_fatal(exc)
                done.cancel()
                return
            except StorageError:
                self.failures += 1

    async def _writebacks(
        self, on_fatal: Callable[[BaseException], None], done: trio.CancelScope
    ) -> None:
        while True:
            await self._writeback.wait()
            self._writeback = trio.Event()
            try:
                await self._committer.sync_now(in_thread=True)
            except DurabilityError as exc:
                on_fatal(exc)
                done.cancel()
                return
            self.writebacks += 1


def _ready(table: Table, slicer: Slicer) -> Table:
    """``table`` with its index checked (in a worker thread: a hash of megabytes) and
    read (in slices): a put's lookup would read it on the event loop otherwise (see
    :meth:`Table.load_index`)."""
    table.load_index(slicer, slicer.offload(table.read_index))
    return table


@enable_ki_protection
def _uninterrupted(step: Callable[..., Any], *args: Any) -> Any:
    """Run ``step``, a change of projection state on the event loop that must not stop
    half-way (capture freezes the memory layer; the handovers swap layers and tables),
    shielded from KeyboardInterrupt: Ctrl-C arrives at the main task's next checkpoint
    instead, as on the write and commit paths."""
    return step(*args)
