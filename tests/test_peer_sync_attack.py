"""Hostile peers and clients against the sync protocol's decoding and the database's
side of a connection (a review's attacks not covered by ``test_peers_attack.py``,
``test_remote_attack.py`` and ``test_peer_protocol.py``)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
import trio
from test_peer_protocol import Side, _feeds, _opened
from test_peers import _link, _nodes, _settled

import koru
from koru.nursery import Limits, Msg, PeerProtocol
from koru.nursery._protocol import Authenticate, BloomAsked, Close
from koru.nursery._wire import CLOSE_INVALID_PAYLOAD, CLOSE_POLICY, WireError, decode, encode


def _array_of_empty_arrays(n: int) -> bytes:
    """A CBOR array of ``n`` empty arrays: ``n + 9`` bytes, some ``64 * n`` decoded."""
    return b"\x9b" + n.to_bytes(8, "big") + b"\x80" * n


def _request_bomb(n: int) -> bytes:
    """A REQUEST message ``[1, 30, 0, payload]`` whose payload is not bytes but an
    array of ``n`` empty arrays (a client's message; its schema refuses it)."""
    return b"\x84\x01\x18\x1e\x00" + _array_of_empty_arrays(n)


def _peak_decoding(data: bytes, allowed: frozenset[Msg] | None = None) -> tuple[int, WireError]:
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as caught:
            decode(data, allowed)
        return tracemalloc.get_traced_memory()[1], caught.value
    finally:
        tracemalloc.stop()


def test_a_message_that_would_decode_to_too_much_is_refused_before_decoding() -> None:
    """A message is decoded whole before its schema is checked: 96 MiB (the limit once
    admitted, and a client needs no capability to be admitted) of empty arrays would
    take some 6 GB. The wire must refuse it (1007) from its items' headers, before
    building it: here 2 MiB of them must not take 100 MB."""
    n = 2 << 20
    peak, error = _peak_decoding(_request_bomb(n), frozenset({Msg.REQUEST}))
    assert error.code == CLOSE_INVALID_PAYLOAD
    assert peak < 16 << 20, f"{peak >> 20} MiB to refuse a message of {n >> 20} MiB"
    # Empty maps and one-byte strings, in a field of any message, the same.
    for bomb in (
        b"\x83\x01\x14" + b"\x9b" + n.to_bytes(8, "big") + b"\xa0" * n,  # PING of maps
        b"\x83\x01\x14" + b"\x9b" + n.to_bytes(8, "big") + b"\x41x" * n,
    ):
        peak, error = _peak_decoding(bomb)
        assert error.code == CLOSE_INVALID_PAYLOAD
        assert peak < 16 << 20


def test_a_stranger_client_sending_a_bomb_is_closed_with_invalid_payload() -> None:
    """The same through the server's protocol object for a client connection (what a
    stranger reaches after a handshake that checks no capability)."""
    server = PeerProtocol(server=True, role="peer", heads=dict, now=0.0, limits=Limits())
    server.hello(b"k" * 32, b"n" * 32, 10, b"i" * 16)
    auth = encode(Msg.AUTH, b"c" * 32, b"o" * 16, b"s" * 64, b"m" * 32, "client", [], None)
    (check,) = server.receive(auth, 0.0)
    assert isinstance(check, Authenticate)
    server.accept(b"o" * 16, b"t" * 64, b"j" * 16, [])
    tracemalloc.start()
    try:
        out = server.receive(_request_bomb(2 << 20), 1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == [Close(CLOSE_INVALID_PAYLOAD, out[0].reason)]
    assert peak < 16 << 20


def test_legitimate_messages_at_their_schemas_limits_still_decode() -> None:
    """The bound refuses no message its schema allows: HEADS with 2**20 seqs, RANGES
    of 4096 subtrees, PEERS of 256 long addresses, a large EVENTS blob."""
    seqs = list(range(1 << 20))
    kind, fields = decode(encode(Msg.HEADS, 16, 0, b"t" * 8 * len(seqs), seqs))
    assert kind is Msg.HEADS and fields[3] == seqs
    ranges = [[16, i, b"h" * 32] for i in range(4096)]
    assert decode(encode(Msg.RANGES, ranges))[1][0] == ranges
    peers = ["ws://" + "a" * 1000] * 256
    assert decode(encode(Msg.PEERS, peers))[1][0] == peers
    blob = b"\x80" * (64 << 20)
    assert decode(encode(Msg.EVENTS, blob))[1][0] == blob


def test_a_peers_bloom_filter_costs_this_side_at_most_its_own_window() -> None:
    """BLOOM asks this side for its newest ``window`` events of every feed (the driver
    reads them from the logs, every feed, and hashes each): a peer choosing 2**20, as
    often as the rate limit allows and even when this side's Bloom mode is off, makes
    it read its whole database (every event's bytes of a feed at once) per message of
    a few bytes. What must hold: the answer costs at most this side's own window (none
    when its Bloom mode is off), and a second BLOOM on a connection (a side sends one,
    when it opens) closes it (1008)."""
    a, b = Side(_feeds({(1, "storage"): 5})), Side({})
    bloom = encode(Msg.BLOOM, 1 << 20, 7, b"\0" * 8)
    server, _client, _wire = _opened(a, b)  # Bloom mode off here
    out = server.receive(bloom, 1.0)
    assert not any(isinstance(c, BloomAsked) for c in out), out
    server, _client, _wire = _opened(a, b, Limits(bloom_window=16))
    asked = [c for c in server.receive(bloom, 1.0) if isinstance(c, BloomAsked)]
    assert [c.window for c in asked] == [16]
    (close,) = server.receive(bloom, 2.0)
    assert isinstance(close, Close) and close.code == CLOSE_POLICY


# -- the database's side of a connection ---------------------------------------------------


async def _open_then_close(a: koru.Database, b: koru.Database) -> None:
    """Connect ``b`` to ``a`` in memory, wait until both ends are open, end it."""
    async with trio.open_nursery() as nursery:
        _link(a, b, nursery)
        with trio.fail_after(10):
            while len(a._peer_protocols()) != 1 or not a._peer_protocols()[0].open:  # noqa: ASYNC110
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()


async def test_a_peer_cannot_grow_the_book_of_addresses_without_end() -> None:
    """Each AUTH names the peer's listening address (any text of 1 KiB); the server
    remembers which node it saw at each. A peer that reconnects naming a new address
    each time grew that map by one entry a connection, for ever. What must hold: it
    stays bounded (as the book of addresses is, at 256), and connections still open."""
    async with _nodes(2) as (a, b):
        book_b, _ = b._peering()
        for i in range(300):
            book_b.own = f"ws://10.0.{i // 256}.{i % 256}:{4000 + i}/" + "x" * 900
            await _open_then_close(a, b)
        book_a, _ = a._peering()
        assert len(book_a.node_at) <= book_a.limit
        assert len(book_a.addresses) <= book_a.limit
        await b.put("n", "k", 1)
        async with trio.open_nursery() as nursery:
            _link(a, b, nursery)
            await _settled(a, b)
            nursery.cancel_scope.cancel()


async def test_a_peer_claiming_another_nodes_address_does_not_stop_a_join_to_it() -> None:
    """A peer's AUTH names its listening address, and the node believed it: a join
    loop waits while the node last seen at its address is connected another way. A
    peer naming the address of another node (``c`` naming ``b``'s) thereby stopped
    ``a`` from ever dialing ``b`` while ``c`` stayed connected. What must hold: ``a``'s
    join to ``b`` connects, and the three converge."""
    async with _nodes(3) as (a, b, c), trio.open_nursery() as nursery:
        port = await nursery.start(b.serve, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{port}"
        c._peering()[0].own = url  # the lie: c says it listens at b's address
        _link(a, c, nursery)
        with trio.fail_after(10):
            while not a._peering()[0].connected:  # noqa: ASYNC110
                await trio.sleep(0.01)
        await b.put("n", "from b", 1)
        with trio.fail_after(10):
            await nursery.start(a.join, f"127.0.0.1:{port}")
        await _settled(a, b, c)
        assert await c.get("n", "from b") == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "address", ["ws://h:x", "ws://h:99999", "ws://[::1", "ws://", "ws://" + "a" * 70 + ".example"]
)
async def test_a_malformed_gossiped_address_does_not_end_a_join(address: str) -> None:
    """A peer's AUTH names its listening address, and the server gossips what it knows
    to every peer that joins it; a joining node dials up to 8 gossiped addresses. One
    that trio-websocket cannot parse (a port that is not a number, a bad IPv6 host, an
    empty host label) raised ValueError out of the dialer, ending the joining node's
    ``join`` (its caller's nursery with it). What must hold: the join carries on and
    syncs, and the junk is not gossiped on."""
    async with _nodes(3) as (a, b, c), trio.open_nursery() as nursery:
        c._peering()[0].own = address  # the liar names junk as its address
        _link(a, c, nursery)
        with trio.fail_after(10):
            while not a._peering()[0].connected:  # noqa: ASYNC110
                await trio.sleep(0.01)
        port = await nursery.start(a.serve, "127.0.0.1", 0)
        await nursery.start(b.join, f"127.0.0.1:{port}")
        await b.put("n", "from b", 1)
        await _settled(a, b, c)
        await trio.sleep(0.2)  # the dialer has tried what it heard
        await b.put("n", "later", 2)
        await _settled(a, b, c)
        assert address not in b._peering()[0].addresses
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("url", ["127.0.0.1:notaport", "ws://h:99999", "ws://[::1", "ws://"])
async def test_join_of_a_url_it_cannot_dial_is_an_invalid_argument(url: str) -> None:
    """``join`` raised the websocket library's ValueError (or, for a url the gossip
    check refuses, looped for ever): bad input gets a typed KoruError, at once."""
    async with _nodes(1) as (a,):
        with trio.fail_after(5), pytest.raises(koru.InvalidArgumentError):
            await a.join(url)


def _unmasked_frame(opcode: int, payload: bytes, *, fin: bool) -> bytes:
    """A client frame with a mask of zeros (the payload as it is: no copy to mask)."""
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + bytes(4) + payload


async def test_a_strangers_connections_cannot_pin_memory_without_end() -> None:
    """A client needs no capability to be admitted, and an admitted connection takes
    messages of up to 96 MiB, which the websocket layer assembles from fragments until
    the last arrives (the idle timeout counts whole messages only: up to a minute).
    One stranger identity may open any number of connections: each first fragment,
    never finished, pins its bytes on the server. What must hold: what all the
    connections pin together is bounded (24 connections with 4 MiB each pinned some
    98 MiB, linear in the connections: 96 MiB each at the limit): by the server's
    ``Limits.max_pending``, here 16 MiB, past which a connection is closed (1009)."""
    from types import SimpleNamespace

    from test_peers_attack import RawSocket, RawWebSocket

    from koru._peering import PeerHandshake
    from koru.nursery import Challenged
    from koru.nursery._wire import decode as decode_message

    chunk = b"\0" * (4 << 20)
    async with (
        koru.open(":memory:", difficulty=4, sync="os") as a,
        koru.open(":memory:", difficulty=4, sync="os") as stranger,
        trio.open_nursery() as nursery,
    ):
        await stranger.mine_identity()
        a.peer_limits = Limits(max_pending=16 << 20)
        port = await nursery.start(a.serve, "127.0.0.1", 0)
        site = SimpleNamespace(port=port, sockets=[])
        tracemalloc.start()
        refused = 0
        try:
            base = tracemalloc.get_traced_memory()[0]
            with trio.fail_after(30):
                for _ in range(24):
                    ws = RawWebSocket(await RawSocket.connect(site))  # type: ignore[arg-type]
                    kind, fields = decode_message(await ws.get_message())
                    assert kind is Msg.HELLO
                    answer = await PeerHandshake(stranger, stranger._peering()[0]).answer(
                        Challenged(*fields)
                    )
                    auth = encode(Msg.AUTH, *answer[:4], "client", *answer[4:])
                    await ws.send_message(auth)
                    kind, _ = decode_message(await ws.get_message())
                    assert kind is Msg.WELCOME
                    try:
                        await ws.raw.stream.send_all(_unmasked_frame(0x2, chunk, fin=False))
                    except trio.BrokenResourceError:  # closed: the budget is spent
                        refused += 1
                await trio.sleep(0.5)  # the server reads what was sent
            pinned = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
            for stream in site.sockets:
                await stream.aclose()
        assert pinned < 24 << 20, f"{pinned >> 20} MiB pinned by one stranger"
        assert refused >= 10  # those past the budget were closed (some sends fit the socket)
        # What the closed connections held is the budget's again: an honest client's
        # message of 12 MiB goes through.
        member = koru.Identity.mine(4)
        await a.register(member.public)
        await a.grant(member.public, actions=["read", "write"])
        big = "x" * (12 << 20)
        with trio.fail_after(30):
            async with koru.connect(f"127.0.0.1:{port}", member) as remote:
                await remote.put("big", "value", big)
        assert await a.get("big", "value") == big
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("url", ["h:x", "ws://h:99999", "ws://[::1", "ws://"])
async def test_connect_to_a_url_it_cannot_dial_is_an_invalid_argument(url: str) -> None:
    """``koru.connect`` raised the websocket library's ValueError for a url it cannot
    parse: bad input gets a typed KoruError."""
    with trio.fail_after(5), pytest.raises(koru.InvalidArgumentError):
        async with koru.connect(url, koru.Identity.mine(4)):
            pass  # pragma: no cover


def test_a_peer_cannot_grow_the_heads_it_is_said_to_hold_without_end() -> None:
    """Each event of an EVENTS message tells what the sender holds (its feed and seq,
    read off its first bytes, so that it is never pushed back): the protocol kept one
    entry per feed named, for the connection's life, whether the event was taken or
    refused. A peer sending junk events each naming a new feed (22 bytes each: 4
    million feeds in a message) grew that map without end. What must hold: it stays
    bounded, as the heads remembered from HEADS are (forgetting one only costs a feed
    pushed that the peer may hold)."""
    import cbor2

    a, b = Side(_feeds({(1, "storage"): 3})), Side({})
    server, _client, _wire = _opened(a, b)
    for round_ in range(3):
        junk = b"".join(
            cbor2.dumps([1, "", (round_ * 50_000 + i).to_bytes(16, "big"), "storage", 1])
            for i in range(50_000)
        )
        server.receive(encode(Msg.EVENTS, junk), float(round_))
    assert len(server.peer_heads) <= 65536 + len(a.heads())


def test_a_peer_cannot_grow_the_subtrees_answered_without_end() -> None:
    """Every subtree this side sends its heads for is remembered until its next
    SUMMARY (so that a peer's HEADS for it is not answered twice); a RANGES message
    names up to 4,096 subtrees, each answered with heads and remembered. A peer that
    keeps this side busy (it never acknowledges a push, so no periodic SUMMARY comes)
    and sends RANGES of new deepest subtrees grew that set by 4,096 entries a message,
    without end. What must hold: it stays bounded (forgetting one only costs heads
    sent again)."""
    a, b = Side(_feeds({(o, "storage"): 3 for o in range(4)})), Side({})
    server, _client, _wire = _opened(a, b, Limits(window=1))
    server.receive(encode(Msg.HEADS, 0, 0, b"", []), 0.5)  # the peer holds nothing
    push = server.next_push()
    assert push is not None
    server.push(push[0], [b"\x80"], push[2], 0.5)  # never acknowledged: busy for ever
    for round_ in range(40):
        ranges = [[16, round_ * 4096 + i, b"\x01" * 32] for i in range(4096)]
        server.receive(encode(Msg.RANGES, ranges), 1.0 + round_)
        server.tick(1.0 + round_)
    assert server.busy
    assert len(server._heads_sent) <= 65536


async def test_a_peer_whose_read_is_revoked_receives_nothing_more() -> None:
    """A peer is admitted if it holds ``read`` on everything, and its connection then
    lives as long as it keeps it (heartbeats): pushes never looked at its rights again,
    so a peer whose grant was revoked kept receiving every new write over the
    connection it had open. What must hold: after the revocation nothing written
    later reaches it (its connection is closed with a policy violation)."""
    async with _nodes(1) as (a,), _nodes(1) as (r,):
        r_node, a_node = await r.mine_identity(4), await a.mine_identity(4)
        await a.register(r_node)
        grant = await a.grant(r_node, actions="admin")
        await r.register(a_node)
        await r.grant(a_node, actions="admin")
        await a.put("n", "before", 1)
        ends: list[Any] = []
        async with trio.open_nursery() as nursery:
            _link(a, r, nursery, ends)
            with trio.fail_after(10):
                while not await r.contains("n", "before"):  # noqa: ASYNC110
                    await trio.sleep(0.02)
            await a.revoke(grant)
            await a.put("n", "after", "not for r")
            await trio.sleep(1.0)
            assert not await r.contains("n", "after")
            nursery.cancel_scope.cancel()
        assert ends and ends[0].code == 1008, [(e.code, e.reason) for e in ends]


async def test_a_read_only_peer_still_receives_everything() -> None:
    """A peer is admitted with ``read`` on everything; what it pushes is taken by its
    handle, whose ``ingest`` needs ``write``. A read-only peer (a replica) pushes its
    own identity feed first, so the handle's PermissionDeniedError ended every one of
    its sessions (1011, "the local side failed") before it received anything. What
    must hold: its events are refused (it may not write here), its session goes on,
    and it receives everything."""
    async with _nodes(1) as (a,), _nodes(1) as (r,):
        r_node, a_node = await r.mine_identity(4), await a.mine_identity(4)
        await a.register(r_node)
        await a.grant(r_node, actions="read")
        await r.register(a_node)
        await r.grant(a_node, actions="admin")
        for i in range(20):
            await a.put("n", f"k{i}", i)
        await r.put("mine", "x", 1)
        ends: list[Any] = []
        async with trio.open_nursery() as nursery:
            _link(a, r, nursery, ends)
            with trio.fail_after(10):
                while not await r.contains("n", "k19"):  # noqa: ASYNC110
                    await trio.sleep(0.02)
            await a.put("n", "later", 1)
            with trio.fail_after(10):
                while not await r.contains("n", "later"):  # noqa: ASYNC110
                    await trio.sleep(0.02)
            assert not ends, [(e.code, e.reason) for e in ends]
            nursery.cancel_scope.cancel()
        assert not await a.contains("mine", "x")


async def test_a_push_reads_no_more_of_the_log_than_a_batch_holds(tmp_path: Any) -> None:
    """The pusher fetches a range of up to 2,000 events of a feed and sends those that
    fit a batch's bytes (1 MiB): the whole range was read into memory first. A peer
    that says it holds nothing of a feed of large values (a new replica, or a liar,
    again and again) had this node read 2,000 of them at once (16 MiB values: 32 GB).
    What must hold: a fetch reads about a batch's bytes (here 64 values of 1 MiB must
    not take 64 MiB), and still returns at least one event."""
    import os

    from koru._peering import DatabaseEndpoint, PeerBook

    async with koru.open(tmp_path / "a", difficulty=4, sync="os") as a:
        reader = koru.Identity.mine(4)
        await a.register(reader.public)
        await a.grant(reader.public, actions="read")
        for i in range(64):
            await a.put("big", f"k{i}", os.urandom(1 << 20))
        endpoint = DatabaseEndpoint(a, a.as_identity(reader.public), "peer", PeerBook())
        feed = (bytes.fromhex(a.node_id), "storage")
        head = a._feeds.heads[feed][0]
        tracemalloc.start()
        try:
            events = await endpoint.fetch(feed, 0, head, 1 << 20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert 1 <= len(events) <= 2
        assert peak < 8 << 20, f"{peak >> 20} MiB read to send {len(events)} events"
        # One event bigger than a batch still goes (alone).
        assert len(await endpoint.fetch(feed, 0, head, 1000)) == 1


def test_one_peer_cannot_fill_the_address_book() -> None:
    """An authenticated peer gossips 10,000 junk addresses (each dialable, none a
    node): the book (256 addresses) took the first 256 it heard and never evicted, so
    every address a real peer gossiped afterwards was dropped. What must hold: one
    peer holds at most a share of the book, and another peer's address still gets in."""
    from koru._peering import DatabaseEndpoint, PeerBook

    book = PeerBook()
    liar = DatabaseEndpoint(None, None, "liar", book)  # type: ignore[arg-type]
    honest = DatabaseEndpoint(None, None, "honest", book)  # type: ignore[arg-type]
    liar.heard([f"ws://junk{i}.invalid:9" for i in range(10_000)])
    honest.heard(["ws://real.example:8080"])
    assert "ws://real.example:8080" in book.addresses
    assert len(book.addresses) <= book.limit // 4


async def test_gossiped_addresses_that_never_answer_give_way_to_others(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """The dialer joins the first MAX_DIALED (8) gossiped addresses, and each join
    retries for ever: a peer that gossips 8 addresses where nothing listens, before
    anyone else's, has the node dial those for ever and never a real one learned later.
    What must hold: an address that never connects is given up (after some attempts)
    and dropped from the book, and the dialer moves on to the next."""
    import random

    import trio_websocket

    import koru._peering as peering
    from koru._peering import PeerBook, dial_gossiped

    dialed: list[str] = []

    def refused(url: str, **_: Any) -> Any:
        dialed.append(url)
        raise OSError("connection refused")

    async def prepared(db: Any) -> None:
        return None

    monkeypatch.setattr(trio_websocket, "open_websocket_url", refused)
    monkeypatch.setattr(peering, "_prepared", prepared)
    book = PeerBook()
    for i in range(8):
        book.add(f"ws://junk{i}.invalid:9", "liar")
    book.add("ws://real.example:8080", "honest")
    with trio.move_on_after(3600):
        await dial_gossiped(
            None,  # type: ignore[arg-type]
            book,
            limits=Limits(),
            sessions=set(),
            rng=random.Random(0),
        )
    assert "ws://real.example:8080" in dialed
    assert not any(a.startswith("ws://junk") for a in book.addresses)
    assert not book.dialing - {"ws://real.example:8080"}
