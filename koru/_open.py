"""``koru.open``: zero-configuration opening of a database, owning its nursery."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import cbor2
import trio

from koru.events import (
    DEFAULT_MAX_VALUE_SIZE,
    DEFAULT_SEGMENT_SIZE,
    NODE_ID_SIZE,
    FileStore,
    LogStore,
    MemoryStore,
)
from koru.nursery import SYNC_MODES, Clock, Committer, SyncMode, SystemClock

from ._cache import DEFAULT_CACHE_BYTES, ValueCache
from ._database import Database
from ._errors import InvalidDataError, StorageError
from ._loader import load

__all__ = ["DEFAULT_SYNC", "MEMORY", "default_path", "open"]

#: Pass as ``path`` for a memory-only database.
MEMORY = ":memory:"
#: The default durability mode: a write is acknowledged once it is on stable storage.
DEFAULT_SYNC: SyncMode = "always"
_META_FILE = "meta"
_META_FORMAT = 1


def default_path() -> Path:
    """Where ``koru.open()`` keeps its data when given no path.

    ``$KORU_HOME`` if set, else ``$XDG_DATA_HOME/koru-delta/default``, else
    ``~/.local/share/koru-delta/default``.
    """
    home = os.environ.get("KORU_HOME")
    if home:
        return Path(home)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "koru-delta" / "default"


def _node_id(store: LogStore, rng: random.Random) -> bytes:
    raw = store.read_file(_META_FILE)
    if raw is not None:
        try:
            meta = cbor2.loads(raw)
            node = meta["node"]
            if meta["format"] == _META_FORMAT and type(node) is bytes and len(node) == NODE_ID_SIZE:
                return node
        except Exception:
            pass
        raise StorageError("the database's meta file is damaged; its node id cannot be read")
    node = rng.randbytes(NODE_ID_SIZE)
    if not store.readonly:
        store.write_file(_META_FILE, cbor2.dumps({"format": _META_FORMAT, "node": node}))
    return node


@asynccontextmanager
async def open(
    path: str | os.PathLike[str] | None = None,
    *,
    sync: SyncMode = DEFAULT_SYNC,
    readonly: bool = False,
    clock: Clock | None = None,
    seed: int | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
    checkpoint_every: int = 100_000,
    flush_interval: float = 1.0,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> AsyncIterator[Database]:
    """Open (creating if needed) a database, as an async context manager.

    Args:
        path: the database directory; None means :func:`default_path`; ``":memory:"``
            keeps everything in memory (same behaviour, no files).
        sync: ``"always"`` (default: acknowledged after fsync, with group commit),
            ``"os"`` (after the bytes reach the OS: survives a killed process, not a
            power cut) or ``"never"`` (buffered; for bulk loads).
        readonly: read without taking the writer's lock (allowed while another process
            writes); every write raises ReadOnlyError.
        clock: the wall clock for timestamps (default: the system clock). Pass a
            :class:`koru.TrioClock` under ``trio.testing.MockClock`` for deterministic runs.
        seed: seeds the database's random generator (a new node's id), for replayable runs.
        cache_bytes: budget of the value cache.
        max_value_size: largest accepted encoded value, in bytes.
        checkpoint_every: write a checkpoint after this many new events (and on close).
        flush_interval: seconds between buffer flushes with ``sync="never"``.
        segment_size: bytes per log segment file.

    The database owns a nursery running its background tasks; leaving the block (even
    by cancellation) flushes, fsyncs, checkpoints and closes files.

    Raises:
        DatabaseLockedError: another process (or handle) has the directory open for writing.
        CorruptLogError: a log record fails verification.
    """
    if sync not in SYNC_MODES:
        raise InvalidDataError(f"sync must be one of {SYNC_MODES}, not {sync!r}")
    if checkpoint_every < 1:
        raise InvalidDataError("checkpoint_every must be at least 1")
    rng = random.Random(seed)
    store: LogStore
    if path is not None and os.fspath(path) == MEMORY:
        store, where = MemoryStore(), None
    else:
        directory = default_path() if path is None else Path(path)
        store = FileStore(
            directory, readonly=readonly, buffered=sync == "never", segment_size=segment_size
        )
        where = str(directory)
    try:
        node = _node_id(store, rng)
        loaded = await trio.to_thread.run_sync(load, store)
        committer = Committer(store, sync, flush_interval=flush_interval)
        db = Database(
            store=store,
            path=where,
            node_id=node,
            clock=clock if clock is not None else SystemClock(),
            committer=committer,
            kv=loaded.kv,
            feeds=loaded.feeds,
            hlc=loaded.hlc,
            cache=ValueCache(cache_bytes),
            max_value_size=max_value_size,
            checkpoint_every=checkpoint_every,
            from_checkpoint=loaded.from_checkpoint,
            replayed=loaded.replayed,
        )
    except BaseException:
        store.close()
        raise
    try:
        async with trio.open_nursery() as nursery:
            if not readonly:
                await nursery.start(committer.run)
                await nursery.start(db.run_background)
            try:
                yield db
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The background tasks never raise, so a group can only wrap the caller's own
        # exception from the ``async with`` body: hand it back unwrapped.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise
    finally:
        await db.aclose()
