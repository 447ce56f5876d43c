"""``kdelta embed`` and ``kdelta search`` as subprocesses: what they store is what the
database then holds, searches answer as ``db.embed_search`` and ``db.similar_at`` do
(filters, models, metrics, a past time), and every bad argument exits 2 with one line
before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from test_cli import failed, kdelta

import koru


def test_embed_then_search(tmp_path: Path) -> None:
    db = tmp_path / "db"
    ran = kdelta(
        db, "embed", "docs/intro", "[0.9, 0.1, 0.0]", "--model", "tiny", "--metadata", '{"l": "en"}'
    )
    assert ran.code == 0 and ran.out.startswith("embedded docs/intro: version "), ran.err
    assert kdelta(db, "embed", "docs/b", "[0.1, 0.9, 0.0]", "--model", "tiny").code == 0
    hits = json.loads(kdelta(db, "--json", "search", "docs", "--vector", "[1, 0, 0]").out)
    assert [h["key"] for h in hits] == ["intro", "b"]
    assert hits[0]["metadata"] == {"l": "en"} and hits[1]["metadata"] is None
    assert hits[0]["score"] > 0.99
    text = kdelta(db, "search", "docs", "--vector", "[1, 0, 0]", "--top-k", "1").out
    assert "intro" in text and "b " not in text and '{"l": "en"}' in text
    filtered = json.loads(
        kdelta(db, "--json", "search", "--vector", "[1, 0, 0]", "--where", "l=en").out
    )
    assert [h["key"] for h in filtered] == ["intro"]
    far = json.loads(
        kdelta(db, "--json", "search", "docs", "--vector", "[1, 0, 0]", "--metric", "euclidean").out
    )
    assert far[0]["key"] == "intro" and far[0]["score"] < far[1]["score"]

    async def check() -> None:
        async with koru.open(db) as opened:
            same = await opened.embed_search("docs", [1.0, 0.0, 0.0])
            assert [(h.key, h.score) for h in same] == [(h["key"], h["score"]) for h in hits]

    trio.run(check)


def test_delete_content_and_a_past_time(tmp_path: Path) -> None:
    db = tmp_path / "db"
    written = json.loads(kdelta(db, "--json", "embed", "docs/a", "[1, 0]", "--model", "m").out)
    assert kdelta(db, "--json", "embed", "docs/a", "--delete").code == 0
    now = json.loads(kdelta(db, "--json", "search", "docs", "--vector", "[1, 0]").out)
    assert now == []
    at = str(written["timestamp"])
    then = json.loads(kdelta(db, "--json", "search", "docs", "--vector", "[1, 0]", "--at", at).out)
    assert [h["key"] for h in then] == ["a"]
    ran = kdelta(db, "--json", "search", "docs", "--vector", "[1, 0]", "--at", "1")
    assert json.loads(ran.out) == []  # nothing was embedded then
    assert kdelta(db, "embed", "notes/n1", "--content", "the quick brown fox").code == 0
    found = json.loads(kdelta(db, "--json", "search", "notes", "--content", "quick fox").out)
    assert [h["key"] for h in found] == ["n1"]
    assert json.loads(kdelta(db, "--json", "get", "notes/n1").out)["value"] == "the quick brown fox"


def test_bad_arguments_exit_2_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "db"
    assert kdelta(db, "embed", "docs/a", "[1, 0]", "--model", "m").code == 0
    failed(kdelta(db, "embed", "docs/b", "not json"), 2, "not valid JSON")
    failed(kdelta(db, "embed", "docs/b", '{"a": 1}'), 2, "JSON list")
    failed(kdelta(db, "embed", "docs/b", "[1, 0, 0]", "--model", "m"), 2, "dimension")
    failed(kdelta(db, "embed", "docs/b", "[NaN, 0]", "--model", "m"), 2)
    failed(kdelta(db, "embed", "nokey", "[1, 0]"), 2, "NAMESPACE/KEY")
    failed(kdelta(db, "embed", "docs/b", "[1, 0]", "--metadata", "{"), 2, "--metadata")
    failed(kdelta(db, "embed", "docs/zzz", "--delete"), 1, "no embedding")
    failed(kdelta(db, "search", "docs", "--vector", "[1, 0, 0]"), 2, "dimension")
    failed(kdelta(db, "search", "docs", "--vector", "[1, 0]", "--where", "a=="), 2, "--where")
    failed(kdelta(db, "search", "docs", "--vector", "[1, 0]", "--top-k", "0"), 2, "top_k")
    failed(
        kdelta(db, "search", "docs", "--vector", "[1, 0]", "--at", "0", "--approximate"), 2, "--at"
    )

    async def untouched() -> None:
        async with koru.open(db, readonly=True) as opened:
            assert [h.key for h in await opened.embed_search("docs", [1.0, 0.0])] == ["a"]

    trio.run(untouched)
