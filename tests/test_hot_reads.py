"""The fused read paths (``get_at`` from a raw record, ``get``/``get_nowait`` from the
value cache's templates) answer exactly what the general path answers: the version
chosen from the whole history, the same metadata, fresh values (hypothesis)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock
from koru.projections import KvState

ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["a", "b"]), st.integers(0, 5)),
        st.tuples(st.just("delete"), st.sampled_from(["a", "b"]), st.just(0)),
        st.tuples(st.just("ttl"), st.sampled_from(["a", "b"]), st.integers(1, 3)),
    ),
    min_size=1,
    max_size=25,
)


def value_of(i: int) -> Any:
    return [{"n": i, "name": f"v{i}", "ok": True}, [i, "x", None], f"text {i}", {"deep": {"n": i}}][
        i % 4
    ]


@settings(max_examples=60, deadline=None)
@given(ops=ops, probes=st.lists(st.integers(-2, 60), min_size=1, max_size=20))
def test_get_at_equals_the_answer_read_from_the_whole_history(
    ops: list[tuple[str, str, int]], probes: list[int]
) -> None:
    async def run() -> None:
        clock = StepClock(step=10)
        async with koru.open(":memory:", clock=clock, processes=False) as db:
            for op, key, i in ops:
                if op == "put":
                    await db.put("ns", key, value_of(i))
                elif op == "ttl":
                    await db.put("ns", key, value_of(i), ttl=i * 15e-9)
                else:
                    with contextlib.suppress(koru.KeyNotFoundError):
                        await db.delete("ns", key)
            kv = db.projection("kv")
            assert isinstance(kv, KvState)
            for key in ("a", "b"):
                history = await db.history("ns", key)
                start = history[0].timestamp if history else clock.now
                for p in probes:
                    when = start + p * 5
                    # The reference: the last version at or before `when`, unless it is
                    # a deletion or its time to live is over by then.
                    older = [v for v in history if v.timestamp <= when]
                    expected = older[-1] if older else None
                    record = kv.at("ns", key, when)  # the general record path agrees
                    assert (record is None) == (expected is None)
                    if expected is not None and record is not None:
                        assert record.write_id.hex() == expected.write_id
                    if (
                        expected is None
                        or expected.deleted
                        or (expected.expires is not None and when >= expected.expires)
                    ):
                        with pytest.raises(koru.NoValueAtTimeError):
                            await db.get_at("ns", key, when)
                        continue
                    got = await db.get_at("ns", key, when)
                    assert got == expected
                    again = await db.get_at("ns", key, when)
                    if isinstance(got.value, dict | list):
                        assert got.value is not again.value  # fresh every time

    trio.run(run)


async def test_get_reads_equal_a_decode_however_often_they_are_served(tmp_path: Any) -> None:
    async with koru.open(tmp_path / "db", sync="never", processes=False) as db:
        for i in range(8):
            await db.put("ns", f"k{i}", value_of(i))
        for _ in range(4):  # first read decodes, later ones copy templates
            for i in range(8):
                got = await db.get("ns", f"k{i}")
                assert got == value_of(i)
                if isinstance(got, dict):
                    got.clear()
                elif isinstance(got, list):
                    got.append("changed")
                assert db.get_nowait("ns", f"k{i}") == value_of(i)


@settings(max_examples=40, deadline=None)
@given(
    rounds=st.lists(
        st.tuples(
            st.lists(st.integers(0, 400), min_size=1, max_size=60),  # stamps to write
            st.lists(st.integers(-5, 405), min_size=8, max_size=60),  # times asked
        ),
        min_size=1,
        max_size=4,
    )
)
def test_time_travel_through_a_listed_key_equals_the_search_of_its_records(
    rounds: list[tuple[list[int], list[int]]],
) -> None:
    """``KvState.at_raw`` lists a key's timestamps once it was searched often enough
    (see ``_count_search``): the answers stay those of the whole history, also after
    writes land before, among and after the listed versions (a stale list is never
    used), and for a second key searched in between."""
    from koru.projections._kv import _REC

    kv = KvState()
    written = 0

    def write(key: str, hlc: int) -> None:
        nonlocal written
        written += 1
        wid = written.to_bytes(32, "big")
        rec = _REC.pack(hlc, b"o" * 16, wid, wid, bytes(32), written, 1, 0, 0)
        kv._insert("ns", key, rec, hlc)

    for stamps, asked in rounds:
        for hlc in stamps:
            write("k", hlc)
            write("other", hlc)
        for key in ("k", "other", "k"):
            history = kv.history_raw("ns", key)
            for when in asked:
                older = [r for r in history if r[0] <= when]
                assert kv.at_raw("ns", key, when) == (older[-1] if older else None)
