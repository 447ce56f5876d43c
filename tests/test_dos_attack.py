"""Resource-exhaustion attacks on a node by a peer or a remote client: each test names
what the adversary sends and asserts, on counts the code keeps (never on timings), that
what it can make the node hold or do stays within the named bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trio
import trio.testing

from koru.nursery import Limits, NoFeeds, StreamFailed
from koru.nursery import _session as session
from koru.nursery._protocol import PeerProtocol, Request, Send
from koru.nursery._wire import CLOSE_TRY_LATER, Msg, decode, encode


class _Deaf:
    """The server's end of a client that sends and never reads: the first ``sends``
    messages go out, every later send waits for ever (a full socket)."""

    def __init__(self, incoming: trio.MemoryReceiveChannel[bytes], sends: int) -> None:
        self._incoming = incoming
        self._sends = sends
        self.remote = "deaf"

    async def send(self, data: bytes) -> None:
        if self._sends <= 0:
            await trio.sleep_forever()
        self._sends -= 1

    async def receive(self) -> bytes:
        return await self._incoming.receive()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        return None


class _RefusingStreams(NoFeeds):
    """A client endpoint that refuses every stream at once (as the server's does past
    its open subscriptions' bound)."""

    name = "client"

    @asynccontextmanager
    async def stream(self, payload: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        raise StreamFailed(b"refused")
        yield  # pragma: no cover


class _Admit:
    async def hello(self) -> tuple[bytes, bytes, int, bytes]:
        return bytes(32), bytes(32), 0, bytes(16)

    async def admit(self, auth: Any, server_challenge: bytes) -> tuple[Any, list[Any]]:
        return _RefusingStreams(), [b"", bytes(64), bytes(16), []]


def _auth() -> bytes:
    return encode(Msg.AUTH, bytes(32), b"", bytes(64), bytes(32), "client", [], None)


async def test_streamed_requests_of_a_client_that_never_reads_are_bounded(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client sends streamed requests (``b"s"`` + payload) and never reads its socket.
    Each is refused at once, but its task then waits to send the STREAM_END: the reader
    must not go on starting such tasks, each holding its request's bytes, without end
    (calls are bounded by MAX_CALLS_IN_FLIGHT and MAX_CALL_BYTES; streams must be too)."""
    monkeypatch.setattr(session, "MAX_CALL_BYTES", 40_000)
    live: list[int] = []
    most = [0, 0]  # tasks, bytes
    original = session._Runner.serve

    async def counted(self: Any, call: int, payload: bytes) -> None:
        live.append(len(payload))
        most[0] = max(most[0], len(live))
        most[1] = max(most[1], sum(live))
        try:
            await original(self, call, payload)
        finally:
            live.remove(len(payload))

    monkeypatch.setattr(session._Runner, "serve", counted)
    send, incoming = trio.open_memory_channel[bytes](1000)
    proto = PeerProtocol(server=True, role="peer", heads=dict, now=trio.current_time())
    await send.send(_auth())
    for call in range(500):
        await send.send(encode(Msg.REQUEST, call, b"s" + bytes(3000)))
    end = await session.run_session(_Deaf(incoming, sends=2), proto, _Admit())
    assert end.code is not None  # it was cut off (the peer stopped reading)
    assert most[0] <= session.MAX_CALLS_IN_FLIGHT
    assert most[1] <= 40_000


class _Answering(_RefusingStreams):
    """A client endpoint that answers every call at once."""

    async def serve(self, payload: bytes) -> bytes:
        return b"answer"


class _AdmitCalls(_Admit):
    async def admit(self, auth: Any, server_challenge: bytes) -> tuple[Any, list[Any]]:
        return _Answering(), [b"", bytes(64), bytes(16), []]


async def test_requests_waiting_their_turn_on_many_connections_are_bounded_together(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clients each fill their 64 calls in flight with calls whose answers they never
    read, then send one large request: it waits its turn, read and held (up to a
    message, 96 MiB, per connection), outside every bound, until the connection's idle
    timeout. Must hold: the requests waiting on all of a server's connections together
    stay within its ``CallBudget``; a connection whose request would pass it is closed
    at once (1013, try later), not left holding it."""
    held: list[int] = []
    most = [0]
    original = session._Runner.do

    async def counted(self: Any, command: Any) -> None:
        if type(command) is not Request:
            return await original(self, command)
        held.append(len(command.payload))  # in do() until admitted
        try:
            await original(self, command)
        finally:
            held.remove(len(command.payload))

    monkeypatch.setattr(session._Runner, "do", counted)
    budget = session.CallBudget(40_000)
    ends: list[tuple[int | None, float]] = []

    async def client() -> None:
        send, incoming = trio.open_memory_channel[bytes](1000)
        proto = PeerProtocol(server=True, role="peer", heads=dict, now=trio.current_time())
        await send.send(_auth())
        for call in range(session.MAX_CALLS_IN_FLIGHT):
            await send.send(encode(Msg.REQUEST, call, b"c" + bytes(10)))
        await send.send(encode(Msg.REQUEST, 999, b"c" + bytes(30_000)))
        end = await session.run_session(
            _Deaf(incoming, sends=2), proto, _AdmitCalls(), calls=budget
        )
        ends.append((end.code, trio.current_time()))

    async def sample() -> None:  # what the waiting requests hold, whenever they wait
        while True:
            most[0] = max(most[0], sum(held))
            await trio.sleep(0.01)

    began = trio.current_time()
    async with trio.open_nursery() as outer:
        outer.start_soon(sample)
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(client)
        outer.cancel_scope.cancel()
    assert most[0] <= 40_000, most  # was 90,000: three large requests held at once
    refused = [at - began for code, at in ends if code == CLOSE_TRY_LATER]
    assert len(refused) == 2 and max(refused) < 1.0, ends  # at once, not after 60 s
    assert budget.used == budget.waiting == 0  # every connection gave its share back


def _opened_server(feeds: int) -> PeerProtocol:
    """A server's protocol past the handshake with a peer, holding ``feeds`` feeds."""
    heads = {(i.to_bytes(16, "big"), "storage"): (1, i.to_bytes(32, "big")) for i in range(feeds)}
    proto = PeerProtocol(server=True, role="peer", heads=lambda: heads, now=0.0)
    proto.hello(bytes(32), b"n" * 32, 0, bytes(16))
    (_auth,) = proto.receive(_auth_peer(), 0.0)
    proto.accept(b"", bytes(64), bytes(16), [])
    assert proto.open
    return proto


def _auth_peer() -> bytes:
    return encode(Msg.AUTH, bytes(32), b"", bytes(64), bytes(32), "peer", [], None)


def test_one_ranges_message_naming_a_subtree_many_times_costs_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CPU and output amplification: one RANGES of 4,096 copies of a subtree (some 180
    KB, under every limit) whose hash differs made the node hash that subtree's leaves,
    and its 16 children's, 4,096 times over (256 times its whole feed tree per
    message, at 5,000 messages a second), and answer with 65,536 children: a RANGES
    its own peers refuse (4,096 at most). Each subtree named must cost once."""
    from koru.nursery import _feedtree

    hashed = [0]
    original = _feedtree.FeedTree.hash

    def counted(self: Any, depth: int = 0, prefix: int = 0) -> bytes:
        start, end = self._span(depth, prefix)
        hashed[0] += end - start
        return original(self, depth, prefix)

    feeds = 4096
    proto = _opened_server(feeds)
    monkeypatch.setattr(_feedtree.FeedTree, "hash", counted)
    out = proto.receive(encode(Msg.RANGES, [[1, 3, bytes(32)]] * 4096), 1.0)
    assert hashed[0] <= 2 * feeds
    sent = [decode(c.data) for c in out if type(c) is Send]
    assert all(len(fields[0]) <= 4096 for kind, fields in sent if kind is Msg.RANGES)
    assert sum(1 for kind, _ in sent if kind is Msg.RANGES) <= 1


async def test_a_stranger_cannot_hold_more_connections_than_the_servers_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """File descriptors: a stranger opens TCP connections to the serve port and sends
    nothing. Each holds a socket until the upgrade's timeout, and there was no bound
    on how many at once: past the process's file limit the database's own next file
    open failed (EMFILE), a DurabilityError that closed it. The server must hold at
    most ``Limits.max_connections`` (closing the others at once), and keep working."""
    import trio_websocket

    import koru

    held = [0]

    class Counted(trio_websocket.WebSocketConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            held[0] += 1
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(trio_websocket, "WebSocketConnection", Counted)
    limits = Limits(max_connections=8, handshake_timeout=1.0)
    async with (
        koru.open(":memory:", difficulty=4) as db,
        trio.open_nursery() as nursery,
    ):
        db.peer_limits = limits
        port = await nursery.start(db.serve, "127.0.0.1", 0)
        hung_up = [0]

        async def hang_up(stream: trio.SocketStream) -> None:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.receive_some(1)
            hung_up[0] += 1

        async with trio.open_nursery() as attack:
            sockets = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(40)]
            for stream in sockets:
                attack.start_soon(hang_up, stream)
            with trio.fail_after(10):  # every socket accepted, held or hung up
                while held[0] + hung_up[0] < len(sockets):  # noqa: ASYNC110
                    await trio.sleep(0.01)
            assert held[0] <= 8
            for stream in sockets:
                await stream.aclose()
        await db.put("n", "k", 1)  # local writes go on
        await trio.sleep(2 * limits.handshake_timeout)  # the held slots time out
        who = koru.Identity.mine(4)
        await db.register(who.public)
        await db.grant(who.public, actions=["read"])
        with trio.fail_after(10):  # the slots came back: an honest client connects
            async with koru.connect(f"127.0.0.1:{port}", who) as remote:
                assert await remote.get("n", "k") == 1
        nursery.cancel_scope.cancel()


def test_the_connection_bound_leaves_half_the_file_limit_to_the_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever ``max_connections`` says, sockets take at most half the process's
    limit on open files (the database's files need the rest)."""
    import resource

    from koru.nursery._transport import connection_bound

    monkeypatch.setattr(resource, "getrlimit", lambda which: (100, 1 << 20))
    assert connection_bound(1024) == 50
    assert connection_bound(8) == 8
    assert connection_bound(None) == 50


async def test_a_clients_history_past_an_answers_bound_builds_no_whole_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client holding read on one key asks for its whole history (a request of some
    50 bytes): the server reads every version's value (from the log, on the event
    loop, if not cached) and encodes them all, then refuses the answer as over
    MAX_ANSWER, and the client may ask again. As for ``feed_events``, what must hold:
    refused after building about one answer's worth (a key may hold gigabytes of
    versions), with a typed error."""
    import koru
    import koru._serving as serving

    monkeypatch.setattr(serving, "MAX_ANSWER", 10_000)
    built: list[int] = []
    original = serving.pack

    def counted(value: Any) -> bytes:
        data = original(value)
        built.append(len(data))
        return data

    monkeypatch.setattr(serving, "pack", counted)
    async with koru.open(":memory:", difficulty=4) as db, trio.open_nursery() as nursery:
        port = await nursery.start(db.serve, "127.0.0.1", 0)
        for i in range(300):
            await db.put("n", "h", f"{i:04}" + "x" * 200)
        who = koru.Identity.mine(4)
        await db.register(who.public)
        await db.grant(who.public, actions=["read"], namespace="n")
        async with koru.connect(f"127.0.0.1:{port}", who) as remote:
            with trio.fail_after(10), pytest.raises(koru.InvalidArgumentError, match="latest"):
                await remote.history("n", "h")
            assert max(built, default=0) <= 2 * 10_000
            with pytest.raises(koru.InvalidArgumentError):  # bounded by time: the same
                await remote.history("n", "h", since=0)
            # What fits is answered, in pages the error names.
            page = await remote.history("n", "h", latest=20)
            assert [v.value[:4] for v in page] == [f"{i:04}" for i in range(280, 300)]
            assert len(await db.history("n", "h")) == 300  # (a local read: no bound)
        nursery.cancel_scope.cancel()


def test_forgetting_a_senders_waiting_events_looks_at_its_own_only() -> None:
    """Repeated reconnects: each connection's end drops what its sender left waiting
    for a seal (``ProvenIngest.forget``), by a look at every event waiting, everyone's
    (up to 100,000): a peer leaving one event waiting, then reconnecting, cost the node
    a walk of the whole room each time. Only the sender's own must be looked at."""
    from koru._proven import ProvenIngest

    looked = [0]

    class Item:
        def __init__(self, sender: bytes) -> None:
            self._sender = sender
            self.data = b"x" * 10

        @property
        def sender(self) -> bytes:
            looked[0] += 1
            return self._sender

    room = ProvenIngest.__new__(ProvenIngest)
    room._waiting, room._senders, room._sender_seqs = {}, {}, {}
    room._scanned, room._known = {}, {}
    room._count = room._bytes = 0

    def wait(sender: bytes, feed: tuple[bytes, str], seq: int) -> None:
        room._waiting.setdefault(feed, {})[seq] = Item(sender)  # type: ignore[assignment]
        room._sender_seqs.setdefault(sender, {}).setdefault(feed, set()).add(seq)
        held = room._senders.setdefault(sender, [0, 0])
        held[0] += 1
        held[1] += 10
        room._count += 1
        room._bytes += 10

    for f in range(100):
        for seq in range(1, 101):
            wait(b"others", (bytes(16), f"f{f}"), seq)
    wait(b"me", (b"\x01" * 16, "storage"), 5)
    looked[0] = 0
    assert room.forget(b"me") == 1
    assert room._count == 10_000 and b"me" not in room._senders
    assert looked[0] <= 10


