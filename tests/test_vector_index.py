"""The vector indexes: the approximate index reaches its recall on clustered data, is
trained by the background process above its threshold and again after twofold growth,
is the same on replicas that took the same events in other orders; the projection's
checkpoint section round-trips, and a damaged one is rebuilt from the log."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from test_projections import rewrite_checkpoint
from test_vectors import captured, state_of

import koru
from conftest import eventually
from koru.events import VECTOR, VectorIndexEvent, decode_event
from koru.projections import VectorState, _vectors


def clustered(n: int, dim: int, seed: int, clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((clusters, dim))
    return centers[rng.integers(clusters, size=n)] + 0.3 * rng.standard_normal((n, dim))


async def fill(db: koru.Database, data: np.ndarray, start: int = 0) -> None:
    for i, v in enumerate(data, start):
        await db.embed("docs", f"k{i}", v)


def recall(approximate: list[koru.VectorHit], exact: list[koru.VectorHit]) -> float:
    return len({h.key for h in approximate} & {h.key for h in exact}) / len(exact)


async def test_the_approximate_index_reaches_its_recall_on_clustered_data() -> None:
    async with koru.open(koru.MEMORY, processes=False) as db:
        await fill(db, clustered(4000, 32, seed=1))
        queries = clustered(100, 32, seed=2)
        exact = await db.embed_search_batch("docs", queries, top_k=10, approximate=False)
        # Forced on: the index is trained now, written as an event, and used.
        found = await db.embed_search_batch("docs", queries, top_k=10, approximate=True)
        group = state_of(db).group("docs", "default", 32)
        assert group is not None and group.index is not None
        assert group.index.model.nprobe < len(group.index.model.centroids)
        # It scores a fraction of the rows exactly, and finds nearly all of the best.
        probed = group.index.candidates(
            queries[0].astype(np.float32) / np.linalg.norm(queries[0]), 10
        )
        assert len(probed) < group.live / 4
        assert np.mean([recall(f, e) for f, e in zip(found, exact, strict=True)]) >= 0.95
        for f, e in zip(found, exact, strict=True):  # hits found score as exactly
            exact_scores = {h.key: h.score for h in e}
            assert all(h.score == exact_scores[h.key] for h in f if h.key in exact_scores)
        # Below the threshold (20,000) the default is exact; forced off too.
        assert await db.embed_search_batch("docs", queries[:5], top_k=10) == exact[:5]
        events = await db.feed_events(db.node_id, VECTOR)
        assert type(decode_event(events[-1])) is VectorIndexEvent


async def test_the_process_trains_above_the_threshold_and_again_after_growth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_vectors, "APPROXIMATE_THRESHOLD", 10**9)
    data = clustered(2000, 16, seed=3)
    async with koru.open(koru.MEMORY, processes={"vectors": 0.02}) as db:
        state = state_of(db)

        def trained() -> list[int | None]:
            return [size[4] for size in state.group_sizes()]

        await fill(db, data[:700])
        await trio.sleep(0.1)
        assert trained() == [None]  # below the threshold: no index
        monkeypatch.setattr(_vectors, "APPROXIMATE_THRESHOLD", 600)
        await eventually(lambda: trained() == [700])
        query = data[0]
        # Above the threshold the default search goes through the index.
        assert await db.embed_search("docs", query) == await db.embed_search(
            "docs", query, approximate=True
        )
        await fill(db, data[700:1400], 700)  # twofold: trained again (not before)
        await eventually(lambda: trained() == [1400])
        kinds = [type(decode_event(e)) for e in await db.feed_events(db.node_id, VECTOR)]
        assert kinds.count(VectorIndexEvent) == 2


async def test_replicas_that_took_the_events_in_other_orders_search_alike() -> None:
    data = clustered(1500, 16, seed=4)
    rng = random.Random(4)
    async with (
        koru.open(koru.MEMORY, seed=1, processes=False) as a,
        koru.open(koru.MEMORY, seed=2, processes=False) as b,
    ):
        for i, v in enumerate(data):
            await (a if i % 2 else b).embed("docs", f"k{i % 900}", v)  # shared keys
        await a.embed_search("docs", data[0], approximate=True)  # a trains an index
        for key in rng.sample(range(1, 900, 2), 50):  # and deletes some after it trained
            await a.delete_embedding("docs", f"k{key}")
        feeds = [await db.feed_events(db.node_id, VECTOR) for db in (a, b)]
    async with (
        koru.open(koru.MEMORY, seed=5, processes=False) as c,
        koru.open(koru.MEMORY, seed=6, processes=False) as d,
    ):
        for replica, seed in ((c, 5), (d, 6)):
            order = random.Random(seed)
            streams = [list(events) for events in feeds]
            interleaved = []
            while any(streams):  # each feed in order, the feeds interleaved at random
                stream = order.choice([s for s in streams if s])
                interleaved.append(stream.pop(0))
            assert (await replica.ingest(interleaved)).refused == ()
        queries = clustered(20, 16, seed=7)
        answers = [await r.embed_search_batch("docs", queries, approximate=True) for r in (c, d)]
        assert answers[0] == answers[1]
        assert await c.digest() == await d.digest()
        for replica in (c, d):
            group = state_of(replica).group("docs", "default", 16)
            assert group is not None and group.index is not None


async def test_a_damaged_vector_section_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, processes=False) as db:
        await fill(db, clustered(300, 8, seed=5))
        for i in range(0, 300, 3):
            await db.delete_embedding("docs", f"k{i}")
        await db.embed_search("docs", np.ones(8), approximate=True)
        live = captured(db)
        found = await db.embed_search("docs", np.ones(8))

    def damage(body: dict[str, Any]) -> None:
        section = body["sections"]["vectors"][1]
        groups = section["spaces"]["docs"][12]
        groups[0][5] = b"\xff" * len(groups[0][5])  # row keys out of range

    rewrite_checkpoint(path, damage)
    async with koru.open(path, processes=False) as db:
        assert "vectors" in (await db.stats()).projections_rebuilt
        assert captured(db) == live
        assert await db.embed_search("docs", np.ones(8)) == found


def test_the_checkpoint_section_round_trips_through_the_encoder() -> None:
    from koru.projections import decode_checkpoint, encode_captured

    async def build() -> VectorState:
        async with koru.open(koru.MEMORY, processes=False) as db:
            await fill(db, clustered(100, 4, seed=6))
            return state_of(db)

    state = trio.run(build)
    data = state.capture()
    matrix = data["spaces"]["docs"][12][0][3]
    assert type(matrix) is memoryview  # written without a copy
    pieces, _ = encode_captured(
        {
            "format": 3,
            "node": bytes(16),
            "cursors": {},
            "hlc": 0,
            "sections": {"vectors": [1, data]},
        }
    )
    decoded = decode_checkpoint(b"".join(bytes(p) for p in pieces))
    restored = VectorState.restore(decoded.sections["vectors"][1])
    from koru._audit import _canonical

    assert _canonical(restored.capture()) == _canonical(data)
    with pytest.raises((ValueError, TypeError, KeyError)):
        VectorState.restore({**decoded.sections["vectors"][1], "origins": [b"short"]})


async def test_the_audit_checks_the_vector_section(tmp_path: Path) -> None:
    from koru._audit import audit_checkpoint

    path = tmp_path / "db"
    async with koru.open(path, processes=False) as db:
        await fill(db, clustered(50, 4, seed=8))
        await db.delete_embedding("docs", "k3")
    store = koru.events.FileStore(path, readonly=True)
    try:
        problems, _ = audit_checkpoint(store)
    finally:
        store.close()
    assert problems == []


async def test_the_audit_reports_a_checkpoint_whose_vector_keys_were_permuted(
    tmp_path: Path,
) -> None:
    """Attack: rewrite the checkpoint (checksum fixed) with the vector section's key
    names, and one group's metadata, in reverse order: every table keeps its shape, so
    the restore believes it and a search answers key ``b`` (with ``b``'s metadata) for
    ``a``'s vector. Must hold: ``kdelta verify``'s audit reports the section as
    disagreeing with a replay (it compared the captured lists sorted, so a permutation
    passed as the same)."""
    from koru._audit import audit_checkpoint

    path = tmp_path / "db"
    async with koru.open(path, processes=False) as db:
        await db.embed("docs", "a", [1.0, 0.0], metadata={"who": "a"})
        await db.embed("docs", "b", [0.0, 1.0], metadata={"who": "b"})

    def permute(body: dict[str, Any]) -> None:
        space = body["sections"]["vectors"][1]["spaces"]["docs"]
        space[0] = space[0][::-1]  # key names
        space[12][0][6] = space[12][0][6][::-1]  # the group's metadata

    rewrite_checkpoint(path, permute)
    store = koru.events.FileStore(path, readonly=True)
    try:
        problems, _ = audit_checkpoint(store)
    finally:
        store.close()
    assert problems == ["section 'vectors' disagrees with a replay of the log"]
