"""Auth across databases: events from a peer go through an authorized handle's ingest,
which takes only what the origin sealed and what its author may write at its own time;
identities, grants and revocations sync like any data, and nothing forged in transit
(an event, a seal, a grant, a revocation) ever takes effect."""

from __future__ import annotations

import random
from typing import Any

import cbor2
import pytest

import koru
from conftest import StepClock
from koru.events import (
    IDENTITY,
    Grant,
    GrantEvent,
    PutEvent,
    SealEvent,
    SealPoint,
    decode_event,
    encode_event,
    encode_value,
    event_id,
    node_id_of,
)

D = 4


def person(seed: int) -> koru.Identity:
    return koru.Identity.mine(D, rng=random.Random(seed))


def node(seed: int, clock: Any = None) -> Any:
    return koru.open(
        ":memory:", seed=seed, difficulty=D, sync="os", clock=clock or StepClock(), processes=False
    )


async def everything(db: koru.Database, agents: tuple[str, ...] = ()) -> list[bytes]:
    """Every event a database holds (optionally of some agents only), feed by feed."""
    out: list[bytes] = []
    for origin, agent in sorted(await db.feed_heads()):
        if not agents or agent in agents:
            out += await db.feed_events(origin, agent)
    return out


async def trusting(receiver: koru.Database, sender: koru.Database, **terms: Any) -> Any:
    """``receiver`` registers ``sender``'s node identity, grants it ``terms``, and
    returns a handle acting as it (what a session with it would give)."""
    public = await sender.mine_identity(D)
    await receiver.register(public)
    await receiver.grant(public, **terms)
    return receiver.as_identity(public)


async def test_a_peer_takes_what_the_origin_sealed_and_may_write() -> None:
    async with node(1) as a, node(2) as b:
        peer = await trusting(b, a, namespace="users", actions="write")
        await a.put("users", "alice", 1)
        await a.put("orders", "o1", 2)  # a may write here, but not on b
        await a.seal()
        events = await everything(a)
        random.Random(3).shuffle(events)
        result = await peer.ingest(events)
        assert await b.get("users", "alice") == 1
        assert not await b.contains("orders", "o1")
        reasons = [r.reason for r in result.refused]
        assert any("may not write 'orders'/'o1'" in r for r in reasons), reasons
        assert result.held == 0


async def test_unsealed_events_wait_for_their_seal() -> None:
    async with node(1) as a, node(2) as b:
        peer = await trusting(b, a, namespace="*", actions="write")
        await a.put("users", "alice", 1)
        result = await peer.ingest(await everything(a))
        assert result.accepted == 0 and result.held > 0
        assert not await b.contains("users", "alice")
        await a.seal()
        result = await peer.ingest(await everything(a, (IDENTITY,)))
        assert await b.get("users", "alice") == 1
        # Duplicates change nothing.
        again = await peer.ingest(await everything(a))
        assert again.accepted == 0 and again.duplicates > 0


async def test_an_event_altered_in_transit_is_refused_and_the_real_one_taken() -> None:
    async with node(1) as a, node(2) as b:
        peer = await trusting(b, a, namespace="*", actions="write")
        await a.put("users", "alice", "real")
        await a.seal()
        real = await a.feed_events(a.node_id, "storage")
        event = decode_event(real[0])
        assert isinstance(event, PutEvent)
        fake = encode_event(event._replace(value=encode_value("forged")))
        result = await peer.ingest([fake])
        assert result.held == 1
        result = await peer.ingest(await everything(a, (IDENTITY,)))
        assert any("not the one its origin sealed" in r.reason for r in result.refused)
        assert not await b.contains("users", "alice")
        await peer.ingest(real)
        assert await b.get("users", "alice") == "real"


async def test_forged_seals_are_refused_where_they_enter() -> None:
    mallory = person(66)
    async with node(1) as a, node(2) as b:
        peer = await trusting(b, a, namespace="*", actions="write")
        await a.put("users", "alice", 1)
        await a.seal()
        seal_bytes = (await a.feed_events(a.node_id, IDENTITY))[-1]
        seal = decode_event(seal_bytes)
        assert isinstance(seal, SealEvent)
        # Any flipped bit of the signature.
        flipped = seal._replace(signature=bytes([seal.signature[5] ^ 4]) + seal.signature[1:])
        # Mallory's key over a's origin (it does not derive the origin).
        unsigned = seal._replace(public_key=mallory.public_key)
        borrowed = unsigned._replace(signature=mallory.sign(unsigned.message()))
        # A point changed after signing.
        moved = seal._replace(points=(seal.points[0]._replace(seq=seal.points[0].seq + 1),))
        for forged in (flipped, borrowed, moved):
            data = cbor2.dumps(cbor2.loads(encode_event(forged)))
            result = await peer.ingest([data])
            assert result.accepted == 0
            assert "not a valid event" in result.refused[0].reason
        result = await peer.ingest(await a.feed_events(a.node_id, "storage"))
        assert result.accepted == 0 and not await b.contains("users", "alice")


