"""The peer protocol as a state machine with no I/O (sans-io).

The driver (:mod:`koru.nursery._session`, over a websocket or an in-memory pair) hands
every received message to :meth:`PeerProtocol.receive` with the time, and carries out
the commands it returns: send bytes, verify a handshake, ingest events, serve a
request, close. Nothing here awaits, reads a clock or touches a socket, so the same
object runs over a real network, in memory, and in the simulator, and a test drives it
message by message.

A connection:

1. **Handshake.** The server sends ``HELLO`` (its challenge) and nothing else until a
   valid ``AUTH`` arrives; any other message, a second message before the verdict, or
   no ``AUTH`` within the handshake timeout closes with a policy-violation code. The
   driver checks ``AUTH`` (signature, proof of work, capability) and answers with
   :meth:`PeerProtocol.accept` (``WELCOME``, the server's own proof) or
   :meth:`PeerProtocol.refuse`. The client checks ``WELCOME`` the same way.
2. **Reconciliation** (peers): both sides send ``SUMMARY``, the root of their
   :class:`~koru.nursery._feedtree.FeedTree` (identical sets: one round trip, 32 bytes
   of hash). Where roots differ each side sends, per differing subtree, its heads
   (``HEADS``, when the subtree holds few feeds) or its children's hashes
   (``RANGES``), and on a peer's heads queues, per feed, the events after the peer's
   head. With few feeds that is two round trips before events flow.
3. **Streaming.** Queued events go out in ``EVENTS`` batches, at most ``window``
   unacknowledged (so memory stays bounded by a few batches on both sides); the
   receiver ``ACK``\\ s each once ingested. Afterwards every local write is pushed as
   it happens (:meth:`PeerProtocol.local_changed`), and a ``SUMMARY`` after each
   drained push, and every ``resync`` seconds, settles anything a push missed.
4. **Liveness.** ``PING`` every ``heartbeat`` seconds of silence from this side; a
   connection silent past ``idle_timeout`` closes.

Clients (role ``client``) skip 2 and 3 and send ``REQUEST``\\ s instead.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import blake3

from ._feedtree import MAX_DEPTH, Feed, FeedTree, feed_tag
from ._peek import feed_of, split_events
from ._wire import (
    CLOSE_GOING_AWAY,
    CLOSE_INVALID_PAYLOAD,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_LATER,
    Msg,
    WireError,
    decode,
    encode,
)

__all__ = [
    "MALFORMED_BEFORE_HANDSHAKE",
    "Authenticate",
    "Close",
    "Command",
    "Ingest",
    "Limits",
    "PeerProtocol",
    "PeersHeard",
    "Reply",
    "Request",
    "Send",
    "Welcomed",
]

PEER = "peer"
CLIENT = "client"

#: How the reason of a close for a malformed message before the handshake begins (code
#: 1008, as every violation there): the other side sent something this side could not
#: decode. A client that knows it sent a well-formed AUTH reads it as its message
#: damaged on the way (a connection to make again), not as a verdict on its identity.
MALFORMED_BEFORE_HANDSHAKE = "before the handshake: "

#: Heads of feeds this side does not hold, remembered at most.
_MAX_PEER_TAGS = 65536
#: Subtrees whose heads this side sent this round, remembered at most (a peer names
#: any number of them; a forgotten one only costs its heads sent again).
_MAX_HEADS_SENT = 65536
#: A subtree with at most this many feeds is settled by sending its heads.
HEADS_LIMIT = 64
_IDENTITY_AGENT = "identity"


class Limits(NamedTuple):
    """Bounds on a connection (seconds, bytes, messages)."""

    #: Largest message before the handshake and after it.
    max_handshake_message: int = 64 * 1024
    max_message: int = 96 * 1024 * 1024
    #: A server's connections together: bytes of messages partly received, or whole
    #: and not yet read (a message is assembled from its fragments; one past this
    #: closes its connection, 1009).
    max_pending: int = 256 * 1024 * 1024
    #: A server's connections open at once (each holds a socket: past the process's
    #: file limit the database's own files could not be opened); more are closed at
    #: once. At most half the process's file limit is used, whatever this says.
    max_connections: int = 1024
    #: A server's connections together: bytes of the clients' calls being answered
    #: (requests, and answers not yet sent); past it a connection's next call waits
    #: unread (see ``CallBudget``). Each connection's own bound is 128 MiB.
    max_call_bytes: int = 512 * 1024 * 1024
    #: Time to complete the handshake, and to stay silent after it.
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    heartbeat: float = 15.0
    #: A SUMMARY this often, even with nothing new: what settles a missed push.
    resync: float = 30.0
    #: Messages a second (sustained) and burst, after the handshake.
    rate: float = 5000.0
    burst: float = 20000.0
    #: Events per EVENTS message (and bytes), and unacknowledged EVENTS messages.
    #: Bloom mode: events per feed (the newest) a side offers in a Bloom filter at
    #: open, so that the other side pushes what it lacks of them after one round trip
    #: (0: off); bits per event in the filter.
    bloom_window: int = 0
    bloom_bits: int = 10
    batch_events: int = 2000
    batch_bytes: int = 1 << 20
    window: int = 4


_DEFAULT_LIMITS = Limits()


class Send(NamedTuple):
    data: bytes


class Close(NamedTuple):
    code: int
    reason: str


class Authenticate(NamedTuple):
    """Server: check the client's ``AUTH``, then call accept() or refuse()."""

    public_key: bytes
    nonce: bytes
    signature: bytes
    challenge: bytes
    role: str
    credentials: list[bytes]
    listen: str | None


