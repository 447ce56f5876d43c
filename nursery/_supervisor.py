"""The database's background tasks, under one supervisor.

Every long-running task a database has (the flusher of ``sync="never"``, the
checkpointer, the periodic processes of the memory tiers, later the peer-sync sessions)
runs here, in one trio nursery owned by the open database, under a name. Why one place:
a task must never take the user's ``async with`` block down with an exception group, and
a task that fails must not fail silently either.

Two kinds of task:

- An essential task (:meth:`Supervisor.start`: the flusher, the checkpointer) runs its
  own loop; if it raises, it is logged with its name and reported to ``on_fatal`` (the
  database then refuses further operations, pointing at the cause), the other tasks are
  stopped with it, and nothing is raised into the caller's block.
- A periodic process (:meth:`Supervisor.every`: consolidation, distillation, the genome,
  expiry) runs one step per interval. A step that raises is logged and the process is
  restarted after an exponential backoff with jitter from the database's seeded random
  generator; failures in a row past a threshold are a crash loop, reported in
  :meth:`Supervisor.processes` (and the database's statistics), and the database keeps
  serving. Only a :class:`~koru.DurabilityError` (the log's durable state is unknown) is
  fatal, as for an essential task; a step that finds the database closed
  (:class:`~koru.DatabaseClosedError`) ends its process, stopped, without a failure.

Leaving the supervisor cancels whatever still runs. All waiting is on trio's clock, so
under ``trio.testing.MockClock`` a week of processes runs in milliseconds.

Why each task runs in a cancel scope of its own: the caller's block runs inside the
nursery's scope, so cancelling that scope to stop the tasks would cancel the block as
well, and the nursery would swallow the ``Cancelled``: the block would stop half-way
without a word and the code after it would run as if it had finished. Only the tasks'
scopes are ever cancelled; the block carries on and its next database call raises
``DatabaseClosedError`` naming the cause.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import trio

from koru.events import DatabaseClosedError, DurabilityError

from ._clock import Clock, SystemClock

__all__ = ["Policy", "ProcessInfo", "Supervisor", "supervise"]

_log = logging.getLogger("koru")

Task = Callable[..., Awaitable[None]]
Step = Callable[[], Awaitable[None]]


class Policy(NamedTuple):
    """How a periodic process runs: a step every ``interval`` seconds; after a failed
    step, a restart after ``backoff`` seconds doubling per failure in a row up to
    ``max_backoff``, stretched by up to ``jitter`` of itself at random; ``crash_loop``
    failures in a row are reported as a crash loop."""

    interval: float
    backoff: float = 1.0
    max_backoff: float = 300.0
    jitter: float = 0.25
    crash_loop: int = 5


class ProcessInfo(NamedTuple):
    """A periodic process as :meth:`Supervisor.processes` lists it.

    ``state`` is "waiting" (until its next step), "running", "restarting" (waiting out
    a backoff after a failure), "crash-loop" (restarting, after ``crash_loop`` failures
    in a row), "stopped" or "failed" (a fatal error stopped the database).
    ``last_run`` and ``last_error_at`` are wall-clock ns (the database's clock).
    """

    name: str
    state: str
    interval: float
    runs: int
    failures: int
    restarts: int
    last_run: int | None
    last_error: str | None
    last_error_at: int | None


class _Process:
    __slots__ = (
        "failures",
        "in_a_row",
        "last_error",
        "last_error_at",
        "last_run",
        "name",
        "policy",
        "restarts",
        "runs",
        "state",
        "step",
    )

    def __init__(self, name: str, step: Step, policy: Policy) -> None:
        self.name, self.step, self.policy = name, step, policy
        self.state = "waiting"
        self.runs = self.failures = self.restarts = self.in_a_row = 0
        self.last_run: int | None = None
        self.last_error: str | None = None
        self.last_error_at: int | None = None

    def info(self) -> ProcessInfo:
        return ProcessInfo(
            self.name,
            self.state,
            self.policy.interval,
            self.runs,
            self.failures,
            self.restarts,
            self.last_run,
            self.last_error,
            self.last_error_at,
        )


class _Status:
    """A task's ``task_status`` that remembers whether the task has started."""

    __slots__ = ("_inner", "done")

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self._inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        self.done = True
        self._inner.started(value)


class Supervisor:
    """Starts named background tasks in its nursery (see the module doc)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        on_fatal: Callable[[BaseException], None],
        *,
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._nursery = nursery
        self._on_fatal = on_fatal
        self._rng = rng if rng is not None else random.Random(0)
        self._clock = clock if clock is not None else SystemClock()
        self._processes: dict[str, _Process] = {}
        #: Names of the tasks started, and of those still running.
        self.started: list[str] = []
        self.running: set[str] = set()
        #: The first task failure, if any (also passed to ``on_fatal``).
        self.failure: BaseException | None = None
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stopped = False

    async def start(self, name: str, task: Task, *args: Any) -> None:
        """Run ``task(*args, task_status=...)`` as ``name``; returns once it has called
        ``task_status.started()``. ``name`` must be new."""
        if name in self.started:
            raise ValueError(f"a task called {name!r} was already started")
        self.started.append(name)
        await self._launch(name, task, args)

    async def _guard(
        self,
        name: str,
        task: Task,
        args: tuple[Any, ...],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        scope = self._scopes[name] = trio.CancelScope()
        if self._stopped:
            scope.cancel()
        self.running.add(name)
        status = _Status(task_status)
        try:
            with scope:
                await task(*args, task_status=status)
        except Exception as exc:
            if not status.done:
                # Failing to start is part of starting: the caller's ``start`` raises
                # it (trio would replace it with "child exited without calling
                # task_status.started()", the cause left in the log).
                raise
            _log.error("koru: background task %r failed", name, exc_info=exc)
            if self.failure is None:
                self.failure = exc
                self._on_fatal(exc)
            self.stop()
        finally:
            self.running.discard(name)

    async def every(self, name: str, step: Step, policy: Policy) -> None:
        """Run ``step()`` every ``policy.interval`` seconds as the periodic process
        ``name``, restarted after failures (see the module doc)."""
        if name in self.started:
            raise ValueError(f"a task called {name!r} was already started")
        self.started.append(name)
        process = self._processes[name] = _Process(name, step, policy)
        process.state = "stopped"  # until it has started
        await self._launch(name, self._periodic, (process,))

    async def _launch(self, name: str, task: Task, args: tuple[Any, ...]) -> None:
        """Start a task, unless a failure has already stopped the others (the database
        is dead then, and its caller finds out at its next operation)."""
        if self._stopping:
            return
        try:
            await self._nursery.start(self._guard, name, task, args, name=f"koru:{name}")
        except RuntimeError:
            if not self._stopping:
                raise  # a task that never called started(): a bug
            # stopped while starting: as above

    async def _periodic(
        self, process: _Process, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        process.state = "waiting"
        task_status.started()
        policy = process.policy
        wait = policy.interval
        try:
            while True:
                await trio.sleep(wait)
                process.state = "running"
                process.last_run = self._clock.now_ns()
                try:
                    await process.step()
                except DurabilityError:
                    process.state = "failed"
                    raise  # fatal: _guard reports it and stops the database
                except DatabaseClosedError:
                    # Closed under it (``aclose`` inside the caller's block, or a fatal
                    # error that stops every task): nothing failed, and no step can run
                    # again. (Counted as failures, logged and reported as a crash loop
                    # for as long as the block went on, h-proc.)
                    return
                except Exception as exc:
                    process.failures += 1
                    process.in_a_row += 1
                    process.last_error = f"{type(exc).__name__}: {exc}"
                    process.last_error_at = self._clock.now_ns()
                    crash_loop = process.in_a_row >= policy.crash_loop
                    _log.error(
                        "koru: process %r failed (%d in a row%s); restarting",
                        process.name,
                        process.in_a_row,
                        ", a crash loop" if crash_loop else "",
                        exc_info=exc,
                    )
                    process.restarts += 1
                    process.state = "crash-loop" if crash_loop else "restarting"
                    # (The exponent bounded: past 1,024 failures in a row the power
                    # no longer converted to a float, and the OverflowError stopped the
                    # database, h-ease.)
                    doubled = 2 ** min(process.in_a_row - 1, 64)
                    delay = min(policy.max_backoff, policy.backoff * doubled)
                    wait = delay * (1 + policy.jitter * self._rng.random())
                else:
                    process.runs += 1
                    process.in_a_row = 0
                    process.state = "waiting"
                    wait = policy.interval
        finally:
            if process.state != "failed":
                process.state = "stopped"

    @property
    def _stopping(self) -> bool:
        return self.failure is not None or self._stopped or self._nursery.cancel_scope.cancel_called

    def processes(self) -> list[ProcessInfo]:
        """Every periodic process, in the order started."""
        return [p.info() for p in self._processes.values()]

    def stop(self) -> None:
        """Cancel every task, never the caller's block (leaving :func:`supervise` does
        this too)."""
        self._stopped = True
        for scope in self._scopes.values():
            scope.cancel()


@asynccontextmanager
async def supervise(
    on_fatal: Callable[[BaseException], None],
    *,
    rng: random.Random | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[Supervisor]:
    """A supervisor whose tasks live as long as the ``async with`` block; an exception
    from the block comes out unwrapped (the tasks never raise)."""
    try:
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(nursery, on_fatal, rng=rng, clock=clock)
            try:
                yield supervisor
            finally:
                supervisor.stop()
    except BaseExceptionGroup as group:
        # The tasks never raise (see _guard), so a group can only wrap the caller's own
        # exception from the ``async with`` body: hand it back unwrapped.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise
