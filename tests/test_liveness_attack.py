"""Attacks on sync's liveness against proven ingest's bounded room (``koru._proven``,
``koru._seal_marks``, the pusher's order): what an honest sender offers must be taken
however a hostile admitted peer interleaves its own offers, and seals must bound every
run at the edges."""

from __future__ import annotations

import contextlib
from itertools import pairwise

import pytest
import trio
from test_auth_sync import everything, node, person, trusting
from test_peer_protocol import Side, _feeds
from test_peers import _link, _settled
from test_proof_room import DIFFICULTY, _knowing, _reconciled, _relayed, pushes

import koru._authority
import koru._proven
import koru._seal_marks
from koru.events import (
    IDENTITY,
    MAX_SEAL_POINTS,
    PutEvent,
    SealEvent,
    SealPoint,
    decode_event,
    encode_event,
    encode_value,
    event_id,
)


async def test_a_hostile_peer_cannot_squat_a_seq_of_an_honest_feed() -> None:
    """Attack: an admitted peer offers a forged event at the next seq of a feed (any
    origin's: events carry no signature of their own) before the honest relay offers
    the real one, and offers it again after every round, so the real event is refused
    ("another unproven event waits"). What must hold (and holds): the proof drops the
    forged event once the rest of the run waits, a forgery offered again is dropped
    as it enters, and the honest relay's next offer delivers the feed."""
    async with node(1) as a, node(2) as b, node(3) as m, node(4) as r:
        honest = await trusting(r, b, namespace="*", actions="write")
        hostile = await trusting(r, m, namespace="*", actions="write")
        await trusting(r, a, namespace="*", actions="write")  # a's writes are allowed
        for i in range(3):
            await a.put("users", f"u{i}", i)
        await a.seal()
        # b relays a's feeds (the owner's import trusts them), r takes them from b.
        await b.ingest(await everything(a))
        real = await a.feed_events(a.node_id, "storage")
        first = decode_event(real[0])
        assert isinstance(first, PutEvent)
        forged = encode_event(first._replace(value=encode_value("forged")))
        relayed = await everything(a)  # identity first, then storage, in order
        for _ in range(5):
            await hostile.ingest([forged])  # squats seq 1 whenever it is free
            await honest.ingest(relayed)  # the pusher re-offers the feed
            if await r.contains("users", "u2"):
                break
        assert await r.get("users", "u0") == 0
        assert await r.get("users", "u2") == 2


def test_a_pusher_sends_one_identity_feed_at_a_time_to_its_end() -> None:
    """Attack (honest nodes): several nodes each wrote more identity events (grants,
    registrations) than a batch holds before they sealed; a relay pushes their
    identity feeds. An identity run waits at the peer until its seal arrives, in the
    same bounded room as any other, so identity feeds pushed side by side (a batch of
    each in turn: a feed's remainder went to the back of the queue) fill it with runs
    none of which completes, as storage feeds did before 3b8f473. What must hold: the
    identity feeds go one at a time, each to its end."""
    spec = {(o, "identity"): 5000 for o in range(1, 5)}
    a, b = Side(_feeds(spec)), Side({})
    server = _reconciled(a, b)
    pushed = list(pushes(server))
    assert len(pushed) == 4 * 3  # 5,000 events a feed, 2,000 a batch
    runs = [pushed[0]] + [f for prev, f in pairwise(pushed) if f != prev]
    assert len(runs) == 4, f"identity feeds interleaved: {runs}"


class _Counting(dict):  # type: ignore[type-arg]
    """A feed's waiting events that count the lookups made in them."""

    lookups = 0

    def __contains__(self, key: object) -> bool:
        _Counting.lookups += 1
        return super().__contains__(key)


