"""Attacks (h-review2) on the server's bound on all calls (CallBudget), the remote
client's wait after a 1013 (try later), and the named-key listing: each test names
what the adversary does and asserts what must hold."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trio
import trio.testing
from _busy_server import TryLater, served
from test_dos_attack import _auth
from test_named_keys_attack import _slow

import koru
from koru.nursery import ConnectionClosed, NoFeeds, StreamFailed
from koru.nursery import _session as session
from koru.nursery._protocol import PeerProtocol
from koru.nursery._wire import Msg, decode, encode


async def _cut_while_busy(busy: TryLater, db: koru.Database, sub: Any) -> None:
    """A live remote subscription has read its first change; then the server refuses
    every call (1013) and the subscription's connection is lost."""
    await db.put("n", "k", 0)
    with trio.fail_after(10):
        assert (await sub.__anext__()).value == 0
    busy.refusing = True
    sub._link.drop(sub._runner)  # the connection is lost


async def test_a_subscription_cut_off_by_a_busy_server_waits_before_resuming(
    monkeypatch: Any,
) -> None:
    """Attack (a busy server): a live remote subscription's connection is lost, and the
    server closes every new connection's request with 1013 (try later) for a second
    and a half. Resuming must wait as a call does after a 1013 (its reconnection
    delays), not reconnect and resend at once in a loop; the change written once the
    server has room must still reach the subscriber, none twice."""
    busy = TryLater(monkeypatch)
    async with (
        served() as (db, nursery, address, who),
        koru.connect(address, who) as remote,
        remote.subscribe("n") as sub,
    ):
        await _cut_while_busy(busy, db, sub)

        async def room() -> None:
            await trio.sleep(1.5)
            busy.refusing = False
            await db.put("n", "k", 1)

        nursery.start_soon(room)
        with trio.fail_after(20):
            second = await sub.__anext__()
        assert second.value == 1
        assert 1 <= busy.refused <= 4, busy.refused  # a few attempts, not a burst


# -- the bound on all of a server's calls (CallBudget), by model -------------------------


