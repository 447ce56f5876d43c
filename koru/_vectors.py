"""Embeddings on the face: checking what a caller gives, writing vector events, and
answering searches from the vector projection (reading past versions from the log).

Every check runs before anything is written: a vector is a non-empty 1-D list or
numpy array of finite numbers that fit float32, not all zeros, of at most
``MAX_VECTOR_DIM`` dimensions, and of its model's dimension (every embedding of a model
has the dimension of the model's first); metadata is a value as for ``put``. The event
is then exactly one the decoder (and so every peer) accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import blake3
import cbor2
import trio

from koru.events import (
    MAX_INDEX_DIM,
    MAX_VECTOR_DIM,
    VECTOR,
    DimensionMismatchError,
    EmbeddingNotFoundError,
    EmbedEvent,
    InvalidArgumentError,
    InvalidDataError,
    LogStore,
    UnembedEvent,
    VectorIndexEvent,
    check_name,
    decode_trusted,
    encode_event,
    encode_value,
    event_id,
    vector_problem,
)
from koru.projections import METRICS, Hit, VectorState

from ._reads import ANSWER_BYTES, refuse_past_answer
from ._time import to_ns
from ._types import Version

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from ._lifecycle import Lifecycle
    from ._writer import Writer

__all__ = ["MAX_INDEX_DIM", "VectorHit", "Vectors"]

#: A float32 sum of squares below this is far inside float32 (as in vector_problem).
_SAFE_SQUARE = 1e36


class VectorHit(NamedTuple):
    """One search result: the key, its score (cosine similarity or dot product, higher
    is closer; euclidean distance, lower is closer) and its metadata (a fresh object)."""

    namespace: str
    key: str
    score: float
    metadata: Any


def as_vector(vector: Any, what: str = "vector", *, zero: bool = False) -> npt.NDArray[Any]:
    """``vector`` as a float32 array, checked (see the module doc); ``zero`` allows a
    vector of zeros (a query ranked by dot product or distance).

    Raises:
        InvalidDataError: not a usable vector.
    """
    import numpy as np

    fast = _proven(vector)
    if fast is not None:
        return fast
    if type(vector) is np.ndarray and vector.dtype == np.float32 and vector.ndim == 1:
        narrow = vector
        if not np.isfinite(narrow).all():
            raise InvalidDataError(f"{what} holds NaN or infinity")
    else:
        if isinstance(vector, str | bytes | bytearray | memoryview | dict) or vector is None:
            raise InvalidDataError(f"{what} must be a list or a 1-D numpy array of numbers")
        try:
            array = np.asarray(vector)
        except (ValueError, TypeError):  # ragged or odd sequences
            raise InvalidDataError(
                f"{what} must be a list or a 1-D numpy array of numbers"
            ) from None
        if array.dtype.kind not in "iuf" or array.ndim != 1:
            raise InvalidDataError(
                f"{what} must be a 1-D list or numpy array of numbers, "
                f"not {array.ndim}-D of {array.dtype}"
            )
        wide = array.astype(np.float64)
        if not np.isfinite(wide).all():
            raise InvalidDataError(f"{what} holds NaN or infinity")
        with np.errstate(over="ignore"):  # checked just below
            narrow = wide.astype(np.float32)
        if not np.isfinite(narrow).all():
            raise InvalidDataError(f"{what} holds numbers beyond float32")
    if not len(narrow):
        raise InvalidDataError(f"{what} is empty")
    if len(narrow) > MAX_VECTOR_DIM:
        raise InvalidDataError(f"{what} has {len(narrow)} dimensions, over {MAX_VECTOR_DIM}")
    if not zero and not narrow.any():
        raise InvalidDataError(f"{what} is all zeros: it has no direction")
    return narrow


def _proven(vector: Any) -> npt.NDArray[Any] | None:
    """``vector`` itself if it is a 1-D float32 array that one dot product proves usable
    (the common case); None to check it in full. A sum of squares strictly between 0
    and _SAFE_SQUARE means every float finite (a NaN or an infinity makes it NaN or
    infinite), not all zeros, and a norm far inside float32: the decoder's rule
    (``vector_problem``) passes it too."""
    import numpy as np

    if type(vector) is not np.ndarray or vector.dtype != np.float32 or vector.ndim != 1:
        return None
    with np.errstate(over="ignore"):  # an overflow only sends it to the full check
        square = float(vector.dot(vector))
    if 0.0 < square < _SAFE_SQUARE and len(vector) <= MAX_VECTOR_DIM:
        return vector
    return None


def _checked_query(query: Any, metric: str) -> npt.NDArray[Any]:
    import numpy as np

    return as_vector(query, "query", zero=metric != "cosine").astype(np.float64)


def _check_search(
    namespace: Any, top_k: Any, threshold: Any, model: Any, metric: Any, approximate: Any
) -> None:
    if namespace is not None:
        check_name(namespace, "namespace")
    if type(top_k) is not int or top_k < 1:
        raise InvalidArgumentError(f"top_k must be a positive int, not {top_k!r}")
    if threshold is not None and (
        type(threshold) not in (int, float) or not math.isfinite(threshold)
    ):
        raise InvalidArgumentError(f"threshold must be a finite number or None, not {threshold!r}")
    if model is not None:
        check_name(model, "model")
    if type(metric) is not str or metric not in METRICS:
        raise InvalidArgumentError(f"metric must be one of {METRICS}, not {metric!r}")
    if approximate not in (None, True, False) or type(approximate) not in (bool, type(None)):
        raise InvalidArgumentError(f"approximate must be None, True or False, not {approximate!r}")
    if approximate and metric != "cosine":
        raise InvalidArgumentError("the approximate index ranks by cosine: use metric='cosine'")


class Vectors:
    """The embedding calls of a database (see :class:`koru.Database` for each contract)."""

    def __init__(
        self,
        *,
        writer: Writer,
        state: VectorState,
        store: LogStore,
        life: Lifecycle,
        max_value_size: int,
    ) -> None:
        self._writer = writer
        self._state = state
        self._store = store
        self._life = life
        self._max_value_size = max_value_size
        #: Groups whose index is being trained now (one training per group at a time).
        self._training: set[tuple[str, str, int]] = set()

    # -- writes --------------------------------------------------------------------------

    def prepare(
        self, namespace: str, key: str, vector: Any, model: str, metadata: Any
    ) -> Callable[[], Version]:
        """Check an embedding; returns the call that appends it (not yet acknowledged).
        Why two steps: ``put_similar`` checks the embedding before writing the value."""
        check_name(namespace, "namespace")
        check_name(key, "key")
        check_name(model, "model")
        narrow = _proven(vector)
        proven = narrow is not None
        if narrow is None:
            narrow = as_vector(vector)
        dim = len(narrow)
        dims = self._state.dims.get(model)
        if dims and dim not in dims:
            raise DimensionMismatchError(
                f"model {model!r} has dimension {sorted(dims)[0]}; this vector has {dim}"
            )
        data = narrow.astype("<f4", copy=False).tobytes()
        problem = None if proven else vector_problem(data, dim)  # the decoder's rule
        if problem is not None:
            raise InvalidDataError(problem)
        meta = None if metadata is None else encode_value(metadata, self._max_value_size)

        def append() -> Version:
            current = self._state.current(namespace, key)
            previous = None if current is None else current[0]
            # Appended as a put is (encoded, hashed, written), not through ``emit``'s
            # read-back: every field was checked above by the embed decoder's own rules
            # (names, the vector and its dimension, canonical metadata; the header and
            # ``previous`` come from the writer and the state), and the envelope holds
            # only arrays, ints, text, bytes and nulls, which cbor2 encodes canonically.
            # So the strict decoder (replay, peers) reads back exactly this event, as a
            # test checks; decoding it again here would cost a fifth of an embed.
            writer = self._writer
            event = EmbedEvent(
                *writer._header(VECTOR), namespace, key, model, dim, data, meta, previous
            )
            raw = encode_event(event)
            eid = event_id(raw)
            writer.write(event, raw, eid)
            return self._writer.version_of(
                namespace, key, eid, blake3.blake3(data).digest(), event.hlc, previous
            )

        return append

    def delete(self, namespace: str, key: str) -> Version:
        """Append a tombstone for a key with a live embedding (not yet acknowledged)."""
        check_name(namespace, "namespace")
        check_name(key, "key")
        current = self._state.current(namespace, key)
        if current is None or not current[1]:
            raise EmbeddingNotFoundError(namespace, key)
        event, eid = self._writer.emit(
            VECTOR, lambda h: UnembedEvent(*h, namespace, key, current[0])
        )
        return self._writer.version_of(namespace, key, eid, None, event.hlc, current[0])

    # -- searches ------------------------------------------------------------------------

    async def search(
        self,
        namespace: str | None,
        queries: list[Any],
        top_k: int,
        threshold: float | None,
        model: str | None,
        metric: str,
        approximate: bool | None,
        where: Any = None,
    ) -> list[list[VectorHit]]:
        """Each query's hits (see :meth:`koru.Database.embed_search`)."""
        import numpy as np

        _check_search(namespace, top_k, threshold, model, metric, approximate)
        predicate = _predicate(where)
        if not queries:
            return []
        checked = [_checked_query(q, metric) for q in queries]
        if len({len(q) for q in checked}) > 1:
            raise DimensionMismatchError("the queries have different dimensions")
        matrix = checked[0][None, :] if len(checked) == 1 else np.stack(checked)
        if approximate and predicate is None:
            await self._index_for(namespace, model, matrix.shape[1])
        found = self._state.search(
            namespace, matrix, top_k, metric, model, threshold, approximate, predicate
        )
        if ANSWER_BYTES.get() is not None:  # (a served call)
            _bound([h for hits in found for h in hits])
        return [[_hit(h) for h in hits] for hits in found]

    async def similar_at(
        self,
        namespace: str | None,
        query: Any,
        at: Any,
        top_k: int,
        threshold: float | None,
        model: str | None,
        metric: str,
        where: Any = None,
    ) -> list[VectorHit]:
        """Exact search over the embeddings valid at ``at`` (see
        :meth:`koru.Database.similar_at`)."""
        import numpy as np

        from koru.projections._vectors import _best, accepted_rows, rank, subset_scores

        _check_search(namespace, top_k, threshold, model, metric, False)
        predicate = _predicate(where)
        wide = _checked_query(query, metric)
        at_ns = to_ns(at)
        current, old = self._state.versions_at(namespace, at_ns)
        models = {(g.model, g.dim) for _, g, _ in current} | {(o.model, o.dim) for o in old}
        chosen = self._state.resolve(models, model, len(wide))
        if chosen is None:
            return []
        norm = float(np.sqrt(wide @ wide))
        unit = (wide / norm if norm else wide).astype(np.float32)
        hits: list[Hit] = []
        for ns, group, rows in current:
            if (group.model, group.dim) != chosen:
                continue
            if predicate is not None:
                rows = accepted_rows(group, rows, predicate)
                if not len(rows):
                    continue
            if 8 * len(rows) < group.n:  # few rows: score them alone
                fast = subset_scores(group, rows, unit, norm, metric)
            else:
                fast = group.rank_scores(unit, norm, metric)[rows]
            picked = rows[_best(fast, top_k)]
            scores = group.exact_scores(picked, wide, metric)
            space_keys = self._state.spaces[ns].names
            hits += [
                Hit(ns, space_keys[group.keys[r]], s, group.meta[r])
                for r, s in zip(picked.tolist(), scores.tolist(), strict=True)
            ]
        for i, version in enumerate(old):
            if (version.model, version.dim) != chosen:
                continue
            if not i % 256 and i:  # reading many past versions: let other tasks run
                await trio.lowlevel.checkpoint()
            event = decode_trusted(self._store.read(version.location))
            assert type(event) is EmbedEvent
            if predicate is not None and not predicate(
                None if event.metadata is None else cbor2.loads(event.metadata)
            ):
                continue
            vector = np.frombuffer(event.vector, "<f4").astype(np.float64)
            hits.append(
                Hit(version.namespace, version.key, _score(vector, wide, metric), event.metadata)
            )
        ranked = rank(hits, top_k, metric, threshold)
        if ANSWER_BYTES.get() is not None:  # (a served call)
            _bound(ranked)
        return [_hit(h) for h in ranked]

    # -- the approximate index -----------------------------------------------------------

    def due(self) -> list[tuple[str, str, int]]:
        """Groups whose approximate index should be (re)trained: at least
        ``APPROXIMATE_THRESHOLD`` live vectors, and no index or one trained on half or
        twice as many."""
        from koru.projections import _vectors

        threshold = _vectors.APPROXIMATE_THRESHOLD
        due = []
        for ns, model, dim, live, trained in self._state.group_sizes():
            if live < max(threshold, 2) or dim > MAX_INDEX_DIM:
                continue
            if trained is None or live >= 2 * trained or 2 * live <= trained:
                due.append((ns, model, dim))
        return due

    async def train(self, namespace: str, model: str, dim: int) -> bool:
        """Train the index of one group in a worker thread and write its model event;
        False if there was nothing to train (or a training of it runs already)."""
        import numpy as np

        from koru.projections._ivf_train import train_ivf
        from koru.projections._vector_group import DEAD

        group = self._state.group(namespace, model, dim)
        name = (namespace, model, dim)
        if group is None or group.live < 2 or dim > MAX_INDEX_DIM or name in self._training:
            return False
        # Rows below the count are never written again (see VectorGroup): the thread
        # reads them while the loop appends past them.
        rows = group.rows[: group.n]
        live = np.nonzero(group.keys[: group.n] != DEAD)[0]
        seed = int.from_bytes(
            blake3.blake3(cbor2.dumps([namespace, model, dim, len(live)])).digest(8), "big"
        )
        self._training.add(name)
        try:
            trained = await trio.to_thread.run_sync(train_ivf, rows, live, seed)
        finally:
            self._training.discard(name)
        projection, centroids = trained.to_bytes()
        reduced, nlist = trained.projection.shape[1], len(trained.centroids)
        await self._life.enter_write()
        self._writer.emit(
            VECTOR,
            lambda h: VectorIndexEvent(
                *h,
                namespace,
                model,
                dim,
                reduced,
                nlist,
                trained.nprobe,
                trained.rerank,
                trained.trained,
                projection,
                centroids,
            ),
        )
        await self._writer.acknowledge()
        return True

    async def _index_for(self, namespace: str | None, model: str | None, dim: int) -> None:
        """Forced on: train the index of every searched group that has none (a
        read-only database cannot write one: its search stays exact)."""
        if self._store.readonly:
            return
        scope = self._state._scope(namespace)
        if all(g.index is not None or g.live < 2 for _, s in scope for g in s.groups):
            return  # the common case, every query of a forced search: nothing to train
        names = [n for n, _ in scope]
        models = {(g.model, g.dim) for n in names for g in self._state.spaces[n].groups if g.live}
        chosen = self._state.resolve(models, model, dim)
        if chosen is None:
            return
        for n in names:
            group = self._state.group(n, *chosen)
            if group is not None and group.index is None and group.live >= 2:
                await self.train(n, *chosen)


