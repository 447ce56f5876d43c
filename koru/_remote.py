"""A database served by another node, with the same async API as a local one.

``async with koru.connect(url, identity) as db:`` opens a connection in the client
role (the handshake of the sync protocol: the client proves its identity, the server
proves its own) and gives a :class:`RemoteDatabase`, which satisfies
:class:`koru.DatabaseAPI`: code written against the interface runs unchanged on a
local database or a remote one. Each call travels as a request and is answered by the
server's handle for the client's identity, so it is checked against the client's
capabilities; the answer comes back with the types a local call returns, and a
refusal as the same error type (:mod:`koru._remote_codec`).

A lost connection is restored on the next call (a few attempts with backoff, then
:class:`~koru.ConnectionLostError`). Calls in flight when it was lost are sent again:
reads simply, writes with the key they were first sent with, so that the server
applies each once (it keeps recent writes' answers by client and key). A subscription
resumes from where it was, with no gap and no duplicate. A session that expires is
renewed the same way.

The connection itself comes from a *dialer* (``connect(..., dial=...)``): by default a
websocket to the url; any other transport that carries the protocol's frames in
order (nursery's ``Connection``) can be dialed instead, for example a simulated
network.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import trio

from koru.events import (
    ConnectionLostError,
    Grant,
    HandshakeRefusedError,
    InvalidArgumentError,
    KoruError,
    LaggedError,
    PublicIdentity,
    Revocation,
    SessionExpiredError,
    verify,
)
from koru.nursery import (
    CLOSE_TRY_LATER,
    MALFORMED_BEFORE_HANDSHAKE,
    Challenged,
    Clock,
    Connection,
    ConnectionClosed,
    Limits,
    Msg,
    NoFeeds,
    PeerProtocol,
    SystemClock,
    WebSocketConnection,
    Welcomed,
    run_session,
)
from koru.projections import Query, QueryPlan

from . import _subscriptions
from ._api import SpaceAPI
from ._auth_calls import signed_grant, signed_revocation
from ._diff import Diff
from ._genome import Genome
from ._identity import Identity
from ._indexing import IndexInfo
from ._lineage import Connected
from ._peering import dialable
from ._remote_codec import pack, unpack
from ._serving import FAILED, OK
from ._sessions import Challenge, _message
from ._subscriptions import DEFAULT_BUFFER, KeyChange
from ._types import Expiring, IngestResult, Stats, Version, Versioned
from ._vectors import VectorHit
from ._viewing import ViewInfo
from ._workspace import WorkspaceInfo

__all__ = ["Dialer", "RemoteDatabase", "RemoteSpace", "connect", "dial_websocket"]

log = logging.getLogger("koru.remote")

#: Waits before each attempt to (re)connect for a call: then ConnectionLostError.
RETRY_DELAYS = (0.0, 0.25, 1.0, 4.0)
#: How long a lost connection's close code is waited for, if a send failed first.
_CLOSE_READ = 0.25
_CONNECT_TIMEOUT = 10.0
#: Bytes of a REQUEST message around its payload (version, type, call id), at most.
_FRAMING = 32

#: Opens one connection to a url, for the client's messages of at most
#: ``limits.max_message`` bytes: an async context manager giving a nursery
#: ``Connection``, closed as it exits. Raising ``OSError`` or ``ConnectionClosed``
#: means "cannot reach it now" (the client tries again with backoff).
Dialer = Callable[[str, Limits], AbstractAsyncContextManager[Connection]]


@asynccontextmanager
async def dial_websocket(url: str, limits: Limits) -> AsyncIterator[Connection]:
    """The default dialer: a websocket to ``url``."""
    from trio_websocket import ConnectionRejected, open_websocket_url

    try:
        async with open_websocket_url(
            url,
            max_message_size=limits.max_message,
            connect_timeout=_CONNECT_TIMEOUT,
            disconnect_timeout=1.0,
        ) as ws:
            yield WebSocketConnection(ws, url)
    except ConnectionRejected as exc:  # (a full server answers 503)
        await _close_rejected(exc)
        raise


async def _close_rejected(exc: BaseException) -> None:
    """Close the socket of an upgrade the server refused: trio-websocket (0.12) leaves
    it open until collected. Its connection is the ``self`` of the frame that raised."""
    from trio_websocket import WebSocketConnection as _Connection

    tb = exc.__traceback__
    while tb is not None:
        found = tb.tb_frame.f_locals.get("self")
        if isinstance(found, _Connection):
            # (A later trio-websocket may close it itself, or name it otherwise: then
            # there is nothing to do here, and the refusal is raised as it is.)
            stream = getattr(found, "_stream", None)
            if isinstance(stream, trio.abc.AsyncResource):
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
            return
        tb = tb.tb_next


class _ClientHandshake:
    """The client's half of the handshake: it answers the server's challenge with its
    identity and checks the server's answer to its own."""

    def __init__(self, identity: Identity, server_key: bytes | None, grants: list[bytes]) -> None:
        self._identity = identity
        self._expect = server_key
        self._grants = grants
        self._challenge = b""
        self._server = b""
        self.node = b""
        #: Why this side refused the server (raised to the caller of connect).
        self.refusal: KoruError | None = None

    async def hello(self) -> Any:
        raise AssertionError("the client does not send HELLO")

    async def admit(self, auth: Any, server_challenge: bytes) -> Any:
        raise AssertionError("the client does not admit")

    async def answer(self, challenged: Challenged) -> list[Any]:
        if self._expect is not None and challenged.server_key != self._expect:
            self.refusal = HandshakeRefusedError(
                f"the server's key is {challenged.server_key.hex()[:16]}..., not the one "
                f"expected ({self._expect.hex()[:16]}...): a relay may be in between"
            )
            raise self.refusal
        self._server = challenged.server_key
        identity = self._identity
        response = identity.respond(
            Challenge(challenged.server_key, challenged.nonce, challenged.expires)
        )
        self._challenge = secrets.token_bytes(32)
        return [
            identity.public_key,
            identity.nonce,
            response.signature,
            self._challenge,
            self._grants,
            None,
        ]

    async def welcomed(self, welcome: Welcomed) -> NoFeeds:
        message = _message(self._identity.public_key, self._challenge, self._server)
        if not verify(self._server, message, welcome.signature):
            self.refusal = HandshakeRefusedError(
                "the server did not prove it holds its key (its signature does not verify)"
            )
            raise self.refusal
        self.node = welcome.node
        return NoFeeds()


