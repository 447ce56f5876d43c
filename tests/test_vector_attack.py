"""Attacks on the approximate vector index (h-vec2): crafted checkpoint sections that
``kdelta verify`` must report rather than crash on, and index models from a peer whose
folding would cost memory and time out of all proportion to their size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_projections import rewrite_checkpoint

import koru


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
