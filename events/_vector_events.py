"""Events of the vector agent: embeddings, their tombstones, and approximate-index models.

An embedding is a versioned vector for ``namespace/key``: a model name, a dimension,
the vector as little-endian float32 bytes (compact and exact: 1.5 KB for 384 floats,
where a CBOR list of floats would take twice that and round-trip through float64), and
optional metadata as canonical CBOR value bytes (the same rules as a put's value). A
tombstone deletes a key's embedding; history keeps every version, so a search at a past
time sees what was there then.

An index model is what a node trained for the approximate index of one (namespace,
model, dimension): a projection to fewer dimensions, coarse centroids and the search
parameters it calibrated. Why an event rather than each node training its own: training
is seeded but its input depends on what a node held when it trained, so two replicas
would search differently; folding the same model event gives every replica holding the
same events the same index, and replay folds it without training again.

Every field is checked on decode (these events come from peers too): names under the
name rule, vectors of exactly ``4 * dim`` bytes holding finite floats and not all zeros,
metadata that is a valid canonical value.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

from ._errors import CodecError
from ._event import Event
from ._fields import id_or_none, name, raw_bytes, uint
from ._registry import Header, register_event_type
from ._values import DEFAULT_MAX_VALUE_SIZE, decode_value_strict

__all__ = [
    "FLAT_LISTS",
    "MAX_INDEX_DIM",
    "MAX_VECTOR_DIM",
    "VECTOR",
    "EmbedEvent",
    "UnembedEvent",
    "VectorIndexEvent",
    "vector_problem",
]

#: The agent whose log holds embeddings.
VECTOR = "vector"
#: Most dimensions a vector may have (256 KiB of float32).
MAX_VECTOR_DIM = 65_536
#: Bounds of an index model: coarse lists, and candidates re-ranked per result.
MAX_LISTS = 65_536
MAX_RERANK = 1024
#: Most lists a model may have that are not a square: each row is compared with every
#: list. Past this a model's ``c * c`` lists are routed through ``c`` coarse groups
#: (``2c`` distances a row); one that is not a square would be compared with them all,
#: rows x lists float64 distances in blocks of 8,192 rows (4 GiB for 65,535 lists), and
#: training never writes one.
FLAT_LISTS = 1024
#: Largest dimension an approximate index is trained for (training holds a ``dim x
#: dim`` matrix; larger vectors are searched exactly). A model of more is refused: no
#: node writes one, and a peer's would cost rows x dim x reduced at every fold and open.
MAX_INDEX_DIM = 4096
_FLOAT32_MAX = 3.4028234663852886e38
#: A float32 sum of squares below this is far inside float32 (a norm under 1e18).
_SAFE_SQUARE = 1e36


def vector_problem(data: bytes, dim: int) -> str | None:
    """Why ``data`` is not a usable vector of ``dim`` little-endian float32s, or None.

    Usable: exactly ``4 * dim`` bytes, every float finite, and a norm that is neither
    zero (a zero vector has no direction: cosine is undefined) nor beyond float32.
    """
    if len(data) != 4 * dim:
        return f"a vector of dimension {dim} is {4 * dim} bytes, not {len(data)}"
    import numpy as np  # here, not at import: a log reader that never meets a vector

    floats = np.frombuffer(data, dtype="<f4")
    # The common case in one float32 dot product: a NaN or an infinity makes the sum of
    # squares NaN or infinite, so a sum strictly between 0 and _SAFE_SQUARE proves every
    # float finite and the norm neither zero nor near float32's limit. Anything else
    # (including squares that underflow or overflow in float32) is judged in float64.
    with np.errstate(over="ignore"):  # an overflow is judged below, in float64
        square = float(floats.dot(floats))
    if 0.0 < square < _SAFE_SQUARE:
        return None
    if not np.isfinite(floats).all():
        return "a vector holds NaN or infinity"
    norm = float(np.sqrt(np.dot(floats.astype(np.float64), floats.astype(np.float64))))
    if norm == 0.0:
        return "a vector of zeros has no direction"
    if norm > _FLOAT32_MAX:
        return "a vector's norm is beyond float32"
    return None


def _vector(item: Any, dim: int, what: str = "vector") -> bytes:
    data = raw_bytes(item, what)
    problem = vector_problem(data, dim)
    if problem is not None:
        raise CodecError(problem)
    return data


def _metadata(item: Any) -> bytes | None:
    if item is None:
        return None
    data = raw_bytes(item, "metadata")
    decode_value_strict(data, DEFAULT_MAX_VALUE_SIZE)  # raises CodecError
    return data


class _Embed(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    namespace: str
    key: str
    model: str
    dim: int
    vector: bytes
    metadata: bytes | None
    previous: bytes | None


class EmbedEvent(_Embed, Event):
    """A new version of ``namespace/key``'s embedding: ``vector`` is ``dim``
    little-endian float32s of ``model``; ``metadata`` canonical CBOR or None;
    ``previous`` the event id of the version the writer saw as current."""

    __slots__ = ()
    TAG: ClassVar[str] = "embed"


class _Unembed(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    namespace: str
    key: str
    previous: bytes | None


class UnembedEvent(_Unembed, Event):
    """A tombstone: ``namespace/key`` has no embedding from here on."""

    __slots__ = ()
    TAG: ClassVar[str] = "unembed"


class _Index(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    namespace: str
    model: str
    dim: int
    reduced: int
    nlist: int
    nprobe: int
    rerank: int
    trained: int
    projection: bytes
    centroids: bytes


class VectorIndexEvent(_Index, Event):
    """An approximate-index model for the ``model`` embeddings of ``namespace`` (of
    dimension ``dim``): ``projection`` maps a vector to ``reduced`` dimensions
    (``dim x reduced`` float32, row-major), ``centroids`` are ``nlist`` coarse centroids
    in that space; a search probes the ``nprobe`` nearest lists and re-ranks
    ``rerank`` candidates per result exactly. ``trained`` is how many vectors it was
    trained on (when to train again)."""

    __slots__ = ()
    TAG: ClassVar[str] = "embed-index"


def _agent(header: Header, tag: str) -> None:
    # Anywhere but the vector log an embedding would be folded by nothing: refused, as
    # key/value writes outside the storage log are.
    if header[1] != VECTOR:
        raise CodecError(f"{tag} events belong to the {VECTOR!r} log, not {header[1]!r}")


def _decode_embed(header: Header, body: Any) -> Event:
    _agent(header, "embed")
    if type(body) is not list or len(body) != 7:
        raise CodecError(
            "embed body must be [namespace, key, model, dim, vector, metadata, previous]"
        )
    dim = uint(body[3], "dim", 1, MAX_VECTOR_DIM)
    return EmbedEvent(
        *header,
        name(body[0], "namespace"),
        name(body[1], "key"),
        name(body[2], "model"),
        dim,
        _vector(body[4], dim),
        _metadata(body[5]),
        id_or_none(body[6]),
    )


def _decode_unembed(header: Header, body: Any) -> Event:
    _agent(header, "unembed")
    if type(body) is not list or len(body) != 3:
        raise CodecError("unembed body must be [namespace, key, previous]")
    return UnembedEvent(
        *header, name(body[0], "namespace"), name(body[1], "key"), id_or_none(body[2])
    )


def _matrix(item: Any, rows: int, cols: int, what: str) -> bytes:
    data = raw_bytes(item, what)
    if len(data) != 4 * rows * cols:
        raise CodecError(f"{what} of {rows} x {cols} float32 must be {4 * rows * cols} bytes")
    import numpy as np

    if not np.isfinite(np.frombuffer(data, dtype="<f4")).all():
        raise CodecError(f"{what} holds NaN or infinity")
    return data


def _decode_index(header: Header, body: Any) -> Event:
    _agent(header, "embed-index")
    if type(body) is not list or len(body) != 10:
        raise CodecError(
            "embed-index body must be [namespace, model, dim, reduced, nlist, nprobe, "
            "rerank, trained, projection, centroids]"
        )
    dim = uint(body[2], "dim", 1, MAX_INDEX_DIM)
    reduced = uint(body[3], "reduced", 1, dim)
    nlist = uint(body[4], "nlist", 1, MAX_LISTS)
    if nlist > FLAT_LISTS and math.isqrt(nlist) ** 2 != nlist:
        raise CodecError(f"a model of {nlist} lists (over {FLAT_LISTS}) must be a square")
    return VectorIndexEvent(
        *header,
        name(body[0], "namespace"),
        name(body[1], "model"),
        dim,
        reduced,
        nlist,
        uint(body[5], "nprobe", 1, nlist),
        uint(body[6], "rerank", 1, MAX_RERANK),
        uint(body[7], "trained"),
        _matrix(body[8], dim, reduced, "projection"),
        _matrix(body[9], nlist, reduced, "centroids"),
    )


register_event_type(
    EmbedEvent,
    lambda e: [e.namespace, e.key, e.model, e.dim, e.vector, e.metadata, e.previous],
    _decode_embed,
)
register_event_type(UnembedEvent, lambda e: [e.namespace, e.key, e.previous], _decode_unembed)
register_event_type(
    VectorIndexEvent,
    lambda e: [
        e.namespace,
        e.model,
        e.dim,
        e.reduced,
        e.nlist,
        e.nprobe,
        e.rerank,
        e.trained,
        e.projection,
        e.centroids,
    ],
    _decode_index,
)
