"""Synchronous work run on the event loop in slices (checkpoints, merges), its blocking
calls in worker threads: the loop runs between slices and during those calls, results
and errors come back where they belong, and two such works interleave safely."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import trio

from koru.events import FileStore, TableEncoder, encode_table, table_name
from koru.nursery._slicer import Slicer


class Ticker:
    """A task that counts its turns of the loop."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await trio.lowlevel.checkpoint()


async def test_work_runs_on_the_loop_thread_and_the_loop_runs_between_its_slices() -> None:
    ticker = Ticker()
    slicer = Slicer(shortest=0.0, longest=0.0)
    seen: list[int] = []
    threads: set[int] = set()

    def work(n: int) -> int:
        for _ in range(n):
            threads.add(threading.get_ident())
            slicer()
            seen.append(ticker.ticks)
        return n * 2

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker.run)
        await trio.lowlevel.checkpoint()
        assert await slicer.run(work, 20) == 40
        nursery.cancel_scope.cancel()
    assert threads == {threading.get_ident()}
    assert slicer.pauses == 20
    # The ticker took turns between the slices (a batch of the scheduler runs each task
    # once, in either order: at least every other slice saw it move).
    assert seen[-1] - seen[0] >= 9


async def test_a_slice_runs_its_budget_before_giving_way() -> None:
    slicer = Slicer(shortest=3600.0)

    def work() -> None:
        for _ in range(100):
            slicer()

    await slicer.run(work)
    assert slicer.pauses == 0


