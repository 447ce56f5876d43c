"""The exact index of one (namespace, model, dimension): a contiguous matrix of the live
embeddings, normalized, searched with one matrix product.

Rows are appended (the matrix grows by half again when full: amortized O(1)); a row
that stops being live (the key was embedded again or deleted) is marked dead and masked
out of every search, and once dead rows are a quarter of the matrix it is compacted.
Each row keeps its vector's norm, so one product ranks by cosine, dot product or
euclidean distance alike.

Why rows below the count are never written in place (appends write past it; growth and
compaction build new arrays): a checkpoint captures the matrix as a view, without
copying 150 MB on the event loop, and encodes it in a worker thread while the state
moves on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from koru.events import MAX_VECTOR_DIM

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from ._ivf import IvfIndex

__all__ = ["DEAD", "VectorGroup"]

#: A row's key id once the row is no longer live.
DEAD = -1
#: Compact when dead rows are at least this share of the rows (and there are some).
_COMPACT_SHARE = 0.25
_COMPACT_MIN = 64
#: The stored vectors' dtype (little-endian float32), spelled once.
_LE32 = "<f4"


class VectorGroup:
    """The live embeddings of one (namespace, model, dim), as matrix rows.

    ``keys[row]`` is the key id of a live row (in the namespace's key table), ``DEAD``
    otherwise; ``meta[row]`` its metadata bytes.
    """

    __slots__ = (
        "_dead_rows",
        "dead",
        "dim",
        "index",
        "keys",
        "meta",
        "model",
        "n",
        "norms",
        "rows",
    )

    def __init__(self, model: str, dim: int) -> None:
        import numpy as np

        self.model = model
        self.dim = dim
        self.rows: npt.NDArray[np.float32] = np.empty((0, dim), np.float32)
        self.norms: npt.NDArray[np.float32] = np.empty(0, np.float32)
        self.keys: npt.NDArray[np.int32] = np.empty(0, np.int32)
        self.meta: list[bytes | None] = []
        #: Rows in use (live and dead), and how many of them are dead.
        self.n = 0
        self.dead = 0
        self._dead_rows: npt.NDArray[np.intp] | None = None
        #: The approximate index over the live rows, once a model was folded.
        self.index: IvfIndex | None = None

    @property
    def live(self) -> int:
        return self.n - self.dead

    # -- changes -------------------------------------------------------------------------

    def add(self, key_id: int, vector: bytes, meta: bytes | None) -> int:
        """Append a live row for ``key_id`` (``vector``: little-endian float32 bytes,
        checked usable by the decoder); returns the row."""
        import numpy as np

        row = self.n
        if row == len(self.rows):
            self._grow()
        raw = np.frombuffer(vector, dtype=_LE32)
        with np.errstate(over="ignore"):  # an overflow is redone just below
            square = float(raw.dot(raw))
        if not 0.0 < square < 3e38:  # float32 overflowed or underflowed: in float64
            wide = raw.astype(np.float64)
            square = float(wide.dot(wide))
        norm = square**0.5
        np.divide(raw, norm, out=self.rows[row], casting="unsafe")
        self.norms[row] = norm
        self.keys[row] = key_id
        self.meta.append(meta)
        self.n = row + 1
        if self.index is not None:
            self.index.add(row, self.rows[row])
            if self.index.stale():
                self.index.rebuild(self.rows, self._live())
        return row

    def _live(self) -> npt.NDArray[np.intp]:
        import numpy as np

        live: npt.NDArray[np.intp] = np.nonzero(self.keys[: self.n] != DEAD)[0]
        return live

    def remove(self, row: int) -> None:
        """Mark a live row dead (masked from searches until compaction)."""
        self.keys[row] = DEAD
        self.meta[row] = None
        self.dead += 1
        self._dead_rows = None
        if self.index is not None:
            self.index.remove(row)
            if self.index.stale() and not self.due_for_compaction():
                self.index.rebuild(self.rows, self._live())

    def _grow(self) -> None:
        import numpy as np

        # Twice as many: pages past the count are never touched, so the slack costs
        # address space, not memory, and each vector is copied about once.
        capacity = max(16, 2 * len(self.rows))
        rows = np.empty((capacity, self.dim), np.float32)
        rows[: self.n] = self.rows[: self.n]
        norms = np.empty(capacity, np.float32)
        norms[: self.n] = self.norms[: self.n]
        keys = np.empty(capacity, np.int32)
        keys[: self.n] = self.keys[: self.n]
        self.rows, self.norms, self.keys = rows, norms, keys

    def due_for_compaction(self) -> bool:
        return self.dead >= _COMPACT_MIN and self.dead >= _COMPACT_SHARE * self.n

    def compact(self) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.intp]]:
        """Drop the dead rows, keeping the live ones in order, into new arrays (never in
        place: a checkpoint may still be encoding the old ones). Returns the live rows'
        key ids and their new rows, for the caller's key table."""
        import numpy as np

        live = np.nonzero(self.keys[: self.n] != DEAD)[0]
        keep = len(live)
        capacity = max(16, keep + keep // 2)
        rows = np.empty((capacity, self.dim), np.float32)
        rows[:keep] = self.rows[live]
        norms = np.empty(capacity, np.float32)
        norms[:keep] = self.norms[live]
        keys = np.empty(capacity, np.int32)
        keys[:keep] = self.keys[live]
        self.meta = [self.meta[r] for r in live.tolist()]
        self.rows, self.norms, self.keys = rows, norms, keys
        self.n, self.dead, self._dead_rows = keep, 0, None
        if self.index is not None:
            self.index.rebuild(self.rows, np.arange(keep))
        return keys[:keep].copy(), np.arange(keep)

    # -- searching -----------------------------------------------------------------------

    def dead_rows(self) -> npt.NDArray[np.intp]:
        """The dead rows below the count (cached until the next removal)."""
        import numpy as np

        if self._dead_rows is None:
            self._dead_rows = (
                np.nonzero(self.keys[: self.n] == DEAD)[0] if self.dead else np.empty(0, np.intp)
            )
        return self._dead_rows

    def rank_scores(self, unit: npt.NDArray[Any], norm: float, metric: str) -> npt.NDArray[Any]:
        """A score per row, higher is better, dead rows -inf: cosine, dot product (the
        query's norm, a positive constant, left out), or minus the squared euclidean
        distance up to the constant query term. ``unit``: the query normalized."""
        import numpy as np

        cos = self.rows[: self.n] @ unit
        if metric == "cosine":
            scores: npt.NDArray[Any] = cos
        elif metric == "dot":
            scores = cos * self.norms[: self.n]
        else:  # euclidean: -|v - q|^2 + |q|^2 = 2 |q| |v| cos - |v|^2, in float64 (no overflow)
            norms = self.norms[: self.n].astype(np.float64)
            scores = (2.0 * norm) * norms * cos - norms * norms
        dead = self.dead_rows()
        if len(dead):
            scores[dead] = -np.inf
        return scores

    def rank_scores_many(
        self, units: npt.NDArray[np.float32], norms: npt.NDArray[np.float64], metric: str
    ) -> npt.NDArray[Any]:
        """:meth:`rank_scores` for several queries at once (a row each), one product."""
        import numpy as np

        cos = units @ self.rows[: self.n].T
        if metric == "cosine":
            scores: npt.NDArray[Any] = cos
        elif metric == "dot":
            scores = cos * self.norms[: self.n]
        else:
            rows = self.norms[: self.n].astype(np.float64)
            scores = (2.0 * norms)[:, None] * rows * cos - rows * rows
        dead = self.dead_rows()
        if len(dead):
            scores[:, dead] = -np.inf
        return scores

    def exact_scores(
        self,
        rows: npt.NDArray[np.intp],
        query: npt.NDArray[np.float64],
        metric: str,
        gathered: npt.NDArray[np.float32] | None = None,
    ) -> npt.NDArray[np.float64]:
        """The reported score of each of ``rows``, in float64: cosine, dot product, or
        euclidean distance (lower is closer). ``gathered``: ``self.rows[rows]``, when
        the caller has that copy already."""
        import numpy as np

        # Products summed row by row (einsum's own loops, never BLAS), not a matrix
        # product: a row's score then never depends on where it is stored (BLAS kernels
        # round edge rows differently), so replicas that stored rows in another order
        # report the same scores.
        unit_rows = (self.rows[rows] if gathered is None else gathered).astype(np.float64)
        if metric == "cosine":
            lengths = np.sqrt(np.einsum("ij,ij->i", unit_rows, unit_rows))  # 1, up to rounding
            out: npt.NDArray[np.float64] = np.einsum("ij,j->i", unit_rows, query) / lengths
            return out / float(np.sqrt(np.einsum("i,i->", query, query)))
        vectors = unit_rows * self.norms[rows].astype(np.float64)[:, None]
        if metric == "dot":
            out = (vectors * query).sum(axis=1)
            return out
        diff = vectors - query
        out = np.sqrt((diff * diff).sum(axis=1))
        return out

    # -- checkpoint ----------------------------------------------------------------------

    def capture(self) -> list[Any]:
        """Plain data; the matrix as a view of rows that are never written again."""
        import numpy as np

        view = np.ascontiguousarray(self.rows[: self.n]).view(np.uint8).reshape(-1).data
        return [
            self.model,
            self.dim,
            self.n,
            view,
            _le(self.norms[: self.n]),
            _le(self.keys[: self.n]),
            list(self.meta),
        ]

    @classmethod
    def restore(cls, data: Any, keys_known: int) -> VectorGroup:
        """From :meth:`capture` output (ValueError for data of the wrong shape)."""
        import numpy as np

        model, dim, n, rows, norms, keys, meta = data
        if not (
            type(model) is str
            and model
            and type(dim) is int
            and 1 <= dim <= MAX_VECTOR_DIM
            and type(n) is int
            and n >= 0
            and type(rows) is bytes
            and len(rows) == 4 * n * dim
            and type(norms) is bytes
            and len(norms) == 4 * n
            and type(keys) is bytes
            and len(keys) == 4 * n
            and type(meta) is list
            and len(meta) == n
            and all(m is None or type(m) is bytes for m in meta)
        ):
            raise ValueError("malformed vector group")
        group = cls(model, dim)
        capacity = max(16, n + n // 2)
        group.rows = np.empty((capacity, dim), np.float32)
        group.rows[:n] = np.frombuffer(rows, "<f4").reshape(n, dim)
        group.norms = np.empty(capacity, np.float32)
        group.norms[:n] = np.frombuffer(norms, "<f4")
        group.keys = np.empty(capacity, np.int32)
        group.keys[:n] = np.frombuffer(keys, "<i4")
        live = group.keys[:n] != DEAD
        if not (
            np.isfinite(group.rows[:n]).all()
            and np.isfinite(group.norms[:n]).all()
            and (group.norms[:n][live] > 0).all()
            and ((group.keys[:n] >= DEAD) & (group.keys[:n] < keys_known)).all()
        ):
            raise ValueError("malformed vector group rows")
        group.meta = meta
        group.n = n
        group.dead = int(n - live.sum())
        return group


def _le(array: Any) -> bytes:
    """Little-endian bytes of a numeric array (the checkpoint's byte order)."""
    return bytes(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
