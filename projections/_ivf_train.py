"""Training the approximate index of a vector group (see :mod:`._ivf`): the reduced
space, the coarse lists, and the search parameters calibrated on the group's own rows.

Seeded: the same rows and seed give the same model. It runs once, on the node that
writes the model event; every replica then folds that event instead of training.

The lists come from a two-level k-means (Lloyd's iterations in numpy): about
``sqrt(nlist)`` coarse clusters, each split into lists in proportion to its rows. Why
two levels: a flat k-means into 400 lists costs 400 distances per row and iteration,
the two levels 40, for lists nearly as good; and a coarse cluster's lists sit side by
side in the layout (ordered along its widest direction), so a query's probed lists
often form runs scanned by one product. Two flat iterations then finish the lists (the
index assigns each row to the nearest of all lists, across coarse borders). Training
runs with one BLAS thread: its many small products cost more in waking threads than in
arithmetic on a busy machine.

The parameters are calibrated on held-out rows as queries (their exact neighbours as
truth) for a recall@10 of :data:`RECALL_TARGET`, then given a margin for queries the
sample did not see.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from koru.events import MAX_EVENT_SIZE

from ._ivf import FLAT_LISTS, IvfIndex, IvfModel

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["MODEL_BYTES", "RECALL_TARGET", "lists_for", "most_reduced", "train_ivf"]

#: The recall@10 training calibrates for (searches of held-out rows); the promise is
#: 0.95 for queries distributed like the data.
RECALL_TARGET = 0.96
#: Share of the variance the reduced space keeps, and its least dimension; and the
#: share it keeps when that costs few more dimensions (see _reduced_dimension).
_VARIANCE = 0.95
_ALL_VARIANCE = 0.99
_MIN_REDUCED = 16
#: Rows used to find the principal directions; rows per list (on average).
_PCA_SAMPLE = 20_000
_PER_LIST = 250
_MAX_LISTS = 8192
#: Rows per coarse cluster in the sample that trains the coarse level.
_COARSE_SAMPLE = 256
_ITERATIONS = 12
_REFINE = 2
_CALIBRATION_QUERIES = 256
#: Bytes a model's two matrices (projection and centroids) may take: its event, with
#: its names and header, must stay under MAX_EVENT_SIZE, or it could never be written
#: (at 4,096 dimensions, a model of 1,356 reduced dimensions and 8,281 lists is over
#: it; one of 3,970, as rows spread over every dimension keep, from 144 lists).
MODEL_BYTES = MAX_EVENT_SIZE - (64 << 10)
_RERANK_CHOICES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_K = 10


def train_ivf(rows: npt.NDArray[np.float32], live: npt.NDArray[np.intp], seed: int) -> IvfModel:
    """Train a model on the normalized ``rows[live]`` (see the module doc); seeded, so
    the same rows and seed give the same model. Seconds for 100,000 rows of 384: run
    it in a worker thread."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    # One BLAS thread: training runs beside the event loop on a machine whose cores are
    # busy, where the many small products here spend more on waking threads than on
    # arithmetic.
    with threadpool_limits(limits=1, user_api="blas"):
        return _train(rows, live, seed)


