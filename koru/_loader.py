"""Rebuilding projection state from a store: checkpoint plus tail, or full replay."""

from __future__ import annotations

import attrs

from koru.events import AGENTS, LogStore, decode_trusted, put_fields, unpack_location
from koru.projections import Checkpoint, FeedState, KvState, decode_checkpoint

from ._checkpointer import CHECKPOINT_FILE
from ._errors import CodecError, CorruptCheckpointError, CorruptLogError

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


def load(store: LogStore, *, use_checkpoint: bool = True) -> Loaded:
    """Rebuild state: from the checkpoint and the log tail if the checkpoint is valid,
    else by replaying every log from genesis. Both give identical state.

    Raises:
        CorruptLogError: a log record fails verification.
    """
    checkpoint = _read_checkpoint(store) if use_checkpoint else None
    if checkpoint is not None:
        try:
            return _replay(store, checkpoint)
        except CorruptCheckpointError:
            pass
    return _replay(store, None)


def _read_checkpoint(store: LogStore) -> Checkpoint | None:
    raw = store.read_file(CHECKPOINT_FILE)
    if raw is None:
        return None
    try:
        return decode_checkpoint(raw)
    except CorruptCheckpointError:
        return None


def _replay(store: LogStore, checkpoint: Checkpoint | None) -> Loaded:
    if checkpoint is None:
        kv, feeds, hlc, cursors, base = KvState(), FeedState(), 0, {}, 0
    else:
        kv, feeds, hlc = checkpoint.kv, checkpoint.feeds, checkpoint.hlc
        cursors, base = checkpoint.cursors, sum(c.count for c in checkpoint.cursors.values())
    replayed = 0
    agents = [a for a in AGENTS if a in cursors or a in store.agents()]
    for agent in agents:
        for location, position, eid, _, data in store.replay(agent, cursors.get(agent)):
            try:
                fields = put_fields(data)
                if fields is not None:  # the common case: no event object needed
                    origin, seq, ts, namespace, key, value, previous = fields
                    kv.apply_put(namespace, key, ts, origin, eid, value, previous, location)
                    feeds.advance(origin, agent, seq, eid)
                else:
                    event = decode_trusted(data)
                    if event.agent != agent:
                        raise CodecError("event of another agent")
                    kv.apply(event, eid, location)
                    feeds.apply(event, eid)
                    ts = event.hlc
            except (CodecError, TypeError, ValueError, IndexError) as exc:
                raise CorruptLogError(
                    agent, position, unpack_location(location)[2], f"undecodable event: {exc}"
                ) from None
            if ts > hlc:
                hlc = ts
            replayed += 1
    return Loaded(kv, feeds, hlc, base, replayed)
