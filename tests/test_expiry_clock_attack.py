"""A hostile reviewer's attacks on expiry under a clock that jumps: whatever the clock
does, a value a read found expired stays expired for every later read of the handle,
on every read path."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import kdelta
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


async def test_a_clock_set_back_across_a_reopen_never_brings_an_expired_value_back(
    tmp_path: Path,
) -> None:
    """The floor of the read time used to be the newest timestamp in the logs after a
    reopen: a value a read found expired (before the expiry process recorded it) came
    back when the database was reopened under a clock set back."""
    clock = SettableClock()
    path = tmp_path / "db"
    async with opened(path, clock) as db:
        v = await db.put("s", "a", "gone soon", ttl=10)
        clock.ns = v.expires
        assert await _present(db, "a") == [False] * 5
    clock.advance(-5)
    async with opened(path, clock) as db:
        assert await _present(db, "a") == [False] * 5
    async with opened(path, clock, readonly=True) as db:
        assert await _present(db, "a") == [False] * 5


async def _floor_written(path: Path) -> tuple[SettableClock, int]:
    """A database whose value "a" a read found expired, closed, and the clock set back
    to before its expiry; returns the clock and the expiry."""
    clock = SettableClock()
    async with opened(path, clock) as db:
        v = await db.put("s", "a", "gone soon", ttl=10)
        clock.ns = v.expires
        assert not await db.contains("s", "a")
    clock.advance(-5)
    assert v.expires is not None
    return clock, v.expires


@pytest.mark.parametrize("damage", ["flipped", "cut", "padded", "other node's"])
async def test_a_read_floor_not_signed_by_the_databases_node_key_is_ignored(
    tmp_path: Path, damage: str
) -> None:
    """The floor is a file anyone who can write the directory can change: one that
    could move it into the future would make every value with a time to live read as
    expired (and the expiry process record it so). Only the node key's signature
    makes it count; anything else is ignored and reads fall back to the logs."""
    from koru._read_floor import READ_FLOOR_FILE

    path = tmp_path / "db"
    clock, _ = await _floor_written(path)
    floor_file = path / READ_FLOOR_FILE
    data = floor_file.read_bytes()
    if damage == "flipped":  # a floor a year ahead, with the old signature
        ahead = int.from_bytes(data[:8], "big") + 365 * 86400 * 10**9
        floor_file.write_bytes(ahead.to_bytes(8, "big") + data[8:])
    elif damage == "cut":
        floor_file.write_bytes(data[:40])
    elif damage == "padded":  # a valid floor, and more after it
        floor_file.write_bytes(data + b"\0" * 100_000)
    else:
        other = tmp_path / "other"
        await _floor_written(other)
        floor_file.write_bytes((other / READ_FLOOR_FILE).read_bytes())
    ran = kdelta(path, "--json", "verify")  # a warning: the file is ignored, not harmful
    assert ran.code == 0
    (problem,) = ran.json()["problems"]
    assert problem["severity"] == "warning" and problem["where"] == READ_FLOOR_FILE
    async with opened(path, clock) as db:
        assert await db.get("s", "a") == "gone soon"  # the clock says: not yet expired
        assert await db.contains("s", "a")
