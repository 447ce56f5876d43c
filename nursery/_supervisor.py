"""The database's background tasks, under one supervisor.

Every long-running task a database has (the flusher of ``sync="never"``, the
checkpointer; later the tier consolidation and the peer-sync sessions) runs here, in one
trio nursery owned by the open database, under a name. Why one place: a task must never
take the user's ``async with`` block down with an exception group, and a task that
fails must not fail silently either. A supervised task that raises is logged with its
name and reported to ``on_fatal`` (the database then refuses further operations,
pointing at the cause); the other tasks are stopped with it, and nothing is raised into
the caller's block. Leaving the supervisor cancels whatever still runs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

__all__ = ["Supervisor", "supervise"]

_log = logging.getLogger("koru")

Task = Callable[..., Awaitable[None]]


class Supervisor:
    """Starts named background tasks in its nursery (see the module doc)."""

    def __init__(self, nursery: trio.Nursery, on_fatal: Callable[[BaseException], None]) -> None:
        self._nursery = nursery
        self._on_fatal = on_fatal
        #: Names of the tasks started, and of those still running.
        self.started: list[str] = []
        self.running: set[str] = set()
        #: The first task failure, if any (also passed to ``on_fatal``).
        self.failure: BaseException | None = None

    async def start(self, name: str, task: Task, *args: Any) -> None:
        """Run ``task(*args, task_status=...)`` as ``name``; returns once it has called
        ``task_status.started()``. ``name`` must be new."""
        if name in self.started:
            raise ValueError(f"a task called {name!r} was already started")
        self.started.append(name)
        await self._nursery.start(self._guard, name, task, args, name=f"koru:{name}")

    async def _guard(
        self,
        name: str,
        task: Task,
        args: tuple[Any, ...],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.running.add(name)
        try:
            await task(*args, task_status=task_status)
        except Exception as exc:
            _log.error("koru: background task %r failed", name, exc_info=exc)
            if self.failure is None:
                self.failure = exc
                self._on_fatal(exc)
            self._nursery.cancel_scope.cancel()
        finally:
            self.running.discard(name)

    def stop(self) -> None:
        """Cancel every task (leaving :func:`supervise` does this too)."""
        self._nursery.cancel_scope.cancel()


@asynccontextmanager
async def supervise(on_fatal: Callable[[BaseException], None]) -> AsyncIterator[Supervisor]:
    """A supervisor whose tasks live as long as the ``async with`` block; an exception
    from the block comes out unwrapped (the tasks never raise)."""
    try:
        async with trio.open_nursery() as nursery:
            supervisor = Supervisor(nursery, on_fatal)
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