class _Link:
    """The connection behind a remote database: (re)opened on demand, one at a time."""

    def __init__(
        self,
        url: str,
        identity: Identity,
        *,
        server_key: bytes | None,
        grants: list[bytes],
        limits: Limits,
        nursery: trio.Nursery,
        dial: Dialer = dial_websocket,
    ) -> None:
        self.url = url
        self._dial = dial
        self.identity = identity
        self._server_key = server_key
        self._grants = grants
        self.limits = limits
        self._nursery = nursery
        self._runner: Any = None
        #: Set once the current connection's socket is closed.
        self._finished = trio.Event()
        self._finished.set()
        self._lock = trio.Lock()
        self._ids = itertools.count(1)
        self.node = b""
        self.closed = False
        #: Connections opened (the first and every reconnection).
        self.connections = 0

    async def runner(self) -> Any:
        """The open connection's driver, opening one if there is none."""
        if self.closed:
            raise ConnectionLostError("the remote database was closed (aclose)")
        runner = self._runner
        if runner is not None and not runner.closed.is_set():
            return runner
        async with self._lock:
            runner = self._runner
            if runner is None or runner.closed.is_set():
                runner = self._runner = await self._reconnect()
        return runner

    def drop(self, runner: Any) -> None:
        """Stop using ``runner`` (its session expired, or a send on it failed): the
        next call reconnects."""
        if self._runner is runner:
            self._runner = None
        runner.nursery.cancel_scope.cancel()

    async def request(self, runner: Any, call: int, payload: bytes) -> None:
        """Send a request on ``runner``; if the connection is gone, drop it (so that
        the next attempt opens another) and raise ConnectionClosed."""
        try:
            await runner.carry_out(runner.proto.request(call, payload))
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            self.drop(runner)
            raise ConnectionClosed(None, "lost while sending") from None

    async def _reconnect(self) -> Any:
        last: BaseException | None = None
        for delay in RETRY_DELAYS:
            await trio.sleep(delay)
            try:
                return await self._open()
            except (OSError, ConnectionClosed, trio.BrokenResourceError) as exc:
                last = exc
            except Exception as exc:
                from trio_websocket import HandshakeError

                if not isinstance(exc, HandshakeError):
                    raise
                last = exc
        raise ConnectionLostError(f"cannot reach {self.url}: {last}")

    async def _open(self) -> Any:
        opened = trio.Event()
        found: dict[str, Any] = {}
        handshake = _ClientHandshake(self.identity, self._server_key, self._grants)

        def on_open(runner: Any) -> None:
            found["runner"] = runner
            opened.set()
            if "abandoned" in found:
                runner.nursery.cancel_scope.cancel()

        async def session() -> None:
            try:
                async with self._dial(self.url, self.limits) as conn:
                    proto = PeerProtocol(
                        server=False,
                        role="client",
                        heads=dict,
                        now=trio.current_time(),
                        limits=self.limits,
                    )
                    found["end"] = await run_session(conn, proto, handshake, on_open=on_open)
            except BaseException as exc:
                found["error"] = exc
                if not isinstance(exc, Exception):
                    raise
            finally:
                opened.set()
                finished.set()

        finished = self._finished = trio.Event()
        self._nursery.start_soon(session)
        try:
            await opened.wait()
        except BaseException:
            # The caller was cancelled while connecting: the connection is nobody's
            # (else it stays open, kept alive by its heartbeats, until aclose). It ends
            # once open (cancelled before, trio-websocket leaks its socket) or when
            # its handshake fails or times out.
            found["abandoned"] = True
            if "runner" in found:
                found["runner"].nursery.cancel_scope.cancel()
            raise
        if "runner" in found:
            self.node = handshake.node
            self.connections += 1
            return found["runner"]
        if handshake.refusal is not None:
            raise handshake.refusal
        error = found.get("error")
        if error is not None:
            raise error
        end = found.get("end")
        code, reason = (end.code, end.reason) if end is not None else (None, "closed")
        if (
            code == 1008
            and end is not None
            and not end.ours
            # (not a verdict: our AUTH reached it damaged, a connection to make again)
            and not reason.startswith(MALFORMED_BEFORE_HANDSHAKE)
        ):  # the server's verdict
            raise HandshakeRefusedError(f"the server refused this client: {reason}", code, reason)
        raise ConnectionClosed(code, reason)

    async def call(self, payload: bytes) -> Any:
        """Send one request (``payload``: its kind byte and packed body), and return the
        answer (or raise its error), sending it again over a new connection if the one
        it went out on is lost."""
        # (The server closes a connection on a message over its limit: sent again on
        # each new connection, it would end as ConnectionLostError.)
        largest = self.limits.max_message - _FRAMING
        if len(payload) > largest:
            raise InvalidArgumentError(
                f"a call of {len(payload)} bytes, over the {largest} a message holds: "
                "send less at once"
            )
        renewed = False
        for tries in range(len(RETRY_DELAYS) + 2):
            runner = await self.runner()
            call = next(self._ids)
            send, receive = trio.open_memory_channel[tuple[Msg, bytes | None]](1)
            runner.replies[call] = send
            try:
                with receive:
                    await self.request(runner, call, payload)
                    _, answer = await receive.receive()
            except (trio.EndOfChannel, ConnectionClosed):
                self.drop(runner)
                await self.later(runner, tries)
                continue  # lost on the way: a new connection (or ConnectionLostError)
            finally:
                runner.replies.pop(call, None)
                runner.lagged.pop(call, None)  # an answer sent twice by a broken server
            if answer is None or answer[:1] not in (OK, FAILED):
                raise ConnectionLostError("the server sent a malformed answer")
            if answer[:1] == OK:
                return unpack(answer[1:])
            error = _error_of(answer[1:])
            if isinstance(error, SessionExpiredError) and not renewed:
                renewed = True  # a fresh handshake opens a fresh session
                self.drop(runner)
                continue
            raise error
        raise ConnectionLostError(f"the connection to {self.url} kept failing")

    @staticmethod
    async def later(runner: Any, tries: int) -> None:
        """After a connection lost on its ``tries``-th attempt: if the server closed it
        with 1013 (try later: too many calls waiting on it), wait as a reconnection
        does before the next attempt. Why: the next attempt reconnected at once (its
        first delay is none), and six attempts in a few milliseconds ended in
        ConnectionLostError while the server was busy for a moment.

        A send can fail before this side's reader has read the server's close and its
        code: then it is waited for a moment (``_CLOSE_READ``), or the retry went out
        at once."""
        ending = runner.ending
        if not ending:
            with trio.move_on_after(_CLOSE_READ):
                await runner.closed.wait()
        if ending and ending[0][0] == CLOSE_TRY_LATER:
            await trio.sleep(RETRY_DELAYS[min(tries + 1, len(RETRY_DELAYS) - 1)])

    async def aclose(self) -> None:
        self.closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.nursery.cancel_scope.cancel()
        # The socket closes as its context ends: a cancelled close would leak it.
        with trio.move_on_after(5):
            await self._finished.wait()


