"""Attacks on the derived read paths (queries, indexes, views, subscriptions): each
must agree, at every moment, with what ``get`` of each key says, whatever arrived
before and in whatever order."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import trio

import koru
from conftest import StepClock

NS = "docs"


async def _fold(sub: koru.Subscription) -> tuple[dict[str, Any], list[koru.KeyChange]]:
    """What a consumer that mirrors the stream holds once it is drained."""
    mirror: dict[str, Any] = {}
    seen = []
    with trio.move_on_after(0.5):
        async for change in sub:
            seen.append(change)
            if change.kind == "put":
                mirror[change.key] = change.value
            else:
                mirror.pop(change.key, None)
    return mirror, seen


async def test_a_late_older_version_from_a_peer_does_not_overwrite_the_stream() -> None:
    """Attack: a peer's older writes (an earlier timestamp) arrive after this node's
    newer ones to the same keys (a put over a put, a delete under a put). The version
    order decides the current value, not arrival, so ``get`` keeps this node's values;
    the subscription stream must agree: a consumer mirroring it ends with what ``get``
    says, each change's ``old`` is the version that was current before it, and a
    resume from position 0 gives the same changes as the live stream."""
    late = StepClock(start=1_900_000_000 * 10**9)
    async with (
        koru.open(":memory:", clock=StepClock(start=2_000_000_000 * 10**9), seed=1) as a,
        koru.open(":memory:", clock=late, seed=2) as b,
    ):
        await b.put(NS, "k", "old-from-b")
        await b.put(NS, "j", "j-from-b")
        await b.delete(NS, "j")
        async with a.subscribe(NS) as live:
            await a.put(NS, "j", "j-from-a")
            first = await a.put(NS, "k", "new-from-a")
            await a.ingest(await b.feed_events(b.node_id))
            truth = {k: await a.get(NS, k) for k in await a.keys(NS)}
            assert truth == {"k": "new-from-a", "j": "j-from-a"}
            mirror, seen = await _fold(live)
        assert mirror == truth
        # The version current before a's put of k: none (b's arrived after it).
        assert seen[1].new == first
        assert seen[1].old is None
        async with a.subscribe(NS, from_position=0) as replayed:
            mirror_all, seen_all = await _fold(replayed)
        assert mirror_all == truth
        assert seen_all[-len(seen) :] == seen


async def _next_cancelled(sub: koru.Subscription) -> koru.KeyChange | None:
    """A consumer's ``__anext__`` under a deadline that has already passed: the change
    if it came without a wait, else None."""
    with trio.CancelScope() as scope:
        scope.cancel()
        return await sub.__anext__()
    return None


async def test_a_cancelled_next_loses_no_change() -> None:
    """Attack: a consumer waits for the next change under a deadline (``move_on_after``)
    and the deadline fires while the subscription yields to the scheduler after taking
    an event (the replay of ``from_position`` yields on every event, the live queue on
    every 64th). Nothing was returned, so nothing may be lost: iterating on gives every
    change, each once, in order."""
    async with koru.open(":memory:", clock=StepClock()) as db:
        for i in range(3):
            await db.put(NS, f"r{i}", i)
        async with db.subscribe(NS, from_position=0) as sub:
            keys = []
            for _ in range(3):
                change = await _next_cancelled(sub)
                if change is not None:
                    keys.append(change.key)
            with trio.move_on_after(1):
                while len(keys) < 3:
                    keys.append((await sub.__anext__()).key)
            assert keys == ["r0", "r1", "r2"]
        async with db.subscribe(NS) as sub:
            for i in range(130):
                await db.put(NS, f"l{i}", i)
            keys = []
            for _ in range(130):
                change = await _next_cancelled(sub)
                if change is not None:
                    keys.append(change.key)
            with trio.move_on_after(1):
                while len(keys) < 130:
                    keys.append((await sub.__anext__()).key)
            assert keys == [f"l{i}" for i in range(130)]


async def test_a_view_checkpointed_past_an_expiry_agrees_with_get_after_a_crash(
    tmp_path: Path,
) -> None:
    """Attack: a value with a time to live is read as expired by a view (the clock
    passed its expiry, no tombstone written yet), the views are checkpointed, the
    database crashes (a copy of its directory mid-run: no read floor saved) and opens
    with its clock behind the expiry again. ``get`` and queries then give the value
    (judged by the floor the log gives); the view must too, not keep the expiry it
    judged by a reading the crash forgot."""
    clock = StepClock()
    path, copy = tmp_path / "db", tmp_path / "copy"
    async with koru.open(path, clock=clock, processes=False) as db:
        await db.create_view("v", NS, {})
        await db.put(NS, "k", {"a": 1}, ttl=1.0)
        await db.put(NS, "other", {"a": 2})
        clock.now += 2 * 10**9
        assert [r.key for r in await db.view("v")] == ["other"]
        await db.checkpoint()
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns("*.tmp"))
    clock.now -= 2 * 10**9
    async with koru.open(copy, clock=clock, processes=False) as db:
        rows = [(r.key, r.value) for r in await db.query(NS, {})]
        assert rows == [(k, await db.get(NS, k)) for k in await db.keys(NS)]
        assert [(r.key, r.value) for r in await db.view("v")] == rows