def _predicate(where: Any) -> Callable[[Any], bool] | None:
    """The test of a search's ``where``: a filter (``koru.F``), a query (its filter) or
    a filter's data form; None for none.

    Raises:
        InvalidQueryError: anything else, or a malformed filter.
    """
    if where is None:  # every unfiltered search: before the imports below
        return None
    from koru.projections import Filter, Query
    from koru.projections._filters import filter_from_data
    from koru.projections._predicate import compile_filter
    from koru.projections._query import check_filter

    if isinstance(where, Query):
        return compile_filter(where.validate().filter)
    if isinstance(where, Filter):
        return compile_filter(check_filter(where, "where"))
    return compile_filter(filter_from_data(where, "where"))


def _score(vector: npt.NDArray[np.float64], query: npt.NDArray[np.float64], metric: str) -> float:
    import numpy as np

    if metric == "cosine":
        return float((vector * query).sum() / (np.sqrt(vector @ vector) * np.sqrt(query @ query)))
    if metric == "dot":
        return float((vector * query).sum())
    diff = vector - query
    return float(np.sqrt((diff * diff).sum()))


#: Fewer bytes than a hit takes in an answer besides its key and metadata.
_HIT_FIELDS = 16


def _bound(hits: list[Hit]) -> None:
    """Refuse hits surely over the bytes a served answer holds, before their metadata
    is decoded (a batch of small queries with a large top_k asks for gigabytes)."""
    size = sum(len(h.key) + (0 if h.metadata is None else len(h.metadata)) for h in hits)
    refuse_past_answer("search", size, len(hits), _HIT_FIELDS, "a smaller top_k, fewer queries")


def _hit(hit: Hit) -> VectorHit:
    meta = None if hit.metadata is None else cbor2.loads(hit.metadata)
    return VectorHit(hit.namespace, hit.key, hit.score, meta)
