"""A hostile review of what a lying peer costs the receiver: seals and events offered
through an authorized handle's proven ingest (``koru._proven``)."""

from __future__ import annotations

import random
import time

import koru
from conftest import StepClock
from koru._proven import MAX_EARLY_POINTS
from koru.events import (
    IDENTITY,
    MAX_SEAL_POINTS,
    STORAGE,
    PutEvent,
    SealEvent,
    SealPoint,
    encode_event,
    encode_value,
    event_id,
    node_id_of,
)

D = 4


async def test_seals_seen_early_do_not_make_each_offered_event_cost_all_of_them() -> None:
    """The attack: a peer (any key it made, through a capability to write anywhere)
    offers seals of its own node, each naming 4,096 points of its storage feed far
    ahead (any ids), which cannot be taken (each waits behind a gap in its identity
    feed) but whose points are remembered as seen early (up to ``MAX_EARLY_POINTS``);
    then the events of that feed, which wait for a proof. Every offered event looked
    for a proven point through a merge of all the feed's points (a dict and a sorted
    tuple per point): 32 ms an event with 61,440 points, so one EVENTS message of
    2,000 events held the event loop for a minute, and a sender's room of 25,000
    events cost seven minutes, again after each reconnection. What must hold: an
    offered event costs the receiver the same whatever the number of points seen."""
    clock = StepClock()
    async with koru.open(
        ":memory:", seed=1, difficulty=D, sync="os", clock=clock, processes=False
    ) as db:
        relay = koru.Identity.mine(D, rng=random.Random(71))
        await db.register(relay)
        await db.grant(relay, namespace="x", actions="write")
        peer = db.as_identity(relay.public)
        key = koru.Identity.mine(D, rng=random.Random(5))
        origin = node_id_of(key.public_key)
        seals = []
        far = 10**6
        for s in range(MAX_EARLY_POINTS // MAX_SEAL_POINTS - 2):
            points = tuple(
                SealPoint(STORAGE, far + s * MAX_SEAL_POINTS + i, bytes(32))
                for i in range(MAX_SEAL_POINTS)
            )
            header = (origin, IDENTITY, s + 2, bytes([7]) * 32, clock.now_ns())
            unsigned = SealEvent(*header, key.public_key, points, b"")
            seals.append(encode_event(unsigned._replace(signature=key.sign(unsigned.message()))))
        result = await peer.ingest(seals)
        assert not result.accepted and not result.refused
        assert db._proven._early_count > MAX_EARLY_POINTS * 3 // 4
        events, prev = [], None
        for seq in range(1, 1001):
            put = PutEvent(
                origin, STORAGE, seq, prev, clock.now_ns(), "x", f"k{seq}", encode_value(seq), None
            )
            data = encode_event(put)
            prev = event_id(data)
            events.append(data)
        began = time.process_time()
        result = await peer.ingest(events)
        took = time.process_time() - began
        assert not result.refused and result.held >= 1000
        # (0.01 ms an event without the seals; 32 ms before, then 0.8 ms with the
        # merge gone but every point still looked at to prune it). CPU time: other
        # processes on a busy machine do not count.
        assert took < 0.25, f"{took:.2f} s for 1,000 events"


def _feed(origin: bytes, seqs: range, clock: StepClock) -> list[bytes]:
    """Puts of ``origin``'s storage feed at ``seqs`` (chained from seq 1)."""
    events, prev = [], None
    for seq in range(1, seqs.stop):
        put = PutEvent(
            origin, STORAGE, seq, prev, clock.now_ns(), "x", f"k{seq}", encode_value(seq), None
        )
        data = encode_event(put)
        prev = event_id(data)
        if seq in seqs:
            events.append(data)
    return events


async def test_a_sender_at_its_bound_does_not_make_each_refusal_scan_the_room() -> None:
    """The attack: one peer leaves its quarter of the room waiting (events of a feed
    after a gap that never closes); a second peer (or the same owner with a second
    capability) fills its own quarter with one feed, then goes on offering events of
    that feed. Each of those is refused for want of room, but first the room was
    searched for what the sender left waiting of other feeds (``_make_room``): every
    event of every other sender, about 1 ms per refused event with a quarter of the
    room held, 3 to 5 ms with three quarters, so one EVENTS message of 2,000 cost
    the event loop seconds. What must hold: refusing an event costs the receiver
    about the same whatever others hold waiting."""
    clock = StepClock()
    async with koru.open(
        ":memory:", seed=1, difficulty=D, sync="os", clock=clock, processes=False
    ) as db:
        peers = []
        for s in range(2):
            ident = koru.Identity.mine(D, rng=random.Random(70 + s))
            await db.register(ident)
            await db.grant(ident, namespace="x", actions="write")
            peers.append(db.as_identity(ident.public))
        quarter = db._proven.max_sender_events
        # The first: events 2.. of a feed whose event 1 never comes.
        await peers[0].ingest(_feed(bytes(16), range(2, quarter + 2), clock))
        second = _feed(bytes([255]) * 16, range(2, quarter + 502), clock)
        await peers[1].ingest(second[:quarter])
        assert db._proven.waiting == 2 * quarter
        began = time.process_time()
        result = await peers[1].ingest(second[quarter:])
        took = time.process_time() - began
        assert len(result.refused) == 500 and db._proven.waiting == 2 * quarter
        # (0.02 ms an event; 0.9 ms before; CPU time, as above)
        assert took < 0.15, f"{took:.2f} s for 500 refusals"
