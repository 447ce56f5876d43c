"""The vector projection: every embedding's versions, and the indexes searched.

A pure fold of the vector agent's events (:mod:`koru.events._vector_events`). Per
namespace it keeps a table of keys and, append-only, every version of every key's
embedding (timestamp, origin, event id, where the event is stored, which group it
belongs to; tombstones too), so a search at a past time knows which version each key
had then. The current version of a key is its greatest by ``(hlc, origin, event id)``,
as for key/value writes, so concurrent embeddings from two nodes settle the same way
on every replica.

The live embeddings of each (namespace, model, dimension) are a
:class:`~koru.projections._vector_group.VectorGroup`: a contiguous normalized matrix,
with an approximate index once a model event for it was folded (the newest model by
the same order wins). Vectors of older versions are not kept in memory: a search at a
past time reads them from the log through their recorded locations.

Only vector-agent events reach this projection (``agents``), so a database that never
embeds pays nothing on its write path, and numpy is imported with the first vector.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import cbor2

from koru.events import (
    NODE_ID_SIZE,
    VECTOR,
    DimensionMismatchError,
    EmbedEvent,
    Event,
    InvalidArgumentError,
    UnembedEvent,
    VectorIndexEvent,
)

from ._vector_group import DEAD, VectorGroup

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["METRICS", "Hit", "OldVersion", "VectorState"]

#: How a search can rank: cosine similarity, dot product, euclidean distance.
METRICS = ("cosine", "dot", "euclidean")
#: Groups at least this large are searched through their approximate index (if they
#: have one) unless a search says otherwise.
APPROXIMATE_THRESHOLD = 20_000
_MOD = 1 << 256
_NONE = -1
# Candidates beyond top_k scored exactly, and the float32 slack that counts as a tie at
# the boundary: rows whose fast scores differ by rounding alone are all scored exactly,
# so which of them make the cut never depends on the order rows were stored in.
_MARGIN = 16
_SLACK = 1e-4
#: Queries scored together by one matrix product in a batched search.
_BLOCK = 64


class Hit(NamedTuple):
    """One search result as the projection finds it (metadata still encoded)."""

    namespace: str
    key: str
    score: float
    metadata: bytes | None


class OldVersion(NamedTuple):
    """A version valid at a past time that is no longer current: its vector is read from
    the log at ``location``."""

    namespace: str
    key: str
    model: str
    dim: int
    location: int


class _Space:
    """One namespace: its keys, every version of their embeddings, and its groups."""

    __slots__ = (
        "group_ids",
        "groups",
        "ids",
        "indexes",
        "key_cur",
        "key_group",
        "key_last",
        "key_row",
        "names",
        "v_eid",
        "v_group",
        "v_hlc",
        "v_key",
        "v_loc",
        "v_origin",
        "v_prev",
    )

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}
        # Per key id: its current version (or -1), the group and row of its live vector
        # (or -1), and its newest-folded version (the head of its version chain).
        self.key_cur = array("q")
        self.key_group = array("q")
        self.key_row = array("q")
        self.key_last = array("q")
        # Per version, append-only: timestamp, key id, origin (index), event id (32
        # bytes each), location, group (-1: a tombstone), previous version of the key.
        self.v_hlc = array("Q")
        self.v_key = array("q")
        self.v_origin = array("q")
        self.v_eid = bytearray()
        self.v_loc = array("Q")
        self.v_group = array("q")
        self.v_prev = array("q")
        self.groups: list[VectorGroup] = []
        self.group_ids: dict[tuple[str, int], int] = {}
        #: group id -> the model event folded into its index.
        self.indexes: dict[int, VectorIndexEvent] = {}

    def key_id(self, key: str) -> int:
        kid = self.ids.get(key)
        if kid is None:
            kid = self.ids[key] = len(self.names)
            self.names.append(key)
            for table in (self.key_cur, self.key_group, self.key_row, self.key_last):
                table.append(_NONE)
        return kid

    def group_id(self, model: str, dim: int) -> int:
        gid = self.group_ids.get((model, dim))
        if gid is None:
            gid = self.group_ids[(model, dim)] = len(self.groups)
            self.groups.append(VectorGroup(model, dim))
        return gid

    def eid(self, version: int) -> bytes:
        return bytes(self.v_eid[32 * version : 32 * version + 32])


class VectorState:
    """Embeddings by namespace and key, their history, and their indexes."""

    __slots__ = ("_index_ids", "_origin_ids", "_sum", "dims", "origins", "spaces")

    #: The projection's name (its checkpoint section), section format, and the agents
    #: whose events it folds.
    name: ClassVar[str] = "vectors"
    version: ClassVar[int] = 1
    agents: ClassVar[frozenset[str]] = frozenset({VECTOR})
    kinds: ClassVar[frozenset[type[Event]]] = frozenset(
        {EmbedEvent, UnembedEvent, VectorIndexEvent}
    )

    def __init__(self) -> None:
        self.spaces: dict[str, _Space] = {}
        #: Node ids that wrote versions (versions name them by index).
        self.origins: list[bytes] = []
        self._origin_ids: dict[bytes, int] = {}
        #: model -> the dimensions its embeddings have (one, unless peers disagreed).
        self.dims: dict[str, set[int]] = {}
        self._index_ids: set[bytes] = set()
        # Sum of the ids of every folded event mod 2**256: an order-independent digest
        # of the set of events, hence of the state (see KvState).
        self._sum = 0

    # -- the fold -----------------------------------------------------------------------

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        """Fold one vector event. Applying an event twice changes nothing."""
        kind = type(event)
        if kind is EmbedEvent or kind is UnembedEvent:
            self._version(event, event_id, location)  # type: ignore[arg-type]
        elif kind is VectorIndexEvent:
            self._index(event, event_id)  # type: ignore[arg-type]

    def _origin(self, origin: bytes) -> int:
        oid = self._origin_ids.get(origin)
        if oid is None:
            oid = self._origin_ids[origin] = len(self.origins)
            self.origins.append(origin)
        return oid

    def _order(self, space: _Space, version: int) -> tuple[int, bytes, bytes]:
        return (
            space.v_hlc[version],
            self.origins[space.v_origin[version]],
            space.eid(version),
        )

    def _version(self, event: EmbedEvent | UnembedEvent, eid: bytes, location: int) -> None:
        space = self.spaces.get(event.namespace)
        if space is None:
            space = self.spaces[event.namespace] = _Space()
        kid = space.key_id(event.key)
        version = space.key_last[kid]
        while version != _NONE:  # a key has few versions: walk them for a duplicate
            if space.v_eid[32 * version : 32 * version + 32] == eid:
                return
            version = space.v_prev[version]
        if type(event) is EmbedEvent:
            gid = space.group_ids.get((event.model, event.dim))
            if gid is None:
                gid = space.group_id(event.model, event.dim)
            dims = self.dims.get(event.model)
            if dims is None or event.dim not in dims:
                self.dims.setdefault(event.model, set()).add(event.dim)
        else:
            gid = _NONE
        version = len(space.v_hlc)
        space.v_hlc.append(event.hlc)
        space.v_key.append(kid)
        oid = self._origin_ids.get(event.origin)
        space.v_origin.append(self._origin(event.origin) if oid is None else oid)
        space.v_eid += eid
        space.v_loc.append(location)
        space.v_group.append(gid)
        space.v_prev.append(space.key_last[kid])
        space.key_last[kid] = version
        self._sum = (self._sum + int.from_bytes(eid, "big")) % _MOD
        current = space.key_cur[kid]
        if current != _NONE and (
            event.hlc < space.v_hlc[current]
            or (
                event.hlc == space.v_hlc[current]
                and self._order(space, version) < self._order(space, current)
            )
        ):
            return  # an older version arrived late: history only
        space.key_cur[kid] = version
        old = space.key_group[kid]
        if old != _NONE:
            group = space.groups[old]
            group.remove(space.key_row[kid])
            space.key_group[kid] = space.key_row[kid] = _NONE
            if group.due_for_compaction():
                keys, rows = group.compact()
                for k, r in zip(keys.tolist(), rows.tolist(), strict=True):
                    space.key_row[k] = r
        if type(event) is EmbedEvent:
            space.key_row[kid] = space.groups[gid].add(kid, event.vector, event.metadata)
            space.key_group[kid] = gid

    def _index(self, event: VectorIndexEvent, eid: bytes) -> None:
        if eid in self._index_ids:
            return
        self._index_ids.add(eid)
        self._sum = (self._sum + int.from_bytes(eid, "big")) % _MOD
        space = self.spaces.get(event.namespace)
        if space is None:
            space = self.spaces[event.namespace] = _Space()
        gid = space.group_id(event.model, event.dim)
        held = space.indexes.get(gid)
        if held is not None and _event_order(event, eid) < _event_order(held, _id_of(held)):
            return
        space.indexes[gid] = event
        _attach(space.groups[gid], event)

    # -- reading ------------------------------------------------------------------------

    def digest(self) -> bytes:
        """32 bytes, equal on every node holding the same vector events."""
        return self._sum.to_bytes(32, "big")

    def dims_of(self, model: str) -> set[int]:
        """The dimensions ``model``'s embeddings have (empty if none yet)."""
        return set(self.dims.get(model, ()))

    def current(self, namespace: str, key: str) -> tuple[bytes, bool] | None:
        """The event id of the key's current version and whether it is live (not a
        tombstone); None if the key was never embedded."""
        space = self.spaces.get(namespace)
        kid = None if space is None else space.ids.get(key)
        if space is None or kid is None:
            return None
        version = space.key_cur[kid]
        return space.eid(version), space.key_group[kid] != _NONE

    def embedding(self, namespace: str, key: str) -> tuple[str, Any, bytes | None] | None:
        """The live embedding of a key: (model, vector as float32, metadata)."""
        space = self.spaces.get(namespace)
        kid = None if space is None else space.ids.get(key)
        if space is None or kid is None or space.key_group[kid] == _NONE:
            return None
        group = space.groups[space.key_group[kid]]
        row = space.key_row[kid]
        return group.model, group.rows[row] * group.norms[row], group.meta[row]

    def count(self, namespace: str | None = None) -> int:
        """Live embeddings (in one namespace, or in all)."""
        spaces = self._scope(namespace)
        return sum(g.live for _, s in spaces for g in s.groups)

    def group_sizes(self) -> list[tuple[str, str, int, int, int | None]]:
        """(namespace, model, dim, live rows, rows the index was trained on or None)
        of every group."""
        out = []
        for ns, space in sorted(self.spaces.items()):
            for gid, group in enumerate(space.groups):
                index = space.indexes.get(gid)
                trained = None if index is None else index.trained
                out.append((ns, group.model, group.dim, group.live, trained))
        return out

    def group(self, namespace: str, model: str, dim: int) -> VectorGroup | None:
        space = self.spaces.get(namespace)
        gid = None if space is None else space.group_ids.get((model, dim))
        return None if space is None or gid is None else space.groups[gid]

    def _scope(self, namespace: str | None) -> list[tuple[str, _Space]]:
        if namespace is None:
            return sorted(self.spaces.items())
        space = self.spaces.get(namespace)
        return [] if space is None else [(namespace, space)]

    def resolve(
        self, models: set[tuple[str, int]], model: str | None, dim: int
    ) -> tuple[str, int] | None:
        """Which (model, dim) a search of a ``dim`` query means among ``models`` (those
        in its scope); None if there is nothing to search.

        Raises:
            InvalidArgumentError: no model named and several in scope.
            DimensionMismatchError: the query's dimension is not the model's.
        """
        if model is None:
            names = {m for m, _ in models}
            if len(names) > 1:
                raise InvalidArgumentError(
                    f"the embeddings searched are of several models ({', '.join(sorted(names))}): "
                    "name one with model="
                )
            if not names:
                return None
            model = names.pop()
        dims = self.dims.get(model, set()) | {d for m, d in models if m == model}
        if dims and dim not in dims:
            raise DimensionMismatchError(
                f"the query has dimension {dim}; model {model!r} has {sorted(dims)}"
            )
        return (model, dim) if (model, dim) in models else None

    def search(
        self,
        namespace: str | None,
        queries: npt.NDArray[np.float64],
        top_k: int,
        metric: str,
        model: str | None,
        threshold: float | None,
        approximate: bool | None,
        where: Callable[[Any], bool] | None = None,
    ) -> list[list[Hit]]:
        """For each query (a row of ``queries``, float64, checked usable), the
        ``top_k`` live embeddings nearest it, best first, ties by (namespace, key); see
        :meth:`resolve` for the model. ``approximate``: None uses a group's approximate
        index when it has one and is large (cosine only), True whenever it has one,
        False never. ``where``: only embeddings whose metadata (decoded; None without)
        it accepts, searched exactly among those."""
        import numpy as np

        scope = self._scope(namespace)
        models = {(g.model, g.dim) for _, s in scope for g in s.groups if g.live}
        chosen = self.resolve(models, model, queries.shape[1])
        hits: list[list[Hit]] = [[] for _ in range(len(queries))]
        if chosen is None:
            return hits
        norms = np.sqrt(np.einsum("ij,ij->i", queries, queries))
        units = (queries / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
        for ns, space in scope:
            gid = space.group_ids.get(chosen)
            if gid is None or not space.groups[gid].live:
                continue
            group = space.groups[gid]
            use_index = group.index is not None and metric == "cosine"
            if approximate is None:
                use_index = use_index and group.live >= APPROXIMATE_THRESHOLD
            elif not approximate:
                use_index = False
            names, meta, keys = space.names, group.meta, group.keys
            found: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.float32] | None]]
            if where is not None:
                found = [
                    (rows, None)
                    for rows in _filtered_candidates(group, where, units, norms, metric, top_k)
                ]
            else:
                found = self._candidates(group, units, norms, metric, top_k, use_index)
            for i, (rows, gathered) in enumerate(found):
                scores = group.exact_scores(rows, queries[i], metric, gathered)
                if len(rows) > top_k:  # only those that can rank: the k best, ties too
                    worse = scores if metric == "euclidean" else -scores
                    kept = worse <= np.partition(worse, top_k - 1)[top_k - 1]
                    rows, scores = rows[kept], scores[kept]
                hits[i] += [
                    Hit(ns, names[k], s, meta[r])
                    for r, k, s in zip(
                        rows.tolist(), keys[rows].tolist(), scores.tolist(), strict=True
                    )
                ]
        return [rank(h, top_k, metric, threshold) for h in hits]

    @staticmethod
    def _candidates(
        group: VectorGroup,
        units: npt.NDArray[np.float32],
        norms: npt.NDArray[np.float64],
        metric: str,
        top_k: int,
        use_index: bool,
    ) -> list[tuple[npt.NDArray[np.intp], npt.NDArray[np.float32] | None]]:
        """Per query, the rows of ``group`` worth an exact score (and their vectors,
        when they were gathered already)."""
        if use_index:
            # The index's candidates (a few times top_k) are gathered once: a float32
            # product thins them to those that can rank, whose exact scores come from
            # the same copy (each candidate row is a cache miss in a large matrix).
            index = group.index
            assert index is not None
            out: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.float32] | None]] = []
            for unit in units:
                rows = index.candidates(unit, top_k)
                gathered = group.rows[rows]
                if len(rows) > top_k + _MARGIN:
                    keep = _best(gathered @ unit, top_k)
                    rows, gathered = rows[keep], gathered[keep]
                out.append((rows, gathered))
            return out
        if len(units) == 1:  # one product with the query vector
            return [(_best(group.rank_scores(units[0], float(norms[0]), metric), top_k), None)]
        out = []
        for start in range(0, len(units), _BLOCK):  # a matrix product per block of queries
            block = group.rank_scores_many(
                units[start : start + _BLOCK], norms[start : start + _BLOCK], metric
            )
            out += [(_best(scores, top_k), None) for scores in block]
        return out

    def versions_at(
        self, namespace: str | None, at: int
    ) -> tuple[list[tuple[str, VectorGroup, npt.NDArray[np.intp]]], list[OldVersion]]:
        """The embeddings valid at time ``at`` (ns): per group, the live rows whose
        current version was already valid then; and every other version valid then
        (written at or before ``at``, not superseded by then, not a tombstone) whose
        vector must be read from the log."""
        import numpy as np

        current: list[tuple[str, VectorGroup, npt.NDArray[np.intp]]] = []
        old: list[OldVersion] = []
        for ns, space in self._scope(namespace):
            if not len(space.v_hlc):
                continue
            hlc = np.frombuffer(space.v_hlc, np.uint64).copy()
            chosen = np.nonzero(hlc <= at)[0]
            if not len(chosen):
                continue
            keys = np.frombuffer(space.v_key, np.int64)[chosen].copy()
            order = np.lexsort((hlc[chosen], keys))
            chosen, keys = chosen[order], keys[order]
            last = np.ones(len(keys), bool)
            last[:-1] = keys[1:] != keys[:-1]
            valid = chosen[last].tolist()
            tied = np.nonzero(~last[:-1] & (hlc[chosen[:-1]] == hlc[chosen[1:]]))[0]
            if len(tied):  # equal timestamps for one key: the full order decides
                valid = self._untie(space, set(valid), chosen, keys, tied)
            rows: dict[int, list[int]] = {}
            for version in valid:
                gid = space.v_group[version]
                if gid == _NONE:
                    continue
                kid = space.v_key[version]
                if space.key_cur[kid] == version:
                    rows.setdefault(gid, []).append(space.key_row[kid])
                else:
                    group = space.groups[gid]
                    old.append(
                        OldVersion(
                            ns, space.names[kid], group.model, group.dim, space.v_loc[version]
                        )
                    )
            for gid, listed in sorted(rows.items()):
                current.append((ns, space.groups[gid], np.array(listed, np.intp)))
        return current, old

    def _untie(
        self,
        space: _Space,
        valid: set[int],
        chosen: npt.NDArray[np.intp],
        keys: npt.NDArray[np.int64],
        tied: npt.NDArray[np.intp],
    ) -> list[int]:
        for at in tied.tolist():
            kid = int(keys[at])
            same = [int(v) for v, k in zip(chosen.tolist(), keys.tolist(), strict=True) if k == kid]
            top = max(space.v_hlc[v] for v in same)
            best = max(
                (v for v in same if space.v_hlc[v] == top), key=lambda v: self._order(space, v)
            )
            valid -= set(same)
            valid.add(best)
        return sorted(valid)

    def content(self) -> Any:
        """What the state holds, by name rather than by position: per namespace every
        version (key name, timestamp, origin, event id, location, model and dimension,
        previous event id), every key's current and newest version and live vector
        and metadata, and every index model. Comparable between a replay and a
        checkpoint's restore (``kdelta verify``); why not the captured tables with
        their lists sorted: a checkpoint whose key names or metadata were permuted
        (its checksum fixed) sorted the same, and served one key's vector as another's."""

        def eid(space: _Space, version: int) -> bytes | None:
            return None if version == _NONE else space.eid(version)

        spaces = []
        for ns, space in sorted(self.spaces.items()):
            versions = sorted(
                (
                    space.names[space.v_key[v]],
                    space.v_hlc[v],
                    self.origins[space.v_origin[v]],
                    space.eid(v),
                    space.v_loc[v],
                    None
                    if space.v_group[v] == _NONE
                    else (space.groups[space.v_group[v]].model, space.groups[space.v_group[v]].dim),
                    eid(space, space.v_prev[v]),
                )
                for v in range(len(space.v_hlc))
            )
            keys = []
            for kid, key in enumerate(space.names):
                gid, row = space.key_group[kid], space.key_row[kid]
                live = None
                if gid != _NONE:
                    group = space.groups[gid]
                    live = (
                        group.model,
                        group.dim,
                        group.rows[row].tobytes(),
                        group.norms[row].tobytes(),
                        group.meta[row],
                    )
                keys.append(
                    (key, eid(space, space.key_cur[kid]), eid(space, space.key_last[kid]), live)
                )
            keys.sort(key=lambda k: k[0])
            groups = sorted((g.model, g.dim, g.live) for g in space.groups)
            indexes = sorted(
                (space.groups[gid].model, space.groups[gid].dim, list(event))
                for gid, event in space.indexes.items()
            )
            spaces.append((ns, versions, keys, groups, indexes))
        dims = sorted((m, sorted(d)) for m, d in self.dims.items())
        return (dims, sorted(self._index_ids), self.digest(), spaces)

    # -- checkpoint ---------------------------------------------------------------------

    def capture(self) -> dict[str, Any]:
        """Plain data; group matrices as views (never written again, see VectorGroup)."""
        spaces = {}
        for ns, space in self.spaces.items():
            spaces[ns] = [
                list(space.names),
                *(
                    _le(table)
                    for table in (
                        space.key_cur,
                        space.key_group,
                        space.key_row,
                        space.key_last,
                        space.v_hlc,
                        space.v_key,
                        space.v_origin,
                    )
                ),
                bytes(space.v_eid),
                _le(space.v_loc),
                _le(space.v_group),
                _le(space.v_prev),
                [group.capture() for group in space.groups],
                [[gid, _index_fields(event)] for gid, event in sorted(space.indexes.items())],
            ]
        return {
            "origins": list(self.origins),
            "dims": sorted([m, sorted(d)] for m, d in self.dims.items()),
            "indexes": sorted(self._index_ids),
            "sum": self.digest(),
            "spaces": spaces,
        }

    @classmethod
    def restore(cls, data: Any) -> VectorState:
        """Rebuild from :meth:`capture` output; every field's shape is checked
        (ValueError, TypeError or KeyError if malformed)."""
        state = cls()
        origins = data["origins"]
        if type(origins) is not list or not all(
            type(o) is bytes and len(o) == NODE_ID_SIZE for o in origins
        ):
            raise ValueError("malformed origins")
        for origin in origins:
            state._origin(origin)
        for model, dims in data["dims"]:
            if type(model) is not str or not all(type(d) is int and d > 0 for d in dims):
                raise ValueError("malformed model dimensions")
            state.dims[model] = set(dims)
        indexes = data["indexes"]
        if not all(type(i) is bytes and len(i) == 32 for i in indexes):
            raise ValueError("malformed index ids")
        state._index_ids = set(indexes)
        total = data["sum"]
        if type(total) is not bytes or len(total) != 32:
            raise ValueError("malformed digest")
        state._sum = int.from_bytes(total, "big")
        spaces = data["spaces"]
        if type(spaces) is not dict:
            raise ValueError("malformed namespaces")
        for ns, fields in spaces.items():
            if type(ns) is not str or not ns:
                raise ValueError("malformed namespace")
            state.spaces[ns] = _restore_space(fields, len(origins))
        return state


