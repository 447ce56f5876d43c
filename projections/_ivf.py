"""The approximate index of a vector group: an inverted file (IVF) in a reduced space,
with exact re-ranking.

A model (trained by :func:`~koru.projections._ivf_train.train_ivf`, carried by a
``VectorIndexEvent``) holds a projection from ``dim`` to ``reduced`` dimensions (the top
principal directions of the vectors' second moments, so dot products are kept as far as
the data's variance allows) and ``nlist`` coarse centroids in that space. Each live row
sits in the list of its nearest centroid; the reduced vectors are stored list after
list in one contiguous matrix. A search projects the query, picks the ``nprobe`` lists
whose centroids are nearest, scores their rows in the reduced space (one product per
run of probed lists that lie side by side, written into one reusable buffer: no copy
of the rows, no Python loop per row), and hands the best ``rerank * top_k`` to the
exact scores of the full vectors.

Why reduce before probing: embeddings vary along far fewer directions than they have
dimensions, so scoring candidates in the reduced space costs a fraction of the full
product, and re-ranking a few candidates exactly restores full precision. Why lists of
about 250 rows: finer lists scan fewer rows for a given recall, but every run of them
costs a product call; on 100,000 embedding-like vectors of 384 dimensions, 400 lists
(20 x 20) answered fastest at recall@10 0.95 to 0.98, against 144 to 2,025.

Determinism: a row's list is a function of the model and its vector alone, computed in
float64 (the projection and the distances to the centroids), whether the row was laid
out in a build or added later, one row or many at a time. So every replica holding the
same events, and every replay, puts every row in the same list (a float32 product's
rounding depends on where a row sits in a block; in float64 a flip would need two
centroids equally near to 1e-15). The reduced scores that pick candidates are float32,
so rows within rounding of the cut all go on to exact scoring.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

from koru.events import FLAT_LISTS as _FLAT_LISTS

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["FLAT_LISTS", "IvfIndex", "IvfModel"]

#: Rows projected and assigned per block.
_ASSIGN_CHUNK = 8192
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


#: Models of at most this many lists assign each row to the nearest of all of them;
#: larger ones (a square, the decoder's rule) route through coarse groups first (see
#: Assigner).
FLAT_LISTS = _FLAT_LISTS


class Assigner:
    """A model's map from unit vectors to (reduced vector, list), in float64.

    A model of at most :data:`FLAT_LISTS` lists puts each row in the list of its
    nearest centroid among all of them (one matrix product a block of rows). Routing
    through coarse groups first costs fewer distances but misplaces rows near a group's
    border, and a search then needs more lists for the same recall (on the bench data
    about 120 of 400 lists instead of 110 for recall 0.967).

    A larger model of ``c * c`` lists is two-level: lists ``j*c`` to ``j*c + c - 1``
    form coarse group ``j``, whose router is their mean; a row goes to its nearest
    router's group, then to that group's nearest list. That costs ``2c`` distances a
    row instead of ``c * c`` (126 instead of 3,969 for 1,000,000 rows), where all of
    them would take seconds at every build and open. Other models assign to the
    nearest of all lists (the decoder refuses one of more than FLAT_LISTS lists that
    is not a square: a peer's would cost rows x lists distances at every fold).
    """

    __slots__ = ("_c2", "_centroids", "_groups", "_projection", "_r2", "_routers", "_width")

    def __init__(self, model: IvfModel) -> None:
        import numpy as np

        self._projection = model.projection.astype(np.float64)
        centroids = model.centroids.astype(np.float64)
        nlist, reduced = centroids.shape
        width = math.isqrt(nlist)
        square = width >= 2 and width * width == nlist
        self._width = width if square and nlist > FLAT_LISTS else 0
        if self._width:
            # Per group, its lists' centroids (as columns) and their squared norms.
            self._groups = np.ascontiguousarray(
                centroids.reshape(width, width, reduced).transpose(0, 2, 1)
            )
            self._c2 = np.einsum("gij,gij->gj", self._groups, self._groups)
            routers = centroids.reshape(width, width, reduced).mean(axis=1)
            self._routers = np.ascontiguousarray(routers.T)
            self._r2 = np.einsum("ij,ij->j", self._routers, self._routers)
        else:
            self._centroids = np.ascontiguousarray(centroids.T)
            self._c2 = np.einsum("ij,ij->j", self._centroids, self._centroids)

    def __call__(
        self, units: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
        """Each row's reduced vector (float32) and list (the lower index on a tie)."""
        import numpy as np

        wide = units.astype(np.float64) @ self._projection
        if not self._width:
            flat: npt.NDArray[np.intp] = np.argmin(
                self._c2 - 2.0 * (wide @ self._centroids), axis=1
            )
            return wide.astype(np.float32), flat
        group = np.argmin(self._r2 - 2.0 * (wide @ self._routers), axis=1)
        lists = np.empty(len(wide), np.intp)
        if len(wide) == 1:  # one row (an add): no grouping
            g = int(group[0])
            best = np.argmin(self._c2[g] - 2.0 * (wide @ self._groups[g]), axis=1)
            lists[0] = g * self._width + int(best[0])
            return wide.astype(np.float32), lists
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(self._width + 1))
        for g in range(self._width):
            members = order[bounds[g] : bounds[g + 1]]
            if len(members):
                near = np.argmin(self._c2[g] - 2.0 * (wide[members] @ self._groups[g]), axis=1)
                lists[members] = g * self._width + near
        return wide.astype(np.float32), lists


