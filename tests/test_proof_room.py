"""Sync's liveness against proven ingest's bounded room.

A peer holds another node's events waiting until a seal of their origin covers them,
in a room bounded per sender (``koru._proven``). Two ways filled that room with runs
none of which could complete, after which every later event was refused as "no room"
for ever (the sync bench's 100,000-event cases never finished): a pusher sending
feeds side by side, and a node that wrote more than the room holds before it sealed.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import pairwise

import cbor2
import pytest
import trio
from test_auth_sync import everything, node, trusting
from test_peer_protocol import Side, _carry, _feeds, _opened
from test_peers import _link, _settled

import koru
import koru._proven
from koru.events import IDENTITY, SealEvent, decode_event
from koru.nursery import Limits, PeerProtocol

DIFFICULTY = 4


def _reconciled(a: Side, b: Side) -> PeerProtocol:
    """``a``'s side of a connection to ``b`` once reconciled: ready to push."""
    server, client, wire = _opened(a, b, Limits(window=1000))
    sides = {id(server): (server, a, client), id(client): (client, b, server)}
    for _ in range(10):  # until the server has something to push
        batch, wire[:] = list(wire), []
        for target, data in batch:
            proto, side, other = sides[id(target)]
            _carry(proto, side, proto.receive(data, 1.0), wire, other, 1.0)
        if server.busy:
            break
    return server


def pushes(server: PeerProtocol) -> Iterator[tuple[bytes, str]]:
    """Push everything ``server`` has queued, a batch at a time (each event made up of
    its feed and seq), yielding each batch's feed once it is pushed."""
    while (push := server.next_push()) is not None:
        feed, after, upto = push
        events = [cbor2.dumps([feed[0], feed[1], s]) for s in range(after + 1, upto + 1)]
        server.push(feed, events, upto, 1.0)
        yield feed


def test_a_pusher_sends_one_feed_at_a_time_to_its_end() -> None:
    """Feeds pushed side by side (a batch of each in turn) each leave a run short of
    its sealed point waiting at the peer; one at a time, at most one is."""
    spec = {(o, "storage"): 5000 for o in range(1, 5)}
    a, b = Side(_feeds(spec)), Side({})
    server = _reconciled(a, b)
    pushed = []
    for feed in pushes(server):
        pushed.append(feed)
        if len(pushed) == 2:
            # A new identity feed (a seal, say) goes first, and the run goes on after.
            a.feeds.update(_feeds({(9, "identity"): 2}))
            server.local_changed()
    storage = [feed for feed in pushed if feed[1] == "storage"]
    assert len(storage) == 4 * 3  # 5,000 events a feed, 2,000 a batch
    assert pushed[2][1] == "identity"
    runs = [storage[0]] + [f for prev, f in pairwise(storage) if f != prev]
    assert len(runs) == 4, f"feeds interleaved: {runs}"


async def _seal_points(db: koru.Database) -> list[tuple[str, int]]:
    """``(agent, seq)`` of every point the node's seals name, in order."""
    points = []
    for data in await db.feed_events(db.node_id, IDENTITY, 0):
        event = decode_event(data)
        if type(event) is SealEvent:
            points += [(p.agent, p.seq) for p in event.points]
    return points


async def test_a_long_unsealed_feed_is_sealed_in_runs_a_peer_can_hold() -> None:
    async with koru.open(":memory:", difficulty=DIFFICULTY, sync="os") as db:
        for i in range(5000):
            await db.put("k", f"k{i}", i)
        assert await db.seal()
        seqs = [seq for agent, seq in await _seal_points(db) if agent == "storage"]
        assert seqs[-1] == 5000
        assert all(0 < b - a <= 1024 for a, b in pairwise([0, *seqs]))
        # Sealed already: the next seal starts from there.
        for i in range(10):
            await db.put("k", f"more{i}", i)
        await db.seal()
        later = [seq for agent, seq in await _seal_points(db) if agent == "storage"]
        assert later[len(seqs) :] == [5010]


async def test_a_seal_bounds_the_bytes_of_each_run_too() -> None:
    async with koru.open(":memory:", difficulty=DIFFICULTY, sync="os") as db:
        big = "x" * (1536 * 1024)
        for i in range(8):
            await db.put("k", f"big{i}", big)
            await db.put("k", f"small{i}", i)
        await db.put("k", "huge", "y" * (6 << 20))  # a run of its own
        await db.put("k", "last", 0)
        await db.seal()
        sizes = [len(e) for e in await db.feed_events(db.node_id, "storage", 0)]
        seqs = [seq for agent, seq in await _seal_points(db) if agent == "storage"]
        assert seqs[-1] == len(sizes)
        for start, end in pairwise([0, *seqs]):
            run = sizes[start:end]
            assert len(run) == 1 or sum(run) <= 4 << 20, (start, end, run)