class Challenged(NamedTuple):
    """Client: the server's challenge; sign it, then call authenticate()."""

    server_key: bytes
    nonce: bytes
    expires: int
    node: bytes


class Welcomed(NamedTuple):
    """Client: check the server's ``WELCOME``, then call accept() or refuse()."""

    nonce: bytes
    signature: bytes
    node: bytes
    credentials: list[bytes]


class Ingest(NamedTuple):
    """Take these events in, then call ingested()."""

    events: list[bytes]


class Request(NamedTuple):
    """Server: a client's call; answer with reply() (or stream_item/stream_end)."""

    call: int
    payload: bytes


class Reply(NamedTuple):
    """Client: an answer (``kind`` RESPONSE, STREAM_ITEM or STREAM_END) to a call."""

    kind: Msg
    call: int
    payload: bytes | None


class BloomAsked(NamedTuple):
    """The peer sent a Bloom filter of its newest ``window`` events per feed: answer
    with bloom_answer() and this side's newest events."""

    window: int
    hashes: int
    bits: bytes


class NeedRecent(NamedTuple):
    """Bloom mode: give bloom_offer() this side's newest ``window`` events per feed."""

    window: int


class PeersHeard(NamedTuple):
    addresses: list[str]


class CancelCall(NamedTuple):
    call: int


#: Something the driver must do.
Command = (
    Send
    | Close
    | Authenticate
    | Challenged
    | Welcomed
    | Ingest
    | Request
    | Reply
    | PeersHeard
    | CancelCall
    | BloomAsked
    | NeedRecent
)


class _State(enum.Enum):
    HELLO = "awaiting HELLO"
    AUTH = "awaiting AUTH"
    VERDICT = "checking AUTH"
    SIGNING = "answering HELLO"
    WELCOME = "awaiting WELCOME"
    CHECK = "checking WELCOME"
    OPEN = "open"
    CLOSED = "closed"


_PRE_AUTH = {
    _State.HELLO: frozenset({Msg.HELLO}),
    _State.AUTH: frozenset({Msg.AUTH}),
    _State.VERDICT: frozenset(),
    _State.SIGNING: frozenset(),
    _State.WELCOME: frozenset({Msg.WELCOME}),
    _State.CHECK: frozenset(),
}
_PEER_MESSAGES = frozenset(
    {
        Msg.SUMMARY,
        Msg.RANGES,
        Msg.HEADS,
        Msg.EVENTS,
        Msg.ACK,
        Msg.BLOOM,
        Msg.PING,
        Msg.PONG,
        Msg.PEERS,
    }
)
_SERVER_OF_CLIENT = frozenset({Msg.REQUEST, Msg.CANCEL, Msg.PING, Msg.PONG})
_CLIENT_OF_SERVER = frozenset({Msg.RESPONSE, Msg.STREAM_ITEM, Msg.STREAM_END, Msg.PING, Msg.PONG})


