"""The supervisor: named background tasks that never take the caller's block down, and
whose failures are never silent."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing

import koru
from koru.nursery import Checkpointer, supervise


async def test_named_tasks_run_until_the_block_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ticks = {"a": 0, "b": 0}
    fatal: list[BaseException] = []

    async def ticker(name: str, every: float, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        while True:
            await trio.sleep(every)
            ticks[name] += 1

    async with supervise(fatal.append) as supervisor:
        await supervisor.start("a", ticker, "a", 1.0)
        await supervisor.start("b", ticker, "b", 60.0)
        assert supervisor.started == ["a", "b"] and supervisor.running == {"a", "b"}
        with pytest.raises(ValueError, match="already started"):
            await supervisor.start("a", ticker, "a", 1.0)
        await trio.sleep(3 * 3600 + 0.5)  # three hours, instantly
    assert ticks == {"a": 3 * 3600, "b": 3 * 60}
    assert supervisor.running == set() and fatal == []


async def test_a_failing_task_is_reported_and_stops_the_others(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    fatal: list[BaseException] = []
    stopped = trio.Event()

    async def fails(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(5)
        raise RuntimeError("a bug in a background task")

    async def waits(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            stopped.set()

    async with supervise(fatal.append) as supervisor:  # nothing raises out of the block
        await supervisor.start("fails", fails)
        await supervisor.start("waits", waits)
        await trio.sleep(10)
        assert stopped.is_set() and supervisor.running == set()
    assert [str(e) for e in fatal] == ["a bug in a background task"]
    assert supervisor.failure is fatal[0]
    assert "background task 'fails' failed" in caplog.text


async def test_the_callers_exception_comes_out_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with supervise(lambda exc: None):
            raise KeyError("mine")


async def test_a_background_failure_closes_the_database_and_names_its_cause(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(
        self: Checkpointer, on_fatal: object, *, task_status: trio.TaskStatus[None]
    ) -> None:
        task_status.started()
        await trio.lowlevel.checkpoint()
        raise RuntimeError("checkpointer bug")

    monkeypatch.setattr(Checkpointer, "run", broken)
    path = tmp_path / "db"
    async with koru.open(path) as db:
        with trio.fail_after(5):
            while True:  # until the task has failed
                try:
                    await db.contains("n", "k")
                except koru.DatabaseClosedError as exc:
                    assert isinstance(exc.__cause__, RuntimeError)
                    break
                await trio.sleep(0.01)
    assert "background task 'checkpointer' failed" in caplog.text
    monkeypatch.undo()
    async with koru.open(path) as db:  # the database itself is fine
        await db.put("n", "k", 1)
        assert await db.get("n", "k") == 1
