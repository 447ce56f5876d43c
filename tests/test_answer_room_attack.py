"""Attacks on the room a served call's answer holds in the server's bound on all calls
(``CallBudget``): answers larger than the room reserved for them (``ANSWER_RESERVE``).
Each test names what the adversary does and asserts what must hold."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from test_dos_attack import _auth

from koru.nursery import ConnectionClosed, NoFeeds
from koru.nursery import _session as session
from koru.nursery._protocol import PeerProtocol, Send
from koru.nursery._wire import Msg, decode, encode


class _Sized(NoFeeds):
    """A client endpoint whose answer to a call is as many bytes as its request names
    (``b"c"`` + the size in ASCII), built after a moment (a read that waits: 0.1 s, or
    as many seconds as a fraction after the size names, ``b"c100.25"``)."""

    name = "client"

    async def serve(self, payload: bytes) -> bytes:
        size, _, delay = payload.partition(b".")
        await trio.sleep(float(b"0." + delay) if delay else 0.1)
        return bytes(int(size))


class _AdmitSized:
    async def hello(self) -> tuple[bytes, bytes, int, bytes]:
        return bytes(32), bytes(32), 0, bytes(16)

    async def admit(self, auth: Any, server_challenge: bytes) -> tuple[Any, list[Any]]:
        return _Sized(), [b"", bytes(64), bytes(16), []]


class _Conn:
    """The server's end of a client: it reads what it is sent (``deaf``: past the
    handshake's two messages it never does, and a send waits for ever); ``queued``
    holds the bytes of the sends under way (every connection's together), ``sent``
    the messages it read."""

    def __init__(
        self,
        incoming: trio.MemoryReceiveChannel[bytes],
        queued: list[int],
        *,
        deaf: bool,
        bye: trio.Event | None = None,
    ) -> None:
        self._incoming = incoming
        self._queued = queued
        self._deaf = deaf
        self._bye = bye
        self.remote = "deaf" if deaf else "honest"
        self.sent: list[Msg] = []
        #: When each answer went out; and which call's, with when.
        self.answered: list[float] = []
        self.calls: dict[int, float] = {}

    async def send(self, data: bytes) -> None:
        self._queued.append(len(data))
        try:
            if self._deaf and len(self.sent) >= 2:
                await trio.sleep_forever()
            await trio.lowlevel.checkpoint()
            kind, fields = decode(data)
            self.sent.append(kind)
            if kind is Msg.RESPONSE:
                self.answered.append(trio.current_time())
                self.calls[fields[0]] = trio.current_time()
        finally:
            self._queued.remove(len(data))

    async def receive(self) -> bytes:
        try:
            return self._incoming.receive_nowait()
        except trio.WouldBlock:
            if self._bye is None:
                return await self._incoming.receive()
            await self._bye.wait()
            raise ConnectionClosed(1000, "bye") from None

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        return None


async def _client(
    budget: session.CallBudget,
    sizes: list[int | str],
    queued: list[int],
    *,
    deaf: bool,
    bye: trio.Event | None = None,
    ends: list[tuple[int | None, list[Msg]]] | None = None,
    answered: list[float] | None = None,
    calls: dict[int, float] | None = None,
) -> None:
    """A connection sending one call per answer size in ``sizes``."""
    send, incoming = trio.open_memory_channel[bytes](len(sizes) + 1)
    await send.send(_auth())
    for call, size in enumerate(sizes):
        await send.send(encode(Msg.REQUEST, call, b"c" + str(size).encode()))
    proto = PeerProtocol(server=True, role="peer", heads=dict, now=trio.current_time())
    conn = _Conn(incoming, queued, deaf=deaf, bye=bye)
    if answered is not None:
        conn.answered = answered
    if calls is not None:
        conn.calls = calls
    end = await session.run_session(conn, proto, _AdmitSized(), calls=budget)
    if ends is not None:
        ends.append((end.code, conn.sent))


async def test_answers_past_their_reservation_for_clients_that_never_read_stay_within_the_budget(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: clients that never read each send 64 calls whose answers are four times
    the room a call reserves for its answer (128 KiB against 32 KiB) under an 8 MiB
    ``CallBudget``. A call was let in holding its reservation, and its answer, once
    built, was queued to be sent whatever its size (the budget counted the difference
    but never waited for it): 8 connections held some 32 MiB of unsent answers. Must
    hold: the answers queued to be sent, and the budget's bytes, stay within the
    bound; answers waiting for room are bounded by it too (``waiting``)."""
    budget = session.CallBudget(8 << 20)
    assert budget.reserve == 32 * 1024
    queued: list[int] = []  # the bytes of every send queued (waiting its turn or under way)
    original = session._Runner.do

    async def counted(self: Any, command: Any) -> None:
        if type(command) is not Send:
            return await original(self, command)
        queued.append(len(command.data))
        try:
            await original(self, command)
        finally:
            queued.remove(len(command.data))

    monkeypatch.setattr(session._Runner, "do", counted)
    most = [0, 0, 0]  # bytes queued to be sent, budget.used, budget.waiting

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(lambda: _client(budget, [4 * budget.reserve] * 64, [], deaf=True))
        for _ in range(200):
            most[0] = max(most[0], sum(queued))
            most[1] = max(most[1], budget.used)
            most[2] = max(most[2], budget.waiting)
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert 0 < most[0] <= budget.limit, most  # was 32 MiB: every call let in
    assert most[1] <= budget.limit and most[2] <= budget.limit, most
    assert budget.used == budget.waiting == 0 and not budget.queue


async def test_calls_whose_answers_outgrow_their_reservations_all_at_once_are_all_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Attack (by accident): five clients that read send 64 calls each, whose answers
    are twice a call's reservation, under a bound their reservations fill (a 40 KB
    bound holds 256 reservations of 156 bytes; 320 calls). Every call let in builds
    its answer at once and needs more room than is left: a call that kept its
    reservation while it waited for the rest would wait for room only the others'
    reservations, all waiting likewise, could free (a deadlock). Must hold: every call
    is answered, and the budget is given back whole."""
    budget = session.CallBudget(40_000)
    bye = trio.Event()
    queued: list[int] = []
    ends: list[tuple[int | None, list[Msg]]] = []

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(
                lambda: _client(
                    budget, [2 * budget.reserve] * 64, queued, deaf=False, bye=bye, ends=ends
                )
            )
        await trio.sleep(30)
        bye.set()
    assert [code for code, _ in ends] == [1000] * 5, ends
    assert [sent.count(Msg.RESPONSE) for _, sent in ends] == [64] * 5
    assert budget.used == budget.waiting == 0 and not budget.queue


async def test_a_client_that_never_reads_cannot_hold_the_line_with_an_answer_waiting_for_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Attack: a client that never reads asks for a 10 KB answer (it waits to be sent,
    until its idle timeout) and then a 35 KB one, which waits for room under a 40 KB
    bound; the room it waits for is its own first answer's, never let go. An honest
    call that came after it, with a 2 KB answer, fits and must be answered at once,
    not wait behind the large answer for the idle timeout (60 s)."""
    budget = session.CallBudget(40_000)
    bye = trio.Event()
    queued: list[int] = []
    ends: list[tuple[int | None, list[Msg]]] = []
    answered: list[float] = []

    async def honest() -> None:
        await trio.sleep(2)
        await _client(budget, [2_000], queued, deaf=False, bye=bye, ends=ends, answered=answered)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _client(budget, [10_000, 35_000], queued, deaf=True))
        nursery.start_soon(honest)
        await trio.sleep(4)
        bye.set()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert answered and answered[0] - 2 < 1.0, answered  # was after the deaf one's 60 s
    assert ends and ends[0][1].count(Msg.RESPONSE) == 1, ends
    assert budget.used == budget.waiting == 0 and not budget.queue