def _restore_space(fields: Any, origins: int) -> _Space:
    (names, cur, group, row, last, hlc, key, origin, eid, loc, vgroup, prev, groups, indexes) = (
        fields
    )
    space = _Space()
    if type(names) is not list or not all(type(n) is str and n for n in names):
        raise ValueError("malformed key names")
    space.names = names
    space.ids = {n: i for i, n in enumerate(names)}
    if len(space.ids) != len(names):
        raise ValueError("a key name twice")
    for table, blob in (
        (space.key_cur, cur),
        (space.key_group, group),
        (space.key_row, row),
        (space.key_last, last),
        (space.v_hlc, hlc),
        (space.v_key, key),
        (space.v_origin, origin),
        (space.v_loc, loc),
        (space.v_group, vgroup),
        (space.v_prev, prev),
    ):
        _load(table, blob)
    if type(eid) is not bytes:
        raise ValueError("malformed event ids")
    space.v_eid = bytearray(eid)
    keys, versions = len(names), len(space.v_hlc)
    if not (
        len(space.key_cur) == len(space.key_group) == len(space.key_row) == keys
        and len(space.key_last) == keys
        and len(space.v_key) == len(space.v_origin) == len(space.v_loc) == versions
        and len(space.v_group) == len(space.v_prev) == versions
        and len(space.v_eid) == 32 * versions
    ):
        raise ValueError("vector tables of different lengths")
    if type(groups) is not list:
        raise ValueError("malformed groups")
    space.groups = [VectorGroup.restore(g, keys) for g in groups]
    space.group_ids = {(g.model, g.dim): i for i, g in enumerate(space.groups)}
    if len(space.group_ids) != len(space.groups):
        raise ValueError("a vector group twice")
    # Every reference in range, and every live row where its key says it is.
    ngroups = len(space.groups)
    if not (
        all(-1 <= v < versions for v in space.key_cur)
        and all(-1 <= v < versions for v in space.key_last)
        and all(-1 <= v < versions for v in space.v_prev)
        and all(0 <= k < keys for k in space.v_key)
        and all(0 <= o < origins for o in space.v_origin)
        and all(-1 <= g < ngroups for g in space.v_group)
    ):
        raise ValueError("a vector table refers out of range")
    for kid in range(keys):
        gid, r = space.key_group[kid], space.key_row[kid]
        if gid != _NONE:
            if not (0 <= gid < ngroups and 0 <= r < space.groups[gid].n):
                raise ValueError("a key's row is out of range")
            if space.groups[gid].keys[r] != kid:
                raise ValueError("a key's row holds another key")
    if sum(g.live for g in space.groups) != sum(1 for g in space.key_group if g != _NONE):
        raise ValueError("live rows and keys disagree")
    if type(indexes) is not list:
        raise ValueError("malformed indexes")
    for gid, fields_ in indexes:
        if type(gid) is not int or not 0 <= gid < ngroups:
            raise ValueError("an index of no group")
        event = _index_event(fields_)
        group = space.groups[gid]
        if (event.model, event.dim) != (group.model, group.dim):
            raise ValueError("an index of another group")
        space.indexes[gid] = event
        _attach(group, event)
    return space


