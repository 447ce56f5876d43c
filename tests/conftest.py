"""Shared fixtures: databases in both stores, and a deterministic clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import koru


class StepClock:
    """A wall clock that advances by ``step`` ns on every reading: deterministic and
    distinct timestamps without sleeping."""

    def __init__(self, start: int = 1_767_225_600 * 10**9, step: int = 1_000) -> None:
        self.now = start
        self.step = step

    def now_ns(self) -> int:
        self.now += self.step
        return self.now


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture(params=["memory", "file"])
async def db(
    request: pytest.FixtureRequest, tmp_path: Path, clock: StepClock
) -> AsyncIterator[koru.Database]:
    path = ":memory:" if request.param == "memory" else tmp_path / "db"
    async with koru.open(path, sync="os", clock=clock, seed=7) as database:
        yield database
