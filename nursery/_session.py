"""The trio driver of one connection: runs a :class:`PeerProtocol` over a
:class:`Connection`, and carries out its commands against the local node.

The node side is a port (:class:`Endpoint`, :class:`Handshake`), so this module knows
nothing of databases: :mod:`koru._peering` implements both. Three tasks per
connection, in one nursery: the reader (messages in, commands out, ingest), the
pusher (queued events out, at most the protocol's window unacknowledged) and the
timer (heartbeats, timeouts, periodic summaries). Any of them failing closes the
connection with a code; the caller's nursery never sees a peer's misbehaviour as an
exception, only as a finished session (:class:`SessionEnd`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any, NamedTuple, Protocol

import trio

from koru.events import KoruError

from ._feedtree import Feed
from ._protocol import (
    Authenticate,
    BloomAsked,
    CancelCall,
    Challenged,
    Close,
    Command,
    Ingest,
    NeedRecent,
    PeerProtocol,
    PeersHeard,
    Reply,
    Request,
    Send,
    Welcomed,
)
from ._transport import Connection, ConnectionClosed
from ._wire import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_TRY_LATER,
    Msg,
    WireError,
)

__all__ = [
    "CallBudget",
    "Endpoint",
    "Handshake",
    "NoFeeds",
    "SessionEnd",
    "StreamFailed",
    "run_session",
]

log = logging.getLogger("koru.peers")


#: A client's calls answered at once on one connection (an answer not yet sent counts),
#: and the bytes of their requests and answers at most (one call of any size is always
#: taken).
MAX_CALLS_IN_FLIGHT = 64
MAX_CALL_BYTES = 128 * 1024 * 1024
#: Room a plain call holds in the server's :class:`CallBudget` for its answer, from
#: when it is let in until its answer is built (then the answer's own bytes count).
#: Why: a call was let in by its request's size alone, so while answers took time to
#: build (a read that waits), ten-byte requests filled every connection's 64 calls
#: before any answer counted: four clients that never read held 25.6 MB of answers
#: under a 400 KB bound. An answer larger than this takes the difference before it is
#: queued to be sent, waiting for it as a request waits for room
#: (``_Runner._room_for_answer``). The cost: calls whose answers take long to build
#: hold their reservations meanwhile, so 2,048 of them fill the default 512 MiB
#: (a call whose built answer waits for room holds none).
ANSWER_RESERVE = 256 * 1024


class CallBudget:
    """Bytes of the calls a server's connections answer together (requests, and
    answers not yet sent), bounded: each connection's own bound
    (``MAX_CALL_BYTES``) times a thousand connections was 128 GiB, so clients that
    sent large reads and stopped reading their answers could fill the server's memory
    before their sends timed out (``Limits.idle_timeout``). Past the bound a
    connection's next call waits, unread (backpressure on that client), until some
    call's bytes are given back; a call is taken whatever its size when nothing is
    held. The trade-off: while hostile clients hold it full, an honest client's call
    waits, for at most the idle timeout after which theirs are closed. Requests read
    and built answers waiting their turn are bounded by the same figure
    (``waiting``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.freed = trio.Event()
        #: Bytes of requests read, and of built answers, waiting their turn (bounded
        #: by ``limit`` too).
        self.waiting = 0
        #: Room a plain call holds for its answer until it is built (see
        #: ``ANSWER_RESERVE``; a 256th of the bound at most, for small bounds).
        self.reserve = min(ANSWER_RESERVE, limit // 256)
        #: The requests waiting for room, first come first (see :meth:`fits`).
        self.queue: deque[object] = deque()

    def fits(self, size: int, turn: object | None) -> bool:
        """True if a request of ``size`` bytes may be taken now: none waits before it
        (``turn``: its place in the queue, None if it has none), and there is room or
        nothing is held. Why the queue: a client that read its answers but kept two
        15 KB calls in flight under a 40 KB bound took the room each of its calls gave
        back, and a 30 KB call of another waited for as long as it kept on."""
        queue = self.queue
        if queue and queue[0] is not turn:
            return False
        return not self.used or self.used + size <= self.limit

    def join(self) -> object:
        """A place at the end of the queue."""
        turn = object()
        self.queue.append(turn)
        return turn

    def leave(self, turn: object) -> None:
        """Give up a place in the queue (taken, cancelled, or waiting on its own
        connection's bounds): the next in line may go."""
        self.queue.remove(turn)
        self.freed.set()
        self.freed = trio.Event()

    def give_back(self, size: int) -> None:
        self.used -= size
        self.freed.set()
        self.freed = trio.Event()


class Endpoint(Protocol):
    """What a connection needs from the local node once authenticated."""

    #: The other side's node id (peers) or public key (clients), for reports.
    name: str

    def heads(self) -> Mapping[Feed, tuple[int, bytes]]: ...

    async def fetch(self, feed: Feed, after: int, upto: int, max_bytes: int) -> list[bytes]:
        """Events of ``feed`` after seq ``after`` up to ``upto`` (fewer once
        ``max_bytes`` fill, at least one), durable."""
        ...

    async def before_push(self) -> None:
        """Called before events leave (a node seals its own feeds here)."""
        ...

    async def ingest(self, events: list[bytes]) -> None: ...

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` after every local change; returns the unsubscribe."""
        ...

    async def serve(self, payload: bytes) -> bytes:
        """Answer one request of a client."""
        ...

    def stream(self, payload: bytes) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Answer a streamed request of a client (subscriptions)."""
        ...

    async def recent(self, window: int) -> list[tuple[Feed, int, bytes]]:
        """The newest ``window`` events of every feed: ``(feed, seq, event id)``."""
        ...

    def heard(self, addresses: list[str]) -> None:
        """Peer addresses gossiped by the other side."""
        ...

    def known_peers(self) -> list[str]: ...


class NoFeeds:
    """An endpoint with no feeds and no calls (a client's side, and the base of a
    server's side of a client connection): the parts of :class:`Endpoint` a client
    connection never uses."""

    name = "no feeds"

    def heads(self) -> Mapping[Feed, tuple[int, bytes]]:
        return {}

    async def fetch(self, feed: Feed, after: int, upto: int, max_bytes: int) -> list[bytes]:
        return []

    async def before_push(self) -> None:
        return None

    async def ingest(self, events: list[bytes]) -> None:
        raise KoruError("a client connection carries calls, not events")

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        return lambda: None

    async def serve(self, payload: bytes) -> bytes:
        raise KoruError("this side serves no calls")

    def stream(self, payload: bytes) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        raise KoruError("this side serves no calls")

    async def recent(self, window: int) -> list[tuple[Feed, int, bytes]]:
        return []

    def heard(self, addresses: list[str]) -> None:
        return None

    def known_peers(self) -> list[str]:
        return []


class Handshake(Protocol):
    """The node's half of the handshake (signatures, sessions, capabilities)."""

    async def hello(self) -> tuple[bytes, bytes, int, bytes]:
        """Server: (server key, challenge nonce, expires, node id)."""
        ...

    async def admit(
        self, auth: Authenticate, server_challenge: bytes
    ) -> tuple[Endpoint, list[Any]]:
        """Server: check AUTH (raise a KoruError to refuse); the endpoint for the
        connection and the WELCOME fields (nonce, signature, node id, credentials)."""
        ...

    async def answer(self, challenge: Challenged) -> list[Any]:
        """Client: the AUTH fields (public key, nonce, signature, own challenge,
        credentials, listen address)."""
        ...

    async def welcomed(self, welcome: Welcomed) -> Endpoint:
        """Client: check WELCOME (raise a KoruError to refuse); the endpoint."""
        ...


class ReplySink(Protocol):
    """Where a client's session puts the replies to a call (a memory channel's sending
    end, or one bounded in bytes too): ``send_nowait`` raises trio.WouldBlock when it
    is full."""

    def send_nowait(self, item: tuple[Msg, bytes | None], /) -> None: ...

    def close(self) -> None: ...


class SessionEnd(NamedTuple):
    """How a connection ended: the close code and reason (either side's), and the
    protocol with its counters."""

    code: int | None
    reason: str
    protocol: PeerProtocol
    endpoint: Endpoint | None
    #: True if this side closed (a timeout, a refusal of its own), not the other.
    ours: bool = False


class _Runner:
    def __init__(
        self,
        conn: Connection,
        proto: PeerProtocol,
        handshake: Handshake,
        on_open: Callable[[_Runner], None] | None,
        calls: CallBudget | None = None,
    ) -> None:
        #: The server's bound on all its connections' calls together (None: none).
        self.budget = calls
        self.conn = conn
        self.proto = proto
        self.handshake = handshake
        self.endpoint: Endpoint | None = None
        self.on_open = on_open
        self.wake = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.streams: dict[int, trio.CancelScope] = {}
        self.send_lock = trio.Lock()
        #: Client side: the answers awaited, by call id; streams cut off for falling
        #: behind, with the first item each missed.
        self.replies: dict[int, ReplySink] = {}
        self.lagged: dict[int, bytes | None] = {}
        self.closed = trio.Event()
        #: Calls of a client answered at once, and their bytes (the rest wait, unread).
        self.calls = trio.Semaphore(MAX_CALLS_IN_FLIGHT, max_value=MAX_CALLS_IN_FLIGHT)
        self.call_bytes = 0
        self.call_bytes_freed = trio.Event()
        #: Calls whose built answers wait for room in the server's budget (no new call
        #: is read meanwhile), and set when none is left.
        self.answers_waiting = 0
        self.answers_placed = trio.Event()
        #: The timer's sleep, cut short when the connection opens (its deadlines change).
        self.timer_sleep: trio.CancelScope | None = None
        #: How the connection ended, (code, reason, ours), first first.
        self.ending: list[tuple[int | None, str, bool]] = []

    def now(self) -> float:
        return trio.current_time()

    def poke(self) -> None:
        self.wake.set()

    async def carry_out(self, commands: list[Command]) -> None:
        for command in commands:
            await self.do(command)

    async def do(self, command: Command) -> None:
        proto = self.proto
        if type(command) is Send:
            # A peer that stops reading blocks a send for ever, and every task behind
            # the lock (the timer too, so no timeout would ever close it): a send that
            # cannot finish within the idle timeout ends the connection.
            with trio.move_on_after(proto.limits.idle_timeout) as waited:
                async with self.send_lock:
                    await self.conn.send(command.data)
            if waited.cancelled_caught:
                raise self.close(CLOSE_GOING_AWAY, "the peer stopped reading")
        elif type(command) is Close:
            raise self.close(command.code, command.reason)
        elif type(command) is Ingest:
            assert self.endpoint is not None
            await self.endpoint.ingest(command.events)
            await self.carry_out(proto.ingested(self.now()))
            self.poke()  # what came in may be news for this side's pushes too
        elif type(command) is Authenticate:
            try:
                endpoint, welcome = await self.handshake.admit(command, proto.server_challenge)
            except KoruError as exc:
                await self.carry_out(proto.refuse(f"refused: {exc}"))
                return
            self.endpoint = endpoint
            self.allow()
            await self.carry_out(proto.accept(*welcome))
            await self.opened()
        elif type(command) is Challenged:
            fields = await self.handshake.answer(command)
            await self.carry_out(proto.authenticate(*fields))
        elif type(command) is Welcomed:
            try:
                self.endpoint = await self.handshake.welcomed(command)
            except KoruError as exc:
                await self.carry_out(proto.refuse(f"refused: {exc}"))
                return
            self.allow()
            await self.carry_out(proto.accept())
            await self.opened()
        elif type(command) is Request:
            assert self.nursery is not None
            # The reader waits (backpressure on the client) while too many calls, or
            # too many of their bytes, are being answered. A streamed request counts
            # too until its stream opens (open streams are bounded by the endpoint): one
            # refused, whose end waits to be sent to a client that stopped reading,
            # holds its task and its bytes as a call does.
            await self._admit(command.payload)
            self.nursery.start_soon(self.serve, command.call, command.payload)
        elif type(command) is CancelCall:
            scope = self.streams.pop(command.call, None)
            if scope is not None:
                scope.cancel()
        elif type(command) is Reply:
            waiting = self.replies.get(command.call)
            if waiting is not None:
                try:
                    waiting.send_nowait((command.kind, command.payload))
                except trio.WouldBlock:
                    # A stream's reader fell behind its buffer: cut it off (never
                    # drop an item silently), keeping the first item it missed.
                    self.lagged[command.call] = command.payload
                    del self.replies[command.call]
                    waiting.close()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    del self.replies[command.call]
        elif type(command) is NeedRecent:
            assert self.endpoint is not None
            recent = await self.endpoint.recent(command.window)
            await self.carry_out(proto.bloom_offer(recent))
        elif type(command) is BloomAsked:
            assert self.endpoint is not None
            recent = await self.endpoint.recent(command.window)
            await self.carry_out(proto.bloom_answer(command, recent))
            self.poke()
        elif type(command) is PeersHeard and self.endpoint is not None:
            self.endpoint.heard(command.addresses)

    def close(self, code: int, reason: str) -> ConnectionClosed:
        """End the connection with ``code`` (this side's decision), from whichever task
        decided it, and the error that task raises: a call's or a stream's task (not
        one of the session's own) used to raise a private exception out of the
        session, which then failed instead of closing (a client that stopped reading
        its subscription; and in a client, a caller got it from its call)."""
        self.ending.append((code, reason, True))
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()
        return ConnectionClosed(code, reason)

    def allow(self) -> None:
        """Admitted: the transport takes messages up to the open connection's limit
        (before it could not read one past the handshake's)."""
        allow = getattr(self.conn, "allow", None)
        if allow is not None:
            allow(self.proto.limits.max_message)

    async def opened(self) -> None:
        assert self.endpoint is not None
        if self.timer_sleep is not None:  # heartbeats and idle timeouts from now on
            self.timer_sleep.cancel()
        if self.proto.role == "peer":
            self.unwatch = self.endpoint.watch(self.poke)
            self.poke()
            await self.carry_out(self.proto.gossip(self.endpoint.known_peers()))
        if self.on_open is not None:
            self.on_open(self)

    async def serve(self, call: int, payload: bytes) -> None:
        """Answer one request of a client (a task of its own)."""
        # The connection may go while answering: then the reader ends the session.
        with suppress(ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            await self._serve(call, payload)

    async def _serve(self, call: int, payload: bytes) -> None:
        assert self.endpoint is not None
        if payload[:1] == b"s":  # a streamed request
            held = [len(payload)]  # its share of the calls' bounds, until it opens
            try:
                with trio.CancelScope() as scope:
                    self.streams[call] = scope
                    end: bytes | None = None
                    try:
                        async with self.endpoint.stream(payload[1:]) as items:
                            self._release(held)
                            async for item in items:
                                await self.carry_out(self.proto.reply(Msg.STREAM_ITEM, call, item))
                    except StreamFailed as exc:
                        end = exc.payload
                    finally:
                        self.streams.pop(call, None)
                    await self.carry_out(self.proto.reply(Msg.STREAM_END, call, end))
            finally:
                self._release(held)
            return
        held = [len(payload)]
        budget = self.budget
        # What it holds of the budget: its request, and room for its answer until the
        # answer is built (see ANSWER_RESERVE); then the answer's own bytes.
        taken = [0 if budget is None else len(payload) + budget.reserve]
        try:
            answer = await self.endpoint.serve(payload[1:])
            # Its share is kept until its answer is sent, and the answer's bytes count
            # with the requests': a client that sent calls and never read their answers
            # had an answer wait per request it sent (the reader read on), not per call
            # in flight.
            n = len(answer)
            self.call_bytes += n
            held[0] += n
            if budget is not None:
                await self._room_for_answer(budget, n, taken)
            await self.carry_out(self.proto.reply(Msg.RESPONSE, call, answer))
        finally:
            self._release(held, taken)

    async def _room_for_answer(self, budget: CallBudget, n: int, taken: list[int]) -> None:
        """Turn the room a call holds (``taken``: its request and its answer's
        reservation) into room for its built answer of ``n`` bytes, before the answer
        is queued to be sent. Why: an answer larger than its reservation was queued
        whatever its size, and the budget counted the difference without waiting for
        it: clients that never read, sending calls whose answers were four times the
        reservation, held four times the bound in unsent answers.

        Room past its reservation is taken at once if none waits and it fits.
        Otherwise the call gives back all it holds (a call that kept its reservation
        while it waited for more waited for room only the others' reservations, all
        waiting likewise, could free) and waits for ``n`` bytes as a request waits:
        counted in ``waiting`` meanwhile (one past the bound closes its connection,
        1013), first come first, in line only while every call of its connection is
        an answer waiting too (one holding room a client that never reads pins would
        have held the line until its idle timeout); its connection reads no new call
        meanwhile (``answers_waiting``), so its calls' room drains."""
        more = n - budget.reserve
        if more <= 0:
            budget.give_back(-more)
            taken[0] += more
            return
        if budget.fits(more, None):
            budget.used += more
            taken[0] += more
            return
        if budget.waiting and budget.waiting + n > budget.limit:
            raise self.close(CLOSE_TRY_LATER, "too many calls waiting on this server")
        budget.give_back(taken[0])
        taken[0] = 0
        budget.waiting += n
        self.answers_waiting += 1
        calls = self.calls
        turn: object | None = None
        try:
            while not budget.fits(n, turn):
                if turn is None and MAX_CALLS_IN_FLIGHT - calls.value == self.answers_waiting:
                    turn = budget.join()
                    continue
                await budget.freed.wait()
        finally:
            budget.waiting -= n
            self.answers_waiting -= 1
            if not self.answers_waiting:
                self.answers_placed.set()
                self.answers_placed = trio.Event()
            if turn is not None:
                budget.leave(turn)
        budget.used += n
        taken[0] = n

    async def _admit(self, payload: bytes) -> None:
        """Wait until a client's request may be answered (within the connection's
        calls in flight and bytes, and the server's :class:`CallBudget`), then take its
        share of them. The reader waits here, unread: backpressure on that client."""
        proto = self.proto
        size = len(payload)
        budget = self.budget
        # What it takes of the server's budget: a plain call holds room for its
        # answer too until the answer is built (see ANSWER_RESERVE).
        need = size if budget is None or payload[:1] == b"s" else size + budget.reserve
        # Yield first, as taking a call's slot did: the calls in flight count their
        # answers' bytes before this one is weighed (taken at once, a client's
        # small calls were each let in before any answer of theirs was counted).
        await trio.lowlevel.checkpoint()
        waited = False  # counted in budget.waiting, and this side stopped reading
        turn: object | None = None  # its place in the budget's queue
        try:
            while True:
                if self.calls.value == 0:
                    wait = self._call_freed
                elif self.answers_waiting:
                    wait = self.answers_placed.wait
                elif self.call_bytes and self.call_bytes + size > MAX_CALL_BYTES:
                    wait = self.call_bytes_freed.wait
                elif budget is not None and not budget.fits(need, turn):
                    # In line only while its connection has no call in flight (a
                    # call of no bytes counts: judged by bytes, one could): a client
                    # that never read its answers kept the room its own first call
                    # held and, first in line, stopped every other connection's
                    # calls until its idle timeout. One with calls in flight waits
                    # behind the line (its bytes given back wake it, then it joins;
                    # once in line it has none in flight, so none can grow).
                    if turn is None and self.calls.value == self.calls.max_value:
                        turn = budget.join()
                    wait = budget.freed.wait
                else:
                    break
                if not waited:
                    # A request waiting its turn is held too (up to a message, 96
                    # MiB, per connection): all connections' waiting ones together
                    # are bounded, and one past the bound closes its connection
                    # (try later), not waits. Only one that waits counts: one taken
                    # at once counted while its reader yielded, and two clients
                    # calling an idle server at once found each other waiting.
                    if budget is not None:
                        if budget.waiting and budget.waiting + size > budget.limit:
                            raise self.close(
                                CLOSE_TRY_LATER, "too many calls waiting on this server"
                            )
                        budget.waiting += size
                    waited = True
                    # Not reading now: the client's silence is not judged (its pongs
                    # wait unread), and the timer's deadline moves.
                    proto.reading(False, self.now())
                    self._wake_timer()
                await wait()
        finally:
            if waited:
                proto.reading(True, self.now())
                self._wake_timer()
                if budget is not None:
                    budget.waiting -= size
            if turn is not None:
                assert budget is not None
                budget.leave(turn)
        self.calls.acquire_nowait()
        self.call_bytes += size
        if budget is not None:
            budget.used += need

    def _wake_timer(self) -> None:
        """The protocol's next deadline changed: the timer sleeps until it again."""
        if self.timer_sleep is not None:
            self.timer_sleep.cancel()

    async def _call_freed(self) -> None:
        """Wait until one of the calls in flight ends (the reader alone takes them)."""
        await self.calls.acquire()
        self.calls.release()

    def _release(self, held: list[int], taken: list[int] | None = None) -> None:
        """Give back a call's share of the bounds (once: ``held`` is emptied): of its
        connection's, ``held``; of the server's budget, ``taken`` (a plain call's: its
        request and its answer's reservation, or its answer), else ``held``."""
        if held:
            self.calls.release()
            size = held.pop()
            self.call_bytes -= size
            self.call_bytes_freed.set()
            self.call_bytes_freed = trio.Event()
            if self.budget is not None:
                self.budget.give_back(size if taken is None else taken[0])

    async def reader(self) -> None:
        proto = self.proto
        while True:
            data = await self.conn.receive()
            await self.carry_out(proto.receive(data, self.now()))
            if proto.busy:  # pushes queued, or the window opened again
                self.poke()

    async def pusher(self) -> None:
        proto = self.proto
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            if not proto.open or self.endpoint is None:
                continue
            proto.local_changed()
            if not proto.busy:
                continue
            await self.endpoint.before_push()
            proto.local_changed()  # the seal just written
            while (push := proto.next_push()) is not None:
                feed, after, upto = push
                events = await self.endpoint.fetch(feed, after, upto, proto.limits.batch_bytes)
                if not events:
                    continue
                await self.carry_out(
                    proto.push(feed, events, after + len(events), self.now(), upto)
                )

    async def timer(self) -> None:
        proto = self.proto
        while True:
            with trio.CancelScope() as self.timer_sleep:
                await trio.sleep_until(max(proto.next_deadline(), self.now() + 0.001))
            await self.carry_out(proto.tick(self.now()))
            self.poke()


class StreamFailed(Exception):
    """An endpoint's stream ended with an error to report (its encoded payload)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


async def run_session(
    conn: Connection,
    proto: PeerProtocol,
    handshake: Handshake,
    *,
    on_open: Callable[[Any], None] | None = None,
    calls: CallBudget | None = None,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> SessionEnd:
    """Run one connection until it closes; how it ended. The server side sends its
    HELLO first. ``calls``: the server's bound on all its connections' calls together.
    ``task_status.started(runner)`` once the tasks run."""
    runner = _Runner(conn, proto, handshake, on_open, calls)
    ending = runner.ending  # (code, reason, ours)

    async def guarded(task: Callable[[], Any]) -> None:
        try:
            await task()
        except ConnectionClosed as exc:  # (after this side's runner.close: not the first)
            ending.append((exc.code, exc.reason, False))
        except WireError as exc:
            ending.append((exc.code, exc.reason, True))
        except KoruError as exc:  # the local side cannot carry on (closed database...)
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("peer session with %s ended: %s", conn.remote, reason)
            ending.append((CLOSE_INTERNAL, reason, True))
        nursery.cancel_scope.cancel()

    async def hello() -> None:
        await runner.carry_out(proto.hello(*await handshake.hello()))
        await trio.sleep_forever()

    try:
        async with trio.open_nursery() as nursery:
            runner.nursery = nursery
            if proto.server:
                nursery.start_soon(guarded, hello)
            nursery.start_soon(guarded, runner.reader)
            nursery.start_soon(guarded, runner.pusher)
            nursery.start_soon(guarded, runner.timer)
            task_status.started(runner)
    finally:
        unwatch = getattr(runner, "unwatch", None)
        if unwatch is not None:
            unwatch()
        for waiting in runner.replies.values():
            waiting.close()
        code, reason, ours = ending[0] if ending else (CLOSE_NORMAL, "closed", True)
        # Closed either way: a side closed by the other still releases its socket.
        await conn.aclose(code or CLOSE_NORMAL, reason if ours else "")
        if proto.close_code is None:
            proto.close_code, proto.close_reason = code, reason
        runner.closed.set()
    return SessionEnd(code, reason, proto, runner.endpoint, ours)