class IvfIndex:
    """The lists of one group under one model (see the module doc).

    Layout: the reduced vectors in one contiguous matrix, list after list as of the
    last build (``_start_list`` gives where each list's run starts), then the rows added since, in
    arrival order (their lists in ``_lists``). A removed row keeps its place with id -1
    and a NaN vector (never a candidate); when additions and removals reach a fifth of the rows,
    the lists are laid out again.
    """

    __slots__ = (
        "_assign",
        "_built",
        "_centroids",
        "_end_list",
        "_half",
        "_ids",
        "_lens",
        "_lists",
        "_pos",
        "_projection",
        "_removed",
        "_scores",
        "_size",
        "_start_list",
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
        # Half the squared norms: a centroid's distance to a query, up to the query's
        # own term and a factor 2, is half its squared norm less its product.
        self._half = 0.5 * np.einsum("ij,ij->i", model.centroids, model.centroids)
        self._assign = Assigner(model)
        self._build(rows, live, len(rows))

    def _build(self, rows: npt.NDArray[np.float32], live: npt.NDArray[np.intp], n: int) -> None:
        import numpy as np

        nlist, reduced = self._centroids.shape
        vectors = np.empty((len(live), reduced), np.float32)
        lists = np.empty(len(live), np.intp)
        for i in range(0, len(live), _ASSIGN_CHUNK):
            vectors[i : i + _ASSIGN_CHUNK], lists[i : i + _ASSIGN_CHUNK] = self._assign(
                rows[live[i : i + _ASSIGN_CHUNK]]
            )
        order = np.argsort(lists, kind="stable")
        size = len(live)
        capacity = max(16, size + size // 4)
        self._vecs = np.zeros((capacity, reduced), np.float32)
        self._vecs[:size] = vectors[order]
        self._ids = np.full(capacity, -1, np.intp)
        self._ids[:size] = live[order]
        self._lists = np.full(capacity, -1, np.intp)
        self._lists[:size] = lists[order]
        self._lens = np.bincount(lists, minlength=nlist)
        ends = np.cumsum(self._lens)
        self._start_list: list[int] = (ends - self._lens).tolist()
        self._end_list: list[int] = ends.tolist()
        self._pos = np.full(max(16, n), -1, np.intp)  # row -> position
        self._pos[self._ids[:size]] = np.arange(size)
        self._size = self._built = size
        self._removed = 0
        self._scores = np.empty(0, np.float32)

    def lists_of(self, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        """The list each of ``rows`` (live, indexed) sits in."""
        out: npt.NDArray[np.intp] = self._lists[self._pos[rows]]
        return out

    # -- changes -------------------------------------------------------------------------

    def add(self, row: int, unit: npt.NDArray[np.float32]) -> None:
        import numpy as np

        reduced, lists = self._assign(unit[None, :])
        at = self._size
        if at == len(self._ids):
            capacity = at + at // 2 + 16
            for name, fill in (("_vecs", 0), ("_ids", -1), ("_lists", -1)):
                old = getattr(self, name)
                grown = np.full((capacity, *old.shape[1:]), fill, old.dtype)
                grown[:at] = old[:at]
                setattr(self, name, grown)
        self._vecs[at] = reduced[0]
        self._ids[at] = row
        self._lists[at] = lists[0]
        if row >= len(self._pos):
            pos = np.full(max(row + 1, len(self._pos) * 3 // 2), -1, np.intp)
            pos[: len(self._pos)] = self._pos
            self._pos = pos
        self._pos[row] = at
        self._size = at + 1

    def remove(self, row: int) -> None:
        import numpy as np

        at = self._pos[row]
        self._ids[at] = -1
        self._vecs[at] = np.nan
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

        reduced = (unit @ self._projection).astype(np.float32, copy=False)
        distance = self._half - self._centroids @ reduced
        nprobe = self.model.nprobe
        if nprobe < len(distance):
            probe = np.argpartition(distance, nprobe - 1)[:nprobe]
            probe.sort()  # in layout order
        else:
            probe = np.arange(len(distance))
        added = None
        if self._size > self._built:  # rows added since the build, of probed lists
            probed = np.zeros(len(self._lens), bool)
            probed[probe] = True
            added = np.flatnonzero(probed[self._lists[self._built : self._size]]) + self._built
        if len(self._scores) < self._size:  # every row fits: sized once, not per query
            self._scores = np.empty(self._size + self._size // 2, np.float32)
        score, vecs, dot = self._scores, self._vecs, np.dot
        # Runs of probed lists that lie side by side in the layout: one product each
        # (np.dot: less dispatch than matmul, and a run is a few hundred rows), written
        # straight into the score buffer (no concatenation, no temporary of the scanned
        # rows' size: on a virtual machine, fresh pages cost more than the arithmetic).
        # The runs are found in Python on the probed lists' bounds: a few dozen list
        # lookups cost less than a dozen array operations.
        starts, ends = self._start_list, self._end_list
        at, low, high = 0, -1, -1
        run_ends: list[int] = []  # each run's end in the buffer
        shifts: list[int] = []  # each run's position in the layout less its place
        for j in probe.tolist():
            a = starts[j]
            if a == high:  # adjacent: the run goes on
                high = ends[j]
                continue
            if high > low:
                dot(vecs[low:high], reduced, out=score[at : at + high - low])
                shifts.append(low - at)
                at += high - low
                run_ends.append(at)
            low, high = a, ends[j]
        if high > low:
            dot(vecs[low:high], reduced, out=score[at : at + high - low])
            shifts.append(low - at)
            at += high - low
            run_ends.append(at)
        scanned = at
        if added is not None:
            np.matmul(vecs[added], reduced, out=score[at : at + len(added)])
            at += len(added)
        if not at:
            return np.empty(0, np.intp)
        chosen = _best(score[:at], self.model.rerank * k)
        # Back from places in the buffer to positions in the layout: a place plus its
        # run's shift.
        inside = chosen if added is None else chosen[chosen < scanned]
        positions = (
            inside
            + np.array(shifts, np.intp)[
                np.searchsorted(np.array(run_ends, np.intp), inside, side="right")
            ]
        )
        if added is not None:
            positions = np.concatenate((positions, added[chosen[len(inside) :] - scanned]))
        ids = self._ids[positions]
        found: npt.NDArray[np.intp] = ids[ids >= 0]
        return found


#: Every this many scores, one goes into the sample that finds a first threshold.
_STRIDE = 8


def _best(score: npt.NDArray[np.float32], keep: int) -> npt.NDArray[np.intp]:
    """The places of the ``keep`` best scores (NaN never: removed rows), and of any
    within :data:`_SLACK` of the last of them, in increasing order.

    Which rows these are depends on the scores alone, never on their order in the
    buffer (replicas may lay rows out differently): the boundary is the keep-th best of
    the set. It is found without sorting or copying every score: a threshold from a
    sample (every :data:`_STRIDE`-th score) that about three times ``keep`` scores
    reach, then an exact selection among the scores that reach it. When fewer than
    ``keep`` do (an unlucky sample), the selection runs over every score instead: the
    same boundary either way.
    """
    import numpy as np

    total = len(score)
    sample = score[::_STRIDE]
    rank = 3 * keep // _STRIDE + 1
    above: npt.NDArray[np.intp] | None = None
    threshold = -math.inf
    if keep < total and rank < len(sample):
        threshold = float(np.partition(sample, len(sample) - rank)[len(sample) - rank])
        if threshold == threshold:  # not NaN
            above = np.flatnonzero(score >= threshold)
        if above is None or len(above) < keep:
            above, threshold = None, -math.inf
    if above is None:
        above = np.flatnonzero(score == score)  # every row that was not removed
        if len(above) <= keep:
            return above
    values = score[above]
    boundary = float(np.partition(values, len(values) - keep)[len(values) - keep])
    low = boundary - _SLACK * max(1.0, abs(boundary))
    if low < threshold:  # the slack reaches below the threshold: every score again
        wide: npt.NDArray[np.intp] = np.flatnonzero(score >= low)
        return wide
    chosen: npt.NDArray[np.intp] = above[values >= low]
    return chosen
