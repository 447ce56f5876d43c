"""Connections: a websocket (trio-websocket) or an in-memory pair, one interface.

A connection carries whole binary messages. Closing sends a code and a reason (the
websocket close frame, or a CLOSE message in memory); receiving after the other side
closed raises :class:`ConnectionClosed` with its code.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from koru.events import InvalidArgumentError, KoruError

from ._wire import CLOSE_GOING_AWAY, CLOSE_INVALID_PAYLOAD, Msg, WireError, decode, encode

__all__ = [
    "Connection",
    "ConnectionClosed",
    "MemoryConnection",
    "WebSocketConnection",
    "memory_pair",
    "serve_websockets",
]

log = logging.getLogger("koru.peers")


class ConnectionClosed(KoruError):
    """The connection is closed (by either side): its close code and reason."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed ({code}): {reason}")
        self.code = code
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.reason))


class Connection(Protocol):
    """Whole binary messages, both ways."""

    @property
    def remote(self) -> str: ...

    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes: ...

    async def aclose(self, code: int = 1000, reason: str = "") -> None: ...


def _closed(exc: Any) -> ConnectionClosed:
    reason = exc.reason
    if reason is None:
        return ConnectionClosed(None, "closed")
    return ConnectionClosed(reason.code, reason.reason or "")


class WebSocketConnection:
    """A trio-websocket connection."""

    def __init__(self, ws: Any, remote: str) -> None:
        self._ws = ws
        self._remote = remote

    @property
    def remote(self) -> str:
        return self._remote

    async def send(self, data: bytes) -> None:
        from trio_websocket import ConnectionClosed as _Closed

        try:
            await self._ws.send_message(data)
        except _Closed as exc:
            raise _closed(exc) from None

    async def receive(self) -> bytes:
        from trio_websocket import ConnectionClosed as _Closed

        try:
            data = await self._ws.get_message()
        except _Closed as exc:
            raise _closed(exc) from None
        if type(data) is not bytes:
            # A text frame: not a message of this protocol.
            raise WireError(CLOSE_INVALID_PAYLOAD, "text frames are not messages here")
        return data

    def allow(self, size: int) -> None:
        """Messages of up to ``size`` bytes from now on (the session raises the limit
        the connection was opened with once the handshake is done)."""
        self._ws._max_message_size = size

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        # Cancelled (the node stops): trio-websocket's reader is cancelled with it, so
        # no answer to the close frame would be read: send it, do not wait 2 s for one.
        cancelled = trio.current_effective_deadline() == -math.inf
        with trio.move_on_after(0.05 if cancelled else 2) as scope:
            scope.shield = True
            await self._ws.aclose(code, reason[:120])
        # trio-websocket (0.12) leaves a client's TCP stream open when the server
        # closed first (it waits for the server's TCP close, then returns from aclose
        # without closing its own): close it, or the socket leaks until collected.
        stream = getattr(self._ws, "_stream", None)
        if stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)


