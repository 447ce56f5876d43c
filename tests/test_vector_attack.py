"""Attacks on the approximate vector index (h-vec2): crafted checkpoint sections that
``kdelta verify`` must report rather than crash on, and index models from a peer whose
folding would cost memory and time out of all proportion to their size."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_projections import rewrite_checkpoint
from test_vectors import state_of

import koru
from koru.events import VECTOR, CodecError, VectorIndexEvent, decode_event, encode_event

PEER = bytes(16 * [9])


def audit(path: Path) -> list[str]:
    from koru._audit import audit_checkpoint

    store = koru.events.FileStore(path, readonly=True)
    try:
        problems, _ = audit_checkpoint(store)
    finally:
        store.close()
    return problems


async def small_database(path: Path) -> None:
    async with koru.open(path, processes=False) as db:
        for i in range(20):
            await db.embed("docs", f"k{i}", [float(i + 1), 1.0, 0.5])


def spaces_not_a_map(body: dict[str, Any]) -> None:
    body["sections"]["vectors"][1]["spaces"] = [1]


def group_of_a_vast_dimension(body: dict[str, Any]) -> None:
    # An empty group (no rows, so every length check passes) of 2**40 dimensions.
    body["sections"]["vectors"][1]["spaces"]["docs"][12].append(
        ["other", 2**40, 0, b"", b"", b"", []]
    )


@pytest.mark.parametrize("craft", [spaces_not_a_map, group_of_a_vast_dimension])
async def test_verify_reports_a_crafted_vector_section_instead_of_crashing(
    tmp_path: Path, craft: Any
) -> None:
    """Attack: rewrite the checkpoint (checksum fixed) with a vector section whose
    ``spaces`` is a list rather than a map, or which holds an empty group of 2**40
    dimensions. Must hold: ``kdelta verify``'s audit reports the section as unusable
    (it raised AttributeError, or MemoryError allocating 64 TiB, and verify died with
    a traceback), and an open rebuilds the section from the log and searches as
    before."""
    path = tmp_path / "db"
    await small_database(path)
    async with koru.open(path, processes=False) as db:
        found = await db.embed_search("docs", [1.0, 1.0, 1.0])
    rewrite_checkpoint(path, craft)
    problems = audit(path)
    assert len(problems) == 1 and problems[0].startswith("section 'vectors' cannot be restored")
    async with koru.open(path, processes=False) as db:
        assert "vectors" in (await db.stats()).projections_rebuilt
        assert await db.embed_search("docs", [1.0, 1.0, 1.0]) == found


def index_event(nlist: int, dim: int = 4) -> bytes:
    rng = np.random.default_rng(nlist)
    return encode_event(
        VectorIndexEvent(
            PEER, VECTOR, 1, None, 5_000, "docs", "default", dim, dim, nlist, 1, 1, 1,
            np.eye(dim, dtype="<f4").tobytes(),
            rng.standard_normal((nlist, dim)).astype("<f4").tobytes(),
        )
    )  # fmt: skip


async def test_a_peer_model_of_many_unrouted_lists_is_refused() -> None:
    """Attack: a peer sends an index model of 65,535 lists (not a square, so not
    routed through coarse groups: every row is compared with every list) for a group
    this node holds: 1 MB on the wire. Folding it laid the group's rows out against
    all 65,535 centroids, in blocks of 8,192 rows: a float64 matrix of 8,192 x 65,535
    (4 GiB, three of them at once) and seconds of the event loop per thousand rows (a
    group of 4,000 rows: 11.7 s and 4 GB inside ``ingest``). Local training never writes
    such a model (its lists are a square, past 1,024). Must hold: the strict decoder
    refuses a model of more than 1,024 lists that is not a square, so ingest refuses it
    with the session's state unchanged; a square model of as many lists is accepted and
    folded in bounded memory."""
    with pytest.raises(CodecError, match="square"):
        decode_event(index_event(65_535))
    decode_event(index_event(1024))  # flat, as trained
    decode_event(index_event(1089))  # 33 x 33: routed
    async with koru.open(koru.MEMORY, processes=False) as db:
        rng = np.random.default_rng(1)
        for i, v in enumerate(rng.standard_normal((300, 4))):
            await db.embed("docs", f"k{i}", v)
        before = await db.digest()
        result = await db.ingest([index_event(65_535)])
        assert result.accepted == 0 and len(result.refused) == 1
        assert await db.digest() == before
        group = state_of(db).group("docs", "default", 4)
        assert group is not None and group.index is None
        tracemalloc.start()
        try:
            assert (await db.ingest([index_event(256 * 256)])).accepted == 1
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert group.index is not None
        assert peak < 64 << 20


def test_a_trained_model_always_fits_in_one_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: a model takes ``4 * reduced * (dim + lists)`` bytes, and at 4,096
    dimensions (MAX_INDEX_DIM) that passed MAX_EVENT_SIZE (64 MiB): rows whose variance
    is spread over nearly every dimension keep about 0.97 of them (993 of 1,024 on a
    sample of the shape training takes at 4,096), 3,970, over the limit from about
    33,000 rows (144 lists); hashed text keeps about 0.83 (427 of 512, Zipf words
    through ``HashingEmbedder``), over it from about 200,000 rows; and with the most
    lists training makes (8,281), any model of 1,356 reduced dimensions or more. The
    model's write then failed: a search with ``approximate=True`` raised
    InvalidDataError ("a batch's values together must stay under it") after minutes of
    training, and the ``vectors`` process trained again and failed at every retry.
    Must hold: training keeps the model's matrices within a budget that fits one event
    (checked here with a small budget on isotropic rows, and the real budget's widest
    model is encoded under the limit)."""
    from koru.events import MAX_EVENT_SIZE
    from koru.projections import _ivf_train

    rng = np.random.default_rng(3)
    rows = rng.standard_normal((3000, 64)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    monkeypatch.setattr(_ivf_train, "MODEL_BYTES", 8_000)
    model = _ivf_train.train_ivf(rows, np.arange(3000), 1)
    dim, reduced = model.projection.shape
    assert 4 * reduced * (dim + len(model.centroids)) <= 8_000
    monkeypatch.undo()
    # The widest model training may write: MAX_INDEX_DIM dimensions, the most lists.
    from koru._vectors import MAX_INDEX_DIM

    lists = _ivf_train.lists_for(10**9)
    reduced = _ivf_train.most_reduced(MAX_INDEX_DIM, lists)
    event = VectorIndexEvent(
        PEER, VECTOR, 1, None, 5_000, "d" * 1024, "m" * 1024, MAX_INDEX_DIM, reduced,
        lists, lists, 1024, 2**64 - 1,
        bytes(4 * MAX_INDEX_DIM * reduced), bytes(4 * lists * reduced),
    )  # fmt: skip
    assert len(encode_event(event)) <= MAX_EVENT_SIZE


async def test_a_peer_model_wider_than_any_node_indexes_is_refused() -> None:
    """Attack: a peer sends an index model for vectors of more dimensions than any node
    trains an index for (MAX_INDEX_DIM): its fold costs rows x dim x reduced on the
    event loop at every fold and open, for a model no node would write. Must hold: the
    strict decoder refuses it, ingest refuses it with the state unchanged, and a model
    at the bound still decodes."""
    from koru.events import MAX_INDEX_DIM

    def wide(dim: int) -> bytes:  # one reduced dimension: a small event
        return encode_event(
            VectorIndexEvent(
                PEER, VECTOR, 1, None, 5_000, "docs", "default", dim, 1, 4, 1, 1, 1,
                np.ones((dim, 1), "<f4").tobytes(), np.ones((4, 1), "<f4").tobytes(),
            )
        )  # fmt: skip

    with pytest.raises(CodecError, match="dim"):
        decode_event(wide(MAX_INDEX_DIM + 1))
    decode_event(wide(MAX_INDEX_DIM))
    async with koru.open(koru.MEMORY, processes=False) as db:
        await db.embed("docs", "k", np.ones(MAX_INDEX_DIM + 1))
        before = await db.digest()
        result = await db.ingest([wide(MAX_INDEX_DIM + 1)])
        assert result.accepted == 0 and len(result.refused) == 1
        assert await db.digest() == before
