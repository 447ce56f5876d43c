"""Attacks on subscriptions: a failure in the middle of a replay, and replays racing
checkpoints, table merges, tier moves, expiries and ingest."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import koru
from conftest import StepClock
from koru import F, KeyChange, LaggedError, Query

NS = "ns"


def summary(c: KeyChange) -> tuple[Any, ...]:
    return (c.position, c.key, c.kind, c.value, c.old and c.old.write_id, c.new.write_id)


async def test_a_replay_that_hit_a_damaged_record_never_skips_past_it(tmp_path: Path) -> None:
    """Attack: a record in the middle of the storage log is damaged on disk; a
    subscriber replaying from position 0 gets CorruptLogError there, catches it and
    reads on (as a consumer that logs errors and retries does). What must hold: it is
    never handed a later change as if nothing were missing; every later read raises the
    typed error again. (It went on with the live changes, silently skipping every
    event from the damaged one to the seam.)"""
    async with koru.open(tmp_path / "db", clock=StepClock(), sync="os") as db:
        for i in range(20):
            await db.put(NS, f"k{i}", {"v": i, "pad": "x" * 50})
        segment = tmp_path / "db" / "logs" / "storage" / "00000001.seg"
        data = segment.read_bytes()
        with segment.open("r+b") as f:
            f.seek(data.find(b"k10"))
            f.write(b"K")
        async with db.subscribe(from_position=0) as sub:
            got = [(await sub.__anext__()).key for _ in range(10)]
            assert got == [f"k{i}" for i in range(10)]
            with pytest.raises(koru.CorruptLogError):
                await sub.__anext__()
            await db.put(NS, "later", 1)  # a live change past the seam
            for _ in range(3):
                with trio.fail_after(5), pytest.raises(koru.CorruptLogError):
                    await sub.__anext__()


#: The last change of a workload, which every subscriber of it passes (``where``'s
#: filter included): reading up to it drains one.
_LAST = "zz-last"


async def _drain(sub: koru.Subscription, out: list[Any]) -> None:
    """Read every change up to the workload's last one (``_LAST``), or to a lag. Why not
    "until a second passes with nothing": under MockClock's autojump, virtual time
    jumps while a worker thread (a checkpoint's slice) is still writing, so such a wait
    ended early under load and dropped changes that were on their way."""
    while not out or (out[-1][0] != "lag" and out[-1][1] != _LAST):
        try:
            out.append(summary(await sub.__anext__()))
        except koru.LaggedError as lag:
            out.append(("lag", lag.position))


@pytest.mark.parametrize("seed", range(12))
def test_replays_racing_checkpoints_merges_tiers_expiry_and_ingest(
    tmp_path: Path, seed: int
) -> None:
    """Attack: subscribers (some with a where filter, some with a tiny buffer) start
    replaying from random positions in the middle of a workload of puts, TTL puts,
    deletes, a peer's versions ingested late, checkpoints (also every 7 events in the
    background), table merges, expiry steps, distillation steps pinning and unpinning
    keys, reads that move keys between tiers (no warm tier, a tiny hot one), and read a
    few changes at a time while it goes on. What must
    hold: each sees exactly what a live subscriber saw from its position (same changes,
    same versions, in log order, none twice), up to a LaggedError whose position is the
    first change it did not get; and a replay from 0 after the fact sees the same."""

    async def main() -> None:
        from koru._processes import steps

        rnd = random.Random(seed)
        clock = StepClock()
        path: Any = tmp_path / "db" if seed % 2 else ":memory:"
        where = {"where": ["gte", "v", 3]}
        async with (
            koru.open(path, clock=clock, sync="never", checkpoint_every=7) as db,
            koru.open(":memory:", clock=StepClock(start=clock.now - 10**9)) as peer,
            contextlib.AsyncExitStack() as stack,
        ):
            db._kv.warm_capacity = rnd.choice([0, 10**6])
            db._kv.hot_capacity = rnd.choice([0, 300, 10**6])
            live = await stack.enter_async_context(db.subscribe())
            live_where = await stack.enter_async_context(db.subscribe(where=where))
            racing: list[tuple[int, Any, koru.Subscription, list[Any]]] = []
            for _ in range(rnd.randint(40, 120)):
                if rnd.random() < 0.1:
                    p = rnd.randrange(db._store.cursor("storage").count + 1)
                    w = rnd.choice([None, where])
                    buffer = rnd.choice([2, 1000])
                    sub = await stack.enter_async_context(
                        db.subscribe(from_position=p, where=w, buffer=buffer)
                    )
                    racing.append((p, w, sub, []))
                for _, _, sub, out in racing:
                    for _ in range(rnd.randrange(3)):
                        if out and out[-1][0] == "lag":
                            break
                        with trio.move_on_after(0.01):
                            try:
                                out.append(summary(await sub.__anext__()))
                            except koru.LaggedError as lag:
                                out.append(("lag", lag.position))
                op, key = rnd.random(), f"k{rnd.randrange(4)}"
                with contextlib.suppress(koru.KeyNotFoundError):
                    if op < 0.4:
                        ttl = rnd.choice([None, None, 0.00001])
                        await db.put(NS, key, {"v": rnd.randrange(6)}, ttl=ttl)
                    elif op < 0.5:
                        await db.delete(NS, key)
                    elif op < 0.6:
                        await peer.put(NS, key, {"v": rnd.randrange(6)})
                        await db.ingest(await peer.feed_events(peer.node_id))
                    elif op < 0.7:
                        await db.checkpoint()
                    elif op < 0.75:
                        await db._checkpointer.compact()
                    elif op < 0.8:
                        clock.now += 10**9
                        await steps(db)["expiry"]()
                    elif op < 0.85:
                        for _ in range(3):  # reads make keys fit: pinned, then unpinned
                            await db.get(NS, key)
                        await steps(db)["distillation"]()
                    else:
                        await db.get(NS, key)
            end = db._store.cursor("storage").count
            await db.put(NS, _LAST, {"v": 5})  # (where's filter passes it too)
            seen: list[Any] = []
            seen_where: list[Any] = []
            await _drain(live, seen)
            await _drain(live_where, seen_where)
            for _, _, sub, out in racing:
                await _drain(sub, out)
            seen = [c for c in seen if c[0] < end]
            seen_where = [c for c in seen_where if c[0] < end]
            positions = [c[0] for c in seen]
            assert positions == sorted(positions)
            for p, w, _, out in racing:
                expected = [c for c in (seen if w is None else seen_where) if c[0] >= p]
                if out and out[-1][0] == "lag":
                    lagged = out.pop()[1]
                    assert out == [c for c in expected if c[0] < lagged]
                else:
                    assert [c for c in out if c[0] < end] == expected
            again: list[Any] = []
            await _drain(await stack.enter_async_context(db.subscribe(from_position=0)), again)
            assert [c for c in again if c[0] < end] == seen

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("kinds", [[["put"]], [{"put"}], [{}], ({"put": 1}, "delete")])
async def test_kinds_holding_unhashable_things_are_refused_with_a_typed_error(kinds: Any) -> None:
    """Attack: ``kinds`` an iterable of unhashable things (a list of lists, as a JSON
    client might send). What must hold: a refused subscription raises a KoruError
    subclass naming the argument (it raised TypeError: unhashable type), and the
    database stays usable."""
    async with koru.open(":memory:", clock=StepClock()) as db:
        with pytest.raises(koru.InvalidArgumentError, match="kinds"):
            async with db.subscribe(NS, kinds=kinds):
                pass
        assert db._hub.subscriptions == []
        async with db.subscribe(NS) as sub:
            await db.put(NS, "k", 1)
            assert (await sub.__anext__()).value == 1


@pytest.mark.parametrize(
    ("where", "named"),
    [
        (Query().where(F("v") >= 3).limit(1), "limit"),
        (Query().order_by("-v"), "order"),
        ({"where": ["gte", "v", 3], "aggregate": ["count", None]}, "aggregate"),
        (Query().select("v").offset(2), "fields, offset"),
    ],
)
async def test_a_where_with_more_than_a_filter_is_refused(where: Any, named: str) -> None:
    """``where`` holding an order, a limit, fields or an aggregate: a subscription tests
    each change alone, so they were accepted and silently ignored (h-subck). What must
    hold: refused with a typed error naming them; a filter alone is taken."""
    async with koru.open(":memory:", clock=StepClock()) as db:
        with pytest.raises(koru.InvalidQueryError, match=named):
            async with db.subscribe(NS, where=where):
                pass
        async with db.subscribe(NS, where=Query().where(F("v") >= 3)) as sub:
            await db.put(NS, "a", {"v": 1})
            await db.put(NS, "b", {"v": 4})
            assert (await sub.__anext__()).key == "b"


@pytest.mark.parametrize("buffer", [0, -1, 2**70, 10_000_001, 2.0, True])
async def test_a_buffer_past_its_bound_is_refused(buffer: Any) -> None:
    """A buffer of 2**70 changes was accepted: a bound that bounds nothing. What must
    hold: 1 to MAX_BUFFER (10,000,000) changes, else InvalidArgumentError."""
    async with koru.open(":memory:", clock=StepClock()) as db:
        with pytest.raises(koru.InvalidArgumentError, match="buffer"):
            async with db.subscribe(NS, buffer=buffer):
                pass
        async with db.subscribe(NS, buffer=10_000_000) as sub:
            await db.put(NS, "k", 1)
            assert (await sub.__anext__()).value == 1


async def test_a_subscriber_behind_is_cut_off_by_the_bytes_its_queue_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A subscriber that stops reading while large values are written: its queue held
    its whole buffer of changes whatever their size (10,000 values of a megabyte: 10
    GB alive; h-dos). What must hold: cut off (LaggedError at the first change not
    queued) once the values queued pass MAX_QUEUED_BYTES, every change before it
    delivered; a lone change larger than that is still queued when the queue is empty;
    a subscriber that keeps up is never cut off."""
    import koru._subscriptions as subscriptions

    monkeypatch.setattr(subscriptions, "MAX_QUEUED_BYTES", 10_000)
    async with koru.open(":memory:", clock=StepClock()) as db:
        async with db.subscribe(NS) as slow, db.subscribe(NS) as keeping_up:
            await db.put(NS, "huge", "x" * 50_000)  # alone in the queue: queued
            assert (await keeping_up.__anext__()).key == "huge"
            assert (await slow.__anext__()).key == "huge"
            start = db._store.cursor("storage").count
            for i in range(20):
                await db.put(NS, f"k{i}", "y" * 1_000)  # about 1,010 bytes each
                assert (await keeping_up.__anext__()).key == f"k{i}"
            got = []
            with pytest.raises(LaggedError) as lagged:
                while True:
                    got.append((await slow.__anext__()).key)
            assert got == [f"k{i}" for i in range(len(got))] and 5 <= len(got) < 20
            assert lagged.value.position == start + len(got)
        assert db._hub.subscriptions == []