def _listed(items: Any) -> Any:
    """An iterable argument as a list (a generator cannot travel); anything else as
    it is, for the server to judge."""
    if items is None or isinstance(items, list | tuple | str | bytes | dict):
        return items
    try:
        return list(items)
    except TypeError:
        return items


def _public(who: Any) -> Any:
    """An identity travels as its public half (the secret key never leaves)."""
    return who.public if isinstance(who, Identity) else who


class _ByteBounded:
    """The session's end of a remote subscription's queue: bounded in bytes too
    (``MAX_QUEUED_BYTES``, as a local subscriber's), not in changes alone. Why: the
    client reads the socket as fast as the server sends, so a subscriber that stopped
    reading held its ``buffer`` of changes (10,000 by default) whatever their size;
    the server's bound in bytes never reached it. Past the bound it refuses the item
    (trio.WouldBlock) and the session cuts the stream off as when the buffer is full
    (a queue never empty holds one item whatever its size)."""

    __slots__ = ("_send", "queued")

    def __init__(self, send: trio.MemorySendChannel[tuple[Msg, bytes | None]]) -> None:
        self._send = send
        #: The bytes of the items queued and not yet taken.
        self.queued = 0

    def send_nowait(self, item: tuple[Msg, bytes | None]) -> None:
        size = len(item[1] or b"")
        if self.queued and self.queued + size > _subscriptions.MAX_QUEUED_BYTES:
            raise trio.WouldBlock
        self._send.send_nowait(item)
        self.queued += size

    def close(self) -> None:
        self._send.close()


