"""A whole ``history`` served from its prepared copy (``HistoryCache``) answers exactly
what building it afresh answers, after any writes in between, and each call gets its
own value objects (hypothesis)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock
from koru.projections import KvState

KEYS = ["a", "b", "c"]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(KEYS), st.integers(0, 7)),
        st.tuples(st.just("delete"), st.sampled_from(KEYS), st.just(0)),
        st.tuples(st.just("ttl"), st.sampled_from(KEYS), st.integers(1, 3)),
        st.tuples(st.just("history"), st.sampled_from(KEYS), st.just(0)),
    ),
    min_size=1,
    max_size=40,
)


def value_of(i: int, flat: bool) -> Any:
    if flat:  # values served from templates: scalars, flat dicts and lists
        return [{"n": i, "name": f"v{i}", "ok": True}, [i, None, 1.5], f"text {i}", i][i % 4]
    return [{"n": i, "tags": ["x", i]}, [i, None], f"text {i}", {"deep": {"n": i}}][i % 4]


@settings(max_examples=80, deadline=None)
@given(ops=ops, size=st.integers(1, 3), flat=st.booleans())
def test_a_kept_history_equals_one_built_afresh(
    ops: list[tuple[str, str, int]], size: int, flat: bool
) -> None:
    async def run() -> None:
        async with koru.open(":memory:", clock=StepClock(), processes=False) as db:
            cache = db._reads.histories
            # Keep every history, in a cache smaller than the keys (evictions too).
            cache.min_versions, cache.size = 1, size

            async def check(key: str) -> None:
                kept = await db.history("ns", key)
                # A `latest` larger than the history takes the path that keeps nothing.
                fresh = await db.history("ns", key, latest=10**6)
                assert kept == fresh
                again = await db.history("ns", key)
                assert again == fresh
                for row in kept + again:
                    if isinstance(row.value, list | dict):
                        row.value.clear()  # the caller's own objects
                assert await db.history("ns", key) == fresh
                assert await db.history("ns", key) == fresh

            for op, key, i in ops:
                if op == "put":
                    await db.put("ns", key, value_of(i, flat))
                elif op == "ttl":
                    await db.put("ns", key, value_of(i, flat), ttl=i * 1e-6)
                elif op == "delete":
                    with contextlib.suppress(koru.KeyNotFoundError):
                        await db.delete("ns", key)
                else:
                    await check(key)
            for key in KEYS:
                await check(key)
            assert len(cache._entries) <= size

    trio.run(run)


def test_a_long_history_is_prepared_on_its_second_unchanged_read() -> None:
    async def run() -> None:
        async with koru.open(":memory:", clock=StepClock(), processes=False) as db:
            cache = db._reads.histories
            entries = cache._entries
            for i in range(cache.min_versions):
                await db.put("ns", "long", {"i": i})
            await db.put("ns", "short", 1)
            long = await db.history("ns", "long")
            assert [r.value for r in long] == [{"i": i} for i in range(cache.min_versions)]
            assert [r.value for r in await db.history("ns", "short")] == [1]
            assert list(entries) == [("ns", "long")]  # noted, the short one not at all
            assert entries[("ns", "long")][1] is None
            assert await db.history("ns", "long") == long
            assert entries[("ns", "long")][1] is not None  # prepared
            assert entries[("ns", "long")][3] is not None  # flat values: templates
            served = await db.history("ns", "long")  # served from them
            assert served == long
            served[0].value["i"] = "changed"  # a copy: the template keeps its value
            assert await db.history("ns", "long") == long
            await db.put("ns", "long", "next")
            grown = await db.history("ns", "long")
            assert entries[("ns", "long")][1] is None  # changed: noted afresh
            assert grown[:-1] == long and grown[-1].value == "next"
            assert grown[-1].previous == long[-1].write_id

    trio.run(run)


def test_a_whole_history_of_values_not_cached_reads_them_from_the_log(tmp_path: Path) -> None:
    """The whole-history path reads the packed records twice (their content ids, then
    the rows); values the cache lacks, and deletions, are filled in from the log."""

    async def run() -> None:
        async with koru.open(tmp_path, clock=StepClock(), processes=False) as db:
            for i in range(40):
                await db.put("ns", "k", {"i": i, "tag": "x" * (i % 3)})
                if i % 9 == 8:
                    await db.delete("ns", "k")
            expected = await db.history("ns", "k", latest=10**6)
        async with koru.open(tmp_path, clock=StepClock(), processes=False) as db:
            blob = db._reads.kv.history_blob("ns", "k")
            assert blob is not None
            records = KvState.records(blob)
            assert list(KvState.iter_records(blob)) == records
            assert KvState.content_ids(blob) == [r[3] for r in records]
            assert None in db._reads.values.cache.peek_all(KvState.content_ids(blob))
            whole = await db.history("ns", "k")
            assert whole == expected
            assert [r.deleted for r in whole].count(True) == 4
            assert await db.history("ns", "k") == expected  # noted, then prepared
            assert await db.history("ns", "k") == expected

    trio.run(run)
