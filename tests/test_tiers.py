"""The tiers of the key/value state: memory (what changed since the last checkpoint),
warm (written lately), hot (read lately from tables), cold (tables on disk, merged by
the consolidation process); every read answers the same whichever tier holds the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from koru.events import SLEEP, ConsolidationEvent, Table, decode_event, encode_table, table_name
from koru.projections._kv import merge_tables

names = st.sampled_from(["a", "b", "c", "d"])
tables_st = st.lists(
    st.dictionaries(st.tuples(names, names), st.binary(min_size=1, max_size=8), max_size=8),
    min_size=1,
    max_size=5,
)


def table_of(model: dict[tuple[str, str], bytes]) -> Table:
    pieces = encode_table((ns, k, v) for (ns, k), v in model.items())
    return Table(b"".join(pieces), table_name(pieces))


@settings(max_examples=200)
@given(tables=tables_st)
def test_a_merge_keeps_the_newest_tables_entry_for_each_key(
    tables: list[dict[tuple[str, str], bytes]],
) -> None:
    expected: dict[tuple[str, str], bytes] = {}
    for model in reversed(tables):  # oldest first: newer ones overwrite
        expected.update(model)
    merged = list(merge_tables([table_of(m) for m in tables]))
    assert {(ns, k): v for ns, k, v in merged} == expected
    assert [(ns, k) for ns, k, _ in merged] == sorted(
        expected, key=lambda s: (s[0].encode(), s[1].encode())
    )


async def test_each_tier_answers_and_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, sync="os", processes=False) as db:
        for i in range(200):
            await db.put("users", f"u{i}", {"i": i})
        tiers = (await db.stats()).tiers
        assert tiers.memory_bytes > 0 and tiers.cold_tables == 0
        await db.checkpoint()  # memory becomes a table, still readable from memory
        tiers = (await db.stats()).tiers
        assert (tiers.memory_bytes, tiers.cold_tables) == (0, 1) and tiers.warm_bytes > 0
        assert await db.get("users", "u7") == {"i": 7}
        assert (await db.stats()).tiers.warm_hits >= 1
    async with koru.open(path, sync="os", processes=False) as db:
        tiers = (await db.stats()).tiers
        assert (tiers.memory_bytes, tiers.warm_bytes, tiers.cold_tables) == (0, 0, 1)
        assert await db.get("users", "u9") == {"i": 9}  # cold: searched, then promoted
        assert await db.get("users", "u9") == {"i": 9}  # hot
        tiers = (await db.stats()).tiers
        assert tiers.cold_reads == 1 and tiers.hot_hits >= 1 and tiers.hot_bytes > 0
        await db.put("users", "u9", "changed")  # copied up to memory, dropped from hot
        assert await db.get("users", "u9") == "changed"
        assert (await db.stats()).tiers.hot_bytes == 0
        assert len(await db.keys("users")) == 200
        assert await db.namespaces() == ["users"]


async def test_consolidation_merges_tables_and_records_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "db"
    # Built without processes: under the mock clock, time jumps while a checkpoint is
    # written in a worker thread, and the process would run in the middle of this.
    async with koru.open(path, sync="os", processes=False) as db:
        for round_ in range(8):
            await db.put_batch([("ns", f"k{i}", [round_, i]) for i in range(50)])
            await db.checkpoint()
    clock = koru.TrioClock()
    async with koru.open(path, sync="os", clock=clock, processes={"consolidation": 60}) as db:
        db._kv.max_tables = 3
        before = (await db.stats()).tiers.cold_tables
        assert before >= 4
        await trio.sleep(61)
        # The merge runs in a worker thread, while which the mock clock may jump on.
        for _ in range(100_000):
            [info] = [p for p in await db.processes() if p.name == "consolidation"]
            if info.runs:
                break
            await trio.sleep(0.001)
        tiers = (await db.stats()).tiers
        assert tiers.compactions >= 1 and tiers.cold_tables <= 3
        recorded = [decode_event(e) for e in await db.feed_events(db.node_id, SLEEP)]
        assert recorded and all(isinstance(e, ConsolidationEvent) for e in recorded)
        assert recorded[-1].tables == tiers.cold_tables
        assert await db.get("ns", "k3") == [7, 3]
        expected = {f"k{i}": [7, i] for i in range(50)}
    names = {p.stem for p in (path / "tables").glob("*.tab")}
    async with koru.open(path, sync="os", processes=False) as db:
        assert {t.name for t in db._kv.tables} == names  # and nothing else on disk
        assert {k: await db.get("ns", k) for k in await db.keys("ns")} == expected


async def test_orphan_tables_are_removed_when_opened_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, processes=False) as db:
        await db.put("a", "b", 1)
    orphan = path / "tables" / ("0" * 32 + ".tab")
    orphan.write_bytes(b"left by a crash between a table and its checkpoint")
    async with koru.open(path, readonly=True) as db:  # a reader changes nothing
        assert await db.get("a", "b") == 1
    assert orphan.exists()
    async with koru.open(path, processes=False) as db:
        assert await db.get("a", "b") == 1
    assert not orphan.exists()


async def test_a_missing_table_rebuilds_from_the_log(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, processes=False) as db:
        for i in range(20):
            await db.put("a", f"k{i}", i)
        digest = await db.digest()
    for table in (path / "tables").glob("*.tab"):
        os.unlink(table)
    async with koru.open(path, processes=False) as db:
        stats = await db.stats()
        assert "kv" in stats.projections_rebuilt
        assert await db.digest() == digest and await db.get("a", "k5") == 5


@pytest.mark.parametrize("capacity", [0, 600])
async def test_tiny_tiers_still_answer_everything(tmp_path: Path, capacity: int) -> None:
    async with koru.open(tmp_path / "db", sync="os", processes=False) as db:
        db._kv.warm_capacity = db._kv.hot_capacity = capacity
        model = {}
        for round_ in range(5):
            for i in range(30):
                if (i + round_) % 7:
                    await db.put("n", f"k{i}", [round_, i])
                    model[f"k{i}"] = [round_, i]
            await db.checkpoint()
        for key, value in model.items():
            assert await db.get("n", key) == value
            assert (await db.history("n", key))[-1].value == value
        assert await db.keys("n") == sorted(model)