async def test_grants_sync_and_a_forged_grant_never_takes_effect() -> None:
    alice, mallory = person(1), person(66)
    async with node(1) as a, node(2) as b:
        # b makes a an owner: a's grants count on b too.
        peer = await trusting(b, a, actions="admin")
        await a.register(alice)
        g = await a.grant(alice, namespace="users", actions="read")
        await a.seal()
        await peer.ingest(await everything(a, (IDENTITY,)))
        assert await b.check(alice, "read", "users", "x")
        # Mallory's grant to herself, well signed but by no root: stored, no effect.
        selfish = Grant.create(mallory, mallory.public_key, actions="admin")
        async with node(9) as m:
            await m.register(mallory)
            # m stores it raw (its own root would refuse it: write it as the log would).
            m._authority.emit_grant(m._writer.emit, selfish)
            await m.seal()
            mpeer = await trusting(b, m, namespace="junk", actions="write")
            result = await mpeer.ingest(await everything(m, (IDENTITY,)))
            assert not [r for r in result.refused if "grant" in r.reason]
            assert selfish.id in b._authority.state.grants
            assert not await b.check(mallory, "read", "users", "x")
            # A grant claiming a's key as granter, signed by mallory: refused by the
            # database, refused by a node's own writer, and not even a valid event on the
            # way in (sent by a node that writes anything: its feed made by hand).
            stolen = Grant.create(mallory, mallory.public_key, actions="admin")
            stolen = stolen._replace(granter=a.identity.public_key)
            with pytest.raises(koru.SignatureError):
                await b.grant(stolen)
            with pytest.raises(koru.InvalidDataError, match="would not read back"):
                m._authority.emit_grant(m._writer.emit, stolen)
            rogue = person(67)
            await b.register(rogue)
            await b.grant(rogue, namespace="junk", actions="write")
            origin = node_id_of(rogue.public_key)
            forged = encode_event(GrantEvent(origin, IDENTITY, 1, None, 10**18, stolen))
            unsigned = SealEvent(
                origin,
                IDENTITY,
                2,
                event_id(forged),
                10**18 + 1,
                rogue.public_key,
                (SealPoint(IDENTITY, 1, event_id(forged)),),
                b"",
            )
            seal = encode_event(unsigned._replace(signature=rogue.sign(unsigned.message())))
            result = await mpeer.ingest([forged, seal])
            assert any("not a valid event" in r.reason for r in result.refused)
            assert stolen.id not in b._authority.state.grants
        assert g.id in b._authority.state.grants


async def test_a_revocation_reaches_another_database_and_stops_the_grant_there() -> None:
    alice = person(1)
    async with node(1) as a, node(2) as b:
        peer = await trusting(b, a, actions="admin")
        await a.register(alice)
        g = await a.grant(alice, namespace="users", actions="read,write")
        await a.seal()
        await peer.ingest(await everything(a, (IDENTITY,)))
        handle = b.as_identity(alice)
        await handle.put("users", "x", 1)
        await a.revoke(g)
        await a.seal()
        await peer.ingest(await everything(a, (IDENTITY,)))
        assert not await b.check(alice, "read", "users", "x")
        with pytest.raises(koru.PermissionDeniedError):
            await handle.get("users", "x")