class PendingBudget:
    """Bytes of messages partly received that all of a server's connections hold
    together, bounded.

    A websocket message is assembled from its fragments until the last arrives, and
    each connection may take one of up to its own limit (96 MiB once admitted): a
    side that opens many connections and leaves a large message half sent on each
    would pin that much per connection, for as long as each stays open. Here each
    fragment is counted against one budget of the server's; the connection whose
    fragment would take it past the budget is closed (1009, too big), trio-websocket's
    own way, and what it held is returned. An honest message past the budget fails the
    same way, and is retried once the budget has room (a client's call, a peer's next
    round)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def watch(self, ws: Any) -> Callable[[], None]:
        """Count ``ws``'s (a trio-websocket connection's, before its reader task
        starts: the task takes its handlers then) messages, partly received or whole
        and not yet taken by ``get_message``; returns what to call once it ends
        (returning what it held).

        Why the whole ones too: trio-websocket queues one whole message and its
        reader holds the next, blocked handing it over, while the connection's
        session does not read (it waits for its calls to be answered), and a message
        was counted only while partly received: each connection held one message of
        up to ``max_message`` (96 MiB) that no budget saw (h-resid). A last fragment
        is taken even past the budget, as before (one read of the socket at most): a
        budget filled by others must not stop a connection's small whole messages
        (a handshake's, a call's)."""
        original = ws._handle_message_event
        taken = ws.get_message
        held = 0  # bytes of the message being received
        queued = 0  # bytes of whole messages not taken yet

        async def counted(event: Any) -> None:
            nonlocal held, queued
            if not event.message_finished and self.used + len(event.data) > self.limit:
                ws._max_message_size = ws._message_size  # this fragment closes it: 1009
            if event.message_finished:
                # Whole: counted as queued until taken (also while the reader waits to
                # hand it over).
                whole = ws._message_size + len(event.data)
                if whole <= ws._max_message_size:
                    self.used += whole - held
                    queued += whole
                    held = 0
            await original(event)
            now = ws._message_size
            self.used += now - held
            held = now

        async def get_message() -> Any:
            nonlocal queued
            message = await taken()
            size = min(len(message), queued)
            queued -= size
            self.used -= size
            return message

        def release() -> None:
            nonlocal held, queued
            self.used -= held + queued
            held = queued = 0

        ws._handle_message_event = counted
        ws.get_message = get_message
        return release


def connection_bound(most: int | None) -> int:
    """The connections a server holds at once: ``most`` (None: no bound of its own),
    and never over half the process's limit on open files: the rest is the
    database's (a stranger holding every descriptor made its next file open fail, and
    a failed log write closes the database)."""
    bound = 1 << 62 if most is None else most
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - not on this platform
        return bound
    if soft > 0:
        bound = min(bound, max(1, soft // 2))
    return bound


async def serve_websockets(
    handler: Callable[[Any], Awaitable[None]],
    host: str,
    port: int,
    *,
    max_message_size: int,
    connect_timeout: float,
    max_pending: int | None = None,
    max_connections: int | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve websockets (trio-websocket's ``serve_websocket``, the port bound passed
    to ``started``), except that one connection's failure ends that connection only.

    trio-websocket runs each connection's reader task beside the handler, and an
    exception in it escapes ``serve_websocket`` and stops the server: a client that
    sends a websocket ping while the server closes its connection makes wsproto raise
    ``LocalProtocolError`` (a pong cannot be sent then). Here each connection has its
    own nursery, and what escapes it is logged and dropped. ``connect_timeout`` bounds
    the HTTP upgrade (a client that never completes it is dropped); ``max_pending``
    the bytes of messages all connections together hold partly received
    (:class:`PendingBudget`); ``max_connections`` the connections open at once (see
    :func:`connection_bound`: a connection past it is answered 503 at once, so that
    its client fails then, and closed)."""
    from trio_websocket import WebSocketConnection as _Connection
    from wsproto import ConnectionType, WSConnection

    budget = None if max_pending is None else PendingBudget(max_pending)
    most_open = connection_bound(max_connections)
    open_now = 0
    # Connections past the bound being answered "503" at once (each holds its socket
    # for up to a second): past these, one is closed with no answer.
    most_refusing = max(1, most_open // 8)
    refusing = 0

    async def refuse(stream: trio.SocketStream) -> None:
        # Answered, not only closed: trio-websocket's client does not notice a socket
        # closed during its upgrade, and waited its whole connect timeout (10 s) on
        # each attempt to reach a full server. A 503 fails its attempt at once.
        nonlocal refusing
        if refusing >= most_refusing:
            await trio.aclose_forcefully(stream)
            return
        refusing += 1
        try:
            with trio.move_on_after(1):
                # Its request read first (up to its headers' end): a socket closed with
                # bytes unread is reset, and the reset may discard the answer.
                tail, read = b"", 0
                while read < 16384:
                    data = await stream.receive_some(4096)
                    read += len(data)
                    if not data or b"\r\n\r\n" in tail + data:
                        break
                    tail = data[-3:]
                await stream.send_all(_FULL)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            refusing -= 1
            await trio.aclose_forcefully(stream)

    async def connection(stream: trio.SocketStream) -> None:
        nonlocal open_now
        if open_now >= most_open:
            await refuse(stream)
            return
        open_now += 1
        release: Callable[[], None] | None = None
        try:
            async with trio.open_nursery() as nursery:
                request = None
                with trio.move_on_after(connect_timeout):
                    # trio-websocket's wrap_server_stream, with the connection's
                    # messages counted against the budget from its first frame.
                    ws = _Connection(
                        stream,
                        WSConnection(ConnectionType.SERVER),
                        max_message_size=max_message_size,
                    )
                    if budget is not None:
                        release = budget.watch(ws)
                    nursery.start_soon(ws._reader_task)
                    request = await ws._get_request()
                if request is not None:
                    await handler(request)
                nursery.cancel_scope.cancel()  # the reader task
        except* Exception as group:  # one connection's failure (a cancellation goes on)
            log.info("websocket connection failed: %r", group.exceptions)
        finally:
            open_now -= 1
            if release is not None:
                release()
            await stream.aclose()

    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:  # a host it cannot resolve or bind, a port in use
        raise InvalidArgumentError(f"cannot listen on {host}:{port}: {exc}") from exc
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, connection, listeners)
        task_status.started(bound)


#: The answer to an upgrade past the server's connection bound.
_FULL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n"
    b"Retry-After: 1\r\n\r\n"
)


class MemoryConnection:
    """One end of an in-memory connection (tests, the simulator)."""

    def __init__(
        self,
        send: trio.MemorySendChannel[bytes],
        receive: trio.MemoryReceiveChannel[bytes],
        remote: str,
    ) -> None:
        self._send = send
        self._receive = receive
        self._remote = remote
        self.closed: tuple[int, str] | None = None

    @property
    def remote(self) -> str:
        return self._remote

    async def send(self, data: bytes) -> None:
        if self.closed is not None:
            raise ConnectionClosed(*self.closed)
        try:
            await self._send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ConnectionClosed(CLOSE_GOING_AWAY, "the other side went away") from None

    async def receive(self) -> bytes:
        if self.closed is not None:
            raise ConnectionClosed(*self.closed)
        try:
            data = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise ConnectionClosed(CLOSE_GOING_AWAY, "the other side went away") from None
        if data[:4] == _CLOSE_PREFIX:
            try:
                _, (code, reason) = decode(data)
            except WireError:
                code, reason = CLOSE_GOING_AWAY, ""
            self.closed = (code, reason)
            raise ConnectionClosed(code, reason)
        return data

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        if self.closed is not None:
            return
        self.closed = (code, reason)
        with trio.move_on_after(1) as scope:
            scope.shield = True
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._send.send(encode(Msg.CLOSE, code, reason[:120]))
        await self._send.aclose()


_CLOSE_PREFIX = encode(Msg.CLOSE, 0, "")[:4]


def memory_pair(a: str = "a", b: str = "b") -> tuple[MemoryConnection, MemoryConnection]:
    """Two connected ends (``a`` talks to ``b``); the protocol's window bounds what waits."""
    a_send, b_receive = trio.open_memory_channel[bytes](math.inf)
    b_send, a_receive = trio.open_memory_channel[bytes](math.inf)
    return MemoryConnection(a_send, a_receive, b), MemoryConnection(b_send, b_receive, a)
