"""Attacks on materialized views by peers: redefinitions in loops, definitions from two
peers arriving interleaved, reads racing them; what a node shows equals what replaying
its log shows, and what re-running the query shows."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import trio

import koru
from conftest import StepClock
from koru import F, Query
from koru.projections import _views

BASE = 1_767_225_600 * 10**9
QUERIES = [
    Query().where(F("v") > 2),
    Query().sum("v"),
    Query().order_by("-v").limit(3),
    Query().group_by("g").count(),
    Query().where(F("v") < 4).avg("v"),
    Query().max("v"),
]


async def _answer(db: koru.Database, name: str) -> Any:
    try:
        return await db.view(name)
    except koru.NotFoundError:
        return "missing"


async def test_two_thousand_alternating_redefinitions_cost_one_parse_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a peer sends 2,000 alternating definitions of one view (a filter over
    one namespace, a sum over another), ingested in chunks, with reads of the view
    between chunks. What must hold: each event costs one definition parse and no
    recompute (only a read recomputes a view, once), so the work is linear in the
    events; the view reads as its last definition; a replay of the log (no
    checkpoint) gives the same view and digest."""
    n = 2000
    async with koru.open(":memory:", clock=StepClock()) as peer:
        for i in range(n):
            query = Query().where(F("v") > 3) if i % 2 else Query().sum("v")
            await peer.create_view("v", "n1" if i % 3 else "n2", query)
        events = await peer.feed_events(peer.node_id, "perspective")
    assert len(events) == n
    made, fills = [0], [0]
    real_init, real_fill = _views.View.__init__, _views.View.fill

    def counting_init(self: Any, *args: Any) -> None:
        made[0] += 1
        real_init(self, *args)

    def counting_fill(self: Any, docs: Any) -> None:
        fills[0] += 1
        real_fill(self, docs)

    monkeypatch.setattr(_views.View, "__init__", counting_init)
    monkeypatch.setattr(_views.View, "fill", counting_fill)
    path = tmp_path / "db"
    async with koru.open(path, clock=StepClock()) as db:
        for i in range(50):
            await db.put("n1", f"k{i}", {"v": i % 7})
            await db.put("n2", f"k{i}", {"v": i % 5})
        for start in range(0, n, 250):
            result = await db.ingest(events[start : start + 250])
            assert result.accepted == len(events[start : start + 250])
            await db.view("v")
        assert made[0] == n  # one parse per definition event
        assert fills[0] == n // 250  # one recompute per read after a redefinition
        live = await db.view("v")
        # The last definition (i = 1999): a filter over n1.
        assert [r.key for r in live] == [
            r.key for r in await db.query("n1", Query().where(F("v") > 3))
        ]
        digest, views = await db.digest(), await db.list_views()
    (path / "checkpoint").unlink()
    async with koru.open(path, clock=StepClock()) as db:
        assert await db.view("v") == live
        assert (await db.digest(), await db.list_views()) == (digest, views)


@pytest.mark.parametrize("seed", range(8))
def test_definitions_from_two_peers_in_any_interleaving_agree_with_replay(
    tmp_path: Path, seed: int
) -> None:
    """Attack: two peers define, redefine and drop the same two views over two
    namespaces (and write to them, some values with a time to live) with interleaved
    clocks; a node ingests their feeds in two different random interleavings, in small
    chunks, reading the views and checkpointing between chunks. What must hold: every
    node ends with the same views and digest; reopening from the checkpoint and
    replaying without it give the same; each view equals re-running its query."""

    async def main() -> None:
        rnd = random.Random(seed)
        async with (
            koru.open(":memory:", clock=StepClock(BASE, rnd.choice([1000, 777]))) as a,
            koru.open(":memory:", clock=StepClock(BASE + 500, 1000)) as b,
        ):
            for _ in range(rnd.randint(10, 60)):
                who, r = rnd.choice([a, b]), rnd.random()
                name, ns = rnd.choice(["v", "w"]), rnd.choice(["n1", "n2"])
                if r < 0.3:
                    await who.create_view(name, ns, rnd.choice(QUERIES))
                elif r < 0.35:
                    if name in {v.name for v in await who.list_views()}:
                        await who.delete_view(name)
                else:
                    doc = {"v": rnd.randrange(6), "g": rnd.randrange(2)}
                    ttl = rnd.choice([None, None, None, 0.00002])
                    await who.put(ns, f"k{rnd.randrange(5)}", doc, ttl=ttl)
            feeds = [
                list(await src.feed_events(src.node_id, agent))
                for src in (a, b)
                for agent in ("storage", "perspective")
            ]
        outcomes = []
        for trial in range(2):
            path = tmp_path / f"c{trial}"
            async with koru.open(path, clock=StepClock(BASE + 10**6, 10)) as c:
                queues = [list(f) for f in feeds]
                while any(queues):
                    feed = rnd.choice([q for q in queues if q])
                    chunk = feed[: rnd.randint(1, 3)]
                    del feed[: len(chunk)]
                    assert (await c.ingest(chunk)).accepted == len(chunk)
                    if rnd.random() < 0.3:
                        await _answer(c, rnd.choice(["v", "w"]))
                    if rnd.random() < 0.1:
                        await c.checkpoint()
                live = (
                    await _answer(c, "v"),
                    await _answer(c, "w"),
                    await c.list_views(),
                    await c.digest(),
                )
            later = StepClock(BASE + 10**6 + 10**5, 10)
            async with koru.open(path, clock=later) as c:
                restored = (
                    await _answer(c, "v"),
                    await _answer(c, "w"),
                    await c.list_views(),
                    await c.digest(),
                )
            (path / "checkpoint").unlink()
            async with koru.open(path, clock=later) as c:
                replayed = (
                    await _answer(c, "v"),
                    await _answer(c, "w"),
                    await c.list_views(),
                    await c.digest(),
                )
                for info in await c.list_views():
                    assert await c.view(info.name) == await c.query(info.namespace, info.query)
            assert live == restored == replayed
            outcomes.append(live)
        assert outcomes[0] == outcomes[1]

    trio.run(main)