def _attach(group: VectorGroup, event: VectorIndexEvent) -> None:
    """Give ``group`` the approximate index of ``event``'s model, over its live rows."""
    import numpy as np

    from ._ivf import IvfIndex, IvfModel

    model = IvfModel.from_bytes(
        event.dim,
        event.reduced,
        event.nlist,
        event.nprobe,
        event.rerank,
        event.trained,
        event.projection,
        event.centroids,
    )
    live = np.nonzero(group.keys[: group.n] != DEAD)[0]
    group.index = IvfIndex(model, group.rows, live)


def _id_of(event: VectorIndexEvent) -> bytes:
    from koru.events import encode_event, event_id

    return event_id(encode_event(event))


def _event_order(event: Event, eid: bytes) -> tuple[int, bytes, bytes]:
    return (event.hlc, event.origin, eid)


def _index_fields(event: VectorIndexEvent) -> list[Any]:
    return list(event)


def _index_event(fields: Any) -> VectorIndexEvent:
    from koru.events import decode_event, encode_event

    if type(fields) is not list or len(fields) != len(VectorIndexEvent._fields):
        raise ValueError("malformed index model")
    event = VectorIndexEvent(*fields)
    # The strict decoder checks every field (the checkpoint could be crafted).
    decoded = decode_event(encode_event(event))
    if decoded != event:
        raise ValueError("malformed index model")
    return event


