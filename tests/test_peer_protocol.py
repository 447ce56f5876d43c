"""The sans-io peer protocol, message by message: no sockets, no database."""

from __future__ import annotations

import hashlib

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from koru.nursery import Authenticate, Challenged, Limits, Msg, PeerProtocol, Welcomed
from koru.nursery._protocol import BloomAsked, Close, Ingest, NeedRecent, Send
from koru.nursery._wire import encode


class Side:
    """A node as the protocol sees it: feeds of event ids, appended in seq order."""

    def __init__(
        self, feeds: dict[tuple[bytes, str], list[bytes]], refuse: frozenset = frozenset()
    ) -> None:
        self.feeds = feeds
        self.refuse = refuse

    def recent(self, window: int) -> list[tuple[tuple[bytes, str], int, bytes]]:
        return [
            (f, seq, ids[seq - 1])
            for f, ids in self.feeds.items()
            for seq in range(max(1, len(ids) - window + 1), len(ids) + 1)
        ]

    def heads(self) -> dict[tuple[bytes, str], tuple[int, bytes]]:
        return {f: (len(ids), ids[-1]) for f, ids in self.feeds.items() if ids}

    def take(self, events: list[bytes]) -> None:
        for raw in events:
            origin, agent, seq, eid = cbor2.loads(raw)
            if (origin, agent) in self.refuse:
                continue
            held = self.feeds.setdefault((origin, agent), [])
            if seq == len(held) + 1:
                held.append(eid)


def _id(origin: bytes, agent: str, seq: int) -> bytes:
    return hashlib.blake2b(origin + agent.encode() + seq.to_bytes(8, "big")).digest()[:32]


def _feeds(spec: dict[tuple[int, str], int]) -> dict[tuple[bytes, str], list[bytes]]:
    out = {}
    for (o, agent), n in spec.items():
        origin = o.to_bytes(2, "big") * 8
        out[(origin, agent)] = [_id(origin, agent, s) for s in range(1, n + 1)]
    return out


def _opened(
    a: Side, b: Side, limits: Limits | None = None
) -> tuple[PeerProtocol, PeerProtocol, list]:
    """A server and a client protocol past the handshake; the messages in flight."""
    limits = Limits() if limits is None else limits
    server = PeerProtocol(server=True, role="peer", heads=a.heads, now=0.0, limits=limits)
    client = PeerProtocol(server=False, role="peer", heads=b.heads, now=0.0, limits=limits)
    wire: list = []
    (hello,) = server.hello(b"k" * 32, b"n" * 32, 10, b"i" * 16)
    commands = client.receive(hello.data, 0.0)
    assert isinstance(commands[0], Challenged)
    (auth,) = client.authenticate(b"c" * 32, b"o" * 16, b"s" * 64, b"m" * 32, [], None)
    (check,) = server.receive(auth.data, 0.0)
    assert isinstance(check, Authenticate) and check.role == "peer"
    out = server.accept(b"o" * 16, b"t" * 64, b"j" * 16, [])
    welcome = out.pop(0)
    (ok,) = client.receive(welcome.data, 0.0)
    assert isinstance(ok, Welcomed)
    _carry(server, a, out, wire, client, 0.0)
    _carry(client, b, client.accept(), wire, server, 0.0)
    return server, client, wire


def _carry(proto, side, commands, wire, other, now) -> None:  # type: ignore[no-untyped-def]
    """Carry out a protocol's commands as a driver would."""
    for command in commands:
        if isinstance(command, Send):
            wire.append((other, command.data))
        elif isinstance(command, Ingest):
            side.take(command.events)
            _carry(proto, side, proto.ingested(now), wire, other, now)
        elif isinstance(command, NeedRecent):
            _carry(proto, side, proto.bloom_offer(side.recent(command.window)), wire, other, now)
        elif isinstance(command, BloomAsked):
            _carry(
                proto,
                side,
                proto.bloom_answer(command, side.recent(command.window)),
                wire,
                other,
                now,
            )
        else:
            raise AssertionError(command)


