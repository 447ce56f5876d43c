"""A hostile reviewer's attacks on expiry under a clock that jumps: whatever the clock
does, a value a read found expired stays expired for every later read of the handle,
on every read path."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_expiry import SettableClock, opened

import koru


async def _present(db: koru.Database, key: str) -> list[bool]:
    """Whether each read path finds ``key`` current."""
    try:
        await db.get("s", key)
        got = True
    except koru.KeyNotFoundError:
        got = False
    try:
        db.get_nowait("s", key)
        nowait = True
    except koru.KeyNotFoundError:
        nowait = False
    except trio.WouldBlock:
        nowait = got
    rows = await db.query("s", {})
    return [
        got,
        nowait,
        await db.contains("s", key),
        key in await db.keys("s"),
        key in [row.key for row in rows],
    ]


async def test_a_clock_set_back_after_a_read_never_brings_an_expired_value_back(
    tmp_path: Path,
) -> None:
    """No write between the read that found the value expired and the clock set back:
    the next read answered the value again (the floor of the read time was the newest
    timestamp written, not the newest one read)."""
    clock = SettableClock()
    async with opened(tmp_path / "db", clock) as db:
        v = await db.put("s", "a", "gone soon", ttl=10)
        clock.ns = v.expires
        assert await _present(db, "a") == [False] * 5
        clock.advance(-5)
        assert await _present(db, "a") == [False] * 5
        await db.put("s", "b", "after")  # a write meanwhile changes nothing
        assert await _present(db, "a") == [False] * 5
        clock.advance(-3600)
        assert await _present(db, "a") == [False] * 5


@settings(max_examples=30)
@given(
    steps=st.lists(st.integers(-30, 30), min_size=1, max_size=12),
    checkpoint_at=st.integers(0, 12),
)
def test_once_absent_a_value_with_a_ttl_stays_absent_whatever_the_clock_does(
    tmp_path_factory: pytest.TempPathFactory, steps: list[int], checkpoint_at: int
) -> None:
    path = tmp_path_factory.mktemp("exp") / "db"

    async def run() -> None:
        clock = SettableClock()
        async with opened(path, clock) as db:
            await db.put("s", "a", {"v": 1}, ttl=10)
            gone = False
            for i, step in enumerate(steps):
                if i == checkpoint_at:
                    await db.checkpoint()  # the key read from a table from here on
                clock.advance(step)
                seen = await _present(db, "a")
                assert len(set(seen)) == 1, f"read paths disagree: {seen}"
                if gone:
                    assert seen == [False] * 5, "an expired value came back"
                gone = not seen[0]

    trio.run(run)
