"""The database's calls for peers: serve, join, enroll (see :mod:`koru._peering`)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, NamedTuple

import trio

from koru.events import InvalidArgumentError
from koru.nursery import Limits, PeerProtocol

from ._identity import Identity
from ._peering import PeerBook, dial_gossiped, dialable, enroll, join, serve

if TYPE_CHECKING:
    from ._database import Database
    from ._serving import ServedCalls

__all__ = ["PeerCalls", "PeerInfo"]


class PeerInfo(NamedTuple):
    """One open connection of this node: its role, whether it has the same events as
    the other side (as of the last summary both agreed on), and its counters."""

    server: bool
    role: str
    open: bool
    in_sync: bool
    events_sent: int
    events_received: int
    bytes_sent: int
    bytes_received: int


_LIMITS = Limits()


class PeerCalls:
    """Mixed into :class:`koru.Database`."""

    _peer_book: PeerBook | None = None
    _peer_sessions: set[PeerProtocol] | None = None
    _served: ServedCalls | None = None
    peer_limits: Limits = _LIMITS

    def _peering(self) -> tuple[PeerBook, set[PeerProtocol]]:
        if self._peer_book is None or self._peer_sessions is None:
            self._peer_book = PeerBook()
            self._peer_sessions = set()
        return self._peer_book, self._peer_sessions

    def _served_calls(self) -> ServedCalls:
        """The answers of clients' recent writes (one table for all connections)."""
        if self._served is None:
            from ._serving import ServedCalls

            self._served = ServedCalls()
        return self._served

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve peers (and, over the same port, clients) over websockets until
        cancelled; nursery-shaped: ``port = await nursery.start(db.serve)`` returns once
        listening, with the port bound (``port=0`` picks a free one)::

            async with koru.open(path) as db, trio.open_nursery() as nursery:
                port = await nursery.start(db.serve, "0.0.0.0", 7878)

        Peers must hold ``read`` on everything here; see :meth:`enroll`."""
        if type(host) is not str or type(port) is not int or not 0 <= port < 65536:
            raise InvalidArgumentError(f"serve takes a host and a port, not {host!r}, {port!r}")
        db: Database = self  # type: ignore[assignment]
        book, sessions = self._peering()
        await serve(
            db,
            book,
            host,
            port,
            limits=self.peer_limits,
            sessions=sessions,
            task_status=task_status,
        )

    async def join(
        self,
        url: str,
        *,
        server_key: bytes | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sync with the node serving at ``url`` (``ws://host:port``, or ``host:port``)
        until cancelled, reconnecting with backoff whenever the connection ends;
        nursery-shaped: ``await nursery.start(db.join, url)`` returns once the first
        connection is open. ``server_key`` (the server's public key, if known) refuses
        any other server (a relay in between)."""
        if type(url) is not str or not url:
            raise InvalidArgumentError(f"join takes a url, not {url!r}")
        if not url.startswith(("ws://", "wss://")):
            url = f"ws://{url}"
        if not dialable(url):
            raise InvalidArgumentError(f"join takes a ws:// url (host and port), not {url!r}")
        db: Database = self  # type: ignore[assignment]
        book, sessions = self._peering()
        rng = random.Random(db._sessions_entropy.token(8))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._dialer)
            await join(
                db,
                book,
                url,
                limits=self.peer_limits,
                sessions=sessions,
                rng=rng,
                expect=server_key,
                task_status=task_status,
            )

    async def _dialer(self) -> None:
        db: Database = self  # type: ignore[assignment]
        book, sessions = self._peering()
        rng = random.Random(db._sessions_entropy.token(8))
        await dial_gossiped(db, book, limits=self.peer_limits, sessions=sessions, rng=rng)

    async def enroll(self, owner: Identity) -> None:
        """Make ``owner`` a root of this database (an admin grant from the node key) and
        have it grant this node admin on everything (read, write, and index, view and
        workspace definitions, which replicas pass each other). Nodes enrolled by the
        same owner accept each other as peers with no other set-up (each presents the
        owner's grant in the handshake). Idempotent."""
        if not isinstance(owner, Identity):
            raise InvalidArgumentError(f"enroll takes an Identity, not {owner!r}")
        db: Database = self  # type: ignore[assignment]
        await enroll(db, owner)

    async def peer_sessions(self) -> list[PeerInfo]:
        """This node's open and opening connections (peers and clients)."""
        await trio.lowlevel.checkpoint()
        _, sessions = self._peering()
        return [
            PeerInfo(
                p.server,
                p.role,
                p.open,
                p.in_sync,
                p.events_sent,
                p.events_received,
                p.bytes_sent,
                p.bytes_received,
            )
            for p in sessions
        ]

    def _peer_protocols(self) -> list[Any]:
        return list(self._peering()[1])