class _Fuzzed(NoFeeds):
    """A client endpoint whose answers take a random while and have random sizes (some
    past the budget's reserve, a third of the bound, or twice the bound), whose streams
    open after a while or are refused, and send a few items."""

    name = "client"

    def __init__(self, rng: random.Random, reserve: int) -> None:
        self._rng = rng
        self._reserve = reserve

    async def serve(self, payload: bytes) -> bytes:
        rng = self._rng
        await trio.sleep(rng.choice([0, 0, 0.01, 0.3, 2.0, 7.0]))
        reserve = self._reserve  # (a 256th of the bound)
        sizes = [0, 1, reserve - 1, reserve, 3 * reserve, 85 * reserve, 512 * reserve]
        return bytes(rng.choice(sizes))

    @asynccontextmanager
    async def stream(self, payload: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        rng = self._rng
        await trio.sleep(rng.choice([0, 0.01, 1.0]))
        if rng.random() < 0.3:
            raise StreamFailed(b"refused")
        items = rng.randrange(4)
        delay = rng.choice([0, 0.05, 0.5])

        yield _Items(items, delay)


class _Items:
    """A stream's few items, a while apart (no async generator left to the GC)."""

    def __init__(self, items: int, delay: float) -> None:
        self._items = items
        self._delay = delay

    def __aiter__(self) -> _Items:
        return self

    async def __anext__(self) -> bytes:
        if not self._items:
            raise StopAsyncIteration
        self._items -= 1
        await trio.sleep(self._delay)
        return b"item"


class _FuzzAdmit:
    def __init__(self, endpoint: _Fuzzed) -> None:
        self._endpoint = endpoint

    async def hello(self) -> tuple[bytes, bytes, int, bytes]:
        return bytes(32), bytes(32), 0, bytes(16)

    async def admit(self, auth: Any, server_challenge: bytes) -> tuple[Any, list[Any]]:
        return self._endpoint, [b"", bytes(64), bytes(16), []]


class _FuzzConn:
    """The server's end of a fuzzed client: ``deaf`` ones stop reading after the
    handshake; others read after a random while, answer pings, and count the calls
    answered (a RESPONSE or a STREAM_END)."""

    def __init__(
        self,
        rng: random.Random,
        incoming: trio.MemoryReceiveChannel[bytes],
        outgoing: trio.MemorySendChannel[bytes],
        deaf: bool,
    ) -> None:
        self._rng = rng
        self._incoming = incoming
        self._outgoing = outgoing
        self._deaf = deaf
        self.remote = "fuzz"
        self.sends = 0
        self.answered: set[int] = set()
        self.answer = trio.Event()

    async def send(self, data: bytes) -> None:
        self.sends += 1
        if self._deaf and self.sends > 2:
            await trio.sleep_forever()
        await trio.sleep(self._rng.choice([0, 0, 0.001, 0.2]))
        kind, fields = decode(data)
        if kind is Msg.PING:
            with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                self._outgoing.send_nowait(encode(Msg.PONG, *fields))
        elif kind in (Msg.RESPONSE, Msg.STREAM_END):
            self.answered.add(fields[0])
            self.answer.set()
            self.answer = trio.Event()

    async def receive(self) -> bytes:
        try:
            return await self._incoming.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(1000, "bye") from None

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        return None


@pytest.mark.parametrize("seed", range(12))
async def test_the_call_budget_gives_back_every_byte_and_serves_every_patient_call(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    """Attack, by model: twelve clients share a server whose bound on all calls is
    small (a few calls' worth); each sends plain and streamed calls of random sizes
    (some past the bound alone) at random moments; some never read (their answers wait
    for their idle timeout), some hang up mid-call, some cancel their streams; answers
    take random whiles and have random sizes (some past the reserve, some a third of
    the bound, some past it alone); the whole server is cancelled at a random moment
    in one run of three. Must hold at every moment:
    the budget's bytes used and waiting are never negative, its queue holds a client
    once at most; at the end nothing is held, waiting or queued; and every call of a
    patient client (reads, waits for all its answers) not told to try later (1013) is
    answered before the run ends."""
    rng = random.Random(seed)
    limit = 64 * 1024
    budget = session.CallBudget(limit)
    endpoint = _Fuzzed(rng, budget.reserve)
    broken: list[str] = []
    negative = [False]
    original_give_back = session.CallBudget.give_back

    def give_back(self: session.CallBudget, size: int) -> None:
        original_give_back(self, size)
        if self.used < 0:
            negative[0] = True

    patient: list[tuple[_FuzzConn, set[int], list[Any]]] = []

    async def client(n: int) -> None:
        kind = rng.choice(["patient", "patient", "deaf", "hangs up"])
        send, incoming = trio.open_memory_channel[bytes](1000)
        conn = _FuzzConn(rng, incoming, send, kind == "deaf")
        sent: set[int] = set()
        end: list[Any] = []
        if kind == "patient":
            patient.append((conn, sent, end))
        proto = PeerProtocol(server=True, role="peer", heads=dict, now=trio.current_time())

        async def feed() -> None:
            await trio.sleep(rng.random() * 3)
            send.send_nowait(_auth())
            for call in range(1, rng.randrange(2, 90)):
                size = rng.choice([1, 10, 1000, limit // 3, limit - 10, 2 * limit])
                streamed = rng.random() < 0.25
                payload = (b"s" if streamed else b"c") + bytes(size)
                send.send_nowait(encode(Msg.REQUEST, call, payload))
                if streamed and rng.random() < 0.3:
                    send.send_nowait(encode(Msg.CANCEL, call))  # (not answered then)
                else:
                    sent.add(call)
                if rng.random() < 0.3:
                    await trio.sleep(rng.choice([0, 0.01, 0.5]))
            if kind == "hangs up":
                await trio.sleep(rng.choice([0, 0.1, 1.0, 5.0]))
                send.close()
            elif kind == "patient":
                while not sent <= conn.answered:
                    await conn.answer.wait()
                send.close()

        async with trio.open_nursery() as inner:
            inner.start_soon(feed)
            ended = await session.run_session(conn, proto, _FuzzAdmit(endpoint), calls=budget)
            end.append(ended.code)
            end.append(ended.reason)
            end.append(trio.current_time())
            inner.cancel_scope.cancel()

    async def watch() -> None:
        while True:
            if budget.used < 0 or budget.waiting < 0:
                broken.append(f"used {budget.used}, waiting {budget.waiting}")
            if len(set(map(id, budget.queue))) != len(budget.queue):
                broken.append("a turn twice in the queue")
            await trio.sleep(0.005)

    mp = pytest.MonkeyPatch()
    mp.setattr(session.CallBudget, "give_back", give_back)
    try:
        cut = seed % 3 == 0
        with trio.move_on_after(rng.uniform(1, 20) if cut else 600):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                async with trio.open_nursery() as clients:
                    for n in range(12):
                        clients.start_soon(client, n)
                nursery.cancel_scope.cancel()
    finally:
        mp.undo()
    assert not broken, broken[:3]
    assert not negative[0]
    assert budget.used == 0 and budget.waiting == 0 and not budget.queue, (
        budget.used,
        budget.waiting,
        list(budget.queue),
    )
    if not cut:
        for conn, sent, end in patient:
            if end and end[0] == 1013:
                continue
            assert sent <= conn.answered, (end, sorted(sent - conn.answered)[:5])


class _Slow(NoFeeds):
    """Answers after five seconds (a read that waits)."""

    name = "client"

    async def serve(self, payload: bytes) -> bytes:
        await trio.sleep(5)
        return b"answer"


class _SlowAdmit(_FuzzAdmit):
    def __init__(self) -> None:
        super().__init__(_Slow())  # type: ignore[arg-type]


async def test_a_client_waiting_for_room_others_hold_is_not_closed_as_silent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Attack: a client that never reads sends a 10 KB call (its answer, built after 5 s,
    waits to be sent until its send times out, 60 s later) to a server bounded at 40 KB.
    An honest client answers every ping and sends a 35 KB call at 2 s: it waits for the
    room the deaf one holds, its reader stopped (backpressure). Must hold: the honest
    client is served once the deaf one is closed, not closed first for an idle timeout
    ("the peer went silent") it never caused: its pongs were sent, the server did not
    read them."""
    budget = session.CallBudget(40_000)
    rng = random.Random(1)
    ends: dict[str, tuple[int | None, str]] = {}
    conns: dict[str, _FuzzConn] = {}

    async def client(name: str, start: float, size: int, deaf: bool) -> None:
        await trio.sleep(start)
        send, incoming = trio.open_memory_channel[bytes](100)
        send.send_nowait(_auth())
        send.send_nowait(encode(Msg.REQUEST, 1, b"c" + bytes(size)))
        conn = conns[name] = _FuzzConn(rng, incoming, send, deaf)
        proto = PeerProtocol(server=True, role="peer", heads=dict, now=trio.current_time())

        async def bye() -> None:
            while 1 not in conn.answered:
                await conn.answer.wait()
            send.close()

        async with trio.open_nursery() as inner:
            if not deaf:
                inner.start_soon(bye)
            end = await session.run_session(conn, proto, _SlowAdmit(), calls=budget)
            ends[name] = (end.code, end.reason)
            inner.cancel_scope.cancel()

    with trio.move_on_after(300):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client, "deaf", 0, 10_000, True)
            nursery.start_soon(client, "honest", 2, 35_000, False)
    assert ends["deaf"][0] == 1001, ends  # its answer could not be sent
    assert ends["honest"] == (1000, "bye"), ends  # was 1001, idle timeout, at 62 s
    assert 1 in conns["honest"].answered
    assert budget.used == budget.waiting == 0 and not budget.queue


async def test_a_write_whose_connection_is_closed_with_1013_mid_call_is_done_once(
    monkeypatch: Any,
) -> None:
    """Attack (a busy server): the server takes a put (its task starts) and closes the
    connection with 1013 (try later) at once, before the answer is built, twice in a
    row. The client sends the put again, with the same key, after its delays. Must
    hold: the write is done once, and the version returned is the one stored."""
    busy = TryLater(monkeypatch)
    async with served() as (db, _, address, who), koru.connect(address, who) as remote:
        await remote.put("n", "k", 0)  # connected
        busy.closing = 2
        with trio.fail_after(20):
            version = await remote.put("n", "k", 1)
        assert busy.closing == 0
        assert (await db.get_versioned("n", "k")).version == version
        assert [v.value for v in await db.history("n", "k")] == [0, 1]


# -- AuthorizedSpace.keys' named-key path (what held) -------------------------------------


class _HandClock:
    """A wall clock set by hand (the same reading until moved)."""

    def __init__(self) -> None:
        self.ns = 2_000_000_000 * 10**9  # (2033: ahead of any real clock a test saw)

    def now_ns(self) -> int:
        return self.ns


async def test_named_keys_at_the_bound_through_a_session_at_the_instant_of_expiry(
    monkeypatch: Any,
) -> None:
    """Attack: an identity's grants name exactly 1,024 keys of a namespace (the named-key
    path's bound), then 1,025 (the walk); some are written, some deleted, some with a
    time to live; the listing is asked through the identity and through a session of
    it, with the clock one nanosecond before, exactly at, and one after the keys'
    expiry (an expired key is gone at its expiry, as a read sees it). Must hold: both
    paths answer what db.check keeps of db.keys at each instant, and the named-key path
    is the one taken at 1,024 (not at 1,025)."""
    clock = _HandClock()
    bob = koru.Identity.mine(4, rng=random.Random(2))
    async with koru.open(":memory:", difficulty=4, clock=clock, sync="os", processes=False) as db:
        await db.register(bob.public)
        names = [f"k{i:04}" for i in range(1025)]
        for i, key in enumerate(names[:1024]):
            if i % 3 == 0:
                await db.put("docs", key, i, ttl=5 if i % 2 else None)
            elif i % 3 == 1:
                await db.put("docs", key, i)
                if i % 5 == 0:
                    await db.delete("docs", key)
            clock.ns += 1
        await db.put("docs", "not-named", 0)
        await db.put("docs", names[1024], 0, ttl=5)
        for key in names[:1024]:
            await db.grant(bob.public, namespace="docs", key=key, actions=["read"])
        session = await db.open_session(bob.respond(await db.challenge()), ttl=3600)
        soon = await db.expiring(within=3600)
        expiries = sorted({e.expires for e in soon})
        assert len(expiries) > 10  # one per put with a ttl (a nanosecond apart)
        cls = type(db._reads)
        present = cls.present
        asked = [0]

        def counted(self: Any, namespace: str, keys: Any) -> list[str]:
            asked[0] += 1
            return present(self, namespace, keys)

        monkeypatch.setattr(cls, "present", counted)

        async def compare(granted: int) -> None:
            sizes = []
            for at in (expiries[0] - 1, expiries[0], expiries[7], expiries[-1], expiries[-1] + 1):
                clock.ns = at
                expected = [
                    k
                    for k in await db.keys("docs")
                    if await db.check(bob.public, "read", "docs", k)
                ]
                assert len({k for k in expected if k in names[:granted]}) == len(expected)
                sizes.append(len(expected))
                for who in (bob, session):
                    h = db.as_identity(who)
                    before = asked[0]
                    named = list(await h.keys("docs"))
                    assert asked[0] == before + (1 if granted <= 1024 else 0)
                    assert named == await _slow(h, "docs") == expected, at - expiries[0]
            if granted == 1025:  # (the clock set back: the database's never goes back)
                assert sizes == [sizes[-1]] * 5, sizes
                return
            # The first key with a ttl is listed a nanosecond before its expiry, not at it.
            assert sizes[0] == sizes[1] + 1 and sizes[1] > sizes[2] > sizes[3] >= sizes[4], sizes

        await compare(1024)
        await db.grant(bob.public, namespace="docs", key=names[1024], actions=["read"])
        await compare(1025)


async def test_a_subscription_a_server_keeps_refusing_gives_up_as_a_call_does(
    monkeypatch: Any,
) -> None:
    """Attack (a server busy for good): every new connection's request is closed with
    1013 (try later). A live subscription whose connection is lost resumed at once, for
    ever. Must hold: it waits between attempts and raises ConnectionLostError after as
    many attempts in a row as a call makes."""
    busy = TryLater(monkeypatch)
    async with (
        served() as (db, _, address, who),
        koru.connect(address, who) as remote,
        remote.subscribe("n") as sub,
    ):
        await _cut_while_busy(busy, db, sub)
        with trio.fail_after(40), pytest.raises(koru.ConnectionLostError):
            await sub.__anext__()
        assert 3 <= busy.refused <= 6, busy.refused


async def test_a_close_code_read_just_after_a_failed_send_still_makes_the_client_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Attack (h-review2's residue): the server closes a connection with 1013 (try
    later) while the client is sending on it; the send fails before the client's reader
    has read the close and its code. The retry then went out at once (no code seen).
    Must hold: the client waits a moment for the close's code, and, it being 1013,
    waits its reconnection delay before the next attempt."""
    import koru._remote as remote_module
    from koru.nursery._wire import CLOSE_TRY_LATER

    class _Closing:
        """A connection's runner whose close is read 50 ms after the failed send."""

        def __init__(self) -> None:
            self.ending: list[tuple[int | None, str, bool]] = []
            self.closed = trio.Event()

        async def read_close(self) -> None:
            await trio.sleep(0.05)
            self.ending.append((CLOSE_TRY_LATER, "too many calls waiting", False))
            self.closed.set()

    runner = _Closing()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.read_close)
        began = trio.current_time()
        await remote_module._Link.later(runner, 0)
    assert trio.current_time() - began >= remote_module.RETRY_DELAYS[1], "no wait after 1013"
    # A connection lost for another reason: no wait beyond the moment for its code.
    other = _Closing()
    other.ending.append((1001, "going away", False))
    began = trio.current_time()
    await remote_module._Link.later(other, 0)
    assert trio.current_time() == began
