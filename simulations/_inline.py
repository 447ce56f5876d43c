"""Worker threads run inline, so a simulated run is deterministic.

The database hands blocking work to ``trio.to_thread.run_sync`` (opening replays in a
thread, slow fsyncs, mining, training). Under ``MockClock`` a real thread lets virtual
time jump by however far the thread's real duration allows, and its completion lands
in a real-time-dependent place among the other tasks: the run would differ from run to
run. Inside :func:`inline_threads` every such call runs on the event loop instead,
after a checkpoint and, for a node with a slow disk, after that node's virtual device
latency (the contextvar :data:`DEVICE_LATENCY`, set per node): other tasks of the node
keep running while it "waits for the device", as they would beside a real thread.

Trio's scheduler also reorders each batch of runnable tasks with an unseeded generator
of its own, and the batch itself comes in an order that can depend on memory addresses
(tasks woken from sets); :func:`inline_threads` turns on the deterministic mode trio
keeps for Hypothesis (sort each batch by task creation, then shuffle) and seeds the
generator, so the interleaving is a function of the seed alone.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio
import trio.to_thread

__all__ = ["DEVICE_LATENCY", "inline_threads"]

#: Virtual seconds a "thread" of the current node waits before it runs (its slow disk).
DEVICE_LATENCY: contextvars.ContextVar[float] = contextvars.ContextVar(
    "koru_sim_device_latency", default=0.0
)


async def _run_inline(fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
    latency = DEVICE_LATENCY.get()
    if latency:
        await trio.sleep(latency)
    else:
        await trio.lowlevel.checkpoint()
    return fn(*args)


@contextmanager
def inline_threads(seed: int) -> Iterator[None]:
    """Run ``trio.to_thread.run_sync`` inline and seed trio's scheduler, until exit."""
    from trio._core import _run as trio_run  # the scheduler's private generator

    original = trio.to_thread.run_sync
    state = trio_run._r.getstate()
    deterministic = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    trio_run._r.seed(seed)
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    trio.to_thread.run_sync = _run_inline  # type: ignore[assignment]
    try:
        yield
    finally:
        trio.to_thread.run_sync = original
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = deterministic  # type: ignore[misc]
        trio_run._r.setstate(state)
