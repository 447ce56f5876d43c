"""Embeddings through the public API: storing, deleting, searching now and at a past
time, embedding content; every bad input refused before anything is written; replay,
checkpoints and ingest giving the same index; crafted events from peers refused."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, ClassVar

import cbor2
import numpy as np
import pytest
import trio
import trio.lowlevel
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock
from koru.events import (
    MAX_VECTOR_DIM,
    VECTOR,
    CodecError,
    EmbedEvent,
    UnembedEvent,
    VectorIndexEvent,
    decode_event,
    decode_trusted,
    encode_event,
    encode_value,
)
from koru.projections import VectorState

ORIGIN = bytes(range(16))


def vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def brute(
    stored: dict[tuple[str, str], np.ndarray], query: np.ndarray, metric: str
) -> list[tuple[str, str, float]]:
    """The reference: every stored vector scored in float64, best first, ties by key."""
    q = query.astype(np.float64)
    scored = []
    for (ns, key), v in stored.items():
        v64 = v.astype(np.float64)
        if metric == "cosine":
            s = float(v64 @ q / (np.linalg.norm(v64) * np.linalg.norm(q)))
        elif metric == "dot":
            s = float(v64 @ q)
        else:
            s = float(np.linalg.norm(v64 - q))
        scored.append((ns, key, s))
    if metric == "euclidean":
        scored.sort(key=lambda t: (t[2], t[0], t[1]))
    else:
        scored.sort(key=lambda t: (-t[2], t[0], t[1]))
    return scored


def same_ranking(
    hits: list[koru.VectorHit], reference: list[tuple[str, str, float]], k: int
) -> None:
    """``hits`` are the reference's first ``k``: the same scores (float32 storage
    rounds), and the same keys wherever no other score is within that rounding."""
    expected = reference[:k]
    assert len(hits) == len(expected)
    for hit, (ns, key, score) in zip(hits, expected, strict=True):
        assert hit.score == pytest.approx(score, rel=1e-5, abs=1e-5)
        if sum(abs(r[2] - score) <= 1e-5 * max(1.0, abs(score)) for r in reference) == 1:
            assert (hit.namespace, hit.key) == (ns, key)


def state_of(db: koru.Database) -> VectorState:
    state = db.projection("vectors")
    assert isinstance(state, VectorState)
    return state


# -- the events ------------------------------------------------------------------------


def test_vector_events_round_trip_strictly() -> None:
    vec = np.arange(1, 5, dtype="<f4").tobytes()
    meta = encode_value({"title": "a"})
    for event in (
        EmbedEvent(ORIGIN, VECTOR, 1, None, 7, "docs", "a", "m", 4, vec, meta, None),
        EmbedEvent(ORIGIN, VECTOR, 2, b"p" * 32, 8, "docs", "a", "m", 4, vec, None, b"i" * 32),
        UnembedEvent(ORIGIN, VECTOR, 3, b"p" * 32, 9, "docs", "a", b"i" * 32),
        VectorIndexEvent(
            ORIGIN, VECTOR, 4, b"p" * 32, 9, "docs", "m", 4, 2, 3, 2, 4, 100,
            np.ones((4, 2), "<f4").tobytes(), np.ones((3, 2), "<f4").tobytes(),
        ),
    ):  # fmt: skip
        data = encode_event(event)
        assert decode_event(data, check_values=True) == decode_trusted(data) == event


def raw_embed(body: list[Any], agent: str = VECTOR, seq: int = 1) -> bytes:
    prev = None if seq == 1 else b"p" * 32
    return cbor2.dumps([1, "embed", ORIGIN, agent, seq, prev, 5, body])


GOOD = ["docs", "a", "m", 2, np.array([1, 2], "<f4").tobytes(), None, None]


@pytest.mark.parametrize(
    ("index", "bad", "reason"),
    [
        (4, np.array([1, np.nan], "<f4").tobytes(), "NaN"),
        (4, np.array([1, np.inf], "<f4").tobytes(), "NaN or infinity"),
        (4, np.array([0, 0], "<f4").tobytes(), "zeros"),
        (4, np.array([1, 2, 3], "<f4").tobytes(), "is 8 bytes, not 12"),
        (4, np.array([3e38, 3e38], "<f4").tobytes(), "beyond float32"),
        (4, [1.0, 2.0], "byte string"),
        (3, 0, "dim"),
        (3, MAX_VECTOR_DIM + 1, "dim"),
        (3, True, "dim"),
        (2, "", "model"),
        (1, "", "key"),
        (5, b"\xa2\x61b\x01\x61a\x02", "canonical"),  # a map with unsorted keys
        (5, cbor2.dumps(float("nan")), "NaN"),
        (5, b"\xff", "undecodable"),
        (6, b"short", "previous"),
    ],
)
def test_crafted_embed_events_are_refused(index: int, bad: Any, reason: str) -> None:
    body = list(GOOD)
    body[index] = bad
    with pytest.raises(CodecError, match=reason):
        decode_event(raw_embed(body))


def test_crafted_index_events_are_refused() -> None:
    def index(*fields: Any) -> bytes:
        return cbor2.dumps([1, "embed-index", ORIGIN, VECTOR, 1, None, 5, list(fields)])

    p, c = np.ones((4, 2), "<f4").tobytes(), np.ones((3, 2), "<f4").tobytes()
    decode_event(index("d", "m", 4, 2, 3, 2, 4, 9, p, c))  # well-formed
    with pytest.raises(CodecError, match="reduced"):
        decode_event(index("d", "m", 4, 5, 3, 2, 4, 9, p, c))
    with pytest.raises(CodecError, match="nprobe"):
        decode_event(index("d", "m", 4, 2, 3, 4, 4, 9, p, c))
    with pytest.raises(CodecError, match="centroids"):
        decode_event(index("d", "m", 4, 2, 3, 2, 4, 9, p, p))
    nan = np.array([np.nan] * 8, "<f4").tobytes()
    with pytest.raises(CodecError, match="projection holds NaN"):
        decode_event(index("d", "m", 4, 2, 3, 2, 4, 9, nan, c))


# -- writing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vector", "error", "match"),
    [
        ([], koru.InvalidDataError, "empty"),
        ([[1.0, 2.0]], koru.InvalidDataError, "1-D"),
        ([1.0, float("nan")], koru.InvalidDataError, "NaN"),
        (np.array([1.0, np.inf]), koru.InvalidDataError, "infinity"),
        ([1e39, 1.0], koru.InvalidDataError, "beyond float32"),
        ([0.0, 0.0], koru.InvalidDataError, "zeros"),
        (["a", "b"], koru.InvalidDataError, "numbers"),
        ("12", koru.InvalidDataError, "list"),
        (None, koru.InvalidDataError, "list"),
        ([1, None], koru.InvalidDataError, "numbers"),
        (np.array([1 + 2j, 3]), koru.InvalidDataError, "numbers"),
        (np.ones(MAX_VECTOR_DIM + 1), koru.InvalidDataError, "dimensions"),
        ([1.0, 2.0, 3.0], koru.DimensionMismatchError, "dimension 2"),
    ],
)
async def test_bad_vectors_are_refused_and_nothing_is_written(
    vector: Any, error: type[Exception], match: str
) -> None:
    async with koru.open(koru.MEMORY, processes=False) as db:
        await db.embed("docs", "ok", [1.0, 2.0], model="m")
        heads = await db.feed_heads()
        with pytest.raises(error, match=match):
            await db.embed("docs", "a", vector, model="m")
        assert await db.feed_heads() == heads
        assert state_of(db).count() == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"namespace": ""}, "namespace"),
        ({"key": 3}, "key"),
        ({"model": ""}, "model"),
        ({"metadata": {1, 2}}, "unsupported value type"),
        ({"metadata": {"x": float("nan")}}, "NaN"),
        ({"metadata": "x" * 100}, "over the 64-byte limit"),
    ],
)
async def test_bad_names_and_metadata_are_refused(kwargs: dict[str, Any], match: str) -> None:
    call = {"namespace": "docs", "key": "a", "vector": [1.0, 2.0], "model": "m"} | kwargs
    async with koru.open(koru.MEMORY, processes=False, max_value_size=64) as db:
        with pytest.raises(koru.InvalidDataError, match=match):
            await db.embed(**call)
        assert await db.feed_heads() == {}


async def test_embed_returns_a_version_and_delete_writes_a_tombstone() -> None:
    async with koru.open(koru.MEMORY, processes=False, clock=StepClock()) as db:
        first = await db.embed("docs", "a", [1.0, 0.0], metadata={"t": 1})
        second = await db.embed("docs", "a", np.array([0.0, 1.0]))
        assert first.previous is None and second.previous == first.write_id
        assert second.timestamp > first.timestamp and not second.deleted
        assert first.content_id is not None and first.content_id != second.content_id
        gone = await db.delete_embedding("docs", "a")
        assert gone.deleted and gone.previous == second.write_id
        with pytest.raises(koru.EmbeddingNotFoundError, match="no embedding for 'docs'/'a'"):
            await db.delete_embedding("docs", "a")
        with pytest.raises(koru.EmbeddingNotFoundError):
            await db.delete_embedding("docs", "never")
        assert await db.embed_search("docs", [1.0, 0.0]) == []
        # Embeddings are not key/value data: the key/value state is untouched.
        assert await db.namespaces() == [] and (await db.feed_heads())[(db.node_id, VECTOR)] == 3


_METADATA = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@settings(max_examples=40, deadline=None)
@given(
    floats=st.lists(
        st.floats(allow_nan=False, allow_infinity=False, width=32)
        | st.sampled_from([1e-45, -1e-40, 1e19, -1e30]),
        min_size=1,
        max_size=24,
    ).filter(lambda v: any(v)),
    metadata=_METADATA,
    key=st.text(min_size=1, max_size=6),
)
def test_an_embed_reads_back_strictly_as_it_was_folded(
    floats: list[float], metadata: Any, key: str
) -> None:
    """embed appends without decoding its event again (it checks every field by the
    decoder's own rules first): the strict decoder, as replay and peers run it, must
    read back exactly the event folded, metadata and all."""
    import blake3

    async def main() -> None:
        async with koru.open(koru.MEMORY, processes=False) as db:
            if np.linalg.norm(np.asarray(floats, np.float64)) > np.finfo(np.float32).max:
                with pytest.raises(koru.InvalidDataError, match="beyond float32"):
                    await db.embed("docs", key, floats, model="m", metadata=metadata)
                assert await db.feed_heads() == {}
                return
            version = await db.embed("docs", key, floats, model="m", metadata=metadata)
            (data,) = await db.feed_events(db.node_id, VECTOR)
            event = decode_event(data, check_values=True)
            assert type(event) is EmbedEvent
            assert (event.namespace, event.key, event.model, event.dim) == (
                "docs",
                key,
                "m",
                len(floats),
            )
            assert event.vector == np.asarray(floats, np.float64).astype("<f4").tobytes()
            assert version.content_id == blake3.blake3(event.vector).hexdigest()
            stored = None if event.metadata is None else cbor2.loads(event.metadata)
            assert stored == metadata
            (hit,) = await db.embed_search("docs", floats, metric="dot")
            assert (hit.key, hit.metadata) == (key, metadata)

    trio.run(main)


# -- searching -------------------------------------------------------------------------


@settings(max_examples=30)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    dim=st.integers(1, 12),
    k=st.integers(1, 15),
    metric=st.sampled_from(["cosine", "dot", "euclidean"]),
)
async def test_exact_search_equals_brute_force(
    seed: int, n: int, dim: int, k: int, metric: str
) -> None:
    rng = random.Random(seed)
    data = vectors(n, dim, seed)
    stored: dict[tuple[str, str], np.ndarray] = {}
    async with koru.open(koru.MEMORY, processes=False) as db:
        for i in range(n * 2):  # embeds, re-embeds and deletes over a few keys
            ns, key = rng.choice(["a", "b"]), f"k{rng.randrange(n)}"
            if rng.random() < 0.2 and (ns, key) in stored:
                await db.delete_embedding(ns, key)
                del stored[(ns, key)]
            else:
                v = data[i % n] if rng.random() < 0.8 else data[rng.randrange(n)] * 2
                await db.embed(ns, key, v, metadata={"i": i})
                stored[(ns, key)] = v
        query = vectors(1, dim, seed + 1)[0]
        hits = await db.embed_search(None, query, top_k=k, metric=metric)
        same_ranking(hits, brute(stored, query, metric), k)
        only_a = {nk: v for nk, v in stored.items() if nk[0] == "a"}
        hits = await db.embed_search("a", query, top_k=k, metric=metric)
        same_ranking(hits, brute(only_a, query, metric), k)
        batch = await db.embed_search_batch(None, [query, data[0]], top_k=k, metric=metric)
        assert batch[0] == await db.embed_search(None, query, top_k=k, metric=metric)
        same_ranking(batch[1], brute(stored, data[0], metric), k)


async def test_ties_are_broken_by_namespace_then_key() -> None:
    async with koru.open(koru.MEMORY, processes=False) as db:
        keys = [f"k{i:02}" for i in range(30)]
        random.Random(1).shuffle(keys)
        for key in keys:  # stored in a shuffled order, all the same vector
            await db.embed("b" if key < "k15" else "a", key, [1.0, 1.0])
        hits = await db.embed_search(None, [1.0, 1.0], top_k=20)
        assert [(h.namespace, h.key) for h in hits] == sorted(
            [("a", k) for k in keys if k >= "k15"] + [("b", k) for k in keys if k < "k15"]
        )[:20]


async def test_threshold_metadata_and_metrics() -> None:
    async with koru.open(koru.MEMORY, processes=False) as db:
        await db.embed("d", "x", [1.0, 0.0], metadata={"name": "x"})
        await db.embed("d", "y", [0.0, 2.0])
        await db.embed("d", "z", [-3.0, 0.0])
        hits = await db.embed_search("d", [1.0, 0.1], threshold=0.0)
        assert [(h.key, h.metadata) for h in hits] == [("x", {"name": "x"}), ("y", None)]
        hits[0].metadata["name"] = "changed"  # a fresh object: the stored one is untouched
        assert (await db.embed_search("d", [1.0, 0.0], top_k=1))[0].metadata == {"name": "x"}
        near = await db.embed_search("d", [0.0, 0.0], metric="euclidean", threshold=2.5)
        assert [(h.key, h.score) for h in near] == [("x", 1.0), ("y", 2.0)]
        dot = await db.embed_search("d", [-1.0, 1.0], metric="dot")
        assert [(h.key, h.score) for h in dot] == [("z", 3.0), ("y", 2.0), ("x", -1.0)]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"top_k": 0}, koru.InvalidArgumentError, "top_k"),
        ({"top_k": -1}, koru.InvalidArgumentError, "top_k"),
        ({"top_k": True}, koru.InvalidArgumentError, "top_k"),
        ({"top_k": 2.0}, koru.InvalidArgumentError, "top_k"),
        ({"metric": "manhattan"}, koru.InvalidArgumentError, "metric"),
        ({"threshold": float("nan")}, koru.InvalidArgumentError, "threshold"),
        ({"threshold": "0.5"}, koru.InvalidArgumentError, "threshold"),
        ({"approximate": 1}, koru.InvalidArgumentError, "approximate"),
        ({"approximate": True, "metric": "dot"}, koru.InvalidArgumentError, "cosine"),
        ({"model": None}, koru.InvalidArgumentError, "several models"),
        ({"query": [1.0, 2.0, 3.0], "model": "m"}, koru.DimensionMismatchError, "dimension 3"),
        ({"query": [0.0, 0.0], "model": "m"}, koru.InvalidDataError, "zeros"),
        ({"query": [float("nan"), 1.0], "model": "m"}, koru.InvalidDataError, "NaN"),
        ({"namespace": ""}, koru.InvalidDataError, "namespace"),
    ],
)
async def test_bad_searches_are_refused(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    call = {"namespace": None, "query": [1.0, 2.0], "model": "m"} | kwargs
    async with koru.open(koru.MEMORY, processes=False) as db:
        await db.embed("a", "x", [1.0, 2.0], model="m")
        await db.embed("b", "y", [1.0, 2.0, 3.0], model="n")
        with pytest.raises(error, match=match):
            await db.embed_search(**call)
        # A zero query is fine for dot product and distance; one model per search.
        assert len(await db.embed_search("a", [0.0, 0.0], metric="euclidean")) == 1
        assert [h.key for h in await db.embed_search(None, [1.0, 2.0, 3.0], model="n")] == ["y"]
        assert await db.embed_search(None, [1.0, 2.0], model="unknown") == []


# -- time travel -----------------------------------------------------------------------


async def test_similar_at_ignores_later_versions_and_deleted_vectors(
    db: koru.Database,
) -> None:
    v1 = await db.embed("d", "a", [1.0, 0.0], metadata="a1")
    await db.embed("d", "b", [0.0, 1.0], metadata="b1")
    t1 = v1.timestamp + 1  # a, but not yet b... b came after: use its own time
    t2 = (await db.embed("d", "c", [0.7, 0.7])).timestamp
    await db.embed("d", "a", [-1.0, -1.0], metadata="a2")  # a moved away
    gone = await db.delete_embedding("d", "c")
    await db.embed("d", "e", [1.0, 0.01])  # written later: never seen at t2
    query = [1.0, 0.0]
    now = await db.embed_search("d", query, top_k=5)
    assert [h.key for h in now] == ["e", "b", "a"]
    then = await db.similar_at("d", query, t2, top_k=5)
    assert [(h.key, h.metadata) for h in then] == [("a", "a1"), ("c", None), ("b", "b1")]
    assert then[0].score == pytest.approx(1.0)
    assert [h.key for h in await db.similar_at("d", query, t1)] == ["a"]
    assert [h.key for h in await db.similar_at("d", query, gone.timestamp)] == ["b", "a"]
    assert await db.similar_at("d", query, v1.timestamp - 1) == []
    assert [h.key for h in await db.similar_at(None, query, gone.datetime, top_k=1)] == ["b"]
    with pytest.raises(koru.InvalidDataError):
        await db.similar_at("d", query, "yesterday")


# -- content ---------------------------------------------------------------------------


async def test_put_similar_and_find_similar_are_lexical() -> None:
    async with koru.open(koru.MEMORY, processes=False) as db:
        await db.put_similar("notes", "fox", "The quick brown fox jumps", {"n": 1})
        await db.put_similar("notes", "dog", "A lazy dog sleeps all day")
        await db.put_similar("notes", "cfg", {"service": "api", "timeout": 30})
        assert await db.get("notes", "cfg") == {"service": "api", "timeout": 30}
        hits = await db.find_similar("notes", "quick fox", top_k=3)
        assert hits[0].key == "fox" and hits[0].metadata == {"n": 1}
        assert (await db.find_similar("notes", {"service": "api"}, top_k=1))[0].key == "cfg"
        # Lexical, not semantic: no shared word, no similarity.
        assert (await db.find_similar("notes", "automobile", top_k=3, threshold=0.01)) == []
    embedder = koru.HashingEmbedder()
    assert embedder.embed("same text") == embedder.embed("same text")
    assert embedder.model == "koru-hashing-256-v1" and len(embedder.embed("")) == 256


class Letters:
    """A toy embedder: how often each of a, b, c appears."""

    model = "letters"

    def embed(self, content: Any) -> list[float]:
        text = str(content)
        return [text.count("a") + 0.01, text.count("b") + 0.01, text.count("c") + 0.01]


async def test_an_embedder_plugs_in_and_a_bad_one_is_refused() -> None:
    async with koru.open(koru.MEMORY, processes=False, embedder=Letters()) as db:
        await db.put_similar("w", "aaa", "aaa")
        await db.put_similar("w", "bbb", "bbb")
        assert [h.key for h in await db.find_similar("w", "ab a")] == ["aaa", "bbb"]
        with pytest.raises(koru.InvalidDataError, match="zeros"):
            await db.embed("w", "zero", [0.0, 0.0, 0.0], model="letters")
        # An embedding that fails its checks writes neither it nor the value.
        with pytest.raises(koru.InvalidDataError):
            await db.put_similar("w", "x", "abc", metadata={1, 2})
        assert not await db.contains("w", "x")
    with pytest.raises(koru.InvalidArgumentError, match="embedder"):
        async with koru.open(koru.MEMORY, embedder=object()):  # type: ignore[arg-type]
            pass


class _FakeSentenceTransformer:
    """Stands in for sentence-transformers' model class (the extra is not installed
    here): records how it was loaded, embeds text by its letter counts."""

    loads: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def __init__(self, path: str, **options: Any) -> None:
        if path.endswith("missing"):
            raise OSError(f"{path} is not a local folder and the hub is off")
        self.loads.append((path, options))

    def get_sentence_embedding_dimension(self) -> int:
        return 3

    def encode(self, text: str, **options: Any) -> np.ndarray:
        assert options == {"normalize_embeddings": True, "convert_to_numpy": True}
        counts = np.array([text.count(c) for c in "abc"], np.float32) + 0.01
        return counts / np.linalg.norm(counts)


def test_the_sentence_embedder_loads_a_local_model_offline_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys
    import types

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(koru.InvalidArgumentError, match="sentence extra"):
        koru.SentenceEmbedder("/models/minilm")
    fake = types.ModuleType("sentence_transformers")
    fake.SentenceTransformer = _FakeSentenceTransformer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentence_transformers", fake)
    with pytest.raises(koru.InvalidArgumentError, match="nothing is downloaded"):
        koru.SentenceEmbedder("/models/missing")
    embedder = koru.SentenceEmbedder(Path("/models/minilm"))
    # Never a download: only files already on this machine.
    assert _FakeSentenceTransformer.loads[-1] == (
        "/models/minilm",
        {"device": "cpu", "local_files_only": True},
    )
    assert (embedder.model, embedder.dim) == ("sentence-minilm", 3)
    with pytest.raises(koru.InvalidDataError, match="model"):
        koru.SentenceEmbedder("/models/minilm", model="")

    async def main() -> None:
        async with koru.open(koru.MEMORY, processes=False, embedder=embedder) as db:
            await db.put_similar("w", "aaa", "aaa")
            await db.put_similar("w", "ccc", {"text": "ccc"})
            hits = await db.find_similar("w", "a a b")
            assert [h.key for h in hits] == ["aaa", "ccc"]
            assert state_of(db).dims_of("sentence-minilm") == {3}

    trio.run(main)


# -- durability, replay, checkpoints ----------------------------------------------------


async def workload(db: koru.Database, rng: random.Random, n: int, dim: int = 8) -> None:
    for i in range(n):
        key = f"k{rng.randrange(40)}"
        roll = rng.random()
        state = db.projection("vectors")
        assert isinstance(state, VectorState)
        current = state.current("docs", key)
        if roll < 0.15 and current is not None and current[1]:
            await db.delete_embedding("docs", key)
        else:
            v = np.random.default_rng(rng.randrange(2**32)).standard_normal(dim)
            await db.embed("docs", key, v, metadata={"i": i} if roll < 0.5 else None)


def captured(db: koru.Database) -> bytes:
    from koru._audit import _canonical

    return _canonical(state_of(db).capture())


async def test_replay_and_checkpoint_give_the_same_index(tmp_path: Path) -> None:
    path = tmp_path / "db"
    rng = random.Random(3)
    query = np.ones(8)
    async with koru.open(path, processes=False) as db:
        await workload(db, rng, 400)  # re-embeds: groups compact on the way
        times = [(await db.embed("docs", "t", query)).timestamp]
        await workload(db, rng, 100)
        times.append((await db.embed("docs", "t", -query)).timestamp)
        assert await db.embed_search("docs", query, top_k=3, approximate=True)  # an index
        live, digest = captured(db), await db.digest()
        found = await db.embed_search("docs", query, top_k=10)
        past = [await db.similar_at("docs", query, t) for t in times]
    async with koru.open(path, processes=False) as db:  # checkpoint
        assert (await db.stats()).replayed_events == 0
        assert captured(db) == live and await db.digest() == digest
        assert await db.embed_search("docs", query, top_k=10) == found
        assert [await db.similar_at("docs", query, t) for t in times] == past
    (path / "checkpoint").unlink()
    async with koru.open(path, processes=False) as db:  # full replay
        assert (await db.stats()).checkpoint_events == 0
        assert captured(db) == live and await db.digest() == digest
        assert await db.embed_search("docs", query, top_k=10) == found
        assert state_of(db).group("docs", "default", 8).index is not None  # type: ignore[union-attr]


def test_a_database_that_never_embeds_pays_nothing(tmp_path: Path) -> None:
    """No numpy import, no rebuilt section, the same digest as before vectors existed.
    (Handles without background processes: a long-lived writer imports numpy at open
    for its checkpoints' sake, see test_pacing.)"""
    import subprocess
    import sys

    code = (
        "import sys, trio, koru\n"
        "from conftest import digest_of\n"
        "async def main():\n"
        "    async with koru.open(sys.argv[1], processes=False) as db:\n"
        "        await db.put('a', 'b', 1)\n"
        "    async with koru.open(sys.argv[1], processes=False) as db:\n"
        "        assert await db.get('a', 'b') == 1\n"
        "        assert (await db.stats()).projections_rebuilt == {}\n"
        "        assert await db.digest() == digest_of(db._kv)\n"
        "trio.run(main)\n"
        "print('numpy' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "db")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        cwd="/",
    )
    assert out.stdout.strip() == "False"


# -- other nodes -----------------------------------------------------------------------


async def all_events(db: koru.Database) -> list[bytes]:
    out: list[bytes] = []
    for origin, agent in await db.feed_heads():
        out += await db.feed_events(origin, agent)
    return out


@settings(max_examples=10)
@given(st.integers(0, 2**32 - 1))
async def test_nodes_converge_through_ingest_in_random_order(seed: int) -> None:
    rng = random.Random(seed)
    clocks = [StepClock(step=rng.randint(1, 5000)) for _ in range(3)]
    async with (
        koru.open(koru.MEMORY, clock=clocks[0], seed=1, processes=False) as a,
        koru.open(koru.MEMORY, clock=clocks[1], seed=2, processes=False) as b,
        koru.open(koru.MEMORY, clock=clocks[2], seed=3, processes=False) as c,
    ):
        nodes = [a, b, c]
        for node in nodes:  # the same keys on every node: concurrent versions
            await workload(node, rng, rng.randint(1, 40), dim=4)
        pool = [e for node in nodes for e in await all_events(node)]
        for node in nodes:
            mine = set(await all_events(node))
            theirs = [e for e in pool if e not in mine]
            theirs += rng.choices(theirs, k=len(theirs) // 3) if theirs else []
            rng.shuffle(theirs)
            while theirs:  # in random chunks: gaps are held back, duplicates ignored
                chunk, theirs = theirs[: rng.randint(1, 6)], theirs[rng.randint(1, 6) :]
                assert (await node.ingest(chunk)).refused == ()
            for e in pool:  # whatever a chunk dropped
                await node.ingest([e])
        query = np.ones(4)
        results = [
            (
                await n.digest(),
                await n.embed_search(None, query, top_k=50),
                await n.similar_at(None, query, StepClock().now + 50_000, top_k=50),
                state_of(n).count(),
            )
            for n in nodes
        ]
        assert results[0] == results[1] == results[2]


async def test_crafted_vector_events_from_a_peer_are_refused() -> None:
    async with koru.open(koru.MEMORY, processes=False) as db:
        await db.embed("docs", "a", [1.0, 2.0], model="m")
        peer = bytes(16 * [9])

        def embed(body: list[Any]) -> bytes:
            return cbor2.dumps([1, "embed", peer, VECTOR, 1, None, 5, body])

        crafted = [
            embed(["docs", "x", "m", 2, np.array([np.nan, 1], "<f4").tobytes(), None, None]),
            embed(["docs", "x", "m", 2, b"\x00" * 7, None, None]),
            embed(["docs", "x", "m", 2**20, b"\x00" * 8, None, None]),
            embed(["docs", "x", "m", 2, np.array([1, 2], "<f4").tobytes(), b"\xa1", None]),
            cbor2.dumps([1, "embed", peer, "storage", 1, None, 5, GOOD]),
        ]
        result = await db.ingest(crafted)
        assert result.accepted == 0 and len(result.refused) == len(crafted)
        assert await db.feed_heads() == {(db.node_id, VECTOR): 1}
        # A peer's embedding of another dimension for a model is kept apart: this
        # node's searches and embeds of that model stay at its dimension.
        other = EmbedEvent(
            peer, VECTOR, 1, None, 5, "docs", "y", "m", 3,
            np.array([1, 2, 3], "<f4").tobytes(), None, None,
        )  # fmt: skip
        assert (await db.ingest([encode_event(other)])).accepted == 1
        assert [h.key for h in await db.embed_search("docs", [1.0, 2.0])] == ["a"]
        assert [h.key for h in await db.embed_search("docs", [1.0, 2.0, 3.0])] == ["y"]
        await db.embed("docs", "b", [2.0, 1.0], model="m")
        with pytest.raises(koru.DimensionMismatchError):
            await db.embed("docs", "c", [1.0], model="m")


async def test_concurrent_embeds_keep_one_current_version_per_key(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, processes=False) as db:

        async def writer(w: int) -> None:
            for i in range(30):
                await db.embed("docs", f"k{i % 5}", [float(w + 1), float(i + 1)], metadata=w)
                if i % 7 == 0:
                    await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, w)
        assert state_of(db).count("docs") == 5
        found = await db.embed_search("docs", [1.0, 1.0], top_k=10)
        live = captured(db)
    (path / "checkpoint").unlink()
    async with koru.open(path, processes=False) as db:
        assert captured(db) == live
        assert await db.embed_search("docs", [1.0, 1.0], top_k=10) == found


async def test_concurrent_versions_with_one_timestamp_settle_alike_in_any_order() -> None:
    """Two nodes embed one key at the same hlc: the greater (origin, event id) is current
    on every node, whichever arrived first; the other stays in history."""
    vec = [np.array([1, 0], "<f4").tobytes(), np.array([0, 1], "<f4").tobytes()]
    header = (VECTOR, 1, None, 5_000, "d", "k", "m", 2)
    events = [
        encode_event(EmbedEvent(bytes([o] * 16), *header, v, None, None))
        for o, v in ((1, vec[0]), (2, vec[1]))
    ]
    answers = []
    for order in (events, events[::-1]):
        async with koru.open(koru.MEMORY, processes=False) as db:
            assert (await db.ingest(order)).accepted == 2
            answers.append(
                [(h.key, h.score) for h in await db.embed_search("d", [0.0, 1.0])]
                + [(h.key, h.score) for h in await db.similar_at("d", [0.0, 1.0], 5_000)]
            )
    assert answers[0] == answers[1] == [("k", 1.0), ("k", 1.0)]  # origin 2's vector


async def test_an_authorized_handle_checks_embeddings_and_searches() -> None:
    alice = koru.Identity.mine(4, rng=random.Random(1))
    async with koru.open(":memory:", difficulty=4, clock=StepClock(), sync="os") as db:
        await db.register(alice)
        await db.grant(alice, namespace="docs", actions="read,write")
        await db.embed("secret", "s", [1.0, 0.0], model="m")
        h = db.as_identity(alice)
        await h.embed("docs", "a", [1.0, 0.0], model="m", metadata={"t": 1})
        await h.put_similar("docs", "b", "hello world")
        assert [x.key for x in await h.embed_search("docs", [1.0, 0.0], model="m")] == ["a"]
        assert (await h.embed_search_batch("docs", [[1.0, 0.0]], model="m"))[0][0].key == "a"
        assert (await h.find_similar("docs", "hello"))[0].key == "b"
        denied = [
            lambda: h.embed("secret", "t", [1.0, 0.0], model="m"),
            lambda: h.delete_embedding("secret", "s"),
            lambda: h.put_similar("secret", "t", "x"),
            lambda: h.embed_search("secret", [1.0, 0.0]),
            lambda: h.embed_search(None, [1.0, 0.0]),  # every namespace: secret too
            lambda: h.embed_search_batch(None, [[1.0, 0.0]]),
            lambda: h.similar_at("secret", [1.0, 0.0], 0),
            lambda: h.find_similar(None, "hello"),
        ]
        for call in denied:
            with pytest.raises(koru.PermissionDeniedError):
                await call()
        assert [x.key for x in await db.embed_search("secret", [1.0, 0.0])] == ["s"]
        await h.delete_embedding("docs", "a")
        assert await h.embed_search("docs", [1.0, 0.0], model="m") == []


# -- where: metadata filters -------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    metric=st.sampled_from(["cosine", "dot", "euclidean"]),
    top_k=st.integers(1, 12),
)
def test_a_filtered_search_equals_brute_force_over_the_accepted(
    seed: int, metric: str, top_k: int
) -> None:
    from koru import F

    rng = random.Random(seed)
    rows = vectors(60, 8, seed)

    async def main() -> None:
        async with koru.open(":memory:", clock=StepClock()) as db:
            stored: dict[tuple[str, str], np.ndarray] = {}
            tags: dict[tuple[str, str], Any] = {}
            for i, v in enumerate(rows):
                key = f"k{i:02d}"
                roll = rng.random()
                meta = None if roll < 0.2 else {"lang": "en" if roll < 0.6 else "fr", "n": i}
                await db.embed("docs", key, v, model="m", metadata=meta)
                stored[("docs", key)], tags[("docs", key)] = v, meta
            for i in rng.sample(range(60), 10):  # deleted ones never match
                await db.delete_embedding("docs", f"k{i:02d}")
                del stored[("docs", f"k{i:02d}")]
            accepted = {
                k: v
                for k, v in stored.items()
                if tags[k] is not None and tags[k]["lang"] == "en" and tags[k]["n"] >= 10
            }
            query = vectors(1, 8, seed + 1)[0]
            where = (F("lang") == "en") & (F("n") >= 10)
            reference = brute(accepted, query, metric)
            hits = await db.embed_search("docs", query, top_k, metric=metric, where=where)
            same_ranking(hits, reference, top_k)
            assert all(h.metadata["lang"] == "en" for h in hits)
            data = ["and", ["eq", "lang", "en"], ["gte", "n", 10]]
            assert where.to_data() == data
            as_data = await db.embed_search("docs", query, top_k, metric=metric, where=data)
            assert [(h.key, h.score) for h in as_data] == [(h.key, h.score) for h in hits]
            [batched] = await db.embed_search_batch(
                "docs", [query], top_k, metric=metric, where=where
            )
            assert [(h.key, h.score) for h in batched] == [(h.key, h.score) for h in hits]

    trio.run(main)