async def test_a_subscriber_behind_is_cut_off_by_keys_and_deletes_not_only_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A subscriber that stops reading while batches of long keys with tiny values, or
    of deletes (no value at all), are written: the queue's byte bound counted only the
    values' bytes, so events whose bulk is keys (an event holds up to 64 MiB: over a
    million deletes) were never counted and a lagging subscriber kept its whole buffer
    of them alive. What must hold: the bytes an event holds in its writes (keys and
    deletes too) count toward MAX_QUEUED_BYTES, and the subscriber is cut off."""
    import koru._subscriptions as subscriptions

    monkeypatch.setattr(subscriptions, "MAX_QUEUED_BYTES", 10_000)
    async with koru.open(":memory:", clock=StepClock()) as db:
        async with db.subscribe(NS) as slow:
            for i in range(20):  # about 10,000 bytes of keys each, 10 bytes of values
                await db.put_batch([(NS, f"{i}-{j}-" + "k" * 1_000, 0) for j in range(10)])
            with pytest.raises(LaggedError), trio.fail_after(10):
                for _ in range(200):  # every change read: the subscriber never cut off
                    await slow.__anext__()
        async with db.subscribe(NS) as slow:
            keys = [f"{i}-{j}-" + "k" * 1_000 for i in range(20) for j in range(10)]
            for key in keys:
                await db.delete(NS, key)  # no value: counted nothing
            with pytest.raises(LaggedError), trio.fail_after(10):
                for _ in range(200):  # every change read: the subscriber never cut off
                    await slow.__anext__()
