"""The approximate index of a vector group: an inverted file (IVF) in a reduced space,
with exact re-ranking.

A model (trained by :func:`train_ivf`, carried by a ``VectorIndexEvent``) holds a
projection from ``dim`` to ``reduced`` dimensions (the top principal directions of the
vectors' second moments, so dot products are kept as far as the data's variance allows)
and ``nlist`` k-means centroids in that space. Each live row sits in the list of its
nearest centroid, its reduced vector stored contiguously with the list's others. A
search projects the query, probes the ``nprobe`` lists whose centroids are nearest,
scores their rows in the reduced space, and hands the best ``rerank * top_k`` to the
exact scores of the full vectors.

Why reduce before probing: embeddings vary along far fewer directions than they have
dimensions, so scoring candidates in the reduced space costs a fraction of the full
product, and re-ranking a few candidates exactly restores full precision. Training
calibrates ``rerank`` and ``nprobe`` on the group's own vectors (held-out rows as
queries, their exact neighbours as truth) for a recall@10 of :data:`RECALL_TARGET`.

The lists are a function of the model and the live rows alone (each row goes to its
nearest centroid, ties to the lower index), so every replica holding the same events,
and every replay, has the same index.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["RECALL_TARGET", "IvfIndex", "IvfModel", "train_ivf"]

#: The recall@10 training calibrates for (searches of held-out rows); the promise is
#: 0.95 for queries distributed like the data.
RECALL_TARGET = 0.97
#: Share of the variance the reduced space keeps, and its least dimension.
_VARIANCE = 0.95
_MIN_REDUCED = 16
#: Rows used to find the principal directions and to train k-means (per centroid).
_PCA_SAMPLE = 20_000
_KMEANS_PER_LIST = 64
_CALIBRATION_QUERIES = 256
_RERANK_CHOICES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_K = 10
_ASSIGN_CHUNK = 16_384
#: Reduced scores within this share of the boundary score all go on to exact scoring
#: (rounding alone must never decide which rows do: see VectorGroup).
_SLACK = 1e-4


class IvfModel(NamedTuple):
    """A trained model, as a ``VectorIndexEvent`` carries it."""

    projection: npt.NDArray[np.float32]  # dim x reduced
    centroids: npt.NDArray[np.float32]  # nlist x reduced
    nprobe: int
    rerank: int
    trained: int

    @classmethod
    def from_bytes(
        cls,
        dim: int,
        reduced: int,
        nlist: int,
        nprobe: int,
        rerank: int,
        trained: int,
        projection: bytes,
        centroids: bytes,
    ) -> IvfModel:
        import numpy as np

        p = np.frombuffer(projection, "<f4").reshape(dim, reduced).astype(np.float32)
        c = np.frombuffer(centroids, "<f4").reshape(nlist, reduced).astype(np.float32)
        return cls(p, c, nprobe, rerank, trained)

    def to_bytes(self) -> tuple[bytes, bytes]:
        return (
            self.projection.astype("<f4").tobytes(),
            self.centroids.astype("<f4").tobytes(),
        )


class IvfIndex:
    """The lists of one group under one model (see the module doc).

    Layout: the reduced vectors in one contiguous matrix, list after list as of the
    last build (``_starts`` gives each list's run), then the rows added since, in
    arrival order (their lists in ``_lists``). A removed row keeps its place with id -1
    and a zero vector; when additions and removals reach a fifth of the rows, the lists
    are rebuilt. A search scans the probed lists' runs (adjacent lists in one product:
    lists are laid out along their centroids' widest direction, so a query's nearest
    lists often adjoin) and the added rows of those lists.
    """

    __slots__ = (
        "_built",
        "_c2",
        "_centroids",
        "_ids",
        "_lists",
        "_place",
        "_pos",
        "_projection",
        "_removed",
        "_size",
        "_starts",
        "_vecs",
        "model",
    )

    def __init__(
        self, model: IvfModel, rows: npt.NDArray[np.float32], live: npt.NDArray[np.intp]
    ) -> None:
        import numpy as np

        self.model = model
        self._projection = model.projection
        self._centroids = model.centroids
        self._c2 = np.einsum("ij,ij->i", model.centroids, model.centroids)
        self._build(rows, live, len(rows))

    def _build(self, rows: npt.NDArray[np.float32], live: npt.NDArray[np.intp], n: int) -> None:
        import numpy as np

        nlist, reduced = self._centroids.shape
        vectors = np.empty((len(live), reduced), np.float32)
        lists = np.empty(len(live), np.intp)
        for i in range(0, len(live), _ASSIGN_CHUNK):
            block = rows[live[i : i + _ASSIGN_CHUNK]] @ self._projection
            vectors[i : i + len(block)] = block
            lists[i : i + len(block)] = self._nearest(block)
        # Lists laid out in the order of their centroids along the first (widest)
        # direction: a query's nearest lists then often lie side by side, and adjacent
        # runs are scanned by one product.
        place = np.empty(nlist, np.intp)
        place[np.argsort(self._centroids[:, 0], kind="stable")] = np.arange(nlist)
        order = np.argsort(place[lists], kind="stable")
        size = len(live)
        capacity = max(16, size + size // 4)
        self._vecs = np.zeros((capacity, reduced), np.float32)
        self._vecs[:size] = vectors[order]
        self._ids = np.full(capacity, -1, np.intp)
        self._ids[:size] = live[order]
        self._lists = np.full(capacity, -1, np.intp)
        self._lists[:size] = lists[order]
        counts = np.bincount(place[lists], minlength=nlist)
        self._place = place
        self._starts = np.concatenate(([0], np.cumsum(counts))).tolist()
        self._pos = np.full(max(16, n), -1, np.intp)  # row -> position
        self._pos[self._ids[:size]] = np.arange(size)
        self._size = self._built = size
        self._removed = 0

    def _nearest(self, reduced: npt.NDArray[np.float32]) -> npt.NDArray[np.intp]:
        """Each reduced vector's nearest centroid (the lower index on a tie)."""
        import numpy as np

        distance = self._c2 - 2.0 * (reduced @ self._centroids.T)
        out: npt.NDArray[np.intp] = np.argmin(distance, axis=1)
        return out

    # -- changes -------------------------------------------------------------------------

    def add(self, row: int, unit: npt.NDArray[np.float32]) -> None:
        import numpy as np

        reduced = unit @ self._projection
        at = self._size
        if at == len(self._ids):
            capacity = at + at // 2 + 16
            for name, fill in (("_vecs", 0), ("_ids", -1), ("_lists", -1)):
                old = getattr(self, name)
                grown = np.full((capacity, *old.shape[1:]), fill, old.dtype)
                grown[:at] = old[:at]
                setattr(self, name, grown)
        self._vecs[at] = reduced
        self._ids[at] = row
        self._lists[at] = int(self._nearest(reduced[None, :])[0])
        if row >= len(self._pos):
            pos = np.full(max(row + 1, len(self._pos) * 3 // 2), -1, np.intp)
            pos[: len(self._pos)] = self._pos
            self._pos = pos
        self._pos[row] = at
        self._size = at + 1

    def remove(self, row: int) -> None:
        at = self._pos[row]
        self._ids[at] = -1
        self._vecs[at] = 0.0
        self._pos[row] = -1
        self._removed += 1

    def stale(self) -> bool:
        """True once rows added or removed since the build are a fifth of the rows."""
        return 5 * (self._size - self._built + self._removed) > max(self._built, 1000)

    def rebuild(self, rows: npt.NDArray[np.float32], live: npt.NDArray[np.intp]) -> None:
        """Lay the lists out again over the live ``rows`` (after compaction, or when
        stale). A row's list is a function of its vector, so the index searches the
        same rows whenever it was laid out."""
        self._build(rows, live, len(rows))

    # -- searching -----------------------------------------------------------------------

    def candidates(self, unit: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
        """The rows worth an exact score for the ``k`` nearest to ``unit`` (normalized):
        the best ``rerank * k`` of the probed lists in the reduced space, and any within
        rounding of the last of them."""
        import numpy as np

        reduced = unit @ self._projection
        distance = self._c2 - 2.0 * (self._centroids @ reduced)
        nprobe = self.model.nprobe
        probe = np.argpartition(distance, nprobe - 1)[:nprobe]
        starts = self._starts
        bases, parts = [], []
        first = last = -2
        for at in [*np.sort(self._place[probe]).tolist(), -1]:
            if at == last + 1:  # runs of adjacent lists: one product each
                last = at
                continue
            if first >= 0 and starts[last + 1] > starts[first]:
                a, b = starts[first], starts[last + 1]
                bases.append(a)
                parts.append(self._vecs[a:b] @ reduced)
            first = last = at
        added = None
        if self._size > self._built:  # rows added since the build, of probed lists
            probed = np.zeros(len(starts) - 1, bool)
            probed[probe] = True
            added = np.nonzero(probed[self._lists[self._built : self._size]])[0] + self._built
            parts.append(self._vecs[added] @ reduced)
        if not parts:
            return np.empty(0, np.intp)
        score = np.concatenate(parts) if len(parts) > 1 else parts[0]
        keep = self.model.rerank * k
        if keep < len(score):
            # Removed rows (id -1, zero vectors) may take places: keep as many more.
            keep = min(len(score), keep + self._removed)
            top = np.argpartition(-score, keep - 1)[:keep]
            boundary = float(score[top].min())
            chosen = np.nonzero(score >= boundary - _SLACK * max(1.0, abs(boundary)))[0]
        else:
            chosen = np.arange(len(score))
        # Positions in the layout: each chosen index's part, and its place in it.
        lengths = np.array([len(p) for p in parts])
        ends = np.cumsum(lengths)
        part = np.searchsorted(ends, chosen, side="right")
        offset = chosen - (ends - lengths)[part]
        if added is None:
            positions = np.asarray(bases)[part] + offset
        else:
            spans = part < len(bases)
            positions = np.empty(len(chosen), np.intp)
            positions[spans] = np.asarray(bases, np.intp)[part[spans]] + offset[spans]
            positions[~spans] = added[offset[~spans]]
        ids = self._ids[positions]
        found: npt.NDArray[np.intp] = ids[ids >= 0]
        return found


# -- training ------------------------------------------------------------------------------


def train_ivf(rows: npt.NDArray[np.float32], live: npt.NDArray[np.intp], seed: int) -> IvfModel:
    """Train a model on the normalized ``rows[live]`` (see the module doc); seeded, so
    the same rows and seed give the same model. Seconds for 100,000 rows of 384: run
    it in a worker thread."""
    import numpy as np
    from sklearn.cluster import KMeans  # here: a second to import, needed only now
    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.default_rng(seed)
    m, dim = len(live), rows.shape[1]
    # The reduced space: principal directions of the second moments (not centred: dot
    # products, not distances to the mean, are what a search ranks by).
    sample = rows[np.sort(rng.choice(live, min(m, _PCA_SAMPLE), replace=False))]
    moments = (sample.T.astype(np.float64) @ sample.astype(np.float64)) / len(sample)
    variance, directions = np.linalg.eigh(moments)
    variance, directions = variance[::-1], directions[:, ::-1]
    share = np.cumsum(variance) / max(float(variance.sum()), 1e-300)
    reduced = int(np.searchsorted(share, _VARIANCE) + 1)
    reduced = max(min(dim, _MIN_REDUCED), min(dim, reduced))
    projection = np.ascontiguousarray(directions[:, :reduced], dtype=np.float32)

    nlist = max(1, min(4096, round(math.sqrt(m)), m // 8))
    chosen = np.sort(rng.choice(live, min(m, _KMEANS_PER_LIST * nlist), replace=False))
    train = rows[chosen] @ projection
    with warnings.catch_warnings():
        # Fewer distinct vectors than lists is legitimate (duplicates): fewer lists fill.
        warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = KMeans(nlist, n_init=1, max_iter=10, random_state=seed % 2**32)
        centroids = kmeans.fit(train).cluster_centers_.astype(np.float32)

    model = IvfModel(projection, centroids, nlist, _RERANK_CHOICES[-1], m)
    rerank, nprobe = _calibrate(model, rows, live, rng)
    return model._replace(rerank=rerank, nprobe=nprobe)


def _calibrate(
    model: IvfModel, rows: npt.NDArray[np.float32], live: npt.NDArray[np.intp], rng: Any
) -> tuple[int, int]:
    """The least re-ranking depth, then the fewest probed lists, whose searches of
    held-out rows reach :data:`RECALL_TARGET` against exact search."""
    import numpy as np

    m = len(live)
    queries = np.sort(rng.choice(live, min(m, _CALIBRATION_QUERIES), replace=False))
    unit = rows[queries]
    k = min(_K, m - 1)
    nlist = len(model.centroids)
    if k < 1:
        return 1, nlist
    # Truth: each query's k nearest live rows, itself excluded.
    matrix = rows[live]
    truth = np.empty((len(queries), k), np.intp)
    for i in range(0, len(queries), 64):
        scores = unit[i : i + 64] @ matrix.T
        scores[np.arange(len(scores)), np.searchsorted(live, queries[i : i + 64])] = -np.inf
        truth[i : i + 64] = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    truth_sets = [set(live[t].tolist()) for t in truth]

    def recall(found: list[set[int]]) -> float:
        return sum(len(f & t) for f, t in zip(found, truth_sets, strict=True)) / (k * len(found))

    def best(candidates: npt.NDArray[np.intp], query: int) -> set[int]:
        candidates = candidates[candidates != query]
        exact = rows[candidates] @ rows[query]
        return set(candidates[np.argsort(-exact, kind="stable")[:k]].tolist())

    # Re-ranking depth with every row considered: the loss of the reduced space alone.
    reduced_all = matrix @ model.projection
    deepest = min(m, _RERANK_CHOICES[-1] * k + 1)
    order = np.empty((len(queries), deepest), np.intp)
    for i in range(0, len(queries), 64):
        scores = (unit[i : i + 64] @ model.projection) @ reduced_all.T
        top = np.argpartition(-scores, deepest - 1, axis=1)[:, :deepest]
        ranked = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        order[i : i + 64] = np.take_along_axis(top, ranked, axis=1)
    rerank, full = _RERANK_CHOICES[-1], 0.0
    for factor in _RERANK_CHOICES:
        depth = min(m, factor * k + 1)
        full = recall([best(live[order[i, :depth]], q) for i, q in enumerate(queries.tolist())])
        if full >= (1 + RECALL_TARGET) / 2:
            rerank = factor
            break
    # Lists: the share of true neighbours whose list is among a query's p nearest, for
    # every p at once; the least p whose share (times the loss above) reaches the target.
    lists = np.argmin(
        (model.centroids * model.centroids).sum(1) - 2.0 * (reduced_all @ model.centroids.T),
        axis=1,
    )
    reduced_q = unit @ model.projection
    distance = (model.centroids * model.centroids).sum(1) - 2.0 * (reduced_q @ model.centroids.T)
    rank = np.argsort(np.argsort(distance, axis=1, kind="stable"), axis=1)
    needed = np.take_along_axis(rank, lists[truth], axis=1) + 1
    share = np.cumsum(np.bincount(needed.ravel(), minlength=nlist + 1)[1:]) / needed.size
    nprobe = min(nlist, int(np.searchsorted(share, RECALL_TARGET / max(full, 1e-9))) + 1)
    # Checked by real searches (the two losses overlap), more lists until it holds.
    index = IvfIndex(model._replace(rerank=rerank, nprobe=nprobe), rows, live)
    while nprobe < nlist:
        index.model = model._replace(rerank=rerank, nprobe=nprobe)
        if recall([best(index.candidates(rows[q], k + 1), q) for q in queries.tolist()]) >= (
            RECALL_TARGET
        ):
            break
        nprobe = min(nlist, nprobe + max(1, nprobe // 4))
    # A quarter more lists (at least one) than the sample needed: fresh queries that fall
    # between lists more often than the sample did still find their neighbours.
    return rerank, min(nlist, nprobe + max(1, nprobe // 4))
