"""When checkpoints are taken and how they are counted: exactly every ``every`` events,
only when behind, failures counted one by one and never fatal."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

from conftest import eventually
from koru.events import MemoryStore
from koru.nursery import CHECKPOINT_FILE, Checkpointer, Committer
from koru.nursery._checkpointer import EASE, EASE_MOST, LAG, SLOW, VERSION_SHARE


class FailingFiles(MemoryStore):
    """Writing a small file fails while ``fail`` is set."""

    fail = False

    def write_file(self, name: str, *parts: bytes) -> None:
        if self.fail:
            raise OSError("disk full: injected")
        super().write_file(name, *parts)


def make(every: int, events: int = 0, saved_at: int = 0) -> tuple[Checkpointer, FailingFiles]:
    store = FailingFiles()
    captures: list[int] = []

    def capture() -> dict[str, Any]:
        captures.append(1)
        return {"format": 3, "n": len(captures)}

    committer = Committer(store, "always", flush_interval=1.0)
    return Checkpointer(
        store, committer, capture, every=every, events=events, saved_at=saved_at
    ), store


async def settle(done: Any = None) -> None:
    """Let the background task run (its save writes in a worker thread, so by real
    time): until ``done()`` if given, else for a moment in which nothing may happen."""
    if done is not None:
        await eventually(done)
    await trio.sleep(0.05)


async def test_a_checkpoint_is_due_exactly_every_n_events() -> None:
    ck, store = make(every=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(ck.run, pytest.fail)
        for _ in range(9):
            ck.note_event()
        await settle()
        assert (ck.written, store.read_file(CHECKPOINT_FILE)) == (0, None)
        ck.note_event()  # the tenth
        await settle(lambda: ck.written)
        assert (ck.written, ck.saved_at) == (1, 10)
        for _ in range(9):
            ck.note_event()
        await settle()
        assert ck.written == 1  # 9 since the last one
        ck.note_event()
        await settle(lambda: ck.written == 2)
        assert (ck.written, ck.saved_at) == (2, 20)
        nursery.cancel_scope.cancel()


async def a_held_save(nursery: trio.Nursery, ck: Checkpointer) -> threading.Event:
    """Start ``ck``'s background task, make a checkpoint due, and return once its save
    has captured (its first step), held there until the event returned is set (it
    waits in a worker thread: the save runs on the event loop)."""
    release = threading.Event()
    write = ck._write

    def held_write(captured: dict[str, Any], slicer: Any) -> Any:
        slicer.offload(release.wait)
        return write(captured, slicer)

    ck._write = held_write  # type: ignore[method-assign]
    await nursery.start(ck.run, pytest.fail)
    for _ in range(ck.every):
        ck.note_event()
    await eventually(ck._lock.locked)
    return release


async def test_events_written_during_a_save_count_towards_the_next_one_only() -> None:
    """Events noted while a checkpoint is being written were counted against the
    checkpoint before it, so the next one started as soon as this one ended, with a
    fraction of its interval: under steady writes, checkpoints ran back to back."""
    ck, _ = make(every=10)
    async with trio.open_nursery() as nursery:
        release = await a_held_save(nursery, ck)  # it has captured 10
        for _ in range(4):  # written during the save
            ck.note_event()
        release.set()
        await settle(lambda: ck.written)
        await settle()
        assert (ck.written, ck.saved_at) == (1, 10)  # 4 since: not due
        for _ in range(6):
            ck.note_event()
        await settle(lambda: ck.written == 2)
        assert (ck.written, ck.saved_at) == (2, 20)
        nursery.cancel_scope.cancel()


async def test_a_save_cancelled_once_its_checkpoint_is_written_still_counts() -> None:
    """A checkpoint's writing is not cancellable; a cancellation that arrived meanwhile
    (the database closing) was delivered before the save was recorded, so the close
    found the checkpoint behind and wrote the same one again (1.9 s of a bulk load's
    close instead of 0.2)."""
    ck, store = make(every=10)
    async with trio.open_nursery() as nursery:
        release = await a_held_save(nursery, ck)
        nursery.cancel_scope.cancel()  # the close, while the checkpoint is written
        release.set()
    assert (ck.written, ck.saved_at, ck.behind) == (1, 10, False)
    assert store.read_file(CHECKPOINT_FILE) is not None

    # 5 events replayed, no usable checkpoint (saved_at -1): due once 10 are in the log.
    ck, _ = make(every=10, events=5, saved_at=-1)
    assert ck.behind
    async with trio.open_nursery() as nursery:
        await nursery.start(ck.run, pytest.fail)
        for _ in range(4):
            ck.note_event()
        await settle()
        assert ck.written == 0
        ck.note_event()
        await settle(lambda: ck.written)
        assert (ck.written, ck.saved_at) == (1, 10)
        nursery.cancel_scope.cancel()


async def test_behind_only_when_the_log_holds_more() -> None:
    ck, _ = make(every=100, events=7, saved_at=7)
    assert not ck.behind
    ck.note_event()
    assert ck.behind
    await ck.save()
    assert not ck.behind and (ck.written, ck.saved_at) == (1, 8)


async def test_failed_background_checkpoints_are_counted_one_each_and_not_fatal() -> None:
    ck, store = make(every=2)
    store.fail = True
    async with trio.open_nursery() as nursery:
        await nursery.start(ck.run, pytest.fail)
        for expected in (1, 2, 3):
            ck.note_event()
            ck.note_event()
            await settle(lambda e=expected: ck.failures >= e)
            assert (ck.failures, ck.written) == (expected, 0)
        store.fail = False
        ck.note_event()  # still due: nothing was saved since 0
        await settle(lambda: ck.written)
        assert (ck.failures, ck.written) == (3, 1)
        assert store.read_file(CHECKPOINT_FILE) is not None
        nursery.cancel_scope.cancel()


async def test_a_batch_s_other_writes_count_towards_the_next_checkpoint() -> None:
    ck, _ = make(every=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(ck.run, pytest.fail)
        ck.note_event()  # a batch of 4 * 8 + 1 writes: 1 event, 32 versions beyond it
        ck.note_versions(4 * 8 - 1)
        await settle()
        assert ck.written == 0  # 1 + 31 // VERSION_SHARE = 8 of 10
        ck.note_event()
        ck.note_versions(VERSION_SHARE)  # 2 + 35 // 4 = 10
        await settle(lambda: ck.written)
        assert (ck.written, ck.saved_at, ck.extra_saved) == (1, 2, 35)
        assert ck.lag == 0
        nursery.cancel_scope.cancel()


async def _catch_up_then_set(ck: Checkpointer, done: trio.Event) -> None:
    """A writer waiting for the checkpointer to catch up, and then saying so."""
    await ck.catch_up()
    done.set()


async def test_writers_wait_only_for_a_running_checkpointer_far_behind() -> None:
    ck, _ = make(every=10)
    for _ in range(LAG * 10):
        ck.note_event()
    assert not ck.lagging  # no background task: nothing would ever catch up
    ck._due = trio.Event()  # as if none were due (as at an open this far behind)
    written_when_released: list[int] = []

    async def waiter() -> None:
        await ck.catch_up()
        written_when_released.append(ck.written)

    async with trio.open_nursery() as nursery:
        await nursery.start(ck.run, pytest.fail)
        assert ck.lagging
        # The wait makes the checkpoint due: the waiter goes on once it is written.
        nursery.start_soon(waiter)
        await settle(lambda: bool(written_when_released))
        assert written_when_released == [1]
        assert (ck.written, ck.stalls, ck.lagging) == (1, 1, False)
        nursery.cancel_scope.cancel()


async def test_a_writer_waiting_is_released_when_the_checkpointer_stops() -> None:
    ck, _ = make(every=10)
    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as nursery:
            await nursery.start(ck.run, pytest.fail)
            released = trio.Event()
            outer.start_soon(_catch_up_then_set, ck, released)
            await settle()
            nursery.cancel_scope.cancel()  # the database closing: the task ends
        await settle(lambda: released.is_set())
        assert not ck.running


async def test_a_batch_writer_gives_way_from_slow_and_waits_from_lag(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ck, _ = make(every=10)
    ck._due = trio.Event()  # (never set: the checkpoint stays behind)
    assert ck.behind_by == 0  # not running: nothing to give way to
    async with trio.open_nursery() as nursery:
        await nursery.start(ck.run, pytest.fail)
        ck._due = trio.Event()
        for _ in range(SLOW * 10 - 1):
            ck.note_event()
        assert ck.behind_by == 0
        ck.note_event()
        assert ck.behind_by == SLOW and not ck.lagging
        ck.took(0.25)  # the last batch held the loop that long: the worker gets as long
        began = trio.current_time()
        await ck.give_way()
        assert trio.current_time() - began >= 0.25 and (ck.slowed, ck.stalls) == (1, 0)
        for _ in range((LAG - SLOW) * 10):
            ck.note_event()
        assert ck.behind_by == LAG and ck.lagging
        with trio.move_on_after(1) as waited:  # nothing ends the checkpoint: it waits
            await ck.give_way()
        assert waited.cancelled_caught and ck.stalls == 1
        nursery.cancel_scope.cancel()


async def test_a_single_writer_is_slowed_from_ease_and_waits_from_lag(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Single writes (puts, deletions) between ``EASE`` and ``LAG`` intervals behind
    sleep a little, longer the further behind, and go on without waiting for the
    checkpoint; at ``LAG`` they wait for it. Why: with only the wait at ``LAG``, a
    loop of puts under ``sync="os"`` ran at full speed into it and stopped there for
    the rest of a checkpoint (0.4 to 2.6 s a million puts)."""
    ck, _ = make(every=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(ck.run, pytest.fail)
        ck._due = trio.Event()  # (never set: the checkpoint stays behind)
        for _ in range(EASE * 10 - 1):
            ck.note_event()
        assert not ck.stalled  # below EASE: a write goes on at once
        ck.note_event()
        assert ck.stalled and ck.easing and not ck.lagging
        sleeps = []
        for _ in range((LAG - EASE) * 10):
            began = trio.current_time()
            await ck.stall()
            sleeps.append(trio.current_time() - began)
            ck.note_event()
        assert sleeps == sorted(sleeps) and sleeps[-1] <= EASE_MOST < sleeps[-1] * 1.2
        assert (ck.eased, ck.stalls) == ((LAG - EASE) * 10, 0)
        assert ck.lagging
        with trio.move_on_after(1) as waited:  # nothing ends the checkpoint: it waits
            await ck.stall()
        assert waited.cancelled_caught and ck.stalls == 1
        nursery.cancel_scope.cancel()


async def test_a_close_whose_checkpoint_fails_to_store_closes_and_keeps_the_log(
    tmp_path: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint that cannot be stored at close (a ``StorageError``: disk full) only
    loses a shortcut: the close logs it and ends, and the next open replays the log,
    every write there. A ``DurabilityError`` there is no shortcut: the close raises it."""
    import koru
    from koru.events import DurabilityError, StorageError

    async def full(self: Checkpointer) -> None:
        raise StorageError("disk full: injected")

    async with koru.open(tmp_path / "db", sync="always") as db:
        await db.put("ns", "k", 1)
        monkeypatch.setattr(Checkpointer, "save", full)
    assert "no checkpoint written at close: disk full: injected" in caplog.text
    monkeypatch.undo()
    async with koru.open(tmp_path / "db") as db:
        assert await db.get("ns", "k") == 1

    async def lost(self: Checkpointer) -> None:
        raise DurabilityError("fsync failed: injected")

    with pytest.raises(DurabilityError, match="fsync failed: injected"):
        async with koru.open(tmp_path / "db", sync="always") as db:
            await db.put("ns", "k", 2)
            monkeypatch.setattr(Checkpointer, "save", lost)