async def test_a_clients_own_stream_of_small_calls_cannot_starve_its_large_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Attack (by accident): a client that reads asks for a 30 KB answer under a 35 KB
    bound, then sends 3,000 calls with one-byte answers built in 0.1 to 0.9 s, 63 of
    them in flight at any moment: their reservations (136 bytes each) keep some 9 KB
    held, so the large answer never fits while they flow, and it is not in the line
    (its connection has calls holding room). Must hold: while one of its answers waits
    for room, the connection reads no new call (its calls in flight drain, then its
    answer takes its place in the line); the large answer goes out once the calls in
    flight when it was built are answered (0.9 s at most), not after the 3,000 small
    ones."""
    budget = session.CallBudget(35_000)
    bye = trio.Event()
    ends: list[tuple[int | None, list[Msg]]] = []
    calls: dict[int, float] = {}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: _client(
                budget,
                [30_000] + [f"1.{1 + i % 9}" for i in range(3000)],
                [],
                deaf=False,
                bye=bye,
                ends=ends,
                calls=calls,
            )
        )
        await trio.sleep(60)
        bye.set()
    assert len(calls) == 3001, len(calls)
    assert calls[0] <= 1.0, calls[0]  # was 20.9 s: with the last small calls
    assert budget.used == budget.waiting == 0 and not budget.queue
