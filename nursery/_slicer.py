"""Running synchronous work on the event loop in slices, its blocking calls in a worker
thread.

Why: a checkpoint's encoding (and a merge of tables) is seconds of Python. Run in a
worker thread (see :class:`~koru.nursery.Pacer`) it shared the interpreter with the
event loop, and both ran slower for it: 500,000 puts beside their checkpoints took
13.6 s in the paced thread against 9.9 s with the same encoding run on the loop whole
(which held it for up to 360 ms). A :class:`Slicer` runs the same code on the loop in
slices of about ``budget`` seconds: the code calls the slicer (``pace()``) every few
dozen entries, as it calls a Pacer, and once the slice has run its budget the code is
suspended and the loop runs its other tasks before resuming it. What blocks in the
kernel (writes of a table's buffers, fsyncs, renames, unlinks) is handed to
:meth:`Slicer.offload`, which runs it in a worker thread while the loop goes on.

The suspension is a greenlet's switch (the library behind SQLAlchemy's asyncio and
trio's greenback): the encoders stay plain synchronous code, callable as they are from
a test, a command or a worker thread, instead of being rewritten as generators all the
way down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import greenlet
import trio
from trio.lowlevel import enable_ki_protection

from ._pacer import PACE_BUDGET

__all__ = ["Slicer"]

T = TypeVar("T")

#: The shortest and the longest slice (seconds). A slice after which other tasks ran
#: is followed by the shortest; one after which nothing else ran, by one twice as long,
#: up to the longest. Why so short beside other tasks: 500,000 puts beside their
#: checkpoints took 10.4-10.7 s with slices of 20 µs, 12.0-12.2 s with 0.1 ms and
#: 13.0-13.4 s with 0.5 ms (p99.9 0.34-0.44 against 0.60-0.80 ms): the puts between
#: short slices find their data still in the CPU's caches. Why longer when alone: each
#: turn costs the loop a few microseconds, a third of a 20 µs slice (a checkpoint
#: awaited after a bulk load took 8% longer).
SHORTEST = 0.00002
LONGEST = PACE_BUDGET
#: A turn of the loop longer than this (seconds) ran some other task.
_BUSY_TURN = 0.000008

#: What a suspended slice hands the loop when its budget is spent (an offload hands
#: the call to make instead).
_TURN = object()


class Slicer:
    """Created and run on the event loop (:meth:`run`); called from the work it runs.

    Outside :meth:`run` (or from another thread) a call does nothing and an
    :meth:`offload` calls the function at once, so the same code runs unsliced anywhere.
    """

    __slots__ = (
        "_greenlet",
        "_since",
        "_timer",
        "_urgent",
        "budget",
        "longest",
        "offloads",
        "pauses",
        "shortest",
    )

    def __init__(
        self,
        shortest: float = SHORTEST,
        longest: float = LONGEST,
        timer: Callable[[], float] = trio.current_time,
        urgent: Callable[[], float] | None = None,
    ) -> None:
        self.shortest, self.longest = shortest, max(shortest, longest)
        #: Asked after each turn of the loop: the slice (seconds) the work needs even
        #: beside other tasks, as it falls behind them (0: none, the usual rule).
        self._urgent = urgent
        #: The current slice's length (see SHORTEST).
        self.budget = shortest
        #: What slices and turns are timed by: trio's clock, as sleeps and timeouts
        #: are (a real run's is the CPU's time as it passes). Under
        #: ``trio.testing.MockClock`` it stands still while code runs, so no slice
        #: ends on its budget: a simulated run's interleaving, and so its trace and
        #: its bytes, never depend on how fast the machine ran it (with the CPU's
        #: time, one seed gave different runs on a loaded machine). Tests give a
        #: timer they move by hand. Read only on the loop (trio's clock is not
        #: readable from other threads).
        self._timer = timer
        self._greenlet: greenlet.greenlet | None = None
        self._since = 0.0
        #: Turns given to the loop, and calls run in a worker thread, so far.
        self.pauses = 0
        self.offloads = 0

    def __call__(self) -> None:
        """A point where the work may stop for the loop: it does once its slice has run
        ``budget`` seconds (see :data:`SHORTEST`)."""
        running = self._greenlet
        if running is None or greenlet.getcurrent() is not running:
            return  # not inside run (or another thread): nothing to time
        if self._timer() - self._since < self.budget:
            return
        _loop_of(running).switch(_TURN)
        self.pauses += 1
        self._since = self._timer()

    def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, run in a worker thread while the loop goes on (the work waits
        for it); its exception is raised here."""
        running = self._greenlet
        if running is None or greenlet.getcurrent() is not running:
            return fn(*args)
        self.offloads += 1
        result: T = _loop_of(running).switch((fn, args))
        self._since = self._timer()
        return result

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, run on the event loop in slices.

        Not cancellable, like ``trio.to_thread.run_sync``: a cancellation arrives at
        the caller's next checkpoint, once the work has ended (a checkpoint half
        written is never left behind by one).
        """
        if self._greenlet is not None:
            raise RuntimeError("a Slicer runs one function at a time")
        work = greenlet.greenlet(_protected(fn))
        self._greenlet = work
        timer = self._timer
        self._since = timer()
        try:
            with trio.CancelScope(shield=True):
                request = work.switch(*args)
                while not work.dead:
                    if request is _TURN:
                        began = timer()
                        await trio.lowlevel.checkpoint()
                        wanted = 0.0 if self._urgent is None else self._urgent()
                        if timer() - began > _BUSY_TURN and not wanted:
                            self.budget = self.shortest
                        else:
                            self.budget = max(wanted, min(self.budget * 2, self.longest))
                        request = work.switch()
                        continue
                    call, call_args = request
                    try:
                        result = await trio.to_thread.run_sync(call, *call_args)
                    except BaseException as exc:  # raised in the work, where it called
                        request = work.throw(exc)
                    else:
                        request = work.switch(result)
        finally:
            # Calls from here on run at once; work left suspended (only if the loop
            # itself failed above) unwinds now, its clean-up included.
            self._greenlet = None
            if not work.dead:
                work.throw(greenlet.GreenletExit)
        return request  # type: ignore[no-any-return]


def _loop_of(work: greenlet.greenlet) -> greenlet.greenlet:
    """The greenlet that runs the event loop (the one that started ``work``)."""
    loop = work.parent
    assert loop is not None  # (only the main greenlet has none)
    return loop


def _protected(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` shielded from KeyboardInterrupt: the work runs on the loop's thread, and a
    Ctrl-C amid a table's writes should arrive at the main task's next checkpoint, as it
    does while the same work runs in a worker thread."""

    @enable_ki_protection
    def protected(*args: Any) -> T:
        return fn(*args)

    return protected