@asynccontextmanager
async def _bounded_server(
    monkeypatch: pytest.MonkeyPatch, bound: int, actions: Any = "read"
) -> AsyncIterator[tuple[Any, Any, list[int], int]]:
    """A database served with answers of at most ``bound`` bytes, a client holding
    ``actions`` on everything, the sizes of every answer the server packed, and the
    port (also ``test_answer_budget``'s)."""
    import koru
    import koru._serving as serving

    monkeypatch.setattr(serving, "MAX_ANSWER", bound)
    built: list[int] = []
    original = serving.pack

    def counted(value: Any) -> bytes:
        data = original(value)
        built.append(len(data))
        return data

    monkeypatch.setattr(serving, "pack", counted)
    async with koru.open(":memory:", difficulty=4) as db, trio.open_nursery() as nursery:
        port = await nursery.start(db.serve, "127.0.0.1", 0)
        who = koru.Identity.mine(4)
        await db.register(who.public)
        await db.grant(who.public, actions=actions)
        async with koru.connect(f"127.0.0.1:{port}", who) as remote:
            yield db, remote, built, port
        nursery.cancel_scope.cancel()


async def test_a_clients_query_past_an_answers_bound_builds_no_whole_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client asks for every document of a namespace (a query with no filter, a
    request of some 50 bytes), or a view of them, or the same at a past time: the
    server decodes every row afresh (at a past time, reads each from the log) and
    encodes them all, then refuses the answer as over MAX_ANSWER. What must hold: the
    refusal comes before the rows are built (no answer of about the whole namespace is
    packed), with a typed error naming how to ask for less; what fits is answered, and
    a local query is unbounded."""
    import koru

    async with _bounded_server(monkeypatch, 10_000) as (db, remote, built, _):
        for i in range(300):
            await db.put("n", f"k{i:04}", {"i": i, "pad": "x" * 200})
        past = db._writer.read_time()
        await db.create_view("all", "n", {})
        await db.query("n", {})  # the namespace's documents cached, as a server's are
        for ask in (
            lambda: remote.query("n", {}),
            lambda: remote.query("n", {"where": ["gte", "i", 0]}),
            lambda: remote.query("n", {}, at=past),
            lambda: remote.view("all"),
        ):
            with trio.fail_after(10), pytest.raises(koru.InvalidArgumentError, match="less"):
                await ask()
            assert max(built, default=0) <= 2 * 10_000
        page = await remote.query("n", {"limit": 20})
        assert [r.value["i"] for r in page] == list(range(20))
        assert len(await remote.query("n", {"select": ["i"]})) == 300  # small rows fit
        assert len(await db.query("n", {})) == 300  # (a local read: no bound)
        assert len(await db.view("all")) == 300


async def test_a_clients_vector_search_past_an_answers_bound_decodes_no_whole_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client sends a batch of small queries with a large top_k (a request of a few
    hundred bytes): each hit's metadata is decoded afresh, for every query, and all of
    them encoded (queries x top_k hits, so gigabytes for a namespace of megabytes),
    then refused as over MAX_ANSWER. What must hold: refused before the hits' metadata
    is decoded, with a typed error naming how to ask for less; a local search is
    unbounded."""
    import koru

    async with _bounded_server(monkeypatch, 10_000) as (db, remote, built, _):
        for i in range(100):
            await db.embed("n", f"k{i:03}", [1.0, float(i + 1)], metadata={"pad": "x" * 200})
        decoded = [0]
        import koru._vectors as vectors

        original = vectors._hit

        def counted(hit: Any) -> Any:
            decoded[0] += 1
            return original(hit)

        monkeypatch.setattr(vectors, "_hit", counted)
        for ask in (
            lambda: remote.embed_search_batch("n", [[1.0, 2.0]] * 20, top_k=100),
            lambda: remote.embed_search("n", [1.0, 2.0], top_k=100),
            lambda: remote.similar_at("n", [1.0, 2.0], db._writer.read_time(), top_k=100),
        ):
            decoded[0] = 0
            with trio.fail_after(10), pytest.raises(koru.InvalidArgumentError, match="top_k"):
                await ask()
            assert decoded[0] <= 60
            assert max(built, default=0) <= 2 * 10_000
        assert len(await remote.embed_search("n", [1.0, 2.0], top_k=10)) == 10
        assert len(await db.embed_search_batch("n", [[1.0, 2.0]] * 20, top_k=100)) == 20


