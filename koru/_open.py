"""``koru.open``: zero-configuration opening of a database, owning its nursery."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from koru.events import (
    DEFAULT_MAX_VALUE_SIZE,
    DEFAULT_SEGMENT_SIZE,
    MAX_SEGMENT_SIZE,
    MAX_VALUE_SIZE,
    MIN_SEGMENT_SIZE,
    Disk,
    FileStore,
    InvalidArgumentError,
    KoruError,
    LogStore,
    MemoryStore,
    name_problem,
)
from koru.nursery import (
    SYNC_MODES,
    Clock,
    Committer,
    Policy,
    SyncMode,
    SystemClock,
    prepare_checkpoints,
    supervise,
)
from koru.projections import Projection

from ._cache import DEFAULT_CACHE_BYTES, ValueCache
from ._database import Database
from ._embedders import Embedder
from ._identity import DEFAULT_DIFFICULTY, check_difficulty
from ._lifecycle import only_a_shortcut
from ._loader import BUILTIN_PROJECTIONS, load
from ._nodekey import node_key, node_public_key
from ._processes import intervals_from, scrub, steps
from ._read_floor import load_read_floor
from ._sessions import Entropy
from ._stats import OpenReport

_log = logging.getLogger("koru")

__all__ = ["DEFAULT_SYNC", "MEMORY", "default_path", "open"]

#: Pass as ``path`` for a memory-only database.
MEMORY = ":memory:"
#: The default durability mode: a write is acknowledged once it is on stable storage.
DEFAULT_SYNC: SyncMode = "always"


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


def _int_option(name: str, value: Any, low: int, high: int | None = None) -> None:
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise InvalidArgumentError(f"{name} must be an int {bounds}, not {value!r}")


def _check_options(
    path: Any,
    sync: Any,
    readonly: Any,
    clock: Any,
    seed: Any,
    cache_bytes: Any,
    max_value_size: Any,
    checkpoint_every: Any,
    flush_interval: Any,
    segment_size: Any,
    projections: Any,
) -> None:
    """Refuse every bad option with a typed error naming it, before touching disk."""
    _check_projections(projections)
    if path is not None and not isinstance(path, str | os.PathLike):
        raise InvalidArgumentError(f"path must be a str or path-like, not {path!r}")
    if path is not None and not os.fspath(path):
        raise InvalidArgumentError("path must not be empty (None means the default place)")
    if type(sync) is not str or sync not in SYNC_MODES:
        raise InvalidArgumentError(f"sync must be one of {SYNC_MODES}, not {sync!r}")
    if type(readonly) is not bool:
        raise InvalidArgumentError(f"readonly must be a bool, not {readonly!r}")
    if clock is not None and not callable(getattr(clock, "now_ns", None)):
        raise InvalidArgumentError(f"clock must have a now_ns() method, not {clock!r}")
    if seed is not None and type(seed) is not int:
        raise InvalidArgumentError(f"seed must be an int or None, not {seed!r}")
    _int_option("cache_bytes", cache_bytes, 0)
    _int_option("max_value_size", max_value_size, 1, MAX_VALUE_SIZE)
    _int_option("checkpoint_every", checkpoint_every, 1)
    _int_option("segment_size", segment_size, MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE)
    if (
        type(flush_interval) not in (int, float)
        or not math.isfinite(flush_interval)
        or flush_interval <= 0
    ):
        raise InvalidArgumentError(
            f"flush_interval must be a positive number of seconds, not {flush_interval!r}"
        )


def _check_projections(projections: Any) -> None:
    if isinstance(projections, str | bytes) or not isinstance(projections, Sequence):
        raise InvalidArgumentError(
            f"projections must be a sequence of projection classes, not {projections!r}"
        )
    names = {kind.name for kind in BUILTIN_PROJECTIONS}
    for kind in projections:
        if not isinstance(kind, type) or not all(
            callable(getattr(kind, m, None)) for m in ("apply", "capture", "restore")
        ):
            raise InvalidArgumentError(
                f"a projection is a class with apply, capture and restore, not {kind!r}"
            )
        name, version = getattr(kind, "name", None), getattr(kind, "version", None)
        if type(name) is not str or not name or type(version) is not int:
            raise InvalidArgumentError(
                f"projection {kind.__name__} needs a str name and an int version"
            )
        if name in names:
            raise InvalidArgumentError(f"two projections are called {name!r}")
        names.add(name)


def _check_embedder(embedder: Any) -> None:
    if embedder is None:
        return
    model = getattr(embedder, "model", None)
    if not callable(getattr(embedder, "embed", None)) or name_problem(model, "model"):
        raise InvalidArgumentError(
            f"embedder must have a model name (str) and an embed(content) method, not {embedder!r}"
        )


async def _merge_overgrown(db: Database) -> None:
    """Merge tables before serving if more are left than a projection keeps whatever
    their sizes (``max_tables``). Why: merges follow background checkpoints and the
    consolidation process, and sessions shorter than both (a script, a command, a
    service restarted often) each left the table of their close, never merged: the
    cold tier grew a table per session (h-proc). A merge that fails is only a missed
    shortcut: the open goes on."""
    checkpointer = db._checkpointer
    if checkpointer.overgrown():
        with only_a_shortcut("tables not merged at open"):
            await checkpointer.compact()


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
    disk: Disk | None = None,
    projections: Sequence[type[Projection]] = (),
    processes: bool | Mapping[str, float] = True,
    difficulty: int = DEFAULT_DIFFICULTY,
    embedder: Embedder | None = None,
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
        max_value_size: largest accepted encoded value, in bytes (at most 16 MiB).
        checkpoint_every: write a checkpoint after this many new events (and on close).
        flush_interval: seconds between buffer flushes with ``sync="never"``.
        segment_size: bytes per log segment file.
        disk: the filesystem under a file database (default: the operating system's);
            ``koru.simulations`` has a simulated disk that can cut power at any instant.
        projections: more projections to keep besides the key/value state and the
            feeds (classes following :class:`koru.projections.Projection`): each is
            folded every event, checkpointed in its own section and rebuilt from the
            log when its section is missing or stale; read one with
            :meth:`Database.projection`.
        processes: run the periodic background processes (True, the default), none
            (False), or a mapping of process name to interval in seconds (others keep
            their default: ``genome`` daily, ``vectors`` every 30 s). A read-only
            database runs none. See :meth:`Database.processes`.
        difficulty: the proof of work (bits) an identity needs to be registered here
            or to open a session (default ``koru.DEFAULT_DIFFICULTY``, about a second
            of mining).
        embedder: what ``put_similar`` and ``find_similar`` embed content with (an
            object with a ``model`` name and an ``embed(content)`` method); default
            :class:`koru.HashingEmbedder` (lexical, not semantic).

    The database owns a nursery running its background tasks; leaving the block (even
    by cancellation) flushes, fsyncs, checkpoints and closes files.

    Raises:
        InvalidArgumentError: an option of the wrong type or out of range.
        DatabaseLockedError: another process (or handle) has the directory open for writing.
        DataLossError: the log holds less than a checkpoint or the manifest proves durable.
        CorruptLogError: a record that was proven durable fails verification.
        StorageError: the path cannot be used (not a directory, not writable, ...).
    """
    _check_options(
        path,
        sync,
        readonly,
        clock,
        seed,
        cache_bytes,
        max_value_size,
        checkpoint_every,
        flush_interval,
        segment_size,
        projections,
    )
    intervals = {} if readonly else intervals_from(processes)
    if readonly:
        intervals_from(processes)  # refused the same way, even if unused
    check_difficulty(difficulty)
    _check_embedder(embedder)
    wall = clock if clock is not None else SystemClock()
    kinds = (*BUILTIN_PROJECTIONS, *projections)
    rng = random.Random(seed)
    # Secrets (the node key, challenges) from the OS unless the caller asked for a
    # replayable database: see koru._sessions.
    entropy = Entropy(rng if seed is not None else None)
    store: LogStore
    if path is not None and os.fspath(path) == MEMORY:
        store, where = MemoryStore(), None
    else:
        directory = default_path() if path is None else Path(path)
        store = FileStore(
            directory,
            readonly=readonly,
            # "always" buffers too: nothing is acknowledged before the group commit
            # round that flushes the buffer (one write for all its writers' records)
            # and syncs it; "os" must hand each record to the OS before its put returns.
            buffered=sync != "os",
            segment_size=segment_size,
            disk=disk,
        )
        where = str(directory)
    try:
        key = node_key(store, entropy)
        public = key.public_key if key is not None else node_public_key(store)
        node = store.node_id
        assert node is not None
        loaded = await trio.to_thread.run_sync(functools.partial(load, store, projections=kinds))
        if not readonly:
            # Tables no checkpoint names: a crash between writing them and the checkpoint.
            store.remove_tables(loaded.tables)
        committer = Committer(store, sync, flush_interval=flush_interval)
        db = Database(
            store=store,
            path=where,
            node_id=node,
            clock=wall,
            committer=committer,
            projections=loaded.projections,
            hlc=loaded.hlc,
            cache=ValueCache(cache_bytes),
            max_value_size=max_value_size,
            checkpoint_every=checkpoint_every,
            opened=OpenReport(
                loaded.from_checkpoint, loaded.replayed, loaded.checkpoint_problem, loaded.rebuilt
            ),
            node_key=key,
            entropy=entropy,
            difficulty=difficulty,
            root=public if readonly else None,
            embedder=embedder,
        )
        db._restore_read_floor(load_read_floor(store, public))
    except BaseException:
        with contextlib.suppress(KoruError):  # the first error is the one to report
            store.close()
        raise
    try:
        async with supervise(db._die, rng=rng, clock=wall) as supervisor:
            db._processes = supervisor.processes
            if not readonly:
                if sync == "never":
                    await supervisor.start("flusher", committer.run)
                await supervisor.start("checkpointer", db._checkpointer.run, db._die)
                await _merge_overgrown(db)
                if intervals:  # a long-lived writer: its checkpoints may need numpy
                    await prepare_checkpoints()
            if intervals:  # processes run: so does the scrub of the tables just opened
                await supervisor.start("scrub", scrub, db)
            for name, step in steps(db).items():
                if name in intervals:
                    await supervisor.every(name, step, Policy(interval=intervals[name]))
            yield db
    finally:
        await db.aclose()
