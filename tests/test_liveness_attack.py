"""Attacks on sync's liveness against proven ingest's bounded room (``koru._proven``,
``koru._seal_marks``, the pusher's order): what an honest sender offers must be taken
however a hostile admitted peer interleaves its own offers, and seals must bound every
run at the edges."""

from __future__ import annotations

from itertools import pairwise

import cbor2
from test_auth_sync import everything, node, trusting
from test_peer_protocol import Side, _carry, _feeds, _opened

from koru.events import PutEvent, decode_event, encode_event, encode_value
from koru.nursery import Limits


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
    server, client, wire = _opened(a, b, Limits(window=1000))
    sides = {id(server): (server, a, client), id(client): (client, b, server)}
    for _ in range(10):  # reconcile: until the server has something to push
        batch, wire[:] = list(wire), []
        for target, data in batch:
            proto, side, other = sides[id(target)]
            _carry(proto, side, proto.receive(data, 1.0), wire, other, 1.0)
        if server.busy:
            break
    pushed = []
    while (push := server.next_push()) is not None:
        feed, after, upto = push
        events = [cbor2.dumps([feed[0], feed[1], s]) for s in range(after + 1, upto + 1)]
        server.push(feed, events, upto, 1.0)
        pushed.append(feed)
    assert len(pushed) == 4 * 3  # 5,000 events a feed, 2,000 a batch
    runs = [pushed[0]] + [f for prev, f in pairwise(pushed) if f != prev]
    assert len(runs) == 4, f"identity feeds interleaved: {runs}"
