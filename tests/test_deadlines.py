"""The keys with a time to live found by when they expire (``projections/_deadlines.py``):
the index by time answers exactly as a scan of every entry does, through every change
of the map, its snapshots and settles, a restore and questions asked in any order."""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

from _deadline_model import run
from hypothesis import given, settings
from hypothesis import strategies as st

from koru.projections import _deadlines as deadlines
from koru.projections._deadlines import SHIFT, Deadlines

KEYS = [("ns", f"k{i}") for i in range(12)] + [("other", "k0"), ("n" * 40, "x")]
TIMES = st.builds(
    lambda bucket, low: (bucket << SHIFT) + low,
    st.integers(0, 6),
    st.sampled_from([0, 1, (1 << SHIFT) // 2, (1 << SHIFT) - 1]),
)
BOUNDS = (-1, 0, 3 << SHIFT, 1 << 62)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(KEYS), TIMES),
        st.tuples(st.just("pop"), st.sampled_from(KEYS)),
        st.tuples(st.just("del"), st.sampled_from(KEYS)),
        st.tuples(st.just("ask"), TIMES),
        st.tuples(st.just("ask"), st.integers(-1, 8 << SHIFT)),
        st.tuples(st.just("snapshot")),
        st.tuples(st.just("settle")),
        st.tuples(st.just("restore")),
        st.tuples(st.just("clear")),
        st.tuples(st.just("refile")),
    ),
    max_size=120,
)


@settings(max_examples=400, deadline=None)
@given(OPS)
def test_the_index_answers_as_a_scan_through_every_change(ops: list[Any]) -> None:
    run(ops, BOUNDS)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_questions_far_ahead_move_few_buckets_and_answer_as_a_scan(ops: list[Any]) -> None:
    """With at most 2 buckets moved by one question, most questions reach further than
    that: they are answered from the heap as it is, and the due list never grows past
    what the questions that moved buckets reached."""
    with patch.object(deadlines, "MOVED_MOST", 2):
        run(ops, BOUNDS)


def test_a_question_years_ahead_leaves_the_due_list_short() -> None:
    """``expiring(within=...)`` of years reached every bucket and moved them all to
    the due list, where each bucket made or emptied later cost a shift of the list
    (h-ttl3). What must hold: such a question moves none, answers every key, and a
    question of now moves only the buckets due."""
    found = Deadlines()
    for i in range(10_000):
        found[("s", f"k{i}")] = (i + 10) << SHIFT
    assert len(found.at_most(1 << 62)) == 10_000
    assert found.count_at_most(1 << 62) == 10_000
    assert found._due == []
    assert [k for (_, k), _ in found.at_most(12 << SHIFT)] == ["k0", "k1", "k2"]
    assert found._due == [10, 11, 12]


def test_emptied_buckets_are_let_go_and_the_heap_stays_bounded() -> None:
    """A key moved on to a later bucket time after time (a session renewed at every
    request) leaves no bucket behind, and the heap of bucket numbers is refiled
    before it outgrows the buckets that exist."""
    found = Deadlines()
    for i in range(20_000):
        found[("s", "renewed")] = i << SHIFT
        found[("s", f"k{i % 3}")] = (i + 5) << SHIFT
    assert len(found._buckets) <= 4
    assert len(found._future) <= 2 * len(found._buckets) + 1024 + 1
    assert [k for (_, k), _ in found.at_most(19_999 << SHIFT)] == ["renewed"]