async def test_a_clients_batch_whose_answer_is_over_the_bound_is_not_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client's put_batch of many tiny items (some 12 bytes each; an event holds
    64 MiB) is answered by a version per item (about 200 bytes each, 20 times the
    request): the batch was written, then its answer refused as over MAX_ANSWER, so
    the client was told InvalidArgumentError ("ask for less") for a write that was
    done, and the server packed the whole answer first. What must hold: a batch whose
    answer is surely over the bound is refused before anything is written; one that
    fits is written and answered; a local batch is unbounded."""
    import koru

    async with _bounded_server(monkeypatch, 10_000, ["read", "write"]) as (db, remote, built, _):
        with trio.fail_after(10), pytest.raises(koru.InvalidArgumentError, match="fewer"):
            await remote.put_batch([("n", f"k{i}", i) for i in range(100)])
        assert await db.keys("n") == []  # nothing written
        assert max(built, default=0) <= 2 * 10_000
        assert len(await remote.put_batch([("n", f"k{i}", i) for i in range(20)])) == 20
        assert len(await db.put_batch([("m", f"k{i}", i) for i in range(100)])) == 100


async def test_a_clients_diff_of_deep_small_values_builds_no_huge_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A diff's changes each carry the full path from the root: two versions of a few
    kilobytes (a list of many small items under a few long dict keys) give a change per
    item, each repeating the long path, so an answer hundreds of times the values' size
    (two values of 300 KB: gigabytes) was built and packed, then refused. What must
    hold: refused before packing, with a typed error; a local diff is unbounded."""
    import koru

    def deep(n: int) -> Any:
        value: Any = list(range(n, n + 200))
        for level in range(5):
            value = {f"{level}" * 200: value}
        return value

    async with _bounded_server(monkeypatch, 10_000) as (db, remote, built, _):
        await db.put("n", "d", deep(0))
        await db.put("n", "d", deep(1000))
        with trio.fail_after(10), pytest.raises(koru.InvalidArgumentError, match="less"):
            await remote.diff("n", "d")
        assert max(built, default=0) <= 2 * 10_000
        assert len((await db.diff("n", "d")).changes) == 200