async def test_writes_before_a_revocation_stay_valid_and_later_ones_are_refused_everywhere() -> (
    None
):
    """One clock for all (so times are comparable): c writes under a's grant, a
    revokes it, c (not knowing) writes on. Every database that takes the auth facts
    takes c's first write and refuses its second, whatever order the events come in."""
    clock = StepClock()
    async with node(1, clock) as a, node(2, clock) as b, node(3, clock) as c, node(4, clock) as d:
        receivers = []
        for r in (b, d):
            receivers.append(await trusting(r, a, actions="admin"))
        c_public = await c.mine_identity(D)
        await a.register(c_public)
        g = await a.grant(c_public, namespace="users", actions="write")
        await c.put("users", "early", 1)
        await a.revoke(g)
        await c.put("users", "late", 2)
        await a.seal()
        await c.seal()
        for n, (receiver, peer) in enumerate(zip((b, d), receivers, strict=True)):
            await peer.ingest(await everything(a, (IDENTITY,)))
            events = await everything(c)
            random.Random(n).shuffle(events)
            result = await peer.ingest(events)  # relayed by a: c's own seal proves them
            assert await receiver.get("users", "early") == 1
            assert not await receiver.contains("users", "late")
            assert any("may not write 'users'/'late'" in r.reason for r in result.refused)
        assert await b.digest() == await d.digest()


async def test_a_node_opens_a_session_on_a_peer_and_syncs_through_it() -> None:
    async with node(1) as a, node(2) as b:
        public = await a.mine_identity(D)
        await b.register(public)
        await b.grant(public, namespace="users", actions="write")
        session = await b.open_session(await a.respond(await b.challenge()))
        peer = b.as_identity(session)
        await a.put("users", "alice", 1)
        await a.seal()
        await peer.ingest(await everything(a))
        assert await b.get("users", "alice") == 1


async def test_events_of_a_key_less_origin_are_never_proven() -> None:
    """What a database wrote before it had a node key (or events claiming an origin
    no key derives) cannot be proven: a peer holds them back, never takes them."""
    async with node(1) as a, node(2) as b:
        peer = await trusting(b, a, namespace="*", actions="write")
        legacy = PutEvent(bytes(range(16)), "storage", 1, None, 5, "n", "k", encode_value(1), None)
        result = await peer.ingest([encode_event(legacy)])
        assert result.accepted == 0 and result.held == 1
        # The owner's own ingest (an import it vouches for) takes it.
        assert (await b.ingest([encode_event(legacy)])).accepted == 1


# -- crafted feeds: what a node that writes anything could send ------------------------------


def crafted(
    key: koru.Identity, puts: list[tuple[str, int]], *, seal_hlc: int | None = None
) -> tuple[list[bytes], bytes]:
    """A storage feed of ``key``'s node (puts of (key, hlc)) and a seal of it, made by
    hand: events a real node would never write, signed with the right key."""
    origin = node_id_of(key.public_key)
    events, prev = [], None
    for seq, (name, hlc) in enumerate(puts, 1):
        data = encode_event(
            PutEvent(origin, "storage", seq, prev, hlc, "users", name, encode_value(seq), None)
        )
        events.append(data)
        prev = event_id(data)
    assert prev is not None
    point = SealPoint("storage", len(puts), prev)
    header = (origin, IDENTITY, 1, None, seal_hlc or puts[-1][1] + 1)
    unsigned = SealEvent(*header, key.public_key, (point,), b"")
    seal = unsigned._replace(signature=key.sign(unsigned.message()))
    return events, encode_event(seal)


async def test_a_feed_whose_timestamps_go_back_is_refused() -> None:
    """An honest node's clock only moves forward along its feed: an event dated before
    its predecessor (how a revoked node would date a write before its revocation) is
    refused."""
    m = person(70)
    async with node(2) as b:
        await b.register(m)
        await b.grant(m, namespace="users", actions="write")
        peer = b.as_identity(m)
        T = 1_767_225_600 * 10**9
        events, seal = crafted(m, [("first", T + 10), ("back", T + 5)])
        result = await peer.ingest([seal, *events])
        assert await b.get("users", "first") == 1
        assert not await b.contains("users", "back")
        assert any("not after the previous event" in r.reason for r in result.refused)


async def test_statements_from_an_origin_that_takes_no_part_are_refused() -> None:
    """Junk grants to a victim, relayed from an origin with no capability, would slow
    every decision about the victim: they are refused, not stored."""
    victim, mallory = person(1), person(66)
    async with node(2) as b, node(9) as m:
        await b.register(victim)
        await b.grant(victim, namespace="users", actions="read")
        await m.register(mallory)
        junk = [Grant.create(mallory, victim.public_key, namespace=f"junk{i}") for i in range(20)]
        for g in junk:
            m._authority.emit_grant(m._writer.emit, g)  # m writes whatever it likes
        await m.seal()
        relay_identity = person(71)  # a peer that may write somewhere, relaying m's events
        await b.register(relay_identity)
        await b.grant(relay_identity, namespace="x", actions="write")
        relay = b.as_identity(relay_identity.public)
        result = await relay.ingest(await everything(m, (IDENTITY,)))
        assert any("held no capability" in r.reason for r in result.refused)
        assert not set(b._authority.state.by_grantee.get(victim.public_key, ())) & {
            g.id for g in junk
        }
        assert await b.check(victim, "read", "users", "x")


