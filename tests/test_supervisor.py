"""The supervisor: named background tasks that never take the caller's block down, and
whose failures are never silent."""

from __future__ import annotations

import itertools
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
    opened = trio.Event()

    async def broken(
        self: Checkpointer, on_fatal: object, *, task_status: trio.TaskStatus[None]
    ) -> None:
        task_status.started()
        await opened.wait()  # fails once the database is open, whatever else starts
        raise RuntimeError("checkpointer bug")

    monkeypatch.setattr(Checkpointer, "run", broken)
    path = tmp_path / "db"
    async with koru.open(path) as db:
        opened.set()
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


# -- periodic processes ----------------------------------------------------------------------


async def test_a_periodic_process_runs_on_its_interval_for_a_simulated_week(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from koru.nursery import Policy

    runs: list[float] = []

    async def step() -> None:
        runs.append(trio.current_time())

    async with supervise(lambda exc: None, clock=koru.TrioClock(0)) as supervisor:
        await supervisor.every("hourly", step, Policy(interval=3600))
        await trio.sleep(7 * 86400 + 1)
        [info] = supervisor.processes()
    assert len(runs) == 7 * 24 and runs[0] == 3600 and runs[-1] == 7 * 86400
    assert (info.name, info.state, info.runs, info.failures) == ("hourly", "waiting", 168, 0)
    assert info.last_run == 7 * 86400 * 10**9  # the database clock's reading
    assert supervisor.processes()[0].state == "stopped"


async def test_a_crashing_process_is_restarted_with_backoff_and_never_stops_the_rest(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    import random

    from koru.nursery import Policy

    attempts: list[float] = []
    healthy: list[float] = []
    fatal: list[BaseException] = []

    async def flaky() -> None:
        attempts.append(trio.current_time())
        if len(attempts) <= 7:
            raise RuntimeError(f"bug #{len(attempts)}")

    async def fine() -> None:
        healthy.append(trio.current_time())

    policy = Policy(interval=60, backoff=1, max_backoff=30, jitter=0.5, crash_loop=5)
    async with supervise(fatal.append, rng=random.Random(3)) as supervisor:
        await supervisor.every("flaky", flaky, policy)
        await supervisor.every("fine", fine, Policy(interval=10))
        # Failure 5 comes between 60+1+2+4+8 s and 60+1.5+3+6+12 s, failure 6 not
        # before 60+1+2+4+8+16 s: at 85 s the process is in its crash loop.
        await trio.sleep(85)
        states = {p.name: p for p in supervisor.processes()}
        assert states["flaky"].state == "crash-loop" and states["flaky"].restarts >= 5
        assert states["flaky"].last_error == f"RuntimeError: bug #{len(attempts)}"
        await trio.sleep(600)
        flaky_info = {p.name: p for p in supervisor.processes()}["flaky"]
    # Waits between attempts double (1, 2, 4, 8, 16, 30 capped), each stretched by at
    # most half of itself; then the process is back on its interval.
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    for gap, base in zip(gaps, (1, 2, 4, 8, 16, 30, 30), strict=False):
        assert base <= gap <= base * 1.5
    assert gaps[7] == 60  # healthy again: its interval
    assert (flaky_info.failures, flaky_info.restarts, flaky_info.state) == (7, 7, "waiting")
    assert fatal == [] and len(healthy) > 60  # the other process never stopped
    assert "process 'flaky' failed (5 in a row, a crash loop)" in caplog.text


async def test_the_same_seed_gives_the_same_backoff(autojump_clock: trio.testing.MockClock) -> None:
    import random

    from koru.nursery import Policy

    async def run(seed: int) -> list[float]:
        times: list[float] = []

        async def broken() -> None:
            times.append(trio.current_time())
            raise ValueError("always")

        async with supervise(lambda exc: None, rng=random.Random(seed)) as supervisor:
            await supervisor.every("broken", broken, Policy(interval=1, max_backoff=1000))
            await trio.sleep(500)
        return [round(t - times[0], 6) for t in times]

    assert await run(7) == await run(7)
    assert await run(7) != await run(8)


async def test_a_durability_error_in_a_process_is_fatal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from koru.nursery import Policy

    fatal: list[BaseException] = []

    async def loses_the_disk() -> None:
        raise koru.DurabilityError("fsync failed")

    async with supervise(fatal.append) as supervisor:
        await supervisor.every("doomed", loses_the_disk, Policy(interval=5))
        await trio.sleep(10)
        assert supervisor.processes()[0].state == "failed"
    assert [type(e) for e in fatal] == [koru.DurabilityError]


async def test_a_failing_task_never_cancels_the_callers_block(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Cancelling the nursery's own scope would cancel the block too, and the nursery
    # would swallow that Cancelled: the block would stop half-way without a word and
    # the code after it would run as if it had finished.
    fatal: list[BaseException] = []
    reached = []

    async def fails(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(5)
        raise RuntimeError("a bug in a background task")

    async with supervise(fatal.append) as supervisor:
        await supervisor.start("fails", fails)
        await trio.sleep(10)
        reached.append("after the failure")
        await trio.sleep(1)
        reached.append("the end of the block")
    assert reached == ["after the failure", "the end of the block"]
    assert len(fatal) == 1 and supervisor.running == set()


async def test_a_background_failure_never_silently_ends_the_users_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(
        self: Checkpointer, on_fatal: object, *, task_status: trio.TaskStatus[None]
    ) -> None:
        task_status.started()
        await trio.sleep(0.01)
        raise RuntimeError("checkpointer bug")

    monkeypatch.setattr(Checkpointer, "run", broken)
    stored = []
    with pytest.raises(koru.DatabaseClosedError) as caught:
        async with koru.open(tmp_path / "db") as db:
            await trio.sleep(0.2)  # the task fails meanwhile
            for i in range(3):  # the first write is refused, naming the cause
                await db.put("n", f"k{i}", i)
                stored.append(i)
    assert stored == []
    assert isinstance(caught.value.__cause__, RuntimeError)


async def test_a_task_that_fails_before_it_started_raises_its_own_error() -> None:
    """A task that fails while starting (before ``task_status.started()``) is part of
    starting: its own exception comes out of ``start``, not trio's "child exited
    without calling task_status.started()" with the cause only in the log."""
    fatal: list[BaseException] = []

    async def broken(*, task_status: trio.TaskStatus[None]) -> None:
        raise RuntimeError("cannot start")

    with pytest.raises(RuntimeError, match="cannot start"):
        async with supervise(fatal.append) as supervisor:
            await supervisor.start("broken", broken)
    assert fatal == []  # not a background failure: the caller sees it directly


async def test_a_process_failing_for_days_on_end_never_stops_the_database(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack: a periodic process that fails at every step for days (a disk that
    refuses what the expiry process writes, a model the vectors process cannot train;
    with the default policy, 1,025 failures in a row take about 85 hours). Its backoff
    was ``backoff * 2 ** (failures in a row - 1)``, computed before the cap: past
    1,024 the int no longer converted to a float, the OverflowError came out of the
    supervisor's restart loop, and it stopped the database as a background failure.
    What must hold: the process stays in its crash loop at the longest backoff, and
    nothing is fatal."""
    import random

    from koru.nursery import Policy

    attempts = 0

    async def broken() -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("still broken")

    fatal: list[BaseException] = []
    policy = Policy(interval=60)  # (the default backoff: 1.0 s doubling, up to 300 s)
    async with supervise(fatal.append, rng=random.Random(3)) as supervisor:
        await supervisor.every("broken", broken, policy)
        await trio.sleep(1100 * 300 * 1.25)
        (info,) = supervisor.processes()
    assert attempts > 1030 and fatal == [] and info.state == "crash-loop"