async def _relayed(per_origin: int, origins: int) -> tuple[list[bytes], koru.Identity, list]:
    """Events of ``origins`` nodes that wrote ``per_origin`` puts each and sealed
    once; the owner; each origin's identity and the grants it holds."""
    owner = koru.Identity.mine(DIFFICULTY)
    events: list[bytes] = []
    grants = []
    for o in range(origins):
        async with koru.open(":memory:", difficulty=DIFFICULTY, sync="os") as db:
            await db.enroll(owner)
            for i in range(per_origin):
                await db.put("relay", f"o{o}-{i}", i)
            await db.seal()
            node = db.identity
            held = [g for g in db._authority.state.grants.values() if g.grantee == node.public_key]
            grants.append((node, held))
            for (origin, agent), seq in (await db.feed_heads()).items():
                if origin == db.node_id:
                    events += await db.feed_events(origin, agent, 0, seq)
    return events, owner, grants


async def _knowing(owner: koru.Identity, grants: list, *dbs: koru.Database) -> None:
    """Each of ``dbs`` enrolled by ``owner`` and knowing every writer of
    :func:`_relayed` (its identity and the grants it holds)."""
    for db in dbs:
        await db.enroll(owner)
        for identity, held in grants:
            await db.register(identity)
            for grant in held:
                await db.grant(grant)


@pytest.mark.parametrize(("per_origin", "origins"), [(3000, 1), (2500, 4)])
async def test_a_relay_delivers_more_than_the_room_holds_waiting(
    monkeypatch: pytest.MonkeyPatch, per_origin: int, origins: int
) -> None:
    """b takes from a what other nodes wrote, with room for 1,500 events waiting from
    one sender: one feed of 3,000 sealed once (its seal's marks make runs of 1,024),
    and four of 2,500 (pushed one after another, not side by side: a batch of each in
    turn left four runs waiting)."""
    monkeypatch.setattr(koru._proven, "MAX_SENDER_EVENTS", 1500)
    events, owner, grants = await _relayed(per_origin, origins)
    async with (
        koru.open(":memory:", difficulty=DIFFICULTY, sync="os") as a,
        koru.open(":memory:", difficulty=DIFFICULTY, sync="os") as b,
    ):
        await _knowing(owner, grants, a, b)
        result = await a.ingest(events)
        assert not result.refused
        async with trio.open_nursery() as nursery:
            _link(a, b, nursery)
            await _settled(a, b)
            nursery.cancel_scope.cancel()
        assert await b.get("relay", f"o{origins - 1}-{per_origin - 1}") == per_origin - 1


async def test_a_run_that_can_complete_takes_the_room_of_one_that_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender's room (5 events here) held three events of a's feed short of their
    sealed point (the fourth not sent); b's whole sealed run of four then found room
    for two, and its other two were refused: neither run could complete, and resending
    either found the room as full. What must hold: what the sender left waiting of
    other feeds makes room for the run it sends now."""
    monkeypatch.setattr(koru._proven, "MAX_SENDER_EVENTS", 5)
    async with node(1) as a, node(2) as b, node(3) as c:
        sender = await trusting(c, a, namespace="*", actions="write")
        await trusting(c, b, namespace="*", actions="write")
        for i in range(4):
            await a.put("n", f"a{i}", i)
            await b.put("n", f"b{i}", i)
        await a.seal()
        await b.seal()
        await sender.ingest(await everything(a, (IDENTITY,)) + await everything(b, (IDENTITY,)))
        a_storage = await a.feed_events(a.node_id, "storage")
        assert (await sender.ingest(a_storage[:3])).held == 3
        taken = await sender.ingest(await b.feed_events(b.node_id, "storage"))
        assert taken.accepted == 4
        assert sum("made room" in r.reason for r in taken.refused) == 3
        assert await c.get("n", "b3") == 3
        assert (await sender.ingest(a_storage)).accepted == 4  # offered again, whole
        assert await c.get("n", "a3") == 3


async def test_a_run_ending_with_its_seal_is_proven_in_parts_the_room_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An identity feed's run ends with the seal that proves it: 26 identity events
    and then the seal, against a room of 10. The room took the first ten, refused the
    rest, the seal with them, and never learned the points the seal names inside the
    run (its marks): held for ever. What must hold: a seal's points count as soon as
    it is seen (it proves itself), so the run goes in, part by part."""
    monkeypatch.setattr(koru._proven, "MAX_SENDER_EVENTS", 10)
    async with node(1) as a, node(3) as c:
        a._seal_run = (8, 1 << 20)
        sender = await trusting(c, a, namespace="*", actions="admin")
        for _ in range(25):
            await a.register(koru.Identity.mine(DIFFICULTY).public)
        await a.seal()
        identity = await a.feed_events(a.node_id, IDENTITY)
        assert len(identity) > 20
        first = await sender.ingest(identity)
        assert sum("no room" in r.reason for r in first.refused) > 0
        for _ in range(4):  # offered again, as a peer's next rounds do
            await sender.ingest(identity)
        heads = await c.feed_heads()
        assert heads[(a.node_id, IDENTITY)] == len(identity)