async def test_two_ids_sealed_for_one_event_are_kept_in_any_order() -> None:
    from koru.projections import AuthState

    m = person(72)
    T = 1_767_225_600 * 10**9
    _, one = crafted(m, [("a", T)])
    _, other = crafted(m, [("b", T)], seal_hlc=T + 1)
    states = []
    for order in ((one, other), (other, one)):
        state = AuthState()
        for data in order:
            state.apply(decode_event(data), event_id(data), 0)
        states.append(state.capture())
    assert states[0] == states[1]
    origin = node_id_of(m.public_key)
    assert len(AuthState.restore(states[0]).seals[(origin, "storage")][1]) == 2


async def test_proof_points_do_not_pile_up() -> None:
    """A sealed point at or below a feed's head proves nothing more: a node that seals
    often, and the peer that takes its events, keep none of them."""
    async with node(1) as a, node(2) as b:
        peer = await trusting(b, a, namespace="*", actions="write")
        for i in range(20):
            await a.put("users", f"k{i}", i)
            await a.seal()
            await peer.ingest(await everything(a))
        for db in (a, b):
            assert db._authority.state.seals == {}
            assert db._authority.state.sealed_to[(bytes.fromhex(a.node_id), "storage")] == 20
        assert await b.get("users", "k19") == 19


async def test_one_sender_cannot_take_the_waiting_room_of_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events nobody will seal (a junk origin) fill at most the sender's share of the
    room; another sender's events still wait and are taken; closing the junk sender's
    handle (its connection ended) frees its share."""
    import koru._proven as proven

    monkeypatch.setattr(proven, "MAX_SENDER_EVENTS", 5)
    monkeypatch.setattr(proven, "MAX_WAITING_EVENTS", 8)
    async with node(1) as a, node(2) as b, node(3) as c:
        junk_sender = await trusting(c, a, namespace="*", actions="write")
        honest = await trusting(c, b, namespace="*", actions="write")
        junk: list[bytes] = []  # a chained feed of an origin no key derives
        prev = None
        for seq in range(1, 20):
            event = PutEvent(bytes([9]) * 16, "storage", seq, prev, 5, "n", "k", b"\x01", None)
            junk.append(encode_event(event))
            prev = event_id(junk[-1])
        flooded = await junk_sender.ingest(junk)
        assert flooded.held == 5  # its share, the rest refused as no room
        assert sum("no room" in r.reason for r in flooded.refused) == 14
        await b.put("users", "bob", 1)
        taken = await honest.ingest(await everything(b, ("storage",)))
        assert taken.held == 5 + 1  # the honest event waits for its seal: room was left
        await b.seal()
        await honest.ingest(await everything(b, (IDENTITY,)))
        assert await c.get("users", "bob") == 1
        # The junk sender's connection ends: what it left waiting goes.
        await junk_sender.aclose()
        assert c._proven.waiting == 0


async def test_a_node_that_never_stops_writing_still_seals_what_is_durable() -> None:
    """A seal names the heads as they were before the sync that made them durable:
    writes landing during that sync wait for the next seal, and never stop this one
    (a node that always has a write in flight would otherwise never seal)."""
    async with node(1) as a:
        await a.mine_identity(D)
        await a.put("busy", "k0", 0)
        settle = a._writer.settle
        writes = [0]

        async def busy_settle() -> None:  # another writer appends during every sync
            writes[0] += 1
            await a.put("busy", f"k{writes[0]}", writes[0])
            await settle()

        a._writer.settle = busy_settle  # type: ignore[method-assign]
        storage = (bytes.fromhex(a.node_id), "storage")
        for _ in range(3):
            before = a._feeds.heads[storage][0]
            assert await a.seal()
            # The seal named the head from before the sync, not the write made during it.
            assert a._authority.state.sealed_to[storage] == before
            assert a._feeds.heads[storage][0] == before + 1