class HandTimer:
    """A timer moved by hand: the work and the tasks beside it say how long they took,
    so slices and turns are timed the same on a busy machine as on a quiet one."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_slices_grow_while_nothing_else_runs_and_are_short_when_something_does() -> None:
    """Short slices beside other tasks (their data stays in the CPU's caches), longer
    ones, up to ``longest``, while the loop has nothing else to run."""
    timer = HandTimer()
    slicer = Slicer(shortest=1e-6, longest=1e-3, timer=timer)
    budgets: list[float] = []

    def work(pauses: int) -> None:
        while slicer.pauses < pauses:
            timer.now += 1e-7  # a piece of the work
            before = slicer.pauses
            slicer()
            if slicer.pauses != before:  # the budget of the slice that follows a turn
                budgets.append(slicer.budget)

    await slicer.run(work, 20)
    # Alone, every turn is instant: the budget doubles each time, up to the longest.
    assert budgets == [min(1e-6 * 2**i, 1e-3) for i in range(1, 21)]

    async def busy() -> None:
        while True:
            timer.now += 50e-6  # a task that takes its time
            await trio.lowlevel.checkpoint()

    budgets.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy)
        await slicer.run(work, slicer.pauses + 300)
        nursery.cancel_scope.cancel()
    # Beside it: the shortest, or twice it after a turn in which the scheduler ran the
    # busy task first and this work first in the next batch (no time between); never
    # twice in a row (the next turn then has the busy task after the work). The first
    # turn may come before the busy task's first step.
    assert set(budgets[1:]) <= {1e-6, 2e-6}
    assert sorted(budgets)[len(budgets) // 2] == 1e-6


async def test_slices_beside_other_tasks_grow_to_what_urgent_asks() -> None:
    """Work falling behind the tasks beside it (a checkpoint far behind the writers)
    asks, through ``urgent``, for slices of its own length even beside them."""
    timer = HandTimer()
    wanted = [0.0]
    slicer = Slicer(shortest=1e-6, longest=1e-3, timer=timer, urgent=lambda: wanted[0])
    budgets: list[float] = []

    def work(pauses: int) -> None:
        while slicer.pauses < pauses:
            timer.now += 1e-7
            before = slicer.pauses
            slicer()
            if slicer.pauses != before:
                budgets.append(slicer.budget)

    async def busy() -> None:
        while True:
            timer.now += 50e-6
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(busy)
        await slicer.run(work, 100)
        assert sorted(budgets)[len(budgets) // 2] == 1e-6  # not urgent: short
        budgets.clear()
        wanted[0] = 4e-3  # (more than the longest: urgent asks for it all the same)
        await slicer.run(work, slicer.pauses + 100)
        nursery.cancel_scope.cancel()
    assert set(budgets) == {4e-3}


async def test_the_slicer_times_slices_by_the_real_clock_by_default() -> None:
    """Without a timer given, slices are timed by trio's clock (a real one here): a work that
    paces often while nothing else runs gives the loop a turn at least every longest
    slice, so a long work makes turns."""
    slicer = Slicer(shortest=1e-6, longest=1e-4)

    def work() -> None:
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:
            slicer()

    await slicer.run(work)
    assert slicer.pauses >= 20  # 50 ms of work in slices of at most 0.1 ms


async def test_an_offloaded_call_runs_in_a_worker_thread_while_the_loop_goes_on() -> None:
    """The call waits for an event only a loop task sets: made on the loop, it would
    never return."""
    slicer = Slicer()
    released = threading.Event()
    where: list[int] = []

    def blocking() -> str:
        where.append(threading.get_ident())
        assert released.wait(10)
        return "done"

    def work() -> str:
        return slicer.offload(blocking) + "!"

    async def release() -> None:
        await trio.sleep(0.01)
        released.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release)
        assert await slicer.run(work) == "done!"
    assert where and where[0] != threading.get_ident() and slicer.offloads == 1


async def test_an_offloaded_calls_error_is_raised_where_the_work_called_it() -> None:
    slicer = Slicer()

    def failing() -> None:
        raise OSError("disk full: injected")

    def work() -> str:
        try:
            slicer.offload(failing)
        except OSError as exc:
            return f"caught {exc}"
        return "not raised"

    assert await slicer.run(work) == "caught disk full: injected"


async def test_the_works_own_error_comes_out_of_run_and_the_slicer_can_run_again() -> None:
    slicer = Slicer(shortest=0.0, longest=0.0)

    def work() -> None:
        slicer()
        raise ValueError("broken: injected")

    with pytest.raises(ValueError, match="injected"):
        await slicer.run(work)
    assert await slicer.run(lambda: 7) == 7


async def test_outside_run_a_pace_does_nothing_and_an_offload_calls_at_once() -> None:
    slicer = Slicer(shortest=0.0, longest=0.0)
    for _ in range(5):
        slicer()
    assert slicer.pauses == 0
    assert slicer.offload(threading.get_ident) == threading.get_ident()
    assert slicer.offloads == 0


async def test_a_cancelled_caller_gets_the_work_finished_and_the_cancel_after() -> None:
    """Like ``trio.to_thread.run_sync``: a checkpoint is never left half written by a
    cancellation; it arrives at the caller's next checkpoint."""
    slicer = Slicer(shortest=0.0, longest=0.0)
    done: list[int] = []

    def work() -> int:
        for i in range(50):
            slicer()
            done.append(i)
        return len(done)

    with trio.CancelScope() as scope:
        scope.cancel()
        assert await slicer.run(work) == 50
        await trio.lowlevel.checkpoint()
        raise AssertionError("the cancellation never arrived")
    assert scope.cancelled_caught and len(done) == 50


async def test_work_in_slices_is_shielded_from_keyboard_interrupt() -> None:
    slicer = Slicer()
    assert await slicer.run(trio.lowlevel.currently_ki_protected)


async def test_two_tables_written_in_slices_at_once_on_one_loop_are_both_whole(
    tmp_path: Path,
) -> None:
    """A checkpoint's table and a merge's are written at once, both from the loop's
    thread: their temporary files were named by thread, so each overwrote the other's."""
    store = FileStore(tmp_path / "db")
    rows = {
        name: [("n", f"{name}{i:05}", b"%s-%d" % (name.encode(), i)) for i in range(3000)]
        for name in ("a", "b")
    }
    tables = {}

    async def write(name: str) -> None:
        slicer = Slicer(shortest=0.0, longest=0.0)
        encoder = TableEncoder(rows[name], pace=slicer, offload=slicer.offload)
        tables[name] = await slicer.run(store.write_table, encoder, slicer.offload)

    try:
        async with trio.open_nursery() as nursery:
            for name in rows:
                nursery.start_soon(write, name)
        for name, table in tables.items():
            assert list(table.entries()) == rows[name]
            assert table.name == table_name(encode_table(rows[name]))
            table.verify_content()
    finally:
        store.close()