def rank(hits: list[Hit], top_k: int, metric: str, threshold: float | None) -> list[Hit]:
    """The best ``top_k`` of ``hits``: highest score first (lowest distance for
    euclidean), ties by (namespace, key); beyond ``threshold`` left out."""
    if metric == "euclidean":
        if threshold is not None:
            hits = [h for h in hits if h.score <= threshold]
        hits.sort(key=lambda h: (h.score, h.namespace, h.key))
    else:
        if threshold is not None:
            hits = [h for h in hits if h.score >= threshold]
        hits.sort(key=lambda h: (-h.score, h.namespace, h.key))
    return hits[:top_k]


def accepted_rows(
    group: VectorGroup, rows: npt.NDArray[np.intp], where: Callable[[Any], bool]
) -> npt.NDArray[np.intp]:
    """The ``rows`` of ``group`` whose metadata ``where`` accepts (each decoded once;
    rows without metadata are tested as None)."""
    import numpy as np

    meta = group.meta
    kept = [r for r in rows.tolist() if where(_decoded(meta[r]))]
    return np.array(kept, dtype=np.intp)


def _decoded(meta: bytes | None) -> Any:
    return None if meta is None else cbor2.loads(meta)


def subset_scores(
    group: VectorGroup,
    rows: npt.NDArray[np.intp],
    unit: npt.NDArray[np.float32],
    norm: float,
    metric: str,
) -> npt.NDArray[Any]:
    """:meth:`VectorGroup.rank_scores` of ``rows`` alone (one product with them)."""
    import numpy as np

    fast: npt.NDArray[Any] = group.rows[rows] @ unit
    if metric == "dot":
        fast = fast * group.norms[rows]
    elif metric == "euclidean":
        row_norms = group.norms[rows].astype(np.float64)
        fast = (2.0 * norm) * row_norms * fast - row_norms * row_norms
    return fast


