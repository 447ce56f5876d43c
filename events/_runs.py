"""Decoding a replayed log for folding: events, and runs of puts of one feed.

Replay folds millions of records, nearly all of them plain puts written by one node in
sequence. Folding them one by one costs every projection a call per event, most of
which only move a feed's head; so the records of a log are decoded here into *runs*:
consecutive puts of one feed (same origin, seq following seq), held as columns. A
projection folds a run in one call (:meth:`PutRun.events` gives it the events one by
one if it has no bulk fold), and a feed's head moves once per run.

Every check of :func:`~koru.events.decode_trusted` is made on every record (a crafted
record with a valid checksum and chain raises :class:`CodecError`, never folds wrongly),
and so is the log's own rule: every feed is contiguous (the ingest path holds gaps back
and refuses forks, so anything else was not written by koru). A put that the fast
checks do not accept whole (a name outside ASCII, say) is decoded by
``decode_trusted`` and handed over as a single event, like every other type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any

import cbor2

from ._codec import SCHEMA_VERSION, decode_trusted
from ._errors import CodecError
from ._event import NODE_ID_SIZE, Event, PutEvent
from ._fields import ID_SIZE, UINT64_MAX
from ._limits import MAX_NAME_BYTES

__all__ = ["RUN_SIZE", "PutRun", "RunDecoder"]

#: Most puts a run holds: a run's columns stay small (they are folded, then dropped).
RUN_SIZE = 128

# The canonical bytes every put starts with: an array of 8, schema version 1, the tag
# "put", then a 16-byte origin. A record starting so decodes to a list whose first
# three items are checked by that alone.
_PUT_PREFIX = bytes([0x88, SCHEMA_VERSION, 0x63]) + b"put" + bytes([0x40 + NODE_ID_SIZE])

_HLC, _LOCATION = itemgetter(0), itemgetter(3)  # of a run's row

Feed = tuple[bytes, str]
Head = tuple[int, bytes]


class PutRun:
    """Consecutive puts of one feed, as read from one log.

    ``rows[i]`` is ``(hlc, [namespace, key, value, previous], event id, location)`` of
    the event with seq ``seq + i`` (a put's timestamp and body, every field checked;
    its event id is also its one write id); its ``prev`` is the event id of the row
    before it (``prev`` for the first). ``position`` is the first record's position in
    the log.
    """

    __slots__ = ("_top", "agent", "origin", "position", "prev", "rows", "seq")

    def __init__(
        self, origin: bytes, agent: str, seq: int, prev: bytes | None, position: int
    ) -> None:
        self.origin = origin
        self.agent = agent
        self.seq = seq
        self.prev = prev
        self.position = position
        self.rows: list[tuple[int, list[Any], bytes, int]] = []
        self._top = (0, 0)  # (rows, their largest timestamp) when last computed

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def last_seq(self) -> int:
        return self.seq + len(self.rows) - 1

    @property
    def last_id(self) -> bytes:
        return self.rows[-1][2]

    @property
    def locations(self) -> list[int]:
        return list(map(_LOCATION, self.rows))

    @property
    def top(self) -> int:
        """The largest timestamp in the run (computed once for its rows: both the loader
        and the key/value fold ask)."""
        n, top = self._top
        if n != len(self.rows):
            top = max(map(_HLC, self.rows))
            self._top = (len(self.rows), top)
        return top

    def events(self) -> Iterator[tuple[PutEvent, bytes, int]]:
        """(event, event id, location) of each put, in order: for a projection that
        folds events one at a time."""
        origin, agent, seq, prev = self.origin, self.agent, self.seq, self.prev
        for hlc, (namespace, key, value, previous), eid, location in self.rows:
            event = PutEvent(origin, agent, seq, prev, hlc, namespace, key, value, previous)
            yield event, eid, location
            seq, prev = seq + 1, eid


class RunDecoder:
    """Iterate the verified records of ``agent``'s log (``(location, position, event
    id, event bytes)``, as :meth:`LogStore.replay_plain` gives them) as
    :class:`PutRun` objects and ``(location, position, event id, event)`` tuples for
    every other record, in log order.

    ``head_of(feed)`` gives the (seq, event id) head of a feed before the first of
    these records (None for a feed not seen), from which every feed must continue
    contiguously. No run spans ``cut`` (a run starts at that position), nor holds more
    than ``size`` puts.

    Raises:
        CodecError: a record is not a well-formed event, belongs to another agent, or
            does not follow its feed; ``location`` and ``position`` then name it.
    """

    __slots__ = ("agent", "cut", "head_of", "location", "position", "records", "size")

    def __init__(
        self,
        records: Iterable[tuple[int, int, bytes, bytes]],
        agent: str,
        head_of: Callable[[Feed], Head | None],
        *,
        cut: int = 0,
        size: int = RUN_SIZE,
    ) -> None:
        if size < 1:
            raise ValueError("a run holds at least one put")
        self.records = records
        self.agent = agent
        self.head_of = head_of
        self.cut = cut
        self.size = size
        #: Where the record being decoded is (after a CodecError: the one that failed).
        self.location = -1
        self.position = -1

    def __iter__(self) -> Iterator[PutRun | tuple[int, int, bytes, Event]]:
        agent, cut, size, head_of = self.agent, self.cut, self.size, self.head_of
        loads, prefix, new_run = cbor2.loads, _PUT_PREFIX, PutRun
        top, most = UINT64_MAX, MAX_NAME_BYTES
        heads: dict[Feed, Head | None] = {}  # feeds met here, at the last record folded
        run: PutRun | None = None
        # The run being built, unpacked: what the next put must carry to extend it.
        origin_of = b""
        next_seq, last_id, stop = 0, b"", -1
        add: Callable[[tuple[int, list[Any], bytes, int]], None] = _unused
        named: object = _NOTHING  # the last namespace checked (a run's puts share a few)
        location = position = -1
        try:
            for location, position, eid, data in self.records:
                if data.startswith(prefix):
                    try:
                        raw = loads(data)
                    except Exception as exc:
                        raise CodecError(f"undecodable event: {exc!r}") from None
                    _, _, origin, ev_agent, seq, prev, hlc, body = raw
                    if (
                        type(body) is list
                        and len(body) == 4
                        and type(seq) is int
                        and type(hlc) is int
                        and 0 < seq <= top
                        and 0 <= hlc <= top
                        and ev_agent == agent
                    ):
                        namespace, key, value, previous = body
                        if (
                            type(value) is bytes
                            and (
                                previous is None
                                or (type(previous) is bytes and len(previous) == ID_SIZE)
                            )
                            and (
                                namespace == named
                                or (
                                    type(namespace) is str
                                    and namespace.isascii()
                                    and 0 < len(namespace) <= most
                                )
                            )
                            and type(key) is str
                            and key.isascii()
                            and 0 < len(key) <= most
                        ):
                            # A well-formed put. Why ``prev`` needs no check of its own:
                            # it must equal the feed's head id (bytes of 32) or be None
                            # for seq 1, which is what extending a feed checks.
                            named = namespace
                            if seq == next_seq and origin == origin_of and position != stop:
                                if prev != last_id:
                                    raise CodecError(
                                        f"event {seq} of origin {origin.hex()} does not "
                                        "follow its feed"
                                    )
                            else:
                                if run is not None:
                                    heads[(origin_of, agent)] = (next_seq - 1, last_id)
                                    yield run
                                feed = (origin, agent)
                                head = heads[feed] if feed in heads else head_of(feed)
                                _follow(head, seq, prev, origin)
                                run = new_run(origin, agent, seq, prev, position)
                                add = run.rows.append
                                origin_of = origin
                                stop = position + size
                                if position < cut < stop:
                                    stop = cut
                            add((hlc, body, eid, location))
                            next_seq, last_id = seq + 1, eid
                            continue
                # Any other record, or a put the fast checks did not accept whole.
                event = decode_trusted(data)
                origin, ev_agent, seq, prev = event[:4]  # type: ignore[index]
                if ev_agent != agent:
                    raise CodecError(f"an event of agent {ev_agent!r} in this log")
                if run is not None:
                    heads[(origin_of, agent)] = (next_seq - 1, last_id)
                feed = (origin, agent)
                _follow(heads[feed] if feed in heads else head_of(feed), seq, prev, origin)
                heads[feed] = (seq, eid)
                if run is not None:  # checked before it: the run goes first
                    yield run
                    run, next_seq = None, 0
                yield location, position, eid, event
            if run is not None:
                yield run
        except CodecError:
            self.location, self.position = location, position
            raise


def _follow(head: Head | None, seq: int, prev: bytes | None, origin: bytes) -> None:
    """Raise CodecError unless event ``seq`` (linked to ``prev``) is the next of a feed
    whose head is ``head``."""
    if (seq != 1 or prev is not None) if head is None else (seq != head[0] + 1 or prev != head[1]):
        raise CodecError(f"event {seq} of origin {origin.hex()} does not follow its feed")


_NOTHING = object()  # equal to nothing a record decodes to


def _unused(item: Any) -> None:  # pragma: no cover - replaced before the first put
    raise AssertionError("no run is being built")
