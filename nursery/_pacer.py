"""Letting a worker thread's Python work give way to the event loop.

Why: work handed to ``trio.to_thread.run_sync`` still needs the GIL for every line of
Python it runs. A thread that keeps it busy gives it up only when the interpreter takes
it away, every ``sys.getswitchinterval()`` (5 ms); so each time the event loop let go
of the GIL (any system call: a write, a look at its timers) it waited up to that long
to get it back, and a put that made two such calls while a checkpoint was being
encoded waited 10 ms or more. A :class:`Pacer` is called often by such work (the table
encoder every few dozen entries, the checkpoint encoder between pieces); once the thread
has run for ``budget`` seconds since its last pause, it waits until the event loop has
run its queue once (``trio.from_thread.run_sync`` of nothing). The thread then holds the
GIL for at most about ``budget`` at a time, and the work takes turns with the loop
instead of starving it. Pure I/O (writes, fsyncs, hashing with blake3) runs without the
GIL and is not paced.

Checkpoints and merges no longer run this way: sharing the interpreter with a worker
thread slowed the loop itself, and they run on it in slices instead (see
:class:`~koru.nursery._slicer.Slicer`). What stays in a paced thread is work that may
wait for the disk at any line: reading the indexes of an opened checkpoint's tables
(page faults in a memory map).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import trio

__all__ = ["DISMANTLE_STEP", "PACE_BUDGET", "Pacer", "dismantle", "let_go"]

#: Seconds of Python work a paced worker thread runs between two turns of the loop.
PACE_BUDGET = 0.0005


#: Entries freed between two yields by :func:`dismantle`.
DISMANTLE_STEP = 4096


def _nothing() -> None:
    pass


class Pacer:
    """Created in the trio thread, called (with no arguments) from a worker thread; a
    call from the trio thread itself, or once the run has finished, does nothing."""

    __slots__ = ("_loop_thread", "_since", "_token", "budget", "pauses")

    def __init__(self, budget: float = PACE_BUDGET) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._loop_thread = threading.get_ident()
        self.budget = budget
        self._since = time.perf_counter()
        #: Turns given to the loop so far.
        self.pauses = 0

    def __call__(self) -> None:
        if time.perf_counter() - self._since < self.budget:
            return
        if threading.get_ident() != self._loop_thread:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(_nothing, trio_token=self._token)
            self.pauses += 1
        self._since = time.perf_counter()


async def dismantle(containers: list[Any], step: int = DISMANTLE_STEP) -> None:
    """Free ``containers`` (dicts, possibly of dicts: a projection's retired layers) a
    slice of ``step`` entries at a time, yielding to the event loop between slices.
    Why: the last reference to a dict of a hundred thousand entries frees them all in
    one call, over ten milliseconds of the event loop. Empties the list it is given."""
    stack = list(containers)
    containers.clear()
    freed = 0
    while stack:
        held = stack.pop()
        while held:
            _, value = held.popitem()
            if type(value) is dict and len(value) > step:
                stack.append(value)
            freed += 1
            if freed >= step:
                freed = 0
                await trio.lowlevel.checkpoint()


async def let_go(held: list[Any]) -> None:
    """Drop the references ``held`` holds in a worker thread (emptying the list), so
    that whatever their last reference frees is freed there. Why: a table merged into
    another is closed when collected, and the last close of a removed file makes the
    filesystem free its blocks, 20 to 35 ms for a merged-away table of a million keys,
    which held every task when it happened on the event loop. An object someone else
    still holds (a reader) is freed by them, later, as before."""
    if held:
        await trio.to_thread.run_sync(held.clear)