def test_a_diff_of_long_lists_of_repeated_items_aligns_a_bounded_number_of_pairs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A diff aligns lists with difflib.SequenceMatcher, quadratic in their lengths and
    worse with repeated items: two versions of a key holding 8,000 zeros, one item
    apart (8 KB each), took 11 s on the event loop, and values of 16 MiB for ever; any
    client with read on such a key (or write on one) could ask. What must hold: one
    diff aligns at most ALIGNED_PAIRS pairs of items in all (past it, a list's common
    head and tail are set aside and the rest paired by position), still a correct
    diff; small lists are aligned as before."""
    import difflib

    import koru._diff as diff

    aligned = [0]

    class Counted(difflib.SequenceMatcher):  # type: ignore[type-arg]
        def set_seqs(self, a: Any, b: Any) -> None:
            aligned[0] += len(a) * len(b)
            super().set_seqs(a, b)

    monkeypatch.setattr(difflib, "SequenceMatcher", Counted)
    old, new = [0] * 4000, [0] * 4000
    new[1234] = 1
    assert diff.diff_values(old, new) == [diff.Change("change", (1234,), 0, 1)]
    nested_old = [[0] * 1000 for _ in range(50)]
    nested_new = [[0] * 999 + [1] for _ in range(50)]
    assert len(diff.diff_values(nested_old, nested_new)) == 50
    grown = diff.diff_values([0] * 4000, [0] * 2000 + [5] + [0] * 2000)
    assert grown == [diff.Change("add", (2000,), None, 5)]
    assert aligned[0] <= diff.ALIGNED_PAIRS
    # Small lists: aligned as ever (an insertion in the middle is one add).
    assert diff.diff_values([1, 2, 3], [1, 9, 2, 3]) == [diff.Change("add", (1,), None, 9)]


class _SlowAnswers(_RefusingStreams):
    """A client endpoint whose answers (32 KiB) take a moment to build, as a read that
    waits does."""

    async def serve(self, payload: bytes) -> bytes:
        await trio.sleep(0.1)
        return bytes(32 * 1024)


class _AdmitSlow(_Admit):
    async def admit(self, auth: Any, server_challenge: bytes) -> tuple[Any, list[Any]]:
        return _SlowAnswers(), [b"", bytes(64), bytes(16), []]


async def test_answers_built_slowly_for_clients_that_never_read_stay_within_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Clients that never read each send 64 ten-byte calls whose answers take a moment
    to build. A call was let in by its request's size alone, so every call was let in
    before any answer counted: 8 connections x 64 answers of 32 KiB held 16 MiB under
    an 8 MiB ``CallBudget``. Must hold: a call holds room for its answer from when it
    is let in (``CallBudget.reserve``), so the budget's bytes stay within the bound."""
    budget = session.CallBudget(8 << 20)
    assert budget.reserve == 32 * 1024  # answers no larger than their reservation
    most = [0]

    async def deaf() -> None:
        send, incoming = trio.open_memory_channel[bytes](100)
        await send.send(_auth())
        for call in range(session.MAX_CALLS_IN_FLIGHT):
            await send.send(encode(Msg.REQUEST, call, b"c" + bytes(10)))
        proto = PeerProtocol(server=True, role="peer", heads=dict, now=trio.current_time())
        await session.run_session(_Deaf(incoming, sends=2), proto, _AdmitSlow(), calls=budget)

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(deaf)
        for _ in range(100):
            most[0] = max(most[0], budget.used)
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert 0 < most[0] <= budget.limit, most  # was 16 MiB: every answer of every call