def _run(a: Side, b: Side, server: PeerProtocol, client: PeerProtocol, wire: list) -> int:
    """Deliver messages and carry out pushes until nothing moves; the rounds taken."""
    sides = {id(server): (server, a), id(client): (client, b)}
    other = {id(server): client, id(client): server}
    rounds = 0
    while wire or server.busy or client.busy:
        rounds += 1
        assert rounds < 1000
        batch, wire[:] = list(wire), []
        for target, data in batch:
            proto, side = sides[id(target)]
            commands = proto.receive(data, float(rounds))
            _carry(proto, side, commands, wire, other[id(proto)], float(rounds))
        for proto, side in (sides[id(server)], sides[id(client)]):
            while (push := proto.next_push()) is not None:
                feed, after, upto = push
                events = [
                    cbor2.dumps([feed[0], feed[1], s, side.feeds[feed][s - 1]])
                    for s in range(after + 1, upto + 1)
                ]
                for command in proto.push(feed, events, upto, float(rounds)):
                    wire.append((other[id(proto)], command.data))
    return rounds


feed_specs = st.dictionaries(
    st.tuples(st.integers(0, 40), st.sampled_from(["storage", "identity", "vector"])),
    st.integers(0, 30),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(feed_specs, feed_specs)
def test_any_two_sets_of_feeds_converge(left: dict, right: dict) -> None:
    # Both sides hold prefixes of the same feeds (a feed never forks here).
    a, b = Side(_feeds(left)), Side(_feeds(right))
    server, client, wire = _opened(a, b)
    _run(a, b, server, client, wire)
    assert a.heads() == b.heads()
    # Each holds the longer of the two versions of every feed: nothing was lost.
    union = _feeds({f: max(left.get(f, 0), right.get(f, 0)) for f in {*left, *right}})
    assert a.heads() == Side(union).heads()


def test_many_feeds_drill_down_and_send_only_the_differing_heads() -> None:
    spec = {(o, "storage"): 5 for o in range(200)}  # 200 feeds: above HEADS_LIMIT
    behind = dict(spec)
    behind[(7, "storage")] = 3
    behind[(150, "storage")] = 0
    a, b = Side(_feeds(spec)), Side(_feeds(behind))
    server, client, wire = _opened(a, b)
    _run(a, b, server, client, wire)
    assert a.heads() == b.heads()
    assert server.events_sent == 7  # 2 + 5 events, nothing else
    # Drilling down: far less than all 200 heads (8 B tag + seq each) went either way.
    assert server.reconcile_bytes_sent + client.reconcile_bytes_sent < 200 * 10


def test_identical_sets_cost_one_summary_of_at_most_64_bytes() -> None:
    spec = {(o, "storage"): 9 for o in range(300)}
    a, b = Side(_feeds(spec)), Side(_feeds(spec))
    server, client, wire = _opened(a, b)
    _run(a, b, server, client, wire)
    assert server.reconcile_bytes_sent <= 64 and client.reconcile_bytes_sent <= 64
    assert server.in_sync and client.in_sync


def _server() -> PeerProtocol:
    server = PeerProtocol(server=True, role="peer", heads=dict, now=0.0)
    server.hello(b"k" * 32, b"n" * 32, 10, b"i" * 16)
    return server


def _code(commands: list) -> int:
    (close,) = [c for c in commands if isinstance(c, Close)]
    return close.code


def test_before_the_handshake_anything_but_auth_is_a_policy_violation() -> None:
    assert _code(_server().receive(b"\xff\x00garbage", 0.0)) == 1008
    assert _code(_server().receive(encode(Msg.SUMMARY, bytes(32), 0), 0.0)) == 1008
    assert _code(_server().receive(encode(Msg.PING, 1), 0.0)) == 1008
    assert _code(_server().receive(bytes(70_000), 0.0)) == 1009
    assert _code(_server().receive(cbor2.dumps([2, 2]), 0.0)) == 1002


def test_a_second_message_before_the_verdict_is_refused() -> None:
    server = _server()
    auth = encode(Msg.AUTH, b"c" * 32, b"o" * 16, b"s" * 64, b"m" * 32, "peer", [], None)
    (check,) = server.receive(auth, 0.0)
    assert isinstance(check, Authenticate)
    assert _code(server.receive(auth, 0.0)) == 1008


def test_handshake_and_idle_timeouts_and_heartbeats() -> None:
    limits = Limits(handshake_timeout=5.0, idle_timeout=30.0, heartbeat=10.0, resync=1000.0)
    server = PeerProtocol(server=True, role="peer", heads=dict, now=0.0, limits=limits)
    assert server.tick(4.0) == []
    assert _code(server.tick(6.0)) == 1008
    a, b = Side({}), Side({})
    server, client, wire = _opened(a, b, limits)
    _run(a, b, server, client, wire)
    pings = [c for c in client.tick(11.0) if isinstance(c, Send)]
    assert [cbor2.loads(p.data)[1] for p in pings] == [Msg.PING]
    assert _code(client.tick(40.0)) == 1001


def test_rate_limit_after_the_handshake() -> None:
    limits = Limits(rate=10.0, burst=5.0)
    a, b = Side({}), Side({})
    server, _client, _wire = _opened(a, b, limits)
    ping = encode(Msg.PING, 1)
    codes = [server.receive(ping, 0.0) for _ in range(7)]
    assert any(isinstance(c, Close) and c.code == 1013 for out in codes for c in out)


def test_malformed_heads_and_ranges_close_with_invalid_payload() -> None:
    a, b = Side({}), Side({})
    server, _client, _wire = _opened(a, b)
    assert _code(server.receive(encode(Msg.HEADS, 0, 0, b"x" * 7, [1]), 0.0)) == 1007
    server, _client, _wire = _opened(a, b)
    assert _code(server.receive(encode(Msg.RANGES, [[1, 99, bytes(32)]]), 0.0)) == 1007
    server, _client, _wire = _opened(a, b)
    assert _code(server.receive(encode(Msg.ACK, 3), 0.0)) == 1008


def test_events_the_peer_refuses_are_not_pushed_again_in_a_loop() -> None:
    spec = {(1, "storage"): 10, (2, "storage"): 10}
    a = Side(_feeds(spec))
    refused = next(iter(_feeds({(1, "storage"): 1})))
    b = Side({}, refuse=frozenset({refused}))
    server, client, wire = _opened(a, b)
    _run(a, b, server, client, wire)  # ends: nothing left to move
    assert b.heads().keys() == {f for f in a.feeds if f != refused}
    # The summary after the push found the refused feed behind: offered again only
    # after ``resync``, so each of its events went out once.
    assert server.events_sent == 20
    assert not server.busy


@settings(max_examples=40, deadline=None)
@given(feed_specs, feed_specs, st.sampled_from([1, 2, 10]))
def test_bloom_mode_converges_whatever_its_false_positives(
    left: dict, right: dict, bits: int
) -> None:
    # One bit per event: a filter so full that most lookups are false positives.
    limits = Limits(bloom_window=8, bloom_bits=bits)
    a, b = Side(_feeds(left)), Side(_feeds(right))
    server, client, wire = _opened(a, b, limits)
    _run(a, b, server, client, wire)
    assert a.heads() == b.heads()


def test_bloom_mode_sends_the_tail_after_one_round_trip() -> None:
    spec = {(o, "storage"): 50 for o in range(4)}
    behind = {(o, "storage"): 45 for o in range(4)}
    a, b = Side(_feeds(spec)), Side(_feeds(behind))
    server, _client, wire = _opened(a, b, Limits(bloom_window=16))
    # The client's first messages: BLOOM, then SUMMARY. The server answers the
    # filter with events at once (before any HEADS went either way).
    first = []
    for target, data in wire:
        if target is server:
            first += server.receive(data, 1.0)
    assert any(isinstance(c, BloomAsked) for c in first)
    asked = next(c for c in first if isinstance(c, BloomAsked))
    server.bloom_answer(asked, a.recent(asked.window))
    pushes = []
    while (push := server.next_push()) is not None:
        pushes.append(push)
    assert sorted((after, upto) for _, after, upto in pushes) == [(45, 50)] * 4


def test_an_events_blob_that_is_not_whole_cbor_items_closes_with_invalid_payload() -> None:
    a, b = Side({}), Side({})
    server, _client, _wire = _opened(a, b)
    cut = cbor2.dumps([1, 2, 3])[:-1]
    assert _code(server.receive(encode(Msg.EVENTS, cbor2.dumps(1) + cut), 0.0)) == 1007
    server, _client, _wire = _opened(a, b)
    assert _code(server.receive(encode(Msg.EVENTS, b"\xff" * 10), 0.0)) == 1007
    server, _client, _wire = _opened(a, b)
    (ingest,) = server.receive(encode(Msg.EVENTS, cbor2.dumps(1) + cbor2.dumps([2])), 0.0)
    assert isinstance(ingest, Ingest) and ingest.events == [b"\x01", b"\x81\x02"]


def test_a_peer_cannot_grow_the_remembered_heads_without_end() -> None:
    a, b = Side({}), Side({})
    server, _client, _wire = _opened(a, b)
    for round_ in range(3):
        tags = b"".join((round_ * 70000 + i).to_bytes(8, "big") for i in range(60000))
        server.receive(encode(Msg.HEADS, 0, 0, tags, [1] * 60000), float(round_))
        assert len(server._peer_tags) <= 65536
