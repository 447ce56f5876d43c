"""Rebuilding projection state from a store: checkpoint plus tail, or full replay.

A checkpoint plays two parts. Its projection state is a shortcut, never the truth: a
checkpoint that is missing, unreadable or written by another node is ignored and the
logs are replayed from genesis, giving identical state. Its cursors are a *proof*: the
log was synced up to them before the checkpoint was written, so a log that no longer
reaches them lost data (:class:`~koru.DataLossError`), and a record before them that
fails its checks is corruption, not the leftovers of a crash.
"""

from __future__ import annotations

import attrs

from koru.events import (
    AGENTS,
    CodecError,
    CorruptCheckpointError,
    CorruptLogError,
    Cursor,
    LogStore,
    decode_trusted,
)
from koru.projections import Checkpoint, FeedState, KvState, decode_checkpoint

from ._checkpointer import CHECKPOINT_FILE

__all__ = ["Loaded", "load"]


@attrs.define(slots=True)
class Loaded:
    """The state rebuilt from a store, and how it was obtained."""

    kv: KvState
    feeds: FeedState
    hlc: int
    #: Events restored from the checkpoint (0 if none was usable).
    from_checkpoint: int
    #: Events replayed from the log.
    replayed: int
    #: Why the checkpoint file was not used (None if used or absent).
    checkpoint_problem: str | None = None


def load(store: LogStore, *, use_checkpoint: bool = True) -> Loaded:
    """Rebuild state: from this node's checkpoint and the log tail if there is one,
    else by replaying every log from genesis. Both give identical state.

    ``use_checkpoint=False`` replays from genesis but still holds the log to the
    checkpoint's cursors (what they prove durable).

    Raises:
        DataLossError: the log ends before what the checkpoint proves durable.
        CorruptLogError: a record that was proven durable fails verification, or a
            record's event is malformed.
    """
    checkpoint, problem = _read_checkpoint(store)
    floors = checkpoint.cursors if checkpoint is not None else {}
    loaded = _replay(store, checkpoint if use_checkpoint else None, floors)
    loaded.checkpoint_problem = problem
    return loaded


def _read_checkpoint(store: LogStore) -> tuple[Checkpoint | None, str | None]:
    raw = store.read_file(CHECKPOINT_FILE)
    if raw is None:
        return None, None
    try:
        checkpoint = decode_checkpoint(raw)
    except CorruptCheckpointError as exc:
        return None, str(exc)
    if checkpoint.node is not None and checkpoint.node != store.node_id:
        node = checkpoint.node.hex()
        return None, f"the checkpoint was written by another node ({node})"
    return checkpoint, None


def _replay(store: LogStore, checkpoint: Checkpoint | None, floors: dict[str, Cursor]) -> Loaded:
    if checkpoint is None:
        kv, feeds, hlc, cursors, base = KvState(), FeedState(), 0, {}, 0
    else:
        kv, feeds, hlc = checkpoint.kv, checkpoint.feeds, checkpoint.hlc
        cursors, base = checkpoint.cursors, sum(c.count for c in checkpoint.cursors.values())
    replayed = 0
    present = store.agents()
    agents = [a for a in AGENTS if a in cursors or a in floors or a in present]
    heads = feeds.heads
    head_of = heads.get
    for agent in agents:
        records = store.replay(agent, cursors.get(agent), floors.get(agent))
        for location, position, eid, _, data in records:
            try:
                event = decode_trusted(data)
                origin, ev_agent, seq, prev, ts = (
                    event.origin,
                    event.agent,
                    event.seq,
                    event.prev,
                    event.hlc,
                )
                if ev_agent != agent:
                    raise CodecError(f"an event of agent {ev_agent!r} in this log")
                # Every feed in a local log is contiguous (the ingest path holds gaps
                # back and refuses forks), so anything else was not written by koru.
                # (FeedState.follows, inlined: this runs once per event.)
                feed = (origin, agent)
                head = head_of(feed)
                if (
                    (seq != 1 or prev is not None)
                    if head is None
                    else (seq != head[0] + 1 or prev != head[1])
                ):
                    raise CodecError(
                        f"event {seq} of origin {origin.hex()} does not follow its feed"
                    )
                kv.apply(event, eid, location)
                heads[feed] = (seq, eid)
            except CodecError as exc:
                _, _, offset, path = store.locate(location)
                raise CorruptLogError(
                    agent, position, offset, f"malformed event: {exc}", path
                ) from None
            if ts > hlc:
                hlc = ts
            replayed += 1
    return Loaded(kv, feeds, hlc, base, replayed)
