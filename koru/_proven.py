"""Ingest with proof: how a database takes in events from someone it does not trust.

The plain :meth:`koru.Database.ingest` is the owner's (an import of the owner's own
export trusts the file). An authorized handle (a peer's, a remote client's) takes its
events through :class:`ProvenIngest` instead, which passes an event on to the one
ingest path only when:

1. it is **proven**: its origin sealed it. A seal (``koru.events.SealEvent``) is
   signed by the key that derives its origin and names points ``(agent, seq, id)`` of
   that origin's feeds; a feed is a hash chain, so a sealed point vouches for every
   event before it. Events wait here until a sealed point covers them; then the run
   from this node's head of the feed to the point is checked backwards (each event's
   id must be the ``prev`` its successor names, the last one's the sealed id, the
   first one's ``prev`` this node's head) before any of it is passed on. An event that
   does not match what was sealed is dropped (refused), whoever sent it; a seal proves
   itself (its signature was checked when it was decoded). The proof points live in
   the auth projection, so events that arrive after a restart are proven by seals
   taken in before it.
2. its **author may write it**, at its own timestamp: the key that sealed its origin
   must have held, as of its ``hlc`` (a revocation counts from its own time: the same
   answer on every node that holds the same grants), the right the event's local call
   needs on an authorized handle: ``write`` on every key a put, delete or batch writes
   and on the key of an embedding, ``write`` on the whole namespace of an index model,
   ``admin`` on the whole namespace of an index or view definition and over the whole
   workspace it creates or drops; node records and signed statements need some
   capability, seals nothing (the table is :mod:`koru._authorship`). An identity below
   this database's proof-of-work difficulty is refused. Timestamps must increase
   along a feed (an honest node's clock is hybrid-logical), so a node cannot date an
   event before one it wrote earlier: a revoked node can date what it writes after
   its revocation no earlier than the last event of its that a node holds.

An unauthorized event is refused (reported), not held: offered again once the grant
that allows it has arrived, it is taken. Waiting is bounded (events and bytes), in all
and per sender (a quarter of it each), so that one peer offering events nobody will
ever seal cannot take the room of the others; past a bound, what the sender left
waiting of other feeds is refused to make room (runs that could not complete must not
keep one that may from being held), and past that events are refused as "no room", to
be offered again. When a sender's connection ends, what it left waiting is
dropped (:meth:`ProvenIngest.forget`): the next connection offers it again if it is
still needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, cast

from koru.events import (
    AGENTS,
    IDENTITY,
    MAX_EVENT_SIZE,
    STORAGE,
    CodecError,
    Event,
    GrantEvent,
    IdentityEvent,
    SealEvent,
    decode_event,
    decode_trusted,
    event_id,
    short_key,
)
from koru.projections import FeedState

from ._authority import Authority
from ._authorship import missing_right
from ._ingest import Ingest

__all__ = [
    "MAX_EARLY_POINTS",
    "MAX_SENDER_BYTES",
    "MAX_SENDER_EVENTS",
    "MAX_WAITING_BYTES",
    "MAX_WAITING_EVENTS",
    "ProvenIngest",
]

#: Bounds on events waiting for a seal (all feeds together), and on what one sender
#: may leave waiting.
MAX_WAITING_EVENTS = 100_000
MAX_WAITING_BYTES = 256 * 1024 * 1024
MAX_SENDER_EVENTS = MAX_WAITING_EVENTS // 4
MAX_SENDER_BYTES = MAX_WAITING_BYTES // 4
#: Points named by seals seen but not yet taken, remembered at most.
MAX_EARLY_POINTS = 65536
#: The longest run an event may complete past the room's bound (found waiting by a
#: walk, if no scan found it already).
_COMPLETES_SCAN = 4096

Feed = tuple[bytes, str]


class _Item(NamedTuple):
    """An event waiting: its bytes and what the scans read, not the decoded event. Why:
    a decoded event can take ~15 times its bytes (a batch of tiny deletes), so the
    room's bound on bytes would not bound memory (256 MiB held as some 4 GB); it is
    decoded again (trusted: it was checked when offered) when it is looked into."""

    data: bytes
    eid: bytes
    #: Who offered it (the sender's public key; empty for the owner's own).
    sender: bytes
    prev: bytes | None
    seal: bool

    @property
    def event(self) -> Event:
        return decode_trusted(self.data)


class ProvenIngest:
    """See the module doc."""

    def __init__(
        self,
        ingest: Ingest,
        feeds: FeedState,
        authority: Authority,
        read: Callable[[int], bytes],
    ) -> None:
        self._ingest = ingest
        self._read = read
        self._feeds = feeds
        self._authority = authority
        self._waiting: dict[Feed, dict[int, _Item]] = {}
        self._count = 0
        self._bytes = 0
        #: Per feed, what the last scan for a proven point found nothing in:
        #: ``(low, stamp, reach)``, events low+1..reach all wait and none is a seal or
        #: one of the feed's proven points as of ``stamp`` (``_stamp``), so the next scan
        #: goes on from reach, not from low+1 again: a run offered an event at a time is
        #: linear.
        self._scanned: dict[Feed, tuple[int, tuple[int, int], int]] = {}
        #: Per feed, ``(low, seq, id)``: with this node's head at low, a proof showed
        #: that event seq must have this id (the events after it up to a sealed point
        #: wait, checked), so another offered for seq is refused at once, not held and
        #: proven against the whole run again.
        self._known: dict[Feed, tuple[int, int, bytes]] = {}
        #: Per sender: [events, bytes] it left waiting, and the seqs of each feed.
        self._senders: dict[bytes, list[int]] = {}
        self._sender_seqs: dict[bytes, dict[Feed, set[int]]] = {}
        #: Points named by seals seen but not (yet) taken, by feed (see _note_seal).
        self._early: dict[Feed, dict[int, tuple[bytes, ...]]] = {}
        self._early_count = 0
        self._early_keys: dict[bytes, bytes] = {}
        #: Per feed of ``_early``, the head it was last pruned at (see _prune_early).
        self._early_low: dict[Feed, int] = {}
        #: The room's bounds: in all, and per sender (events, bytes).
        self.max_events, self.max_bytes = MAX_WAITING_EVENTS, MAX_WAITING_BYTES
        self.max_sender_events, self.max_sender_bytes = MAX_SENDER_EVENTS, MAX_SENDER_BYTES
        #: Totals since the open.
        self.unproven = 0
        self.unauthorized = 0

    @property
    def waiting(self) -> int:
        """Events waiting for a seal."""
        return self._count

    def offer(self, data: object, now: int, sender: bytes = b"") -> None:
        """Take one event's bytes from an untrusted ``sender`` (its public key; see
        the module doc)."""
        ingest = self._ingest
        if not isinstance(data, bytes | bytearray | memoryview):
            ingest.refuse(None, f"an event is bytes, not {type(data).__name__}")
            return
        data = bytes(data)
        if len(data) > MAX_EVENT_SIZE:
            ingest.refuse(None, f"{len(data)} bytes is over the {MAX_EVENT_SIZE}-byte limit")
            return
        try:
            event = decode_event(data, check_values=True)
        except CodecError as exc:
            ingest.refuse(None, f"not a valid event: {exc}")
            return
        eid = event_id(data)
        if type(event) is SealEvent:
            self._note_seal(event, eid, now)
        feed = (event.origin, event.agent)
        head = self._feeds.heads.get(feed)
        if (
            (head is not None and event.seq <= head[0])
            or event.agent not in AGENTS
            or (event.writes and event.agent != STORAGE)
        ):
            # A duplicate, a fork or a malformed placement: the one ingest path decides
            # and reports (nothing it accepts this way is new).
            ingest.admit(event, data, eid, now)
            return
        known = self._known.get(feed)
        low = 0 if head is None else head[0]
        if known is not None and known[:2] == (low, event.seq) and eid != known[2]:
            self.unproven += 1
            ingest.refuse(eid, f"event {event.seq} of its feed is not the one its origin sealed")
            return
        slot = self._waiting.setdefault(feed, {})
        other = slot.get(event.seq)
        if other is not None:
            if other.eid != eid:
                # One of the two is not what its origin wrote; the seal will tell. Keep
                # the first: the other can be offered again.
                ingest.refuse(eid, f"another unproven event {event.seq} of its feed waits")
            return
        held = self._senders.get(sender) or [0, 0]
        if self._full(held, len(data)):
            # Room made from what the sender left waiting of other feeds: runs that
            # cannot complete (the sender moved on, or what would complete them was
            # refused) must not keep this one, which may, from being held.
            self._make_room(sender, feed, len(data))
            held = self._senders.get(sender) or [0, 0]
        if self._full(held, len(data)) and not self._completes(feed, event, eid, slot):
            # (An event that completes a proven run goes in past the bound: the run is
            # passed on at once, and frees its room. Many senders each part-way through
            # a run could otherwise fill the room in all, and every sealed point after
            # would be refused for as long as they stayed connected.)
            if not slot:
                del self._waiting[feed]
            ingest.refuse(eid, "no room to hold an unproven event; offer it again later")
            return
        slot[event.seq] = _Item(data, eid, sender, event.prev, type(event) is SealEvent)
        self._sender_seqs.setdefault(sender, {}).setdefault(feed, set()).add(event.seq)
        self._count += 1
        self._bytes += len(data)
        held[0] += 1
        held[1] += len(data)
        self._senders[sender] = held
        self._release(feed, now)

    def _note_seal(self, seal: SealEvent, eid: bytes, now: int) -> None:
        """Learn the points ``seal`` names before the seal itself can be taken, and pass
        on what they prove. A seal comes after the events it proves, and those may not
        all fit the room at once (an identity feed's run ends with its seal; a run of
        any feed refused in part waits for a seal it cannot see): without this the room
        held the start of such a run for ever. A seal proves itself (its origin signed
        it, checked when it was decoded), so what it names is its origin's word whether
        this node holds the seal yet or not. Kept here, not in the auth projection,
        which folds only what the log holds; bounded (forgotten past the bound, as
        what the projection holds suffices once the seal is taken)."""
        origin, early = seal.origin, self._early
        self._early_keys[origin] = seal.public_key  # (it derives the origin: decoded)
        named = [((origin, IDENTITY), seal.seq, eid)]
        named += [((origin, p.agent), p.seq, p.event_id) for p in seal.points]
        for feed, seq, point in named:
            head = self._feeds.heads.get(feed)
            if head is not None and seq <= head[0]:
                continue
            if self._early_count >= MAX_EARLY_POINTS:
                early.clear()
                self._early_low.clear()
                self._early_keys.clear()
                self._early_keys[origin] = seal.public_key
                self._early_count = 0
            slot = early.setdefault(feed, {})
            ids = slot.get(seq, ())
            if point not in ids:
                self._early_count += not ids
                slot[seq] = tuple(sorted((*ids, point)))
        for feed in {feed for feed, _, _ in named}:
            if feed in self._waiting:
                self._release(feed, now)

    def _prune_early(self, feed: Feed, low: int) -> None:
        """Forget the points seen early of ``feed`` at or below ``low`` (held now).
        Once per head: points are seen early only past the head, so none is at or
        below the head of the last prune (a look at every point at each offered event
        cost as many steps as points were seen, h-ease)."""
        early = self._early.get(feed)
        if not early or self._early_low.get(feed) == low:
            return
        for seq in [seq for seq in early if seq <= low]:
            del early[seq]
            self._early_count -= 1
        if early:
            self._early_low[feed] = low
        else:
            del self._early[feed]
            self._early_low.pop(feed, None)

    def _stamp(
        self, feed: Feed, held: dict[int, tuple[bytes, ...]] | None = None
    ) -> tuple[int, int]:
        """What changes whenever ``feed``'s proven points do (points are only added,
        or dropped once the head passes them): how many of them the projection holds
        and how many were seen early."""
        if held is None:
            held = self._authority.state.seals.get(feed, {})
        early = self._early.get(feed)
        return len(held), 0 if early is None else len(early)

    def _proof(
        self,
        held: dict[int, tuple[bytes, ...]],
        early: dict[int, tuple[bytes, ...]] | None,
        seq: int,
    ) -> tuple[bytes, ...]:
        """The ids proven for event ``seq`` of a feed: by the seals held (``held``, the
        auth projection's) and by those only seen (``early``, see _note_seal). Looked
        up per seq: a merge of every point at each offered event cost as many steps as
        points were seen (a peer's own seals can name 65,536 of its feed), 32 ms an
        event (h-ease)."""
        sealed = held.get(seq, ())
        more = None if early is None else early.get(seq)
        if more:
            sealed = tuple(sorted({*sealed, *more}))
        return sealed

    def _completes(self, feed: Feed, event: Event, eid: bytes, slot: dict[int, _Item]) -> bool:
        """True if ``event`` is a proven point of ``feed`` (or a seal: it proves itself)
        and every event between this node's head and it waits: taking it passes the
        run on at once."""
        head = self._feeds.heads.get(feed)
        low = 0 if head is None else head[0]
        if type(event) is not SealEvent:
            held = self._authority.state.seals.get(feed, {}).get(event.seq, ())
            early = self._early.get(feed, {}).get(event.seq, ())
            if eid not in held and eid not in early:
                return False
        scanned = self._scanned.get(feed)
        if scanned is not None and scanned[0] == low and scanned[2] >= event.seq - 1:
            return True  # (the last scan found them all waiting)
        # Bounded: a sender's own seals at any seq it likes must not cost a walk of a
        # long run each (an honest run is at most RUN_EVENTS, koru._seal_marks).
        if event.seq - low > _COMPLETES_SCAN:
            return False
        return all(seq in slot for seq in range(low + 1, event.seq))

    def _full(self, held: list[int], size: int) -> bool:
        """True if an event of ``size`` bytes from a sender holding ``held`` has no
        room."""
        return (
            self._count >= self.max_events
            or self._bytes + size > self.max_bytes
            or held[0] >= self.max_sender_events
            or held[1] + size > self.max_sender_bytes
        )

    def _make_room(self, sender: bytes, feed: Feed, size: int) -> None:
        """Refuse what ``sender`` left waiting of feeds other than ``feed``, a feed at a
        time (the one it started first, first), until an event of ``size`` bytes fits
        (to be offered again: a run is proven only once all of it waits here)."""
        # Only the sender's own: a search of the whole room made each event refused
        # at the bound cost every event others left waiting (h-ease).
        mine = self._sender_seqs.get(sender, {})
        for other in list(mine):
            if other == feed or other not in mine:
                continue
            for seq in sorted(mine[other]):
                item = self._take(other, seq)
                self._ingest.refuse(item.eid, "made room for another run; offer it again later")
            if not self._full(self._senders.get(sender) or [0, 0], size):
                return

    def forget(self, sender: bytes) -> int:
        """Drop what ``sender`` left waiting (its connection ended); how many events."""
        if sender not in self._senders:
            return 0
        # Its own, by the seqs kept per sender: a look at every event waiting (everyone's)
        # at each connection's end made reconnecting cost a walk of the whole room.
        dropped = 0
        for feed, seqs in list(self._sender_seqs.get(sender, {}).items()):
            for seq in sorted(seqs):
                self._take(feed, seq)
                dropped += 1
        return dropped

    def _take(self, feed: Feed, seq: int) -> _Item:
        slot = self._waiting[feed]
        item = slot.pop(seq)
        if not slot:
            del self._waiting[feed]
        scanned = self._scanned.get(feed)
        if scanned is not None and (seq <= scanned[2] or not slot):
            del self._scanned[feed]
        known = self._known.get(feed)
        if known is not None and (seq > known[1] or not slot):
            del self._known[feed]
        self._count -= 1
        self._bytes -= len(item.data)
        held = self._senders[item.sender]
        held[0] -= 1
        held[1] -= len(item.data)
        if not held[0]:
            del self._senders[item.sender]
        mine = self._sender_seqs[item.sender]
        seqs = mine[feed]
        seqs.discard(seq)
        if not seqs:
            del mine[feed]
            if not mine:
                del self._sender_seqs[item.sender]
        return item

    def _release(self, feed: Feed, now: int) -> None:
        """Pass on every proven, authorized run of ``feed`` (and of the feeds a seal
        taken in on the way names)."""
        pending = [feed]
        while pending:
            feed = pending.pop()
            while True:
                released = self._release_run(feed, now)
                if released is None:
                    break
                pending.extend(released)

    def _release_run(self, feed: Feed, now: int) -> list[Feed] | None:
        """Pass on the next proven run of ``feed``; returns the feeds a seal in it
        names (to try next), or None when nothing more can go."""
        slot = self._waiting.get(feed)
        if not slot:
            return None
        head = self._feeds.heads.get(feed)
        low, held_id = (0, None) if head is None else head
        held = self._authority.state.seals.get(feed, {})
        self._prune_early(feed, low)
        stamp = self._stamp(feed, held)
        # The first point reachable through waiting events that something proves,
        # past what an earlier scan found nothing in if nothing changed since: a run
        # offered an event at a time is scanned once (a scan from low+1 at every
        # offer was quadratic), and an offer that does not extend the scanned run
        # costs nothing (a test for a proven point among the waiting events, at every
        # offer, cost as many steps as the feed has proven points above its head: a
        # backlog of a million events has a thousand, and a peer sealing points of its
        # own feed far ahead can make them hundreds of thousands).
        end, sealed = low + 1, cast("tuple[bytes, ...]", ())
        scanned = self._scanned.pop(feed, None)
        if scanned is not None and scanned[:2] == (low, stamp):
            end = scanned[2] + 1
            if end not in slot:
                self._scanned[feed] = scanned
                return None
        early = self._early.get(feed)
        author = self._authority.state.node_keys.get(feed[0]) or self._early_keys.get(feed[0])
        while end in slot:
            item = slot[end]
            if item.seal:
                sealed = (item.eid,)  # its own signature proves it
                author = cast("SealEvent", item.event).public_key
                break
            sealed = self._proof(held, early, end)
            if sealed:
                break
            end += 1
        if not sealed:
            self._scanned[feed] = (low, stamp, end - 1)
            return None
        # Backwards from the proven point: each event must be the one its successor
        # names, down to the one that follows what this node holds.
        expected: bytes | None = slot[end].eid if slot[end].eid in sealed else None
        for seq in range(end, low, -1):
            item = slot[seq]
            if item.eid != expected:
                self._take(feed, seq)
                if expected is not None:
                    self._known[feed] = (low, seq, expected)
                self.unproven += 1
                self._ingest.refuse(
                    item.eid, f"event {seq} of its feed is not the one its origin sealed"
                )
                return None
            expected = item.prev
        if expected != held_id:
            # The sealed chain does not continue what is held: the origin forked (or
            # this node took something else through the owner's own ingest). The one
            # ingest path reports it as a fork.
            first = self._take(feed, low + 1)
            self._ingest.admit(first.event, first.data, first.eid, now)
            for seq in range(low + 2, end + 1):
                item = self._take(feed, seq)
                self._ingest.refuse(item.eid, f"event {seq} of its feed follows a fork")
            return None
        assert author is not None  # a proven feed's origin has sealed
        # Timestamps must increase along a feed (a node's clock is hybrid-logical): a
        # node cannot date an event before one it wrote earlier, which bounds how far
        # back a revoked node can date what it writes after its revocation.
        last = self._head_time(feed, low)
        named: list[Feed] = []
        for seq in range(low + 1, end + 1):
            item = slot[seq]
            event = item.event  # (decoded once here)
            problem = self._unauthorized(event, author)
            if problem is None and event.hlc <= last:
                problem = "its timestamp is not after the previous event of its feed"
            if problem is not None:
                self._take(feed, seq)
                self.unauthorized += 1
                self._ingest.refuse(item.eid, problem)
                return None
            self._take(feed, seq)
            if type(event) is SealEvent:
                self._admit_seal(event, item, now)
                named.extend((event.origin, p.agent) for p in event.points)
            else:
                self._ingest.admit(event, item.data, item.eid, now)
            last = event.hlc
        return named

    def _admit_seal(self, seal: SealEvent, item: _Item, now: int) -> None:
        """Pass a proven seal on (the auth projection then holds its points: those seen
        early are forgotten); the scans of the feeds it names stay good if all its
        points of each are past what the scan went through (see _release_run)."""
        points: dict[Feed, list[int]] = {}
        for point in seal.points:
            feed = (seal.origin, point.agent)
            if feed in self._scanned:
                points.setdefault(feed, []).append(point.seq)
        before = {feed: self._stamp(feed) for feed in points}
        self._ingest.admit(seal, item.data, item.eid, now)
        self._forget_early(seal)
        for feed, seqs in points.items():
            scanned = self._scanned.pop(feed, None)
            if (
                scanned is not None
                and scanned[1] == before[feed]
                and all(seq > scanned[2] for seq in seqs)
            ):
                self._scanned[feed] = (scanned[0], self._stamp(feed), scanned[2])

    def _forget_early(self, seal: SealEvent) -> None:
        """The seal is taken: the auth projection holds its points now (so a backlog's
        every event does not look them up there too, see _proof)."""
        named = [(IDENTITY, seal.seq)] + [(p.agent, p.seq) for p in seal.points]
        for agent, seq in named:
            feed = (seal.origin, agent)
            slot = self._early.get(feed)
            if slot is not None and slot.pop(seq, None) is not None:
                self._early_count -= 1
                if not slot:
                    del self._early[feed]
                    self._early_low.pop(feed, None)

    def _head_time(self, feed: Feed, seq: int) -> int:
        """The timestamp of event ``seq`` of ``feed`` as held here (-1 for none)."""
        if seq == 0:
            return -1
        location = self._feeds.location(feed[0], feed[1], seq)
        if location is None:  # pragma: no cover - every seq up to the head is held
            return -1
        return decode_trusted(self._read(location)).hlc

    def _unauthorized(self, event: Event, author: bytes) -> str | None:
        """Why ``author`` (the key that sealed the event's origin) may not have written
        the event, or None."""
        authority = self._authority
        if type(event) is IdentityEvent:
            work = event.identity.work
            if work < authority.difficulty:
                return (
                    f"an identity with {work} bits of proof of work; this database "
                    f"requires {authority.difficulty}"
                )
        elif type(event) is SealEvent:
            # A seal needs no right (a node revoked since must still prove what it wrote
            # before), but one of a node never given anything here proves nothing anyone
            # could take, and its points stay held for ever: fresh keys cost nothing.
            if author not in authority.roots and author not in authority.state.by_grantee:
                return (
                    f"a seal of {short_key(author)}..., which holds no grant here (it has "
                    "nothing to prove)"
                )
        elif type(event) is GrantEvent:
            # As db.grant refuses it: a grantee's proof of work is checked when it is
            # registered, and a grant must not make an identity that never paid it.
            grantee = event.grant.grantee
            if not authority.registered(grantee) and grantee not in authority.roots:
                return (
                    f"a grant to {short_key(grantee)}..., which is not a registered "
                    "identity here (register it first: its proof of work is checked then)"
                )
        problem = missing_right(authority.effective_at(author, event.hlc), event)
        if problem is None:
            return None
        return f"its author {short_key(author)}... {problem} (at its timestamp {event.hlc})"