def _train(rows: npt.NDArray[np.float32], live: npt.NDArray[np.intp], seed: int) -> IvfModel:
    import numpy as np

    rng = np.random.default_rng(seed)
    m, dim = len(live), rows.shape[1]
    # The reduced space: principal directions of the second moments (not centred: dot
    # products, not distances to the mean, are what a search ranks by).
    sample = rows[np.sort(rng.choice(live, min(m, _PCA_SAMPLE), replace=False))]
    moments = (sample.T.astype(np.float64) @ sample.astype(np.float64)) / len(sample)
    variance, directions = np.linalg.eigh(moments)
    variance, directions = variance[::-1], directions[:, ::-1]
    share = np.cumsum(variance) / max(float(variance.sum()), 1e-300)
    reduced = max(min(dim, _MIN_REDUCED), min(dim, _reduced_dimension(share)))
    reduced = min(reduced, most_reduced(dim, lists_for(m)))
    projection = np.ascontiguousarray(directions[:, :reduced], dtype=np.float32)

    points = np.empty((m, reduced), np.float32)
    for i in range(0, m, 8192):
        points[i : i + 8192] = rows[live[i : i + 8192]] @ projection
    nlist = max(4, min(_MAX_LISTS, m // _PER_LIST))
    # Then, where the index assigns each row to the nearest of all lists, a few
    # iterations over every row and all lists at once: rows near a coarse cluster's
    # border move to the list they are nearest, and the lists fit their rows better
    # (about 5% fewer rows scanned for a recall). Larger models route through the
    # coarse clusters, as the two levels were trained.
    centroids = _two_level(points, nlist, rng)
    if len(centroids) <= FLAT_LISTS:
        centroids = _lloyd(points, centroids, _REFINE)
    model = IvfModel(projection, centroids, len(centroids), _RERANK_CHOICES[-1], m)
    rerank, nprobe = _calibrate(model, rows, live, points, rng)
    return model._replace(rerank=rerank, nprobe=nprobe)


def lists_for(rows: int) -> int:
    """How many lists a model trained on ``rows`` rows has: ``c * c`` (see _two_level)."""
    return _width(max(4, min(_MAX_LISTS, rows // _PER_LIST))) ** 2


def _width(nlist: int) -> int:
    return max(2, round(math.sqrt(nlist)))


def most_reduced(dim: int, lists: int) -> int:
    """The most reduced dimensions whose model (``dim`` x reduced projection, ``lists``
    x reduced centroids, float32) fits :data:`MODEL_BYTES`."""
    return max(1, MODEL_BYTES // (4 * (dim + lists)))


def _reduced_dimension(share: npt.NDArray[np.float64]) -> int:
    """How many principal directions the reduced space keeps, from the cumulative
    share of variance they carry: enough for :data:`_VARIANCE`, or for
    :data:`_ALL_VARIANCE` when that takes at most an eighth more (at least 2).

    Why: embeddings of low rank plus noise (the spectrum ends in a cliff) lose real
    signal in the last few percent, and ranking in a space without it needs deep
    re-ranking and more lists to reach a recall; keeping those few directions costs a
    few more bytes per scanned row. A long-tailed spectrum keeps the cheaper space.
    """
    import numpy as np

    most = int(np.searchsorted(share, _VARIANCE) + 1)
    almost_all = int(np.searchsorted(share, _ALL_VARIANCE) + 1)
    return almost_all if almost_all <= most + max(2, most // 8) else most


def _two_level(points: npt.NDArray[np.float32], nlist: int, rng: Any) -> npt.NDArray[np.float32]:
    """``c * c`` centroids, ``c`` near ``sqrt(nlist)``: ``c`` coarse clusters, each
    split into ``c`` lists, listed coarse cluster after coarse cluster (the layout
    order of the lists)."""
    import numpy as np

    m = len(points)
    width = _width(nlist)
    sample = points[np.sort(rng.choice(m, min(m, _COARSE_SAMPLE * width), replace=False))]
    top = _kmeans(sample, width, rng)
    labels = _nearest(points, top)
    parts = []
    for j in range(width):
        members = points[labels == j]
        if not len(members):  # an empty coarse cluster: its lists stay empty
            members = top[j : j + 1]
        found = _kmeans(members, width, rng)
        if len(found) < width:  # fewer rows than lists: repeats, whose lists stay empty
            found = found[np.arange(width) % len(found)]
        # Along the cluster's widest direction: a query's nearest lists then tend to
        # be neighbours in the layout, scanned as one span.
        centred = (found - found.mean(axis=0)).astype(np.float64)
        widest = np.linalg.svd(centred, full_matrices=False)[2][0]
        parts.append(found[np.argsort(centred @ widest, kind="stable")])
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def _nearest(
    points: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]
) -> npt.NDArray[np.intp]:
    import numpy as np

    c2 = np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(len(points), np.intp)
    for i in range(0, len(points), 4096):
        out[i : i + 4096] = np.argmin(c2 - 2.0 * (points[i : i + 4096] @ centroids.T), axis=1)
    return out


def _kmeans(points: npt.NDArray[np.float32], k: int, rng: Any) -> npt.NDArray[np.float32]:
    """``k`` centroids of ``points`` by Lloyd's iterations from a seeded sample (a
    centroid that loses every point keeps its place)."""
    import numpy as np

    if len(points) <= k:
        return points.copy()
    centroids: npt.NDArray[np.float32] = points[
        np.sort(rng.choice(len(points), k, replace=False))
    ].copy()
    return _lloyd(points, centroids, _ITERATIONS)


def _lloyd(
    points: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32], iterations: int
) -> npt.NDArray[np.float32]:
    """``centroids`` moved by ``iterations`` of Lloyd's (each to the mean of the points
    nearest it; one that loses every point keeps its place), in place."""
    import numpy as np

    k = len(centroids)
    for _ in range(iterations):
        labels = _nearest(points, centroids)
        order = np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=k)
        filled = counts > 0
        starts = (np.cumsum(counts) - counts)[filled]
        sums = np.add.reduceat(points[order].astype(np.float64), starts, axis=0)
        centroids[filled] = (sums / counts[filled, None]).astype(np.float32)
    return centroids


def _calibrate(
    model: IvfModel,
    rows: npt.NDArray[np.float32],
    live: npt.NDArray[np.intp],
    points: npt.NDArray[np.float32],
    rng: Any,
) -> tuple[int, int]:
    """The least re-ranking depth, then the fewest probed lists, whose searches of
    held-out rows reach :data:`RECALL_TARGET` against exact search; then a margin."""
    import numpy as np

    m = len(live)
    picked = np.sort(rng.choice(m, min(m, _CALIBRATION_QUERIES), replace=False))
    queries = live[picked]
    unit = rows[queries]
    k = min(_K, m - 1)
    nlist = len(model.centroids)
    if k < 1:
        return 1, nlist
    # Truth: each query's k nearest live rows (positions in ``live``), itself excluded.
    truth = np.empty((len(queries), k), np.intp)
    for i in range(0, len(queries), 64):
        scores = np.empty((len(unit[i : i + 64]), m), np.float32)
        for j in range(0, m, 16_384):
            scores[:, j : j + 16_384] = unit[i : i + 64] @ rows[live[j : j + 16_384]].T
        scores[np.arange(len(scores)), picked[i : i + 64]] = -np.inf
        truth[i : i + 64] = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    truth_sets = [set(live[t].tolist()) for t in truth]

    def recall(found: list[set[int]]) -> float:
        return sum(len(f & t) for f, t in zip(found, truth_sets, strict=True)) / (k * len(found))

    def best(candidates: npt.NDArray[np.intp], query: int) -> set[int]:
        candidates = candidates[candidates != query]
        exact = rows[candidates] @ rows[query]
        return set(candidates[np.argsort(-exact, kind="stable")[:k]].tolist())

    # Re-ranking depth with every row considered: the loss of the reduced space alone.
    deepest = min(m, _RERANK_CHOICES[-1] * k + 1)
    order = np.empty((len(queries), deepest), np.intp)
    for i in range(0, len(queries), 64):
        scores = (unit[i : i + 64] @ model.projection) @ points.T
        top = np.argpartition(-scores, deepest - 1, axis=1)[:, :deepest]
        ranked = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        order[i : i + 64] = np.take_along_axis(top, ranked, axis=1)
    rerank, full = _RERANK_CHOICES[-1], 0.0
    for factor in _RERANK_CHOICES:
        depth = min(m, factor * k + 1)
        full = recall([best(live[order[i, :depth]], q) for i, q in enumerate(queries.tolist())])
        # A deep re-ranking is cheap (a gather of a few dozen rows) next to probing more
        # lists: leave the reduced space a quarter of the misses the target allows.
        if full >= 1 - (1 - RECALL_TARGET) / 4:
            rerank = factor
            break
    # Lists: the share of true neighbours whose list is among a query's p nearest, for
    # every p at once; the least p whose share (times the loss above) reaches the target.
    index = IvfIndex(model._replace(rerank=rerank), rows, live)
    lists = index.lists_of(live[truth.ravel()]).reshape(truth.shape)
    reduced_q = unit @ model.projection
    centroids = model.centroids
    distance = (centroids * centroids).sum(1) - 2.0 * (reduced_q @ centroids.T)
    rank = np.argsort(np.argsort(distance, axis=1, kind="stable"), axis=1)
    needed = np.take_along_axis(rank, lists, axis=1) + 1
    share = np.cumsum(np.bincount(needed.ravel(), minlength=nlist + 1)[1:]) / needed.size
    nprobe = min(nlist, int(np.searchsorted(share, RECALL_TARGET / max(full, 1e-9))) + 1)
    # Checked by real searches (the two losses overlap), more lists until it holds.
    while nprobe < nlist:
        index.model = model._replace(rerank=rerank, nprobe=nprobe)
        if recall([best(index.candidates(rows[q], k + 1), q) for q in queries.tolist()]) >= (
            RECALL_TARGET
        ):
            break
        nprobe = min(nlist, nprobe + max(1, nprobe // 8))
    # A tenth more lists (at least one) than the sample needed: fresh queries that fall
    # between lists more often than the sample did still find their neighbours.
    return rerank, min(nlist, nprobe + max(1, nprobe // 10))
