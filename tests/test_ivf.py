"""The approximate index's parts, against their definitions: the selection of the best
reduced scores (whatever the order of the scores, removed rows never), each row's list
(the nearest centroid among all), and the reduced space's dimension."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from koru.projections._ivf import _SLACK, Assigner, IvfModel, _best
from koru.projections._ivf_train import _reduced_dimension


def defined_best(score: np.ndarray, keep: int) -> set[int]:
    """The places of the keep best non-NaN scores and of any within the slack of the
    last of them, by sorting every score."""
    valid = np.flatnonzero(~np.isnan(score))
    if len(valid) <= keep:
        return set(valid.tolist())
    boundary = float(np.sort(score[valid])[::-1][keep - 1])
    low = boundary - _SLACK * max(1.0, abs(boundary))
    return set(valid[score[valid] >= low].tolist())


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 3000),
    keep=st.integers(1, 200),
    removed=st.floats(0.0, 1.0),
    ties=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_best_scores_are_those_of_the_definition_in_any_order(
    n: int, keep: int, removed: float, ties: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    score = rng.standard_normal(n).astype(np.float32)
    if ties:  # many equal scores, and near-equal ones within the slack
        score = np.round(score, 1) + rng.choice([0.0, 1e-6], n).astype(np.float32)
    score[rng.random(n) < removed * 0.5] = np.nan  # removed rows hold NaN
    chosen = _best(score, keep)
    assert set(chosen.tolist()) == defined_best(score, keep)
    assert (np.diff(chosen) > 0).all()  # increasing places, each once
    # Another order of the same scores selects the same scores.
    order = rng.permutation(n)
    again = order[_best(score[order].copy(), keep)]
    assert set(again.tolist()) == set(chosen.tolist())


def test_an_unlucky_sample_falls_back_to_every_score() -> None:
    # The sampled places (every 8th) hold the highest scores: the threshold they give
    # is reached by fewer than keep scores, and the selection runs over every score.
    score = np.zeros(4000, np.float32)
    score[::8] = 10.0 + np.arange(500)
    score[1::8] = 5.0
    chosen = _best(score, 600)
    assert set(chosen.tolist()) == defined_best(score, 600)
    assert len(chosen) == 1000  # the 500 sampled and every 5.0 (tied at the boundary)


def test_each_row_goes_to_its_nearest_centroid_among_all() -> None:
    rng = np.random.default_rng(3)
    dim, reduced, nlist = 24, 8, 49
    projection = np.linalg.qr(rng.standard_normal((dim, reduced)))[0].astype(np.float32)
    centroids = rng.standard_normal((nlist, reduced)).astype(np.float32)
    model = IvfModel(projection, centroids, 5, 2, 0)
    units = rng.standard_normal((500, dim)).astype(np.float32)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    vectors, lists = Assigner(model)(units)
    wide = units.astype(np.float64) @ projection.astype(np.float64)
    distances = ((wide[:, None, :] - centroids.astype(np.float64)[None]) ** 2).sum(axis=2)
    assert (lists == distances.argmin(axis=1)).all()
    assert np.allclose(vectors, wide, atol=1e-6)
    # One row at a time, the same lists (an add puts a row where a build would).
    assert [int(Assigner(model)(units[i : i + 1])[1][0]) for i in range(50)] == lists[:50].tolist()


def test_the_reduced_space_keeps_all_the_signal_when_it_ends_in_a_cliff() -> None:
    # Low rank plus noise: 32 strong directions, then a floor. 95% takes 30, 99% 32.
    cliff = np.concatenate((np.full(32, 1.0), np.full(352, 0.0003)))
    share = np.cumsum(cliff) / cliff.sum()
    assert int(np.searchsorted(share, 0.95) + 1) < 32
    assert _reduced_dimension(share) == 32
    # A long tail: 99% would take far more directions than 95%; 95% is kept.
    tail = 1.0 / np.arange(1, 385)
    share = np.cumsum(tail) / tail.sum()
    assert _reduced_dimension(share) == int(np.searchsorted(share, 0.95) + 1)


def test_added_and_removed_rows_give_the_candidates_of_a_fresh_layout() -> None:
    # Rows added after the build sit apart from their lists, removed ones stay as NaN:
    # the candidates are still those of an index laid out anew over the live rows
    # (replicas and replays that laid rows out at other times search alike).
    from koru.projections._ivf import IvfIndex
    from koru.projections._ivf_train import train_ivf

    rng = np.random.default_rng(8)
    rows = rng.standard_normal((3000, 16)).astype(np.float32) @ rng.standard_normal((16, 48))
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    model = train_ivf(rows, np.arange(2000), seed=3)
    index = IvfIndex(model, rows, np.arange(2000))
    for row in range(2000, 2200):  # with the removals, under a fifth: not laid out again
        index.add(row, rows[row])
    removed = rng.choice(2200, 150, replace=False)
    for row in removed.tolist():
        index.remove(row)
    assert not index.stale()
    live = np.setdiff1d(np.arange(2200), removed)
    fresh = IvfIndex(model, rows, live)
    queries = rng.standard_normal((40, 48)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for query in queries:
        found = index.candidates(query, 10)
        assert not set(found.tolist()) & set(removed.tolist())
        assert sorted(found.tolist()) == sorted(fresh.candidates(query, 10).tolist())


def test_a_model_of_many_lists_routes_rows_through_coarse_groups() -> None:
    # Past FLAT_LISTS lists (c * c of them), a row goes to the nearest router (the mean
    # of a group's c lists), then to that group's nearest list; one row at a time too.
    from koru.projections._ivf import FLAT_LISTS

    rng = np.random.default_rng(5)
    width, dim, reduced = 33, 12, 6
    assert width * width > FLAT_LISTS
    projection = np.linalg.qr(rng.standard_normal((dim, reduced)))[0].astype(np.float32)
    centroids = rng.standard_normal((width * width, reduced)).astype(np.float32)
    model = IvfModel(projection, centroids, 5, 2, 0)
    units = rng.standard_normal((300, dim)).astype(np.float32)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    _, lists = Assigner(model)(units)
    wide = units.astype(np.float64) @ projection.astype(np.float64)
    grouped = centroids.astype(np.float64).reshape(width, width, reduced)
    routers = grouped.mean(axis=1)
    group = ((wide[:, None, :] - routers[None]) ** 2).sum(axis=2).argmin(axis=1)
    near = ((wide[:, None, :] - grouped[group]) ** 2).sum(axis=2).argmin(axis=1)
    assert (lists == group * width + near).all()
    assert [int(Assigner(model)(units[i : i + 1])[1][0]) for i in range(30)] == lists[:30].tolist()