@pytest.mark.parametrize("kind", ["identity run", "sealed point first"])
async def test_a_run_offered_an_event_at_a_time_costs_linear_work(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Attack: an admitted peer offers a long chained run one event at a time that
    every offer rescans from this node's head: an identity feed (no seal waits, and
    the scan for one was skipped only for other feeds), or a storage feed of an origin
    whose seal (made without marks, as an old node's) names a point far up, offered
    that point first and then the rest in order. Each offer cost a scan as long as
    the run: 25,000 junk identity events from one peer took 29 s of the event loop.
    What must hold: the work is linear in the events offered."""
    n = 1500
    monkeypatch.setattr(_Counting, "lookups", 0)
    async with node(1) as r, node(2) as m:
        hostile = await trusting(r, m, namespace="*", actions="write")
        if kind == "identity run":
            template = decode_event((await r.feed_events(r.node_id, IDENTITY))[0])
            origin, agent = bytes([9]) * 16, IDENTITY
            run, prev = [], None
            for seq in range(1, n + 1):
                event = template._replace(origin=origin, seq=seq, prev=prev, hlc=seq)
                run.append(encode_event(event))
                prev = event_id(run[-1])
        else:
            monkeypatch.setattr(koru._seal_marks, "RUN_EVENTS", 1 << 30)
            for i in range(n):
                await m.put("k", f"k{i}", i)
            await m.seal()
            await hostile.ingest(await m.feed_events(m.node_id, IDENTITY))
            origin, agent = bytes.fromhex(m.node_id), "storage"
            run = await m.feed_events(m.node_id, agent)
            run = [run[-1], *run[:-1]]
        r._proven._waiting[(origin, agent)] = _Counting()
        for data in run:
            await hostile.ingest([data])
        assert _Counting.lookups < 10 * n, f"{_Counting.lookups} lookups for {n} events"
        if agent == "storage":  # and the run, proven, was taken
            assert await r.get("k", f"k{n - 1}") == n - 1


async def test_marks_split_over_many_seals_deliver_through_a_small_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Edge: a seal whose marks pass ``MAX_SEAL_POINTS`` (here 3 points a seal, runs
    of 10, 60 events waiting from one sender) is split over several seals; relayed,
    every run is proven in turn and the whole feed is taken (holds)."""
    monkeypatch.setattr(koru._authority, "MAX_SEAL_POINTS", 3)
    monkeypatch.setattr(koru._seal_marks, "RUN_EVENTS", 10)
    monkeypatch.setattr(koru._proven, "MAX_SENDER_EVENTS", 60)
    events, owner, grants = await _relayed(400, 2)
    seals = [e for e in map(decode_event, events) if type(e) is SealEvent]
    assert len(seals) >= 2 * 14 and all(len(s.points) <= 3 for s in seals)
    async with (
        koru.open(":memory:", difficulty=DIFFICULTY, sync="os") as a,
        koru.open(":memory:", difficulty=DIFFICULTY, sync="os") as b,
    ):
        await _knowing(owner, grants, a, b)
        assert not (await a.ingest(events)).refused
        async with trio.open_nursery() as nursery:
            _link(a, b, nursery)
            await _settled(a, b)
            nursery.cancel_scope.cancel()
        assert await b.get("relay", "o1-399") == 399


async def test_a_long_identity_run_before_a_seal_is_delivered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack (honest nodes): a node writes more identity events (grants, here) before
    it first seals than a peer holds waiting from one sender (25,000 in production,
    40 here). Its identity feed's one run is proven only by the seal at its end, which
    arrives once the room is full: every later event is refused as "no room", on
    every connection, for ever (seal marks bound runs of other feeds only), and the
    node's own identity feed goes first, so nothing after it is proven either. Found
    as three relays, each with 34 identity events, whose sync to a peer with a room of
    25 never ended. What must hold: the feed is delivered (the node seals its identity
    feed every ``RUN_EVENTS`` identity events, 30 here, as it writes them)."""
    monkeypatch.setattr(koru._proven, "MAX_SENDER_EVENTS", 40)
    monkeypatch.setattr(koru._seal_marks, "RUN_EVENTS", 30)
    async with node(1) as a, node(2) as r:
        relay = await trusting(r, a, namespace="*", actions="write")
        users = [person(seed) for seed in range(60)]
        for user in users:  # a knows them all before it grants them anything
            await a.register(user)
            await r.register(user)
        for user in users:
            await a.grant(user, namespace="users", actions="read")
        await a.seal()
        feed = await a.feed_events(a.node_id, IDENTITY)
        assert len(feed) > 100
        for _ in range(3):  # three connections, each offering the feed in order
            await relay.ingest(feed)
            r._proven.forget(relay._who)  # the connection ends
        heads = await r.feed_heads()
        assert heads.get((a.node_id, IDENTITY)) == len(feed)


@pytest.mark.parametrize("senders", [3, 6])
async def test_relays_of_overlapping_feeds_deliver_to_one_peer_at_once(
    monkeypatch: pytest.MonkeyPatch, senders: int
) -> None:
    """Attack (honest nodes): several relays, each holding the feeds of twelve origins
    (offered in another order to each) and writing their own, sync with one peer at
    once, with a room of 25 events waiting per sender and 60 in all (less than the
    senders' shares together), runs of 10. Before the identity feed was sealed as it
    grows, each relay's own identity feed (registrations and grants: 34 events before
    its seal) never fitted and the sync never ended. What must hold: every feed
    arrives."""
    monkeypatch.setattr(koru._seal_marks, "RUN_EVENTS", 10)
    monkeypatch.setattr(koru._proven, "MAX_SENDER_EVENTS", 25)
    monkeypatch.setattr(koru._proven, "MAX_WAITING_EVENTS", 60)
    events, owner, grants = await _relayed(100, 12)
    async with contextlib.AsyncExitStack() as stack:
        dbs = [
            await stack.enter_async_context(koru.open(":memory:", difficulty=DIFFICULTY, sync="os"))
            for _ in range(senders + 1)
        ]
        b, relays = dbs[0], dbs[1:]
        await _knowing(owner, grants, *dbs)
        for i, a in enumerate(relays):
            assert not (await a.ingest(events[i * 377 :] + events[: i * 377])).refused
            for j in range(30):
                await a.put("own", f"r{i}-{j}", j)
        wanted = [("relay", f"o{o}-99") for o in range(12)]
        wanted += [("own", f"r{i}-29") for i in range(senders)]
        async with trio.open_nursery() as nursery:
            for a in relays:
                _link(a, b, nursery)
            with trio.fail_after(8):
                while True:
                    if all([await b.contains(*key) for key in wanted]):
                        break
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert b._proven.waiting == 0


async def test_forgeries_of_one_seq_cost_one_proof(monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: an admitted peer offers a long run of its own origin, sealed once (no
    marks: its own seal), all but the first event, then a forged first event, again
    and again (each forgery differs). Each forgery waited, and proving the run
    walked the whole run up to the sealed point and back before dropping it: a few
    hundred bytes bought a walk of the whole run, every time. What must hold: once a
    proof shows which event a seq must be, another event offered for it is refused at
    once; the real one is still taken."""
    monkeypatch.setattr(_Counting, "lookups", 0)
    monkeypatch.setattr(koru._seal_marks, "RUN_EVENTS", 1 << 30)
    n, forgeries = 1500, 300
    async with node(1) as r, node(2) as m:
        hostile = await trusting(r, m, namespace="*", actions="write")
        for i in range(n):
            await m.put("k", f"k{i}", i)
        await m.seal()
        await hostile.ingest(await m.feed_events(m.node_id, IDENTITY))
        run = await m.feed_events(m.node_id, "storage")
        feed = (bytes.fromhex(m.node_id), "storage")
        r._proven._waiting[feed] = _Counting()
        await hostile.ingest(run[1:])
        first = decode_event(run[0])
        assert isinstance(first, PutEvent)
        for i in range(forgeries):
            forged = encode_event(first._replace(value=encode_value(f"forged {i}")))
            await hostile.ingest([forged])
        assert _Counting.lookups < 10 * n, f"{_Counting.lookups} lookups for {n} events"
        await hostile.ingest(run[:1])
        assert await r.get("k", f"k{n - 1}") == n - 1


async def test_points_sealed_far_ahead_do_not_cost_every_offer() -> None:
    """Attack: an admitted peer seals thousands of points of its own feed far past
    anything it wrote (a seal proves itself; 4,096 points a seal), then offers its
    feed an event at a time. Every offer tested each proven point above the head for
    a waiting event: 40 such seals (160,000 points) made 2,000 events take 12 s of the
    event loop, and an honest backlog of a million events (a thousand marks) pays it
    too. What must hold: the work per offer does not grow with the proven points."""
    async with node(1) as r, node(2) as m:
        hostile = await trusting(r, m, namespace="*", actions="write")
        await m.put("k", "k0", 0)
        await m.seal()
        identity = await m.feed_events(m.node_id, IDENTITY)
        await hostile.ingest(identity)
        key, prev = m._authority.node, event_id(identity[-1])
        last = decode_event(identity[-1])
        seals = []
        for j in range(2):
            points = tuple(
                SealPoint("storage", 10**6 + j * MAX_SEAL_POINTS + k, bytes(32))
                for k in range(MAX_SEAL_POINTS)
            )
            header = (last.origin, IDENTITY, last.seq + 1 + j, prev, last.hlc + 1 + j)
            unsigned = SealEvent(*header, key.public_key, points, b"")
            seals.append(encode_event(unsigned._replace(signature=key.sign(unsigned.message()))))
            prev = event_id(seals[-1])
        assert (await hostile.ingest(seals)).accepted == 2
        n = 300
        for i in range(n):
            await m.put("k", f"x{i}", i)
        feed = (bytes.fromhex(m.node_id), "storage")
        r._proven._waiting[feed] = _Counting()
        _Counting.lookups = 0
        for data in (await m.feed_events(m.node_id, "storage"))[1:]:
            await hostile.ingest([data])
        assert r._proven.waiting == n
        assert _Counting.lookups < 10 * n, f"{_Counting.lookups} lookups for {n} events"


async def test_partial_runs_of_many_senders_do_not_fill_the_room_for_ever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack (honest nodes): six senders each push a different feed, runs of 11
    (10 events, then the sealed point), a room of 25 per sender and 60 in all (in
    production 25,000 and 100,000 events, 64 and 256 MiB: 64 senders each part-way
    through a 4 MiB run fill it). Each has its first 10 events waiting when the room in
    all is full: every sealed point is refused as "no room", offered again and refused
    again, for as long as the connections last. Found with six relays pushing batches
    of 7 to one peer. What must hold: every feed is delivered (an event that completes
    a proven run goes in past the bound: the run is passed on at once)."""
    monkeypatch.setattr(koru._seal_marks, "RUN_EVENTS", 11)
    monkeypatch.setattr(koru._proven, "MAX_SENDER_EVENTS", 25)
    monkeypatch.setattr(koru._proven, "MAX_WAITING_EVENTS", 60)
    async with contextlib.AsyncExitStack() as stack:
        r = await stack.enter_async_context(node(100))
        feeds, senders = [], []
        for o in range(6):
            origin = await stack.enter_async_context(node(o + 1))
            senders.append(await trusting(r, origin, namespace="*", actions="write"))
            for i in range(11):
                await origin.put("k", f"o{o}-{i}", i)
            await origin.seal()
            feeds.append(await origin.feed_events(origin.node_id, "storage"))
            await senders[-1].ingest(await origin.feed_events(origin.node_id, IDENTITY))
        for sender, feed in zip(senders, feeds, strict=True):
            await sender.ingest(feed[:10])
        for _ in range(3):  # offered again and again
            for sender, feed in zip(senders, feeds, strict=True):
                await sender.ingest(feed[10:])
        for o in range(6):
            assert await r.get("k", f"o{o}-10") == 10
