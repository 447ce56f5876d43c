"""``get_nowait``: the current value without waiting when it is at hand (memory and the
value cache), ``trio.WouldBlock`` when it needs I/O, and otherwise exactly what ``get``
answers (the same errors, fresh objects, expiry)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock


async def test_a_hot_value_comes_back_without_waiting(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db", sync="os", processes=False) as db:
        await db.put("users", "alice", {"tags": ["a"]})
        value = db.get_nowait("users", "alice")
        assert value == {"tags": ["a"]}
        value["tags"].append("mutated")  # a fresh object: the database is untouched
        assert db.get_nowait("users", "alice") == {"tags": ["a"]}
        await db.delete("users", "alice")
        for ns, key in (("users", "alice"), ("users", "nobody"), ("nothing", "x")):
            with pytest.raises(koru.KeyNotFoundError):
                db.get_nowait(ns, key)
        with pytest.raises(koru.InvalidDataError):
            db.get_nowait("", "x")
        with pytest.raises(koru.InvalidDataError):
            db.get_nowait("users", 7)  # type: ignore[arg-type]
    with pytest.raises(koru.DatabaseClosedError):
        db.get_nowait("users", "alice")


async def test_it_is_not_a_checkpoint() -> None:
    """It neither yields nor raises Cancelled: a cancelled scope lets it run."""
    async with koru.open(":memory:", processes=False) as db:
        await db.put("a", "b", 1)
        with trio.CancelScope() as scope:
            scope.cancel()
            assert db.get_nowait("a", "b") == 1
            with pytest.raises(trio.Cancelled):
                await db.get("a", "b")


async def test_values_that_need_io_would_block(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, sync="os", processes=False, cache_bytes=0) as db:
        await db.put("users", "alice", "x" * 100)
        with pytest.raises(trio.WouldBlock):  # the bytes are in the log, not cached
            db.get_nowait("users", "alice")
        assert await db.get("users", "alice") == "x" * 100
    async with koru.open(path, sync="os", processes=False) as db:
        # After a reopen the key is in a table on disk: a search would be I/O.
        with pytest.raises(trio.WouldBlock):
            db.get_nowait("users", "alice")
        with pytest.raises(trio.WouldBlock):
            db.get_nowait("users", "nobody")  # absence too takes a search
        assert await db.get("users", "alice") == "x" * 100  # promoted to the hot tier
        assert db.get_nowait("users", "alice") == "x" * 100
        await db.checkpoint()  # memory becomes a table; warm layers still answer
        await db.put("users", "bob", 1)
        assert db.get_nowait("users", "bob") == 1


async def test_an_expired_value_is_gone(tmp_path: Path) -> None:
    clock = StepClock()
    async with koru.open(tmp_path / "db", clock=clock, sync="os", processes=False) as db:
        await db.put("s", "k", 1, ttl=1.0)
        assert db.get_nowait("s", "k") == 1
        clock.now += 2 * 10**9
        with pytest.raises(koru.KeyNotFoundError):
            db.get_nowait("s", "k")


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["put", "delete", "checkpoint"]), st.integers(0, 5)),
        max_size=30,
    )
)
def test_it_agrees_with_get_whenever_it_answers(ops: list[tuple[str, int]]) -> None:
    async def main() -> None:
        async with koru.open(":memory:", processes=False) as db:
            for op, i in ops:
                if op == "put":
                    await db.put("n", f"k{i}", {"i": i, "op": len(ops)})
                elif op == "delete" and await db.contains("n", f"k{i}"):
                    await db.delete("n", f"k{i}")
                elif op == "checkpoint":
                    await db.checkpoint()
                for j in range(6):
                    try:
                        expected = await db.get("n", f"k{j}")
                    except koru.KeyNotFoundError:
                        expected = KeyError
                    try:
                        got = db.get_nowait("n", f"k{j}")
                    except trio.WouldBlock:
                        continue
                    except koru.KeyNotFoundError:
                        got = KeyError
                    assert got == expected

    trio.run(main)


async def test_flat_values_served_from_templates_are_never_shared(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db", sync="os", processes=False) as db:
        record = {"name": "alice", "age": 30, "active": True}
        await db.put("users", "alice", record)
        await db.put("users", "list", [1, "two", None])
        for read in range(3):  # a decode, then copies of the template
            got = db.get_nowait("users", "alice") if read % 2 else await db.get("users", "alice")
            assert got == record
            got["age"] = 99
            got["extra"] = "x"
            items = db.get_nowait("users", "list")
            assert items == [1, "two", None]
            items.append("more")
        await db.put("users", "alice", {"name": "alice", "age": 31, "active": True})
        assert db.get_nowait("users", "alice")["age"] == 31
