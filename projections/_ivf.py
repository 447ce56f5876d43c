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
_CALIBRATION_QUERIES = 512
_RERANK_CHOICES = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_K = 10
_ASSIGN_CHUNK = 16_384


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
    """The lists of one group under one model (see the module doc)."""

    __slots__ = (
        "_c2",
        "_centroids",
        "_ids",
        "_pos",
        "_projection",
        "_sizes",
        "_vecs",
        "_where",
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
        order = np.argsort(lists, kind="stable")
        counts = np.bincount(lists, minlength=nlist)
        self._vecs: list[npt.NDArray[np.float32]] = []
        self._ids: list[npt.NDArray[np.intp]] = []
        self._sizes: list[int] = counts.tolist()
        self._where = np.full(max(16, n), -1, np.int64)  # row -> list << 32 | position
        start = 0
        for lst, count in enumerate(self._sizes):
            members = order[start : start + count]
            start += count
            capacity = max(8, count + count // 4)
            vecs = np.empty((capacity, reduced), np.float32)
            vecs[:count] = vectors[members]
            ids = np.empty(capacity, np.intp)
            ids[:count] = live[members]
            self._vecs.append(vecs)
            self._ids.append(ids)
            self._where[ids[:count]] = (lst << 32) | np.arange(count)

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
        lst = int(self._nearest(reduced[None, :])[0])
        size = self._sizes[lst]
        if size == len(self._ids[lst]):
            capacity = size + size // 2 + 8
            vecs = np.empty((capacity, len(reduced)), np.float32)
            vecs[:size] = self._vecs[lst][:size]
            ids = np.empty(capacity, np.intp)
            ids[:size] = self._ids[lst][:size]
            self._vecs[lst], self._ids[lst] = vecs, ids
        self._vecs[lst][size] = reduced
        self._ids[lst][size] = row
        self._sizes[lst] = size + 1
        if row >= len(self._where):
            where = np.full(max(row + 1, len(self._where) * 3 // 2), -1, np.int64)
            where[: len(self._where)] = self._where
            self._where = where
        self._where[row] = (lst << 32) | size

    def remove(self, row: int) -> None:
        """Take a row out of its list (the list's last row moves into its place)."""
        at = int(self._where[row])
        lst, pos = at >> 32, at & 0xFFFFFFFF
        last = self._sizes[lst] - 1
        if pos != last:
            moved = int(self._ids[lst][last])
            self._vecs[lst][pos] = self._vecs[lst][last]
            self._ids[lst][pos] = moved
            self._where[moved] = (lst << 32) | pos
        self._sizes[lst] = last
        self._where[row] = -1

    def renumber(self, kept: npt.NDArray[np.intp], rows: npt.NDArray[np.float32]) -> None:
        """The group was compacted: row ``kept[i]`` is now row ``i``. Rebuilt from the
        rows (a row's list is a function of its vector), so the result is the same as
        an index built over the compacted group."""
        import numpy as np

        self._build(rows, np.arange(len(kept)), len(rows))

    # -- searching -----------------------------------------------------------------------

    def candidates(self, unit: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
        """The rows worth an exact score for the ``k`` nearest to ``unit`` (normalized):
        the best ``rerank * k`` of the probed lists in the reduced space."""
        import numpy as np

        reduced = unit @ self._projection
        distance = self._c2 - 2.0 * (self._centroids @ reduced)
        nprobe = self.model.nprobe
        if nprobe < len(distance):
            probe = np.argpartition(distance, nprobe - 1)[:nprobe].tolist()
        else:
            probe = range(len(distance))
        sizes, vecs, ids = self._sizes, self._vecs, self._ids
        scores = []
        rows = []
        for lst in probe:
            size = sizes[lst]
            if size:
                scores.append(vecs[lst][:size] @ reduced)
                rows.append(ids[lst][:size])
        if not scores:
            return np.empty(0, np.intp)
        score = np.concatenate(scores)
        row = np.concatenate(rows)
        keep = self.model.rerank * k
        if keep < len(score):
            row = row[np.argpartition(-score, keep - 1)[:keep]]
        return row


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
        kmeans = KMeans(nlist, n_init=1, max_iter=20, random_state=seed % 2**32)
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
    if k < 1:
        return 1, len(model.centroids)
    # Truth: each query's k nearest live rows, itself excluded.
    truth = []
    matrix = rows[live]
    for i in range(0, len(queries), 64):
        scores = unit[i : i + 64] @ matrix.T
        scores[np.arange(len(scores)), np.searchsorted(live, queries[i : i + 64])] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        truth += [set(live[t].tolist()) for t in top]

    def recall(found: list[set[int]]) -> float:
        return sum(len(f & t) for f, t in zip(found, truth, strict=True)) / (k * len(truth))

    def best(candidates: npt.NDArray[np.intp], query: int) -> set[int]:
        candidates = candidates[candidates != query]
        exact = rows[candidates] @ rows[query]
        return set(candidates[np.argsort(-exact, kind="stable")[:k]].tolist())

    # Re-ranking depth with every list probed: the loss of the reduced space alone.
    reduced_all = matrix @ model.projection
    deepest = min(m, _RERANK_CHOICES[-1] * k + 1)
    order = np.empty((len(queries), deepest), np.intp)
    for i in range(0, len(queries), 64):
        scores = (unit[i : i + 64] @ model.projection) @ reduced_all.T
        top = np.argpartition(-scores, deepest - 1, axis=1)[:, :deepest]
        ranked = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        order[i : i + 64] = np.take_along_axis(top, ranked, axis=1)
    rerank = _RERANK_CHOICES[-1]
    for factor in _RERANK_CHOICES:
        depth = min(m, factor * k + 1)
        found = [best(live[order[i, :depth]], q) for i, q in enumerate(queries.tolist())]
        if recall(found) >= (1 + RECALL_TARGET) / 2:
            rerank = factor
            break
    # Then the fewest lists: recall grows with nprobe, so a binary search.
    index = IvfIndex(model._replace(rerank=rerank), rows, live)
    low, high = 1, len(model.centroids)
    while low < high:
        middle = (low + high) // 2
        index.model = index.model._replace(nprobe=middle)
        found = [best(index.candidates(rows[q], k + 1), q) for q in queries.tolist()]
        if recall(found) >= RECALL_TARGET:
            high = middle
        else:
            low = middle + 1
    # A quarter more lists (at least one) than the sample needed: fresh queries that fall
    # between lists more often than the sample did still find their neighbours.
    return rerank, min(len(model.centroids), low + max(1, low // 4))
