"""A database as a peer: the handshake and the endpoint of a sync connection.

:mod:`koru.nursery._session` drives a connection; this module is the database's half
of it. The handshake is mutual: the server's challenge is answered with the client's
node key (:meth:`Database.respond`), the client's own challenge with the server's, and
each side opens a session for the other on its own database (:meth:`open_session`),
so each checks the other's proof of work, signature and capabilities by its own
rules. A peer must hold ``read`` on everything on the side it syncs with (it receives
every feed); the events it sends are taken by the side's authorized handle
(:class:`~koru._proven.ProvenIngest`: sealed by their origin, allowed to their author).

Credentials: each side presents the grants made to its key (signed statements), and
the other stores those to its key that can take effect. Nodes enrolled by one owner
(:meth:`Database.enroll`: the owner becomes a root of the node, and grants the node
admin on everything) therefore sync with each other with no other set-up.
"""

from __future__ import annotations

import logging
import random
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import cbor2
import trio

from koru.events import (
    READ,
    CodecError,
    Grant,
    InvalidArgumentError,
    KoruError,
    PermissionDeniedError,
    PublicIdentity,
    event_id,
    node_id_of,
    refuse_tags,
)
from koru.nursery import (
    CLOSE_INTERNAL,
    CLOSE_POLICY,
    Authenticate,
    CallBudget,
    Challenged,
    Feed,
    Limits,
    PeerProtocol,
    WebSocketConnection,
    Welcomed,
    WireError,
    run_session,
    serve_websockets,
)

from ._sessions import Challenge, Response

if TYPE_CHECKING:
    from ._authorized import AuthorizedDatabase
    from ._database import Database
    from ._identity import Identity

__all__ = ["PeerBook", "PeerHandshake", "dial_gossiped", "enroll", "join", "serve"]

log = logging.getLogger("koru.peers")

#: A credential is arrays, ints, text and bytes (no shared references: see events' _tags).
_NO_TAGS = refuse_tags()

#: Grants presented in a handshake, at most.
MAX_CREDENTIALS = 64


def _credentials(db: Database) -> list[bytes]:
    """The grants made to this node's key, as signed statements."""
    node = db._authority.public
    if node is None:
        return []
    grants = db._authority.state.grants.values()
    mine = [g for g in grants if g.grantee == node.public_key]
    return [cbor2.dumps(list(g)) for g in mine[:MAX_CREDENTIALS]]


async def _take_credentials(
    db: Database, identity: PublicIdentity, credentials: list[bytes]
) -> None:
    """Store the presented grants to ``identity`` that can take effect here (after
    registering it, only if one does: a stranger presenting grants of its own making
    writes nothing); the others are ignored."""
    grants = []
    now = db._writer.read_time()
    for raw in credentials[:MAX_CREDENTIALS]:
        try:
            grant = Grant.decode(cbor2.loads(raw, max_depth=8, semantic_decoders=_NO_TAGS))
        except (CodecError, ValueError, TypeError, cbor2.CBORDecodeError):
            continue
        if grant.grantee == identity.public_key and db._authority.could_take_effect(grant, now):
            grants.append(grant)
    if not grants:  # nothing that counts: the identity is not registered for junk
        return
    state = db._authority.state
    if identity.public_key not in state.identities:
        await db.register(identity)
    for grant in grants:
        if grant.id in state.grants:
            continue
        try:
            await db.grant(grant)
        except KoruError as exc:
            log.debug("a presented grant was not stored: %s", exc)


def dialable(address: str) -> bool:
    """True if ``address`` is a websocket url a join can dial: ``ws://`` or ``wss://``,
    a host (each label one a name resolver takes) and a port if any in range. Anything
    else makes the websocket library raise ValueError (from a gossiped address, out of
    the dialer)."""
    try:
        parts = urllib.parse.urlsplit(address)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            return False
        _ = parts.port  # raises ValueError for a port that is not one
        parts.hostname.encode("idna")  # raises UnicodeError for an empty or long label
    except ValueError:
        return False
    return True


#: One peer holds at most this share of the address book; an address dropped is not
#: taken again from gossip for this many seconds.
SHARE = 8
FORGOTTEN = 600.0


