"""Seal marks: points inside a long unsealed stretch of a node's own feed that its
next seal names as well as the feed's head.

A peer takes another node's events only once a seal of their origin covers them
(:mod:`koru._proven`): it holds them waiting until the sealed point arrives, then
proves the run backwards from it. Waiting is bounded (per sender and in all), so a
run longer than that room could never be proven: a node that wrote 100,000 events and
then sealed once had them refused by every peer for ever (each peer's room filled with
the start of the run, and the rest was refused as "no room"). Marks bound every run a
seal leaves to ``RUN_EVENTS`` events and ``RUN_BYTES`` bytes (an event larger than that
is a run of its own), well inside the room of one sender.

The events are read from the log, which proves only damage by its checksums (crc32),
not intent: each event read is checked to be the feed's event of its seq (its header)
and to link to the one before it, and the last to the head held in memory, so a
record rewritten on disk is refused (CorruptLogError), never signed as a point of the
feed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import trio

from koru.events import CodecError, CorruptLogError, event_id, event_link, unpack_location

__all__ = ["RUN_BYTES", "RUN_EVENTS", "checked_prev", "named_by_next", "seal_marks", "unlinked"]

#: At most this many events, and bytes, between two points a seal names.
RUN_EVENTS = 1024
RUN_BYTES = 4 * 1024 * 1024
#: Events read between two yields to the event loop.
_YIELD_EVERY = 2048

Feed = tuple[bytes, str]


async def seal_marks(
    heads: Mapping[Feed, tuple[int, bytes]],
    sealed_to: Mapping[Feed, int],
    locate: Callable[[bytes, str, int], int | None],
    read: Callable[[int], bytes],
    check: Callable[[], None],
    run: tuple[int, int] | None = None,
) -> dict[Feed, list[tuple[int, bytes]]]:
    """Per feed of ``heads`` (a node's own), the ``(seq, event id)`` points strictly
    between what is sealed and its head that end runs within ``run`` (events, bytes;
    default ``RUN_EVENTS``, ``RUN_BYTES``).
    Reads every event of the unsealed stretch once, yielding to the loop every few
    thousand (``check`` raises if the database closed meanwhile). The identity feed
    too: the new seal proves its own feed up to itself, but the events since the last
    seal form a run like any other.

    Raises:
        CorruptLogError: an event read does not link to the one before it, or the last
            is not the head: the log was changed under the feed's chain."""
    run_events, run_bytes = (RUN_EVENTS, RUN_BYTES) if run is None else run
    out: dict[Feed, list[tuple[int, bytes]]] = {}
    done = 0
    for feed, (head, head_id) in heads.items():
        origin, agent = feed
        start = sealed_to.get(feed, 0)
        if head - start <= 1:
            continue
        marks: list[tuple[int, bytes]] = []
        count = size = 0
        previous = b""
        location = 0
        for seq in range(start + 1, head + 1):
            found = locate(origin, agent, seq)
            assert found is not None  # every seq up to the head is held
            location = found
            data = read(location)
            if checked_prev(data, feed, seq, location) != previous and seq > start + 1:
                unlinked(agent, seq - 1, location)
            if count and (count >= run_events or size + len(data) > run_bytes):
                marks.append((seq - 1, previous))  # the run so far ends there
                count = size = 0
            count += 1
            size += len(data)
            previous = event_id(data)
            done += 1
            if done % _YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()
                check()
        if previous != head_id:
            unlinked(agent, head, location)
        if marks:
            out[feed] = marks
    return out


def checked_prev(data: bytes, feed: Feed, seq: int, location: int) -> bytes | None:
    """The id the event read at ``location`` names as its predecessor (None for a
    feed's first event), once its header says it is event ``seq`` of ``feed``.

    Raises:
        CorruptLogError: it is not, or does not begin like an event.
    """
    try:
        origin, agent, at, prev = event_link(data)
    except CodecError:
        origin, agent, at, prev = b"", b"", 0, None
    if origin != feed[0] or agent != feed[1].encode() or at != seq:
        _, segment, offset = unpack_location(location)
        raise CorruptLogError(
            feed[1], seq, offset, f"segment {segment} holds another event in place of seq {seq}"
        )
    return prev


def unlinked(agent: str, seq: int, location: int) -> None:
    """Raise for the event at ``seq`` of an ``agent`` feed, which is not the one the
    chain after it names (read just before ``location``, or at it)."""
    _, segment, offset = unpack_location(location)
    raise CorruptLogError(
        agent,
        seq,
        offset,
        f"the event at seq {seq} (segment {segment}) is not the one its feed's chain names",
    )


def named_by_next(
    locate: Callable[[bytes, str, int], int | None],
    read: Callable[[int], bytes],
    feed: Feed,
    seq: int,
    eid: bytes,
) -> None:
    """Check that event ``seq + 1`` of ``feed`` (held: ``seq`` is below the head) is
    its feed's event of that seq and names ``eid`` as its predecessor: what proves an
    event read from the log short of the head.

    Raises:
        CorruptLogError: it does not (a record rewritten or swapped on disk).
    """
    after = locate(feed[0], feed[1], seq + 1)
    assert after is not None  # every seq up to the head is held
    if checked_prev(read(after), feed, seq + 1, after) != eid:
        unlinked(feed[1], seq, after)
