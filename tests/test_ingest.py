"""The ingest path: events from other nodes, in any order, with duplicates, forks and
garbage among them, end in the same state everywhere and never corrupt a database."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_projections import Tally

import koru
from conftest import StepClock, digest_of, full_replay
from koru import _ingest
from koru.events import STORAGE, PutEvent, encode_event, event_id
from koru.simulations import SimDisk

KEYS = [("a", f"k{i}") for i in range(4)] + [("b", "x"), ("b", "y")]


async def workload(db: koru.Database, rng: random.Random, n: int) -> None:
    """Puts to keys the other nodes write too (concurrent versions), batches, deletes."""
    for _ in range(n):
        ns, key = rng.choice(KEYS)
        roll = rng.random()
        if roll < 0.15 and await db.contains(ns, key):
            await db.delete(ns, key)
        elif roll < 0.3:
            picks = rng.sample(KEYS, 2)
            await db.put_batch([(n_, k, rng.randint(0, 9)) for n_, k in picks])
        else:
            await db.put(ns, key, {"v": rng.randint(0, 99), "by": db.node_id[:4]})


async def all_events(db: koru.Database) -> list[bytes]:
    out: list[bytes] = []
    for origin, agent in await db.feed_heads():
        out += await db.feed_events(origin, agent)
    return out


async def observable(db: koru.Database) -> dict[str, Any]:
    """Everything a user can see of the key/value state."""
    state: dict[str, Any] = {"digest": (await db.digest()), "namespaces": await db.namespaces()}
    for ns, key in KEYS:
        history = await db.history(ns, key)
        state[f"{ns}/{key}"] = [(v.write_id, v.value, v.deleted, v.timestamp) for v in history]
        state[f"{ns}/{key}?"] = await db.get(ns, key) if await db.contains(ns, key) else "absent"
    return state


async def exchange(nodes: list[koru.Database], rng: random.Random) -> None:
    """Every node receives every other node's events, shuffled, duplicated, in random
    chunks, until nothing is held back anywhere."""
    for _ in range(20):
        for node in nodes:
            pool: list[bytes] = []
            for other in nodes:
                if other is not node:
                    pool += await all_events(other)
            pool += rng.choices(pool, k=len(pool) // 2) if pool else []
            rng.shuffle(pool)
            while pool:
                chunk, pool = pool[: rng.randint(1, 8)], pool[rng.randint(1, 8) :]
                result = await node.ingest(chunk)
                assert result.refused == ()
        heads = [await node.feed_heads() for node in nodes]
        if all(h == heads[0] for h in heads) and all([(await n.stats()).held == 0 for n in nodes]):
            return
    raise AssertionError("the nodes did not converge")


@settings(max_examples=25)
@given(st.integers(0, 2**32))
async def test_three_nodes_converge_through_ingest(seed: int) -> None:
    rng = random.Random(seed)
    clocks = [StepClock(step=rng.randint(1, 5000)) for _ in range(3)]
    async with (
        koru.open(koru.MEMORY, clock=clocks[0], seed=1, projections=[Tally]) as a,
        koru.open(koru.MEMORY, clock=clocks[1], seed=2, projections=[Tally]) as b,
        koru.open(koru.MEMORY, clock=clocks[2], seed=3, projections=[Tally]) as c,
    ):
        nodes = [a, b, c]
        for node in nodes:
            await workload(node, rng, rng.randint(1, 25))
        # Some exchange, more local writes on top of what was seen, then everything.
        await exchange(nodes[:2], rng)
        await workload(a, rng, 5)
        await workload(c, rng, 5)
        await exchange(nodes, rng)
        states = [await observable(node) for node in nodes]
        assert states[0] == states[1] == states[2]
        events = (await a.stats()).events
        assert (await b.stats()).events == (await c.stats()).events == events
        # The extra projection saw every ingested event through the same seam.
        tallies = [node.projection("tally") for node in nodes]
        assert all(isinstance(t, Tally) and len(t.seen) == events for t in tallies)
        # Re-sending everything changes nothing.
        for node in nodes:
            result = await node.ingest(await all_events(a))
            assert result.accepted == 0 and result.refused == ()
        assert [await observable(node) for node in nodes] == states


async def test_ingested_events_are_durable_and_replay(tmp_path: Path) -> None:
    rng = random.Random(4)
    async with koru.open(koru.MEMORY, seed=1) as a:
        await workload(a, rng, 30)
        events = await all_events(a)
        expected = await observable(a)
    path = tmp_path / "db"
    async with koru.open(path, seed=2) as b:
        await workload(b, rng, 5)  # its own feed too
        result = await b.ingest(events)
        assert (result.accepted, result.refused) == (len(events), ())
        assert (await b.stats()).ingested == len(events)
        mixed = await observable(b)
        heads = await b.feed_heads()
        exported = await all_events(b)
    kv, _ = full_replay(path)
    async with koru.open(path) as b:
        assert (await b.stats()).checkpoint_events == len(events) + 5
        assert await observable(b) == mixed
        assert await b.feed_heads() == heads
        assert sorted(await all_events(b)) == sorted(exported)
        assert (await b.digest()) == digest_of(kv)
    (path / "checkpoint").unlink()
    async with koru.open(path) as b:
        assert (await b.stats()).replayed_events == len(events) + 5
        assert await observable(b) == mixed
        assert sorted(await all_events(b)) == sorted(exported)
    # The ingested events alone rebuild the writer's state on a fresh node.
    async with koru.open(koru.MEMORY, seed=3) as c:
        await c.ingest(exported)
        assert await c.feed_heads() == heads
    async with koru.open(koru.MEMORY, seed=3) as c:
        await c.ingest(events)
        assert await observable(c) == expected


async def test_a_gap_is_held_back_until_it_closes() -> None:
    async with koru.open(koru.MEMORY, seed=1) as a, koru.open(koru.MEMORY, seed=2) as b:
        for i in range(4):
            await a.put("n", "k", i)
        e1, e2, e3, e4 = await all_events(a)
        result = await b.ingest([e4, e3])
        assert (result.accepted, result.held, result.refused) == (0, 2, ())
        assert (await b.stats()).held == 2 and not await b.contains("n", "k")
        result = await b.ingest([e3])  # a duplicate of a held event
        assert (result.accepted, result.duplicates, result.held) == (0, 1, 2)
        result = await b.ingest([e1])
        assert (result.accepted, result.held) == (1, 2)
        assert await b.get("n", "k") == 0
        result = await b.ingest([e2])  # releases e3 and e4, in order
        assert (result.accepted, result.held) == (3, 0)
        assert await b.get("n", "k") == 3
        assert [v.value for v in await b.history("n", "k")] == [0, 1, 2, 3]
        assert (await b.digest()) == (await a.digest())


async def test_a_gap_too_far_is_refused_and_can_be_offered_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_ingest, "MAX_HELD_EVENTS", 2)
    async with koru.open(koru.MEMORY, seed=1) as a, koru.open(koru.MEMORY, seed=2) as b:
        for i in range(5):
            await a.put("n", "k", i)
        events = await all_events(a)
        result = await b.ingest(events[:0:-1])  # 5, 4, 3, 2: only two fit
        assert result.held == 2 and len(result.refused) == 2
        assert all("gap" in r.reason and not r.fork for r in result.refused)
        result = await b.ingest(events)
        assert result.refused == () and (await b.stats()).held == 0
        assert (await b.digest()) == (await a.digest())


async def test_forks_are_refused_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    # Two databases with the same seed share a node id: each writes its own history
    # as that node, so their feeds fork.
    async with (
        koru.open(koru.MEMORY, seed=1) as a,
        koru.open(koru.MEMORY, seed=1) as twin,
        koru.open(koru.MEMORY, seed=2) as c,
    ):
        assert a.node_id == twin.node_id
        for i in range(3):
            await a.put("n", "k", i)
            await twin.put("n", "k", f"other {i}")
        ours, theirs = await all_events(a), await all_events(twin)
        assert (await c.ingest(ours)).accepted == 3
        state = await observable(c)
        # A different event at a seq already held (the head, and one before it).
        for forged in (theirs[2], theirs[0]):
            result = await c.ingest([forged])
            assert result.accepted == 0 and len(result.refused) == 1
            refused = result.refused[0]
            assert refused.fork and refused.event_id == event_id(forged).hex()
            assert a.node_id in refused.reason
        assert (await c.stats()).forks == 2
        assert await observable(c) == state
        assert "fork" in caplog.text
    # The next event of a feed whose prev names another history; and two held events
    # for one seq.
    async with koru.open(koru.MEMORY, seed=1) as a, koru.open(koru.MEMORY, seed=1) as twin:
        for i in range(3):
            await a.put("n", "k", i)
            await twin.put("n", "k", f"other {i}")
        ours, theirs = await all_events(a), await all_events(twin)
    async with koru.open(koru.MEMORY, seed=2) as c:
        await c.ingest(ours[:1])
        result = await c.ingest([theirs[1]])
        assert [r.fork for r in result.refused] == [True]
        result = await c.ingest([ours[2], theirs[2]])
        assert result.held == 1 and [r.fork for r in result.refused] == [True]
        result = await c.ingest([ours[1]])
        assert (result.accepted, result.held, result.refused) == (2, 0, ())
        assert await c.get("n", "k") == 2


async def test_a_flood_of_forks_does_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """A peer offering the same forged events again and again: each is refused and
    counted as a fork, but the warnings of one origin's forks come at the 1st, 2nd,
    4th, 8th... only (one line per fork let a peer fill the application's log)."""
    async with (
        koru.open(koru.MEMORY, seed=1) as a,
        koru.open(koru.MEMORY, seed=1) as twin,
        koru.open(koru.MEMORY, seed=2) as c,
    ):
        for i in range(3):
            await a.put("n", "k", i)
            await twin.put("n", "k", f"other {i}")
        ours, theirs = await all_events(a), await all_events(twin)
        assert (await c.ingest(ours)).accepted == 3
        caplog.clear()
        for _ in range(100):
            result = await c.ingest(theirs)
            assert [r.fork for r in result.refused] == [True] * 3
        assert (await c.stats()).forks == 300
        warned = [r for r in caplog.records if "refused a fork" in r.getMessage()]
        assert len(warned) == 9  # forks 1, 2, 4, ..., 256
        assert "(256 so far)" in warned[-1].getMessage()


async def test_gaps_nobody_closes_do_not_stop_later_events_from_being_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that fills the room for held events with gaps it never closes (events 2
    to 4 of a feed whose event 1 never comes): the events held longest make room, so an
    honest feed's events delivered out of order are still held, and taken once their
    gap closes. (The newcomer used to be refused instead, every later one too, until
    the database was reopened.) The junk evicted is reported as refused gaps."""
    monkeypatch.setattr(_ingest, "MAX_HELD_EVENTS", 3)
    junk: list[bytes] = []
    prev = bytes(32)
    for seq in range(2, 5):
        event = PutEvent(b"j" * 16, STORAGE, seq, prev, 10**18, "n", "junk", b"\x01", None)
        junk.append(encode_event(event))
        prev = event_id(junk[-1])
    async with (
        koru.open(koru.MEMORY, seed=1, clock=StepClock(start=10**18)) as a,
        koru.open(koru.MEMORY, seed=2, clock=StepClock(start=10**18)) as b,
    ):
        for i in range(3):
            await a.put("n", "k", i)
        e1, e2, e3 = await all_events(a)
        flooded = await b.ingest(junk)
        assert (flooded.accepted, flooded.held, flooded.refused) == (0, 3, ())
        result = await b.ingest([e3, e2])  # out of order: held, the oldest junk evicted
        assert (result.accepted, result.held) == (0, 3)
        evicted = [event_id(j).hex() for j in junk[:2]]
        assert [r.event_id for r in result.refused] == evicted
        assert all("gap" in r.reason and not r.fork for r in result.refused)
        result = await b.ingest([e1])  # closes the gap: all three taken, in order
        assert (result.accepted, result.held, result.refused) == (3, 1, ())
        assert [v.value for v in await b.history("n", "k")] == [0, 1, 2]


def craft(**fields: Any) -> bytes:
    """A put event of origin 16 x "o" with some fields replaced (raw, unchecked)."""
    body = {"namespace": "n", "key": "k", "value": cbor2.dumps(1), "previous": None}
    header = {"origin": b"o" * 16, "agent": STORAGE, "seq": 1, "prev": None, "hlc": 10**18}
    header.update({k: v for k, v in fields.items() if k in header})
    body.update({k: v for k, v in fields.items() if k in body})
    return cbor2.dumps([1, "put", *header.values(), list(body.values())], canonical=True)


async def test_bad_events_are_refused_and_change_nothing(tmp_path: Path) -> None:
    clock = StepClock(start=10**18)
    good = craft()
    event = PutEvent(b"o" * 16, STORAGE, 1, None, 10**18, "n", "k", cbor2.dumps(1), None)
    assert encode_event(event) == good  # craft() without changes is a valid event
    bad = {
        "garbage": b"\xff\x00garbage",
        "truncated": good[:-3],
        "trailing bytes": good + b"\x00",
        "not canonical": b"\x98\x08" + good[1:],  # the array length in two bytes
        "bad value": craft(value=b"\xff"),
        "unknown agent": craft(agent="nobody"),
        "a put in another agent's log": craft(agent="chronicle"),
        "bad name": craft(key=""),
        "far future": craft(hlc=10**18 + 2 * _ingest.MAX_CLOCK_AHEAD_NS),
        "oversized": b"\x00" * (koru.events.MAX_EVENT_SIZE + 1),
        "not bytes": "a string",  # type: ignore[dict-item]
    }
    path = tmp_path / "db"
    async with koru.open(path, clock=clock, seed=2) as db:
        await db.put("mine", "k", 1)
        digest = await db.digest()
        result = await db.ingest(list(bad.values()))
        assert result.accepted == 0 and len(result.refused) == len(bad)
        assert not any(r.fork for r in result.refused)
        ids = [r.event_id for r in result.refused]
        assert ids[list(bad).index("unknown agent")] is not None
        assert ids[list(bad).index("garbage")] is None
        assert (await db.digest()) == digest and (await db.stats()).events == 1
        assert (await db.ingest([good])).accepted == 1
    async with koru.open(path) as db:
        assert (await db.stats()).events == 2


async def test_own_events_echoed_back_are_duplicates() -> None:
    async with koru.open(koru.MEMORY, seed=1) as a:
        for i in range(3):
            await a.put("n", f"k{i}", i)
        events = await all_events(a)
        digest = await a.digest()
        result = await a.ingest(events + events)
        assert (result.accepted, result.duplicates, result.refused) == (0, 6, ())
        assert (await a.digest()) == digest


async def test_ingest_moves_the_clock_forward() -> None:
    ahead = StepClock(start=2_000_000_000 * 10**9)
    async with (
        koru.open(koru.MEMORY, clock=ahead, seed=1) as a,
        koru.open(koru.MEMORY, clock=StepClock(), seed=2) as b,
    ):
        seen = await a.put("n", "k", "from the future")
        # Far ahead of b's wall clock, so refused...
        result = await b.ingest(await all_events(a))
        assert len(result.refused) == 1 and "ahead" in result.refused[0].reason
    near = StepClock(start=StepClock().now + 10 * 10**9)  # 10 s ahead of b
    async with (
        koru.open(koru.MEMORY, clock=near, seed=1) as a,
        koru.open(koru.MEMORY, clock=StepClock(), seed=2) as b,
    ):
        seen = await a.put("n", "k", "slightly ahead")
        assert (await b.ingest(await all_events(a))).accepted == 1
        mine = await b.put("n", "k", "after seeing it")
        assert mine.timestamp > seen.timestamp
        assert await b.get("n", "k") == "after seeing it"


async def test_ingest_and_feed_arguments(tmp_path: Path) -> None:
    async with koru.open(koru.MEMORY, seed=1) as db:
        await db.put("n", "k", 1)
        for bad in (b"bytes", "str", None, 5):
            with pytest.raises(koru.InvalidArgumentError):
                await db.ingest(bad)  # type: ignore[arg-type]
        assert (await db.ingest([])).accepted == 0
        for kw in (
            {"origin": "zz"},
            {"origin": "00"},
            {"origin": db.node_id, "agent": "nobody"},
            {"origin": db.node_id, "after": -1},
            {"origin": db.node_id, "limit": "3"},
        ):
            with pytest.raises(koru.InvalidArgumentError):
                await db.feed_events(**kw)
        for i in range(4):
            await db.put("n", "k", i)
        assert len(await db.feed_events(db.node_id, after=1, limit=2)) == 2
        assert len(await db.feed_events(db.node_id, after=3)) == 2
        assert await db.feed_events(db.node_id, after=5) == []
        assert await db.feed_events("ab" * 16) == []
        assert await db.feed_heads() == {(db.node_id, STORAGE): 5}
    path = tmp_path / "db"
    async with koru.open(path) as db:
        await db.put("n", "k", 1)
    async with koru.open(path, readonly=True) as db:
        with pytest.raises(koru.ReadOnlyError):
            await db.ingest([])


@pytest.mark.parametrize("sync", ["always", "os", "never"])
async def test_events_leave_a_node_only_once_durable(sync: str) -> None:
    """An event handed to a peer and then lost by a power cut would fork this node's
    own feed at that peer: its next write takes the lost event's seq, and the peer
    refuses it, and every later one, as a fork for good. So ``feed_events`` makes what
    it exports durable first, whatever the sync mode (and with ``"always"``, also an
    event whose writer is still waiting for its fsync)."""
    disk = SimDisk()
    async with koru.open("/db", disk=disk, sync=sync, seed=1) as a:
        await a.put("n", "k", 1)
    exported: list[bytes] = []
    with pytest.raises(BaseException):  # noqa: B017 - the cut, however it surfaces
        async with (
            koru.open("/db", disk=disk, sync=sync, seed=1) as a,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(a.put, "n", "k", 2)
            while len(await a.history("n", "k")) < 2:  # appended; "always" awaits fsync
                await trio.lowlevel.checkpoint()
            exported += await a.feed_events(a.node_id)
            disk.cut()
    assert len(exported) == 2
    for seed in range(3):  # what left the node survived the cut, however it fell
        async with koru.open("/db", disk=disk.after_power_cut(random.Random(seed))) as a:
            assert await a.get("n", "k") == 2
    async with (
        koru.open(koru.MEMORY, seed=2) as peer,
        koru.open("/db", disk=disk.after_power_cut(random.Random(0))) as a,
    ):
        assert (await peer.ingest(exported)).accepted == 2
        await a.put("n", "k", 3)
        result = await peer.ingest(await a.feed_events(a.node_id, after=2))
        assert (result.accepted, result.refused) == (1, ())  # not a fork
        assert await peer.get("n", "k") == 3


def _batch(origin: bytes, seq: int, writes: int) -> bytes:
    """A batch event of ``writes`` tiny writes (a peer's cheapest way to make its
    decoded form large): never the first of its feed, so it is held back."""
    items = [["n", f"{i:x}", cbor2.dumps(0), None] for i in range(writes)]
    return cbor2.dumps([1, "batch", origin, STORAGE, seq, bytes(32), 10**18, items])


async def test_events_held_back_cost_the_memory_the_bound_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bound on held events counts their bytes; what is held must cost about that
    much, not the decoded events (a batch of tiny writes decodes to ~15 times its
    bytes: a peer could hold gigabytes under a 256 MiB bound)."""
    monkeypatch.setattr(_ingest, "MAX_HELD_BYTES", 1 << 20)
    events = [_batch(b"o" * 16, seq, 8000) for seq in range(2, 18)]
    assert sum(map(len, events)) > _ingest.MAX_HELD_BYTES
    async with koru.open(koru.MEMORY, seed=1, clock=StepClock(start=10**18)) as db:
        tracemalloc.start()
        try:
            result = await db.ingest(events)
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert result.held > 5 and result.refused  # held up to the bound, refused after
        assert all("gap" in r.reason for r in result.refused)
        assert held < 2 * _ingest.MAX_HELD_BYTES