class PeerBook:
    """Peer addresses this node knows (its own listen address, those it dialed,
    those gossiped to it), bounded."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self.own: str | None = None
        self.addresses: dict[str, None] = {}
        #: Who gave each address (a peer's name; None: this node's own word), and how
        #: many each peer holds: at most ``limit // SHARE``, so that one peer cannot
        #: fill the book with junk and keep every other peer's addresses out.
        self._source: dict[str, str | None] = {}
        self._held: dict[str, int] = {}
        #: Addresses dropped (never connected), by when: not taken again from gossip
        #: for FORGOTTEN seconds (at most ``limit`` remembered).
        self._gone: dict[str, float] = {}
        self.changed = trio.Event()
        #: Node ids with an open connection (one connection per pair of nodes), and
        #: the node last seen at each address.
        self.connected: set[bytes] = set()
        self.node_at: dict[str, bytes] = {}
        #: Addresses a join loop keeps a connection to; whether the dialer runs.
        self.dialing: set[str] = set()
        self.dialer = False

    def connect(self, node: bytes, own: bytes) -> None:
        """Note a connection to ``node``; refuse a second one, or one to itself."""
        if node == own:
            raise InvalidArgumentError("a node does not sync with itself")
        if node in self.connected:
            raise InvalidArgumentError("this node is connected to that node already")
        self.connected.add(node)

    def saw(self, address: str, node: bytes) -> None:
        """Note ``node`` at ``address`` (the newest first to stay: each connection may
        name a new address, so the map is bounded as the book is)."""
        self.node_at.pop(address, None)
        while len(self.node_at) >= self.limit:
            del self.node_at[next(iter(self.node_at))]
        self.node_at[address] = node

    def busy(self, address: str) -> bool:
        """True if the node last seen at ``address`` is connected (another way)."""
        node = self.node_at.get(address)
        return node is not None and node in self.connected

    def add(self, address: str, source: str | None = None) -> None:
        """Note ``address``, heard from the peer ``source`` (None: this node's own)."""
        if (
            type(address) is not str
            or not dialable(address)
            or address == self.own
            or address in self.addresses
            or len(self.addresses) >= self.limit
        ):
            return
        if source is not None:
            if self._held.get(source, 0) >= self.limit // SHARE:
                return
            gone = self._gone.get(address)
            if gone is not None and trio.current_time() < gone + FORGOTTEN:
                return
            self._held[source] = self._held.get(source, 0) + 1
        self._gone.pop(address, None)
        self.addresses[address] = None
        self._source[address] = source
        self._changed()

    def forget(self, address: str) -> None:
        """Drop ``address`` (it never connected): its place is another's."""
        if address not in self.addresses:
            return
        del self.addresses[address]
        source = self._source.pop(address, None)
        if source is not None:
            held = self._held[source] - 1
            if held:
                self._held[source] = held
            else:
                del self._held[source]
        while len(self._gone) >= self.limit:
            del self._gone[next(iter(self._gone))]
        self._gone[address] = trio.current_time()
        self._changed()

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def known(self) -> list[str]:
        out = list(self.addresses)
        if self.own is not None:
            out.append(self.own)
        return out


class DatabaseEndpoint:
    """One connection's view of the local database (see nursery's ``Endpoint``)."""

    def __init__(self, db: Database, handle: AuthorizedDatabase, name: str, book: PeerBook) -> None:
        self.name = name
        self._db = db
        self._handle = handle
        self._book = book
        self.results = {"accepted": 0, "duplicates": 0, "refused": 0}

    def heads(self) -> Mapping[Feed, tuple[int, bytes]]:
        return self._db._feeds.heads

    def _may_read(self) -> None:
        """The other side still holds ``read`` on everything here (checked before
        anything is sent: a grant revoked, or a session expired, while its connection
        stays open must not let it go on receiving every new write)."""
        try:
            self._handle._allow_everything(READ)
        except KoruError as exc:
            raise WireError(CLOSE_POLICY, f"no longer allowed to read everything: {exc}") from None

    async def fetch(self, feed: Feed, after: int, upto: int, max_bytes: int) -> list[bytes]:
        self._may_read()
        await self._db._life.enter()
        return await self._db._feed_range(feed[0], feed[1], after, upto - after, max_bytes)

    async def recent(self, window: int) -> list[tuple[Feed, int, bytes]]:
        out = []
        for feed, (seq, _) in list(self._db._feeds.heads.items()):
            after = max(0, seq - window)
            events = await self._db.feed_events(feed[0].hex(), feed[1], after, seq - after)
            out += [(feed, after + i + 1, event_id(data)) for i, data in enumerate(events)]
        return out

    async def before_push(self) -> None:
        await self._db.seal()

    async def ingest(self, events: list[bytes]) -> None:
        try:
            result = await self._handle.ingest(events)
        except PermissionDeniedError as exc:
            # A read-only peer (admitted: it reads everything) writes nothing here: its
            # events are refused, and its session goes on (it receives everything).
            self.results["refused"] += len(events)
            log.info("peer %s: its events are refused: %s", self.name, exc)
            return
        self.results["accepted"] += result.accepted
        self.results["duplicates"] += result.duplicates
        if result.refused:
            self.results["refused"] += len(result.refused)
            for refused in result.refused[:3]:
                log.info("peer %s: event refused: %s", self.name, refused.reason)

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        observers = self._db._writer.observers

        def observe(event: Any, eid: bytes, location: int) -> None:
            wake()

        observers.append(observe)
        return lambda: observers.remove(observe) if observe in observers else None

    async def serve(self, payload: bytes) -> bytes:
        raise InvalidArgumentError("requests are not served on this connection")

    @asynccontextmanager
    async def stream(self, payload: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        raise InvalidArgumentError("requests are not served on this connection")
        yield  # pragma: no cover

    def heard(self, addresses: list[str]) -> None:
        for address in addresses:
            self._book.add(address, self.name)

    def known_peers(self) -> list[str]:
        return self._book.known()


class PeerHandshake:
    """The database's half of the handshake (nursery's ``Handshake``)."""

    def __init__(
        self,
        db: Database,
        book: PeerBook,
        *,
        role: str = "peer",
        expect: bytes | None = None,
        address: str | None = None,
    ) -> None:
        self._address = address
        #: The other node's id, once admitted (released when the connection ends).
        self.node: bytes | None = None
        #: The session opened for the other side, and its handle on this database
        #: (both ended when the connection ends).
        self.session: Any = None
        self.handle: AuthorizedDatabase | None = None
        self._db = db
        self._book = book
        self._role = role
        self._expect = expect
        self._challenge: Challenge | None = None
        self._server_key = b""

    async def hello(self) -> tuple[bytes, bytes, int, bytes]:
        challenge = await self._db.challenge()
        return challenge.server, challenge.nonce, challenge.expires, bytes.fromhex(self._db.node_id)

    async def admit(self, auth: Authenticate, server_challenge: bytes) -> tuple[Any, list[Any]]:
        db = self._db
        try:
            identity = PublicIdentity.decode([auth.public_key, auth.nonce])
        except CodecError as exc:
            raise InvalidArgumentError(f"a malformed identity: {exc}") from None
        node = db._authority.node
        session = self.session = await db.open_session(
            Response(identity, node.public_key, server_challenge, auth.signature)
        )
        await _take_credentials(db, identity, auth.credentials)
        handle = self.handle = db.as_identity(session)
        answer = node.respond(Challenge(auth.public_key, auth.challenge, 0))
        welcome = [node.public.nonce, answer.signature, bytes.fromhex(db.node_id), _credentials(db)]
        if auth.role == "client":  # calls, each checked by the handle; no feeds
            from ._serving import ClientEndpoint

            name = f"client {identity.public_key.hex()[:16]}"
            return ClientEndpoint(handle, identity.public_key, name, db._served_calls()), welcome
        if auth.role != "peer":
            raise InvalidArgumentError(f"no role {auth.role!r} (peer or client)")
        handle._allow_everything(1)  # READ: a peer receives every feed
        peer = node_id_of(identity.public_key)
        self._book.connect(peer, bytes.fromhex(db.node_id))
        self.node = peer
        if auth.listen is not None:
            # Gossip only: which node is at an address is learned from the node there
            # (its HELLO, when this node dials it), never from a peer's word: a peer
            # naming another node's address would have this node's join to it wait
            # for as long as that peer stayed connected.
            name = identity.public_key.hex()[:16]
            self._book.add(auth.listen, name)
        return DatabaseEndpoint(db, handle, identity.public_key.hex()[:16], self._book), welcome

    async def answer(self, challenged: Challenged) -> list[Any]:
        db = self._db
        if self._expect is not None and challenged.server_key != self._expect:
            raise PermissionDeniedError(
                "this node", "sync", "a server", f"{challenged.server_key.hex()[:16]}..."
            )
        self._server_key = challenged.server_key
        if self._address is not None:  # the node at this address says who it is
            self._book.saw(self._address, challenged.node)
        node = db._authority.node
        response = node.respond(
            Challenge(challenged.server_key, challenged.nonce, challenged.expires)
        )
        self._challenge = mine = await db.challenge()
        return [
            node.public_key,
            node.public.nonce,
            response.signature,
            mine.nonce,
            _credentials(db),
            self._book.own,
        ]

    async def welcomed(self, welcome: Welcomed) -> DatabaseEndpoint:
        db = self._db
        assert self._challenge is not None
        try:
            identity = PublicIdentity.decode([self._server_key, welcome.nonce])
        except CodecError as exc:
            raise InvalidArgumentError(f"a malformed identity: {exc}") from None
        session = self.session = await db.open_session(
            Response(
                identity, db._authority.node.public_key, self._challenge.nonce, welcome.signature
            )
        )
        await _take_credentials(db, identity, welcome.credentials)
        handle = self.handle = db.as_identity(session)
        handle._allow_everything(1)  # the server must be able to read what we send it
        peer = node_id_of(identity.public_key)
        if self._address is not None:
            self._book.saw(self._address, peer)
        self._book.connect(peer, bytes.fromhex(db.node_id))
        self.node = peer
        return DatabaseEndpoint(db, handle, welcome.node.hex()[:16], self._book)


async def enroll(db: Database, owner: Identity) -> None:
    """Make ``owner`` a root of ``db`` and have it grant this node admin (read, write
    and the definitions) on everything (see :meth:`Database.enroll`)."""
    node = await db.mine_identity()
    await db.register(owner.public)
    await db.grant(owner.public, actions="admin")
    await db.grant(Grant.create(owner, node.public_key, actions="admin"))


async def _prepared(db: Database) -> None:
    """A node's key with the proof of work its peers ask for (mined once)."""
    await db.mine_identity()


async def serve(
    db: Database,
    book: PeerBook,
    host: str,
    port: int,
    *,
    limits: Limits,
    sessions: set[Any],
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve peers and clients over websockets until cancelled."""
    await _prepared(db)
    calls = CallBudget(limits.max_call_bytes)  # all connections' calls together

    async def handler(request: Any) -> None:
        ws = await request.accept()
        remote = f"{request.remote.address}:{request.remote.port}" if request.remote else "?"
        conn = WebSocketConnection(ws, remote)
        try:
            await _run(
                db,
                book,
                conn,
                server=True,
                role="peer",
                limits=limits,
                sessions=sessions,
                calls=calls,
            )
        except Exception:
            # One connection's failure (a defect here) must not stop the server.
            log.exception("peer session with %s failed", remote)
            await conn.aclose(CLOSE_INTERNAL, "internal error")

    class Listening:
        """Passed the port bound once listening (no nursery of this function's own:
        one would wrap an address it cannot listen on in an ExceptionGroup)."""

        def started(self, bound: int) -> None:
            if book.own is None:
                book.own = f"ws://{host}:{bound}"
            task_status.started(bound)

    # nursery's serve_websockets, not trio-websocket's serve_websocket: one
    # connection's failure inside trio-websocket must not stop the server.
    await serve_websockets(
        handler,
        host,
        port,
        # Until the handshake (the session raises it): a stranger's frame is
        # refused (1009) once past the handshake's limit, never buffered whole.
        max_message_size=limits.max_handshake_message,
        # A connection that never completes the HTTP upgrade (slowloris).
        connect_timeout=limits.handshake_timeout,
        # Many connections, each with a large message half sent, pin no more
        # than this together.
        max_pending=limits.max_pending,
        # Sockets held at once (a stranger's too, before its upgrade).
        max_connections=limits.max_connections,
        task_status=Listening(),  # type: ignore[arg-type]
    )


async def _run(
    db: Database,
    book: PeerBook,
    conn: Any,
    *,
    server: bool,
    role: str,
    limits: Limits,
    sessions: set[Any],
    expect: bytes | None = None,
    address: str | None = None,
    on_open: Callable[[Any], None] | None = None,
    calls: CallBudget | None = None,
) -> Any:
    proto = PeerProtocol(
        server=server,
        role=role,
        heads=lambda: db._feeds.heads,
        now=trio.current_time(),
        limits=limits,
        own=bytes.fromhex(db.node_id),
    )
    sessions.add(proto)
    handshake = PeerHandshake(db, book, role=role, expect=expect, address=address)
    try:
        return await run_session(conn, proto, handshake, on_open=on_open, calls=calls)
    finally:
        sessions.discard(proto)
        if handshake.handle is not None:  # its session ends, its unproven events go
            await handshake.handle.aclose()
        if handshake.node is not None:
            book.connected.discard(handshake.node)
        if handshake.session is not None:  # refused or closed: nothing acts through it
            db._sessions.end(handshake.session)


async def join(
    db: Database,
    book: PeerBook,
    url: str,
    *,
    limits: Limits,
    sessions: set[Any],
    rng: random.Random,
    expect: bytes | None = None,
    give_up: int | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep a connection to the peer at ``url``: reconnect with backoff (1 s doubling
    to 30 s, jittered) whenever it ends, until cancelled (or, with ``give_up``, until
    that many attempts in a row open no connection). ``started`` once the first
    connection is open."""
    from trio_websocket import HandshakeError, open_websocket_url

    await _prepared(db)
    book.add(url)
    book.dialing.add(url)
    delay = 1.0
    started = False
    failed = 0

    def opened(_: Any) -> None:
        nonlocal started, delay, failed
        delay = 1.0
        failed = -1  # (this attempt counts as none)
        if not started:
            started = True
            task_status.started()

    while True:
        if book.busy(url):  # connected to that node the other way: wait, then look again
            await trio.sleep(delay * (1 + rng.random() / 4))
            delay = min(delay * 2, 30.0)
            continue
        dialed = False
        try:
            # The handshake's limit until admitted (the session raises it).
            handshake_limit = limits.max_handshake_message
            async with open_websocket_url(url, max_message_size=handshake_limit) as ws:
                dialed = True
                end = await _run(
                    db,
                    book,
                    WebSocketConnection(ws, url),
                    server=False,
                    role="peer",
                    limits=limits,
                    sessions=sessions,
                    expect=expect,
                    address=url,
                    on_open=opened,
                )
                log.info("peer %s: connection ended (%s) %s", url, end.code, end.reason)
        except (OSError, HandshakeError, trio.BrokenResourceError) as exc:
            log.info("peer %s: cannot connect: %s", url, exc)
        except ValueError as exc:  # an address the websocket library cannot dial
            if dialed:
                raise
            log.info("peer %s: cannot connect: %s", url, exc)
        failed += 1
        if give_up is not None and failed >= give_up:
            log.info("peer %s: given up after %d attempts", url, failed)
            return
        await trio.sleep(delay * (1 + rng.random() / 4))
        delay = min(delay * 2, 30.0)


#: Gossiped addresses a node dials, at most; the attempts in a row that open no
#: connection after which a gossiped address is dropped (its place is another's).
MAX_DIALED = 8
GIVE_UP = 5


async def dial_gossiped(
    db: Database,
    book: PeerBook,
    *,
    limits: Limits,
    sessions: set[Any],
    rng: random.Random,
) -> None:
    """Join every address the book learns (gossip), up to :data:`MAX_DIALED`, until
    cancelled. A node reached another way is not dialed again (see ``join``)."""
    if book.dialer:
        return
    book.dialer = True
    try:
        dialed = 0

        async def dial(address: str) -> None:
            nonlocal dialed
            await join(
                db, book, address, limits=limits, sessions=sessions, rng=rng, give_up=GIVE_UP
            )
            dialed -= 1  # never connected: dropped, another is dialed
            book.dialing.discard(address)
            book.forget(address)

        async with trio.open_nursery() as nursery:
            while True:
                for address in list(book.addresses):
                    if address in book.dialing or dialed >= MAX_DIALED:
                        continue
                    dialed += 1
                    book.dialing.add(address)
                    nursery.start_soon(dial, address)
                await book.changed.wait()
    finally:
        book.dialer = False