def _filtered_candidates(
    group: VectorGroup,
    where: Callable[[Any], bool],
    units: npt.NDArray[np.float32],
    norms: npt.NDArray[np.float64],
    metric: str,
    top_k: int,
) -> list[npt.NDArray[np.intp]]:
    """Per query, the rows worth an exact score among the live rows ``where`` accepts."""
    import numpy as np

    live: npt.NDArray[np.intp] = np.nonzero(group.keys[: group.n] != DEAD)[0]
    rows = accepted_rows(group, live, where)
    if not len(rows):
        return [rows for _ in units]
    return [
        rows[_best(subset_scores(group, rows, unit, float(norm), metric), top_k)]
        for unit, norm in zip(units, norms, strict=True)
    ]


def _best(scores: npt.NDArray[Any], top_k: int) -> npt.NDArray[np.intp]:
    """The rows worth an exact score for the best ``top_k`` (higher is better; -inf
    never): the best ``top_k + _MARGIN``, and every row within rounding of the last."""
    import numpy as np

    n = len(scores)
    keep = top_k + _MARGIN
    if n <= keep:
        rows: npt.NDArray[np.intp] = np.arange(n)
        finite: npt.NDArray[np.intp] = rows[np.isfinite(scores)]
        return finite
    # The best ``further`` rows, the last of them the further-th best: only if it is
    # within rounding of the keep-th best can rows outside them be (then a full pass).
    further = min(n, keep + _MARGIN)
    head = np.argpartition(-scores, further - 1)[:further]
    best = scores[head]
    boundary = float(np.partition(best, further - keep)[further - keep])
    slack = _SLACK * max(1.0, abs(boundary)) if np.isfinite(boundary) else 0.0
    if further < n and float(best[-1]) >= boundary - slack:
        rows = np.nonzero(scores >= boundary - slack)[0]
    else:
        rows = head[best >= boundary - slack]
    kept: npt.NDArray[np.intp] = rows[np.isfinite(scores[rows])]
    return kept


def _le(table: array[int]) -> bytes:
    import sys

    if sys.byteorder == "little":
        return table.tobytes()
    swapped = array(table.typecode, table)  # pragma: no cover - big-endian machines
    swapped.byteswap()  # pragma: no cover
    return swapped.tobytes()  # pragma: no cover


def _load(table: array[int], blob: Any) -> None:
    import sys

    if type(blob) is not bytes or len(blob) % table.itemsize:
        raise ValueError("malformed vector table")
    table.frombytes(blob)
    if sys.byteorder != "little":  # pragma: no cover - big-endian machines
        table.byteswap()