class PeerProtocol:
    """One side of one connection (see the module doc)."""

    def __init__(
        self,
        *,
        server: bool,
        role: str,
        heads: Callable[[], Mapping[Feed, tuple[int, bytes]]],
        now: float,
        limits: Limits = _DEFAULT_LIMITS,
        own: bytes | None = None,
    ) -> None:
        if role not in (PEER, CLIENT):
            raise ValueError(f"role is 'peer' or 'client', not {role!r}")
        self.server = server
        self.role = role
        self.limits = limits
        #: This node's identity feed goes first of all: the identities and grants it
        #: stored for the nodes it met are what make their feeds acceptable.
        self._first: Feed | None = None if own is None else (own, _IDENTITY_AGENT)
        #: The feed the last push came from: the next continues it (see next_push);
        #: the same of identity feeds, pushed before the others.
        self._pushing: Feed | None = None
        self._pushing_identity: Feed | None = None
        self._heads = heads
        self._state = _State.AUTH if server else _State.HELLO
        self._opened_at = now
        self._last_received = now
        #: This side stopped reading (backpressure): the peer's silence is not measured.
        self._unread = False
        self._last_sent = now
        self._last_summary = now
        self._tokens = limits.burst
        self._tokens_at = now
        self._ping = 0
        #: The salt of feed tags: both sides' challenges, known once the client speaks.
        self._salt = b""
        self.server_challenge = b""
        # Reconciliation.
        self._tree: FeedTree | None = None
        self._heads_sent: set[tuple[int, int]] = set()
        self.peer_heads: dict[Feed, int] = {}
        self._queue: dict[Feed, tuple[int, int]] = {}
        #: Batches sent and not acknowledged yet, oldest first: (feed, last seq).
        self._unacked: collections.deque[tuple[Feed, int, bool]] = collections.deque()
        #: Feeds whose queued range a Bloom filter suggested (a false positive may
        #: have left a gap at the peer, so its ACK proves nothing).
        self._guessed: set[Feed] = set()
        #: A peer sends one Bloom filter, when the connection opens.
        self._bloom_heard = False
        #: Per feed, the last seq the peer acknowledged taking in (ACKs arrive in order,
        #: after the peer ingested the batch, so heads it sends later include them).
        self._acked: dict[Feed, int] = {}
        self._reconciled = False
        self._summary_sent: bytes | None = None
        self._agreed: bytes | None = None
        self._pushed_since_summary = False
        self._stalled: dict[Feed, float] = {}
        self._peer_tags: dict[bytes, int] = {}
        #: Counters (for stats and the sync bench).
        self.bytes_sent = 0
        self.bytes_received = 0
        self.messages_sent = 0
        self.reconcile_bytes_sent = 0
        self.reconcile_messages = 0
        #: Reconciliation messages this side had sent when it sent its first events
        #: (its round trips before events flowed).
        self.reconcile_messages_before_events = 0
        self.event_bytes_sent = 0
        self.events_sent = 0
        self.events_received = 0
        self.close_code: int | None = None
        self.close_reason = ""

    # -- state ---------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._state is _State.OPEN

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def in_sync(self) -> bool:
        """True when the peer last reported the root this side holds now."""
        return self._agreed is not None and self._agreed == FeedTree(self._heads()).root()

    @property
    def busy(self) -> bool:
        """True while events wait to be sent or acknowledged."""
        return bool(self._queue) or bool(self._unacked)

    def _send(self, kind: Msg, *fields: Any, reconcile: bool = False) -> Send:
        data = encode(kind, *fields)
        self.bytes_sent += len(data)
        self.messages_sent += 1
        if reconcile:
            self.reconcile_bytes_sent += len(data)
            self.reconcile_messages += 1
        return Send(data)

    def _close(self, code: int, reason: str) -> list[Command]:
        if self._state is _State.CLOSED:
            return []
        self._state = _State.CLOSED
        self.close_code, self.close_reason = code, reason
        return [Close(code, reason)]

    # -- the handshake -------------------------------------------------------------------

    def hello(self, server_key: bytes, nonce: bytes, expires: int, node: bytes) -> list[Command]:
        """Server: the first message (its challenge)."""
        self.server_challenge = nonce
        return [self._send(Msg.HELLO, server_key, nonce, expires, node)]

    def authenticate(
        self,
        public_key: bytes,
        nonce: bytes,
        signature: bytes,
        challenge: bytes,
        credentials: list[bytes],
        listen: str | None,
    ) -> list[Command]:
        """Client: answer HELLO (the driver signs; ``challenge`` is the client's own)."""
        self._salt = self.server_challenge + challenge
        self._state = _State.WELCOME
        return [
            self._send(
                Msg.AUTH, public_key, nonce, signature, challenge, self.role, credentials, listen
            )
        ]

    def accept(
        self,
        nonce: bytes = b"",
        signature: bytes = b"",
        node: bytes = b"",
        credentials: list[bytes] | None = None,
    ) -> list[Command]:
        """The verdict was yes: open (a server also sends WELCOME with its proof)."""
        if self._state not in (_State.VERDICT, _State.CHECK):
            raise RuntimeError(f"accept() while {self._state.value}")
        out: list[Command] = []
        if self.server:
            out.append(self._send(Msg.WELCOME, nonce, signature, node, credentials or []))
        self._state = _State.OPEN
        if self.role == PEER:
            if self.limits.bloom_window:
                out.append(NeedRecent(self.limits.bloom_window))
            out += self.summary(self._last_received)
        return out

    def refuse(self, reason: str, code: int = CLOSE_POLICY) -> list[Command]:
        return self._close(code, reason)

    # -- receiving -----------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Command]:
        """Take one message; the commands to carry out, in order."""
        if self._state is _State.CLOSED:
            return []
        self._last_received = now
        self.bytes_received += len(data) if type(data) is bytes else 0
        pre_auth = self._state is not _State.OPEN
        limit = self.limits.max_handshake_message if pre_auth else self.limits.max_message
        if type(data) is bytes and len(data) > limit:
            return self._close(CLOSE_TOO_BIG, f"a message of {len(data)} bytes (limit {limit})")
        if not pre_auth and not self._spend(now):
            return self._close(CLOSE_TRY_LATER, "too many messages: rate limit")
        allowed = (
            _PRE_AUTH[self._state]
            if pre_auth
            else _PEER_MESSAGES
            if self.role == PEER
            else _SERVER_OF_CLIENT
            if self.server
            else _CLIENT_OF_SERVER
        )
        try:
            kind, fields = decode(data, allowed)
            out = self._dispatch(kind, fields, now)
        except WireError as exc:
            if pre_auth and exc.code == CLOSE_INVALID_PAYLOAD:
                return self._close(CLOSE_POLICY, MALFORMED_BEFORE_HANDSHAKE + exc.reason)
            return self._close(exc.code, exc.reason)
        if any(type(command) is Send for command in out):
            self._last_sent = now
        return out

    def _spend(self, now: float) -> bool:
        limits = self.limits
        self._tokens = min(limits.burst, self._tokens + (now - self._tokens_at) * limits.rate)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _dispatch(self, kind: Msg, fields: list[Any], now: float) -> list[Command]:
        if kind is Msg.HELLO:
            self.server_challenge = fields[1]
            self._state = _State.SIGNING  # until the driver answers with authenticate()
            return [Challenged(*fields)]
        if kind is Msg.AUTH:
            role = fields[4]
            if role not in (PEER, CLIENT):
                return self._close(CLOSE_POLICY, f"unknown role {role!r}")
            self.role = role
            self._salt = self.server_challenge + fields[3]
            self._state = _State.VERDICT
            return [Authenticate(*fields)]
        if kind is Msg.WELCOME:
            self._state = _State.CHECK
            return [Welcomed(*fields)]
        if kind is Msg.PING:
            return [self._send(Msg.PONG, fields[0])]
        if kind is Msg.PONG:
            return []
        if kind is Msg.SUMMARY:
            return self._on_summary(fields[0], now)
        if kind is Msg.RANGES:
            return self._on_ranges(fields[0])
        if kind is Msg.HEADS:
            return self._on_heads(*fields, now=now)
        if kind is Msg.EVENTS:
            events = split_events(fields[0])
            if events is None:
                raise WireError(CLOSE_INVALID_PAYLOAD, "EVENTS: not a run of CBOR items")
            self.events_received += len(events)
            # The peer holds what it sends: never push those back to it. Bounded: the
            # events are not taken yet (junk, each naming a new feed, must not grow
            # this without end; a forgotten feed only costs events pushed back).
            peer = self.peer_heads
            room = len(self._heads()) + _MAX_PEER_TAGS
            for data in events:
                place = feed_of(data)
                if place is None:
                    continue
                feed, seq = place
                held = peer.get(feed)
                if seq > (held or 0) and (held is not None or len(peer) < room):
                    peer[feed] = seq
            return [Ingest(events)]
        if kind is Msg.ACK:
            if fields[0] > len(self._unacked):
                return self._close(CLOSE_POLICY, "an ACK for more batches than were sent")
            for _ in range(fields[0]):
                feed, last, guessed = self._unacked.popleft()
                if not guessed:
                    self._acked[feed] = max(self._acked.get(feed, 0), last)
            return self._after_push(now)
        if kind is Msg.PEERS:
            return [PeersHeard(fields[0])]
        if kind is Msg.BLOOM:
            window, hashes, bits = fields
            if not 1 <= hashes <= 16 or not bits or window > 1 << 20:
                raise WireError(CLOSE_INVALID_PAYLOAD, "a malformed BLOOM message")
            if self._bloom_heard:
                return self._close(CLOSE_POLICY, "a second BLOOM message")
            self._bloom_heard = True
            # Answering reads this side's newest events of every feed: never more of
            # them than its own window (none with its Bloom mode off), whatever the peer
            # asks (a Bloom answer only saves a round trip; the Merkle round settles).
            window = min(window, self.limits.bloom_window)
            return [BloomAsked(window, hashes, bits)] if window else []
        if kind is Msg.REQUEST:
            return [Request(fields[0], fields[1])]
        if kind is Msg.CANCEL:
            return [CancelCall(fields[0])]
        if kind in (Msg.RESPONSE, Msg.STREAM_ITEM, Msg.STREAM_END):
            return [Reply(kind, fields[0], fields[1])]
        return self._close(CLOSE_POLICY, f"{kind.name} is not expected")  # pragma: no cover

    # -- reconciliation ------------------------------------------------------------------

    def summary(self, now: float) -> list[Command]:
        """Send this side's root (the start of a round)."""
        if self._state is not _State.OPEN or self.role != PEER:
            return []
        self._tree = tree = FeedTree(self._heads())
        self._heads_sent.clear()
        self._last_summary = now
        self._pushed_since_summary = False
        root = tree.root()
        self._summary_sent = root
        self._last_sent = now
        return [self._send(Msg.SUMMARY, root, len(tree), reconcile=True)]

    def _current_tree(self) -> FeedTree:
        if self._tree is None:
            self._tree = FeedTree(self._heads())
        return self._tree

    def _on_summary(self, root: bytes, now: float) -> list[Command]:
        tree = self._tree = FeedTree(self._heads())
        if root == tree.root():
            self._agreed = root
            self._reconciled = True
            for feed, (seq, _) in tree.heads.items():
                self.peer_heads[feed] = max(self.peer_heads.get(feed, 0), seq)
            if self._summary_sent != root:
                return self.summary(now)  # tell the peer we agree (it will not answer)
            return []
        self._heads_sent.clear()
        return self._explore([(0, 0)], tree)

    def _explore(self, subtrees: list[tuple[int, int]], tree: FeedTree) -> list[Command]:
        out: list[Command] = []
        ranges: list[list[Any]] = []
        for depth, prefix in subtrees:
            if tree.count(depth, prefix) <= HEADS_LIMIT or depth >= MAX_DEPTH:
                out.append(self._heads_message(depth, prefix, tree))
            else:
                ranges += [list(child) for child in tree.children(depth, prefix)]
        if ranges:
            out.append(self._send(Msg.RANGES, ranges, reconcile=True))
        return out

    def _heads_message(self, depth: int, prefix: int, tree: FeedTree) -> Send:
        if len(self._heads_sent) >= _MAX_HEADS_SENT:
            self._heads_sent.clear()
        self._heads_sent.add((depth, prefix))
        feeds = tree.feeds(depth, prefix)
        salt = self._salt
        tags = b"".join(feed_tag(salt, feed) for feed in feeds)
        seqs = [tree.heads[feed][0] for feed in feeds]
        return self._send(Msg.HEADS, depth, prefix, tags, seqs, reconcile=True)

    def _on_ranges(self, ranges: list[list[Any]]) -> list[Command]:
        tree = self._current_tree()
        differing = []
        # Each subtree once: a message naming one subtree thousands of times made this
        # side hash its leaves (and its children's), and answer, as many times over.
        seen: set[tuple[int, int]] = set()
        for depth, prefix, digest in ranges:
            if depth == 0 or prefix >= 16**depth:
                raise WireError(CLOSE_INVALID_PAYLOAD, "a subtree outside the tree")
            if (depth, prefix) in seen:
                continue
            seen.add((depth, prefix))
            if tree.hash(depth, prefix) == digest:
                for feed in tree.feeds(depth, prefix):
                    self.peer_heads[feed] = max(self.peer_heads.get(feed, 0), tree.heads[feed][0])
            else:
                differing.append((depth, prefix))
        return self._explore(differing, tree)

    def _on_heads(
        self, depth: int, prefix: int, tags: bytes, seqs: list[int], *, now: float
    ) -> list[Command]:
        if depth > MAX_DEPTH or (depth and prefix >= 16**depth) or (not depth and prefix):
            raise WireError(CLOSE_INVALID_PAYLOAD, "a subtree outside the tree")
        if len(tags) != 8 * len(seqs):
            raise WireError(CLOSE_INVALID_PAYLOAD, "HEADS: 8 bytes of tag per seq")
        theirs = {tags[8 * i : 8 * i + 8]: seq for i, seq in enumerate(seqs)}
        # Feeds this side does not hold yet: what the peer holds of them, for when
        # they arrive (from this peer or another), so they are not pushed back.
        # Bounded: a lying peer must not grow this without end (a forgotten tag only
        # costs a feed pushed that the peer may hold already).
        if len(self._peer_tags) + len(theirs) > _MAX_PEER_TAGS:
            self._peer_tags.clear()
        if len(theirs) <= _MAX_PEER_TAGS:
            self._peer_tags.update(theirs)
        tree = self._current_tree()
        salt = self._salt
        for feed in tree.feeds(depth, prefix):
            seq = tree.heads[feed][0]
            held = theirs.get(feed_tag(salt, feed), 0)
            if held < self._acked.get(feed, 0):
                # It acknowledged events it then did not hold (refused, or waiting for
                # a proof): offer them again after ``resync``, not in a loop.
                self._stalled[feed] = now
                self._acked[feed] = held
            # Batches still in flight will land, except a Bloom guess's (it may sit
            # behind a gap there): count only the others.
            in_flight = max(
                (last for f, last, guessed in self._unacked if f == feed and not guessed),
                default=0,
            )
            self.peer_heads[feed] = max(held, in_flight)
            if seq > held and now - self._stalled.get(feed, -1e18) >= self.limits.resync:
                self._guessed.discard(feed)
                self._want(feed, held, seq)
        self._reconciled = True
        out: list[Command] = []
        if not self._covered(depth, prefix):
            out.append(self._heads_message(depth, prefix, tree))
        return out

    def _covered(self, depth: int, prefix: int) -> bool:
        """True if this side sent its heads for the subtree or one above it."""
        for up in range(depth, -1, -1):
            if (up, prefix >> (4 * (depth - up))) in self._heads_sent:
                return True
        return False

    def _want(self, feed: Feed, after: int, upto: int) -> None:
        queued = self._queue.get(feed)
        if queued is None:
            self._queue[feed] = (after, upto)
        else:
            self._queue[feed] = (min(queued[0], after), max(queued[1], upto))

    # -- Bloom mode ----------------------------------------------------------------------

    def _positions(self, eid: bytes, hashes: int, size: int) -> list[int]:
        digest = blake3.blake3(self._salt + eid).digest(4 * hashes)
        return [int.from_bytes(digest[4 * i : 4 * i + 4], "big") % size for i in range(hashes)]

    def bloom_offer(self, recent: list[tuple[Feed, int, bytes]]) -> list[Command]:
        """Send a Bloom filter of this side's newest events ``(feed, seq, id)``: the
        peer pushes those of its own newest that the filter lacks. The filter's hashes
        are salted per session, so nobody can choose ids that collide in it; a false
        positive only withholds an event until the Merkle round finds it."""
        if self._state is not _State.OPEN:
            return []
        hashes = 7
        size = max(64, self.limits.bloom_bits * len(recent))
        size += -size % 8
        bits = bytearray(size // 8)
        for _, _, eid in recent:
            for position in self._positions(eid, hashes, size):
                bits[position >> 3] |= 1 << (position & 7)
        return [
            self._send(Msg.BLOOM, self.limits.bloom_window, hashes, bytes(bits), reconcile=True)
        ]

    def bloom_answer(
        self, asked: BloomAsked, recent: list[tuple[Feed, int, bytes]]
    ) -> list[Command]:
        """Queue, per feed, the events from the first of this side's newest that the
        peer's filter lacks (later ones would wait behind it there anyway)."""
        size = 8 * len(asked.bits)
        first: dict[Feed, int] = {}
        heads = self._heads()
        for feed, seq, eid in recent:
            if seq >= first.get(feed, 1 << 64):
                continue
            if not all(
                asked.bits[p >> 3] >> (p & 7) & 1 for p in self._positions(eid, asked.hashes, size)
            ):
                first[feed] = seq
        held = {(feed, seq) for feed, seq, _ in recent}
        for feed, seq in first.items():
            head = heads.get(feed)
            if head is None or head[0] < seq:
                continue
            if seq > 1 and (feed, seq - 1) not in held:
                continue  # the peer lacks the whole window: its heads will say from where
            if feed not in self._queue:
                self._guessed.add(feed)
            self._want(feed, seq - 1, head[0])
        return []

    # -- pushing -------------------------------------------------------------------------

    def local_changed(self) -> None:
        """Local writes happened: queue what the peer lacks of them (once reconciled)."""
        if self._state is not _State.OPEN or self.role != PEER or not self._reconciled:
            return
        peer = self.peer_heads
        for feed, (seq, _) in self._heads().items():
            held = peer.get(feed)
            if held is None:
                held = peer[feed] = self._peer_tags.get(feed_tag(self._salt, feed), 0)
            if seq > held:
                self._want(feed, held, seq)

    def next_push(self) -> tuple[Feed, int, int] | None:
        """The next range of events to send ``(feed, after, upto)``, or None (nothing
        queued, or the window is full). Identity feeds go first: their seals and
        statements are what prove the rest. Then one feed at a time, each to the end of
        what is queued of it: the peer holds what it cannot prove yet waiting, in a
        bounded room, and feeds pushed side by side, each short of its sealed point,
        could fill that room with runs none of which completes (every later event
        refused as "no room", for ever)."""
        if self._state is not _State.OPEN or not self._queue:
            return None
        if len(self._unacked) >= self.limits.window:
            return None
        feed = self._first if self._first in self._queue else None
        if feed is None and self._pushing_identity in self._queue:
            # An identity feed waits at the peer until its seal, like any other: on
            # to its end too (a remainder queued behind the others' would interleave).
            feed = self._pushing_identity
        if feed is None:
            feed = next((f for f in self._queue if f[1] == _IDENTITY_AGENT), None)
            self._pushing_identity = feed
        if feed is None:
            # (Set here only: an identity feed pushed in between does not end a run.)
            feed = self._pushing if self._pushing in self._queue else next(iter(self._queue))
            self._pushing = feed
        after, upto = self._queue.pop(feed)
        held = self.peer_heads.get(feed, 0)
        after = max(after, min(held, upto))
        if after >= upto:
            return self.next_push()
        last = min(upto, after + self.limits.batch_events)
        if last < upto:
            self._queue[feed] = (last, upto)
        return feed, after, last

    def push(
        self, feed: Feed, events: list[bytes], last: int, now: float, asked: int | None = None
    ) -> list[Command]:
        """The EVENTS message for events the driver fetched: those of ``feed`` up to seq
        ``last``, of the range next_push() gave up to ``asked`` (a batch that filled
        its bytes sends fewer: the rest stays queued)."""
        if self._state is not _State.OPEN:
            return []
        self._unacked.append((feed, last, feed in self._guessed))
        if not self.events_sent:
            self.reconcile_messages_before_events = self.reconcile_messages
        self.events_sent += len(events)
        self.event_bytes_sent += sum(len(data) for data in events)
        self._pushed_since_summary = True
        self.peer_heads[feed] = max(self.peer_heads.get(feed, 0), last)
        queued = self._queue.get(feed)
        end = max(queued[1] if queued is not None else 0, asked or 0)
        if end > last:
            self._queue[feed] = (last, end)
        elif queued is not None:
            del self._queue[feed]
        self._last_sent = now
        return [self._send(Msg.EVENTS, b"".join(events))]

    def ingested(self, now: float) -> list[Command]:
        """The events of the last Ingest were taken: acknowledge them."""
        if self._state is not _State.OPEN:
            return []
        self._last_sent = now
        return [self._send(Msg.ACK, 1)]

    def _after_push(self, now: float) -> list[Command]:
        if not self._queue and not self._unacked and self._pushed_since_summary:
            return self.summary(now)
        return []

    # -- requests (clients) --------------------------------------------------------------

    def request(self, call: int, payload: bytes) -> list[Command]:
        return [self._send(Msg.REQUEST, call, payload)]

    def cancel(self, call: int) -> list[Command]:
        return [self._send(Msg.CANCEL, call)]

    def reply(self, kind: Msg, call: int, payload: bytes | None) -> list[Command]:
        if self._state is not _State.OPEN:
            return []
        return [self._send(kind, call, payload)]

    def gossip(self, addresses: list[str]) -> list[Command]:
        if self._state is not _State.OPEN or self.role != PEER:
            return []
        return [self._send(Msg.PEERS, addresses[:256])]

    # -- time ----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Command]:
        """Timeouts, heartbeats and periodic summaries due at ``now``."""
        limits = self.limits
        if self._state is _State.CLOSED:
            return []
        if self._state is not _State.OPEN:
            if now - self._opened_at > limits.handshake_timeout:
                return self._close(CLOSE_POLICY, "handshake timeout")
            return []
        if not self._unread and now - self._last_received > limits.idle_timeout:
            return self._close(CLOSE_GOING_AWAY, "idle timeout: the peer went silent")
        out: list[Command] = []
        if self.role == PEER and now - self._last_summary >= limits.resync and not self.busy:
            out += self.summary(now)
        if now - self._last_sent >= limits.heartbeat:
            self._ping += 1
            self._last_sent = now
            out.append(self._send(Msg.PING, self._ping))
        return out

    def reading(self, reading: bool, now: float) -> None:
        """This side stopped reading the peer's messages (``reading`` False: its calls
        wait for room, backpressure) or reads again. While it does not read, the peer's
        silence is not measured (what it sent waits unread); reading again, the idle
        timeout counts from ``now``. Why: a client whose call waited for room other
        clients held (a server's CallBudget) answered every ping, but its pongs were
        not read, and it was closed for going silent with the clients it waited on."""
        if self._unread and reading:
            self._last_received = max(self._last_received, now)
        self._unread = not reading

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do."""
        limits = self.limits
        if self._state is not _State.OPEN:
            return self._opened_at + limits.handshake_timeout
        due = self._last_sent + limits.heartbeat
        if not self._unread:
            due = min(due, self._last_received + limits.idle_timeout)
        if self.role == PEER:
            due = min(due, self._last_summary + limits.resync)
        return due