async def test_filters_apply_to_past_versions_and_content_searches() -> None:
    from koru import F

    async with koru.open(":memory:", clock=StepClock()) as db:
        v1 = await db.embed("docs", "a", [1.0, 0.0], model="m", metadata={"state": "draft"})
        await db.embed("docs", "b", [0.9, 0.1], model="m", metadata={"state": "final"})
        await db.embed("docs", "a", [1.0, 0.0], model="m", metadata={"state": "final"})
        drafts = F("state") == "draft"
        assert await db.embed_search("docs", [1.0, 0.0], where=drafts) == []
        then = await db.similar_at("docs", [1.0, 0.0], v1.timestamp, where=drafts)
        assert [(h.key, h.metadata) for h in then] == [("a", {"state": "draft"})]
        finals = await db.embed_search("docs", [1.0, 0.0], where=F("state") == "final")
        assert [h.key for h in finals] == ["a", "b"]
        await db.put_similar("notes", "n1", "the quick brown fox", {"lang": "en"})
        await db.put_similar("notes", "n2", "the quick brown fox", {"lang": "de"})
        found = await db.find_similar("notes", "quick fox", where=F("lang") == "de")
        assert [h.key for h in found] == ["n2"]
        for bad in ({"nonsense": 1}, 42, "lang == en", ["nope", "a", 1]):
            with pytest.raises(koru.InvalidQueryError):
                await db.embed_search("docs", [1.0, 0.0], where=bad)
        with pytest.raises(koru.InvalidQueryError):
            await db.similar_at("docs", [1.0, 0.0], v1.timestamp, where=["bad"])


async def test_a_filtered_search_is_exact_when_an_index_exists() -> None:
    """With an approximate index trained, a filtered search still returns exactly the
    best accepted rows (the index is not used for it)."""
    from koru import F

    rows = vectors(400, 16, 3)
    async with koru.open(":memory:", clock=StepClock()) as db:
        for i, v in enumerate(rows):
            await db.embed("docs", f"k{i:03d}", v, model="m", metadata={"odd": i % 2})
        await db.embed_search("docs", rows[0], approximate=True)  # trains the index
        stored = {("docs", f"k{i:03d}"): v for i, v in enumerate(rows) if i % 2}
        query = vectors(1, 16, 4)[0]
        hits = await db.embed_search("docs", query, 10, approximate=True, where=F("odd") == 1)
        same_ranking(hits, brute(stored, query, "cosine"), 10)
