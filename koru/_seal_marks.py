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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import trio

from koru.events import event_id

__all__ = ["RUN_BYTES", "RUN_EVENTS", "seal_marks"]

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
    seal form a run like any other."""
    run_events, run_bytes = (RUN_EVENTS, RUN_BYTES) if run is None else run
    out: dict[Feed, list[tuple[int, bytes]]] = {}
    done = 0
    for feed, (head, _) in heads.items():
        origin, agent = feed
        start = sealed_to.get(feed, 0)
        if head - start <= 1:
            continue
        marks: list[tuple[int, bytes]] = []
        count = size = 0
        previous = b""
        for seq in range(start + 1, head + 1):
            location = locate(origin, agent, seq)
            assert location is not None  # every seq up to the head is held
            data = read(location)
            if count and (count >= run_events or size + len(data) > run_bytes):
                marks.append((seq - 1, event_id(previous)))  # the run so far ends there
                count = size = 0
            count += 1
            size += len(data)
            previous = data
            done += 1
            if done % _YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()
                check()
        if marks:
            out[feed] = marks
    return out