class RemoteSubscription:
    """The changes of a remote subscription (an async iterator of
    :class:`~koru.KeyChange`), resumed over a new connection with no gap and no
    duplicate when the one it came on is lost."""

    def __init__(self, link: _Link, space: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
        self._link = link
        self._space = space
        self._args = args
        self._kwargs = kwargs
        self._buffer = kwargs.get("buffer", DEFAULT_BUFFER)
        self._runner: Any = None
        self._call = 0
        self._receive: trio.MemoryReceiveChannel[tuple[Msg, bytes | None]] | None = None
        #: The session's end of the queue ``_receive`` reads (its bytes counted).
        self._queue: _ByteBounded | None = None
        #: The last change's position, and how many changes of that position came.
        self._position: int | None = None
        self._at_position = 0
        #: Where the server started the stream (its first item), for a resume before
        #: any change came.
        self._start: int | None = None
        #: Cut off inside this event (some of its changes delivered): its other
        #: changes come first, then LaggedError names the next event, as locally (a
        #: local subscriber is cut off between events, never inside one).
        self._finishing: int | None = None
        self._lagged: int | None = None
        #: Renewed its session with no change since (a second expiry is raised).
        self._renewed = False
        self._skip = 0
        #: Connections lost in a row with nothing received on them (see :meth:`_lost`).
        self._tries = 0
        self.closed = False

    async def _open(self) -> None:
        kwargs = dict(self._kwargs)
        if self._position is not None:  # resume: that event again, its changes skipped
            kwargs["from_position"] = self._position
            self._skip = self._at_position
        elif self._start is not None:  # no change yet: from where it started
            kwargs["from_position"] = self._start
            self._skip = 0
        runner = await self._link.runner()
        call = next(self._link._ids)
        send, receive = trio.open_memory_channel[tuple[Msg, bytes | None]](
            max(1, int(self._buffer)) if type(self._buffer) is int else 1
        )
        self._queue = _ByteBounded(send)
        runner.replies[call] = self._queue
        payload = b"s" + pack([self._space, "subscribe", self._args, kwargs])
        self._runner, self._call, self._receive = runner, call, receive
        try:
            await self._link.request(runner, call, payload)
        except ConnectionClosed:
            self._receive = None  # the next step opens it again, on a new connection

    async def _started(self) -> None:
        """Wait for the stream's first item, the position it starts from: as a local
        subscribe, it returns once subscribed (every later change is seen), or raises
        why not."""
        for tries in range(len(RETRY_DELAYS) + 2):
            if self._receive is None:
                await self._open()
                if self._receive is None:
                    await self._link.later(self._runner, tries)
                    continue
            try:
                kind, data = await self._receive.receive()
                self._taken(data)
            except trio.EndOfChannel:  # lost before it started: start it again
                self._receive = None
                await self._link.later(self._runner, tries)
                continue
            if kind is Msg.STREAM_END:
                error = None if data is None else _error_of(data)
                if isinstance(error, SessionExpiredError):
                    self._renew()
                    continue
                self.closed = True
                if error is not None:
                    raise error
                return
            start = unpack(data or b"")
            if type(start) is not int:
                raise ConnectionLostError("the server sent something other than a change")
            self._start = start
            return
        raise ConnectionLostError(f"the connection to {self._link.url} kept failing")

    def _taken(self, data: bytes | None) -> None:
        if self._queue is not None:
            self._queue.queued -= len(data or b"")

    def __aiter__(self) -> RemoteSubscription:
        return self

    async def __anext__(self) -> KeyChange:
        while True:
            if self._lagged is not None:
                raise LaggedError(self._lagged)
            if self.closed:
                raise StopAsyncIteration
            if self._receive is None:
                await self._open()
                if self._receive is None:
                    await self._lost()
                    continue
            try:
                kind, data = await self._receive.receive()
                self._taken(data)
            except trio.EndOfChannel:
                if self._call not in self._runner.lagged:  # the connection was lost
                    self._receive = None
                    await self._lost()
                    continue
                # This side's buffer overflowed: cut off, as a local subscriber is,
                # naming the position of the first change it missed.
                missed = self._runner.lagged.pop(self._call)
                await self._cancel()
                position = _position_of(missed, self._position)
                if position == self._position:  # inside an event: finish it first
                    self._finishing = position
                    continue  # resumed from it, the changes delivered skipped
                self._lagged = position
                raise LaggedError(position) from None
            self._tries = 0  # something came on it
            if kind is Msg.STREAM_END:
                error = None if data is None else _error_of(data)
                if isinstance(error, SessionExpiredError) and not self._renewed:
                    self._renew()  # as a call's: a new handshake, and resumed
                    continue
                self.closed = True
                if error is not None:
                    raise error
                raise StopAsyncIteration
            change = unpack(data or b"")
            if type(change) is int:  # the position the stream starts from
                if self._position is None:
                    self._start = change
                continue
            if not isinstance(change, KeyChange):
                raise ConnectionLostError("the server sent something other than a change")
            if self._skip:
                self._skip -= 1
                continue
            if self._finishing is not None and change.position != self._finishing:
                self._finishing = None  # the event is whole: cut off before the next
                await self._cancel()
                self._lagged = change.position
                raise LaggedError(change.position)
            self._renewed = False
            if change.position == self._position:
                self._at_position += 1
            else:
                self._position, self._at_position = change.position, 1
            return change

    async def _lost(self) -> None:
        """The connection the stream was resumed on was lost before anything came on
        it: wait as a call does before its next attempt (after a 1013, try later), and
        give up as a call does after as many attempts in a row. Why: a subscription
        resumed at once, for ever: a server closing each new connection with 1013 for
        a second and a half got 299 reconnections and subscribe requests from it."""
        tries = self._tries
        self._tries += 1
        if self._tries >= len(RETRY_DELAYS) + 2:
            raise ConnectionLostError(f"the connection to {self._link.url} kept failing")
        await self._link.later(self._runner, tries)

    def _renew(self) -> None:
        """The session expired: the next step resumes on a new connection (a new
        handshake opens a new session)."""
        self._renewed = True
        self._receive = None
        if self._runner is not None:
            self._link.drop(self._runner)

    async def _cancel(self) -> None:
        runner, self._receive = self._runner, None
        if runner is not None:
            runner.lagged.pop(self._call, None)
        if runner is not None and not runner.closed.is_set():
            runner.replies.pop(self._call, None)
            with suppress(ConnectionClosed, trio.BrokenResourceError):
                await runner.carry_out(runner.proto.cancel(self._call))

    async def aclose(self) -> None:
        self.closed = True
        await self._cancel()


def _error_of(packed: bytes) -> KoruError:
    """The error a server's failure payload names (a server sending anything else is
    broken: never a TypeError raised in the caller's face)."""
    error = unpack(packed, errors=True)
    if not isinstance(error, KoruError):
        return ConnectionLostError("the server sent a malformed error")
    return error


def _position_of(packed: bytes | None, last: int | None) -> int:
    """The log position of a packed change (else the last one delivered)."""
    try:
        change = unpack(packed or b"")
    except KoruError:
        change = None
    if isinstance(change, KeyChange):
        return change.position
    return 0 if last is None else last


class RemoteSpace:
    """A space of a remote database: the data calls (:class:`koru.SpaceAPI`), each a
    request to the server. ``db.workspace(name)`` of a :class:`RemoteDatabase` gives
    one; the database itself answers them in its default space."""

    def __init__(self, link: _Link, space: list[str] | None) -> None:
        self._link = link
        self._space = space

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await self._link.call(b"c" + pack([self._space, method, list(args), kwargs, None]))

    async def _write(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A call that changes something: it carries a key, so the server does it once
        however often it is sent."""
        key = secrets.token_bytes(16)
        return await self._link.call(b"c" + pack([self._space, method, list(args), kwargs, key]))

    @property
    def readonly(self) -> bool:
        """False: the server refuses a write it cannot take, with the same error."""
        return False

    async def put(
        self,
        namespace: str,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        parents: Iterable[Any] | None = None,
    ) -> Version:
        return await self._write(  # type: ignore[no-any-return]
            "put", namespace, key, value, ttl=ttl, parents=_listed(parents)
        )

    async def put_with_causal_links(
        self, namespace: str, key: str, value: Any, parents: Iterable[Any]
    ) -> Version:
        return await self._write(  # type: ignore[no-any-return]
            "put_with_causal_links", namespace, key, value, _listed(parents)
        )

    async def put_batch(
        self, items: Iterable[tuple[str, str, Any]], *, ttl: float | None = None
    ) -> list[Version]:
        return await self._write("put_batch", _listed(items), ttl=ttl)  # type: ignore[no-any-return]

    async def delete(self, namespace: str, key: str) -> Version:
        return await self._write("delete", namespace, key)  # type: ignore[no-any-return]

    async def get(self, namespace: str, key: str) -> Any:
        return await self._call("get", namespace, key)

    async def get_versioned(self, namespace: str, key: str) -> Versioned:
        return await self._call("get_versioned", namespace, key)  # type: ignore[no-any-return]

    async def get_at(self, namespace: str, key: str, at: Any) -> Versioned:
        return await self._call("get_at", namespace, key, at)  # type: ignore[no-any-return]

    async def history(
        self,
        namespace: str,
        key: str,
        since: Any = None,
        until: Any = None,
        latest: int | None = None,
    ) -> list[Versioned]:
        return await self._call(  # type: ignore[no-any-return]
            "history", namespace, key, since, until, latest
        )

    async def contains(self, namespace: str, key: str) -> bool:
        return await self._call("contains", namespace, key)  # type: ignore[no-any-return]

    async def keys(self, namespace: str) -> list[str]:
        return await self._call("keys", namespace)  # type: ignore[no-any-return]

    async def namespaces(self) -> list[str]:
        return await self._call("namespaces")  # type: ignore[no-any-return]

    async def diff(
        self, namespace: str, key: str, from_version: int | str = -2, to_version: int | str = -1
    ) -> Diff:
        return await self._call(  # type: ignore[no-any-return]
            "diff", namespace, key, from_version, to_version
        )

    async def expiring(self, within: float = 0.0) -> list[Expiring]:
        return await self._call("expiring", within)  # type: ignore[no-any-return]

    async def query(self, namespace: str, query: Query | dict[str, Any], at: Any = None) -> Any:
        return await self._call("query", namespace, query, at)

    async def explain(
        self, namespace: str, query: Query | dict[str, Any], at: Any = None
    ) -> QueryPlan:
        return await self._call("explain", namespace, query, at)  # type: ignore[no-any-return]

    async def create_index(self, namespace: str, field: str) -> bool:
        return await self._write("create_index", namespace, field)  # type: ignore[no-any-return]

    async def drop_index(self, namespace: str, field: str) -> None:
        await self._write("drop_index", namespace, field)

    async def list_indexes(self, namespace: str | None = None) -> list[IndexInfo]:
        return await self._call("list_indexes", namespace)  # type: ignore[no-any-return]

    async def create_view(self, name: str, namespace: str, query: Query | dict[str, Any]) -> None:
        await self._write("create_view", name, namespace, query)

    async def view(self, name: str) -> Any:
        return await self._call("view", name)

    async def refresh_view(self, name: str) -> None:
        await self._write("refresh_view", name)

    async def list_views(self) -> list[ViewInfo]:
        return await self._call("list_views")  # type: ignore[no-any-return]

    async def delete_view(self, name: str) -> None:
        await self._write("delete_view", name)

    @asynccontextmanager
    async def subscribe(
        self,
        namespace: str | None = None,
        key: str | None = None,
        kinds: Iterable[str] = ("put", "delete"),
        where: Query | dict[str, Any] | None = None,
        from_position: int | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> AsyncIterator[RemoteSubscription]:
        """The changes the server's ``subscribe`` would give, streamed (see
        :meth:`koru.Database.subscribe`); resumed over a new connection if the one
        it came on is lost."""
        kwargs = {
            "namespace": namespace,
            "key": key,
            "kinds": _listed(kinds),
            "where": where,
            "from_position": from_position,
            "buffer": buffer,
        }
        changes = RemoteSubscription(self._link, self._space, [], kwargs)
        try:
            await changes._open()  # cancelled once sent: the stream is cancelled too
            await changes._started()
            yield changes
        finally:
            with trio.CancelScope(shield=True):
                await changes.aclose()

    async def are_connected(
        self, a: tuple[str, str], b: tuple[str, str], *, max_depth: int = 100
    ) -> bool:
        return await self._call("are_connected", a, b, max_depth=max_depth)  # type: ignore[no-any-return]

    async def connection_path(
        self, a: tuple[str, str], b: tuple[str, str], *, max_depth: int = 100
    ) -> list[tuple[str, str]] | None:
        return await self._call(  # type: ignore[no-any-return]
            "connection_path", a, b, max_depth=max_depth
        )

    async def ancestors(
        self, node: tuple[str, str], depth: int | None = None
    ) -> list[tuple[str, str]]:
        return await self._call("ancestors", node, depth)  # type: ignore[no-any-return]

    async def descendants(
        self, node: tuple[str, str], depth: int | None = None
    ) -> list[tuple[str, str]]:
        return await self._call("descendants", node, depth)  # type: ignore[no-any-return]

    async def most_connected(self, namespace: str, k: int = 10) -> list[Connected]:
        return await self._call("most_connected", namespace, k)  # type: ignore[no-any-return]


class RemoteDatabase(RemoteSpace):
    """A database served by another node (:func:`connect`): it satisfies
    :class:`koru.DatabaseAPI`, every call a request checked against the client's
    capabilities there."""

    def __init__(self, link: _Link, clock: Clock) -> None:
        super().__init__(link, None)
        self._clock = clock

    @property
    def node_id(self) -> str:
        """The id (hex) of the node serving the database."""
        return self._link.node.hex()

    @property
    def identity(self) -> Identity:
        """The identity this client acts as."""
        return self._link.identity

    @property
    def connections(self) -> int:
        """Connections opened so far (the first, and each after one was lost)."""
        return self._link.connections

    def workspace(self, name: str) -> SpaceAPI:
        if type(name) is not str:
            raise InvalidArgumentError(f"a workspace name is a str, not {name!r}")
        return RemoteSpace(self._link, ["workspace", name])

    def audit_workspace(self, name: str) -> SpaceAPI:
        if type(name) is not str:
            raise InvalidArgumentError(f"a workspace name is a str, not {name!r}")
        return RemoteSpace(self._link, ["audit", name])

    async def create_workspace(self, name: str) -> bool:
        return await self._write("create_workspace", name)  # type: ignore[no-any-return]

    async def drop_workspace(self, name: str) -> None:
        await self._write("drop_workspace", name)

    async def workspaces(self, *, dropped: bool = False) -> list[WorkspaceInfo]:
        return await self._call("workspaces", dropped=dropped)  # type: ignore[no-any-return]

    async def embed(
        self, namespace: str, key: str, vector: Any, model: str = "default", metadata: Any = None
    ) -> Version:
        return await self._write(  # type: ignore[no-any-return]
            "embed", namespace, key, vector, model, metadata
        )

    async def delete_embedding(self, namespace: str, key: str) -> Version:
        return await self._write("delete_embedding", namespace, key)  # type: ignore[no-any-return]

    async def embed_search(
        self,
        namespace: str | None,
        query: Any,
        top_k: int = 10,
        threshold: float | None = None,
        model: str | None = None,
        metric: str = "cosine",
        approximate: bool | None = None,
        where: Any = None,
    ) -> list[VectorHit]:
        return await self._call(  # type: ignore[no-any-return]
            "embed_search", namespace, query, top_k, threshold, model, metric, approximate, where
        )

    async def embed_search_batch(
        self,
        namespace: str | None,
        queries: Any,
        top_k: int = 10,
        threshold: float | None = None,
        model: str | None = None,
        metric: str = "cosine",
        approximate: bool | None = None,
        where: Any = None,
    ) -> list[list[VectorHit]]:
        return await self._call(  # type: ignore[no-any-return]
            "embed_search_batch",
            namespace,
            _listed(queries),
            top_k,
            threshold,
            model,
            metric,
            approximate,
            where,
        )

    async def similar_at(
        self,
        namespace: str | None,
        query: Any,
        at: Any,
        top_k: int = 10,
        threshold: float | None = None,
        model: str | None = None,
        metric: str = "cosine",
        where: Any = None,
    ) -> list[VectorHit]:
        return await self._call(  # type: ignore[no-any-return]
            "similar_at", namespace, query, at, top_k, threshold, model, metric, where
        )

    async def put_similar(
        self, namespace: str, key: str, content: Any, metadata: Any = None
    ) -> Version:
        return await self._write(  # type: ignore[no-any-return]
            "put_similar", namespace, key, content, metadata
        )

    async def find_similar(
        self,
        namespace: str | None,
        content: Any,
        top_k: int = 10,
        threshold: float | None = None,
        where: Any = None,
    ) -> list[VectorHit]:
        return await self._call(  # type: ignore[no-any-return]
            "find_similar", namespace, content, top_k, threshold, where
        )

    async def ingest(self, events: Iterable[bytes]) -> IngestResult:
        return await self._write("ingest", _listed(events))  # type: ignore[no-any-return]

    async def feed_heads(self) -> dict[tuple[str, str], int]:
        return await self._call("feed_heads")  # type: ignore[no-any-return]

    async def feed_events(
        self, origin: str, agent: str = "storage", after: int = 0, limit: int | None = None
    ) -> list[bytes]:
        return await self._call("feed_events", origin, agent, after, limit)  # type: ignore[no-any-return]

    async def stats(self) -> Stats:
        return await self._call("stats")  # type: ignore[no-any-return]

    async def roots(self) -> dict[str, str]:
        return await self._call("roots")  # type: ignore[no-any-return]

    async def digest(self) -> str:
        return await self._call("digest")  # type: ignore[no-any-return]

    async def checkpoint(self) -> None:
        await self._write("checkpoint")

    async def genome(self) -> Genome:
        return await self._call("genome")  # type: ignore[no-any-return]

    async def processes(self) -> list[Any]:
        return await self._call("processes")  # type: ignore[no-any-return]

    async def register(self, identity: Identity | PublicIdentity) -> bool:
        return await self._write("register", _public(identity))  # type: ignore[no-any-return]

    async def grant(
        self,
        grant_or_grantee: Grant | Identity | PublicIdentity | bytes | str,
        *,
        namespace: str = "*",
        key: str = "*",
        actions: str | list[str] | tuple[str, ...] = "read",
        not_before: Any = None,
        expires: Any = None,
        parent: bytes | str | None = None,
        granter: Identity | None = None,
    ) -> Grant:
        """Store a grant (see :meth:`koru.Database.grant`); one not yet signed is signed
        here, by ``granter`` (default: this client's identity): a secret key never
        leaves the client."""
        grant = signed_grant(
            grant_or_grantee,
            self._link.identity if granter is None else granter,
            namespace=namespace,
            key=key,
            actions=actions,
            not_before=not_before,
            expires=expires,
            parent=parent,
        )
        return await self._write("grant", grant)  # type: ignore[no-any-return]

    async def revoke(
        self,
        revocation_or_grant: Revocation | Grant | bytes | str,
        *,
        revoker: Identity | None = None,
    ) -> Revocation:
        """Revoke a grant (see :meth:`koru.Database.revoke`); a revocation not yet
        signed is signed here by ``revoker`` (default: this client's identity), as of
        this client's clock."""
        revocation = signed_revocation(
            revocation_or_grant,
            self._link.identity if revoker is None else revoker,
            self._clock.now_ns(),
        )
        return await self._write("revoke", revocation)  # type: ignore[no-any-return]

    async def check(self, who: Any, action: str, namespace: str, key: str) -> bool:
        if isinstance(who, Identity | PublicIdentity):
            who = who.public_key
        return await self._call("check", who, action, namespace, key)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Close the connection (the served database stays open)."""
        await self._link.aclose()


@asynccontextmanager
async def connect(
    url: str,
    identity: Identity,
    *,
    server_key: bytes | None = None,
    grants: Iterable[Grant] = (),
    limits: Limits | None = None,
    clock: Clock | None = None,
    dial: Dialer | None = None,
) -> AsyncIterator[RemoteDatabase]:
    """A database served at ``url`` (``ws://host:port``, or ``host:port``), acting as
    ``identity``::

        async with koru.connect("ws://db.example:7878", identity) as db:
            await db.put("users", "alice", {"name": "Alice"})

    ``server_key`` (the server's public key, if known) refuses any other server;
    ``grants`` are presented in the handshake, for a server that has not stored
    them yet. ``clock`` dates the revocations signed here; ``dial`` opens each
    connection (default :func:`dial_websocket`). Returns once connected.

    Raises:
        HandshakeRefusedError: the server refused this identity, or failed to prove
            its own.
        ConnectionLostError: the server cannot be reached.
    """
    if type(url) is not str or not url:
        raise InvalidArgumentError(f"connect takes a url, not {url!r}")
    if not isinstance(identity, Identity):
        raise InvalidArgumentError(f"connect takes an Identity, not {identity!r}")
    if server_key is not None and (type(server_key) is not bytes or len(server_key) != 32):
        raise InvalidArgumentError("server_key is the server's 32-byte public key")
    presented = []
    for grant in grants:
        if not isinstance(grant, Grant):
            raise InvalidArgumentError(f"grants are koru.Grant, not {grant!r}")
        presented.append(_grant_bytes(grant))
    if not url.startswith(("ws://", "wss://")):
        url = f"ws://{url}"
    if dial is None and not dialable(url):  # the websocket library raised ValueError
        raise InvalidArgumentError(f"connect takes a ws:// url (host and port), not {url!r}")
    try:
        async with trio.open_nursery() as nursery:
            link = _Link(
                url,
                identity,
                server_key=server_key,
                grants=presented,
                limits=limits or Limits(),
                nursery=nursery,
                dial=dial or dial_websocket,
            )
            db = RemoteDatabase(link, clock or SystemClock())
            try:
                await link.runner()
                yield db
            finally:
                with trio.CancelScope(shield=True):
                    await link.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The connection's tasks never raise (each ends as a finished session), so a
        # group wraps the caller's own exception from the block: hand it back as is.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise


def _grant_bytes(grant: Grant) -> bytes:
    import cbor2

    return cbor2.dumps(list(grant))
