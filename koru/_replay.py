"""Replaying a recorded log to a point: every projection rebuilt from the events up to a
time or a position, with the state's digest and a summary.

Why: an event-sourced database is debugged by asking what the state was at a point of
its log, and a replay must be the same every time (same events in, same state out).
It reads the directory without a lock and changes nothing, beside a live writer too.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from koru.events import (
    AGENTS,
    STORAGE,
    CodecError,
    CorruptLogError,
    FileStore,
    InvalidArgumentError,
    PutRun,
    RunDecoder,
)
from koru.projections import KvState, Projections, VectorState, state_digest

from ._loader import BUILTIN_PROJECTIONS, proven_cursors
from ._time import to_ns

__all__ = ["ReplayResult", "replay"]


class ReplayResult(NamedTuple):
    """The state a replay reached: its digest (as ``Database.digest()`` would say), the
    events folded per agent, the newest timestamp among them, and counts. The counts
    judge time to live at ``until`` if given, else at the newest timestamp: a value
    expired by then counts as deleted, as :meth:`Database.stats` counts it."""

    digest: str
    events: dict[str, int]
    last_timestamp: int
    keys: int
    deleted_keys: int
    versions: int
    namespaces: dict[str, int]


def replay(
    path: str | os.PathLike[str], *, until: Any = None, position: int | None = None
) -> ReplayResult:
    """Rebuild every projection from the logs under ``path`` and summarise the state.

    Args:
        until: fold only events timestamped at or before this moment (datetime with an
            offset, ISO-8601 string, or int ns). Each origin's timestamps increase along
            its feed, so this keeps a prefix of every feed.
        position: fold only the first ``position`` records of the storage log (the
            key/value writes, in this node's arrival order); other logs in full.

    Raises:
        InvalidArgumentError: a bad ``until`` or ``position``.
        StorageError, CorruptLogError: the logs cannot be read, or are damaged.
        DataLossError: a log ends before what the checkpoint proves durable.
    """
    limit = None if until is None else to_ns(until)
    if position is not None and (type(position) is not int or position < 0):
        raise InvalidArgumentError(f"position must be a non-negative int, not {position!r}")
    store = FileStore(path, readonly=True)
    try:
        projections = Projections(kind() for kind in BUILTIN_PROJECTIONS)
        proven = proven_cursors(store)
        apply, apply_run = projections.apply, projections.apply_run
        events: dict[str, int] = {}
        last = 0
        for agent in AGENTS:
            folded = 0
            cut = position if agent == STORAGE and position is not None else -1
            # The records of a log, decoded and checked as opening a database does (every
            # field, and every feed contiguous), consecutive puts of a feed as runs. No
            # run spans ``cut``: the record there starts one, where the fold stops.
            decoded = RunDecoder(
                store.replay_plain(agent, durable=proven.get(agent)),
                agent,
                _no_head,
                cut=max(cut, 0),
            )
            try:
                for item in decoded:
                    if type(item) is PutRun:
                        if 0 <= cut <= item.position:
                            break
                        if limit is None or item.top <= limit:
                            apply_run(item)
                            folded += len(item)
                            last = max(last, item.top)
                            continue
                        # Partly after the limit: event by event, as any other below.
                        for put, put_id, put_at in item.events():
                            if put.hlc <= limit:
                                apply(put, put_id, put_at)
                                folded += 1
                                last = max(last, put.hlc)
                        continue
                    location, at, eid, event = item  # type: ignore[misc]
                    if 0 <= cut <= at:
                        break
                    if limit is not None and event.hlc > limit:
                        continue
                    apply(event, eid, location)
                    folded += 1
                    last = max(last, event.hlc)
            except CodecError as exc:
                _, _, offset, file = store.locate(decoded.location)
                raise CorruptLogError(
                    agent, decoded.position, offset, f"malformed event: {exc}", file
                ) from None
            if folded:
                events[agent] = folded
    finally:
        store.close()
    kv, vectors = projections["kv"], projections["vectors"]
    assert isinstance(kv, KvState) and isinstance(vectors, VectorState)
    digest = state_digest(kv, vectors)
    # Counted as reads at the replayed moment would: a value whose time to live is over
    # by then is no value, its expiry recorded or not (the digest is of the events).
    at = last if limit is None else limit
    namespaces = {ns: len(kv.keys(ns, at)) for ns in kv.live_namespaces(at)}
    keys = kv.live_at(at)
    return ReplayResult(digest, events, last, keys, kv.key_count() - keys, kv.versions, namespaces)


def _no_head(feed: tuple[bytes, str]) -> None:
    """Every feed of a log starts in that log (a feed is one origin's events of one
    agent): none has a head before it."""
    return None
