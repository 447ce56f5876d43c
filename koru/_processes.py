"""The database's periodic processes: what each step does, and how often by default.

Each is a short step the supervisor (:mod:`koru.nursery`) runs on its interval and
restarts after a failure; each records what it decided as an event in its agent's log,
so the log says what happened and replaying it reproduces it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from koru.events import (
    ESSENCE,
    LIFECYCLE,
    MAX_TIER_KEYS,
    SLEEP,
    ConsolidationEvent,
    GenomeEvent,
    InvalidArgumentError,
    KoruError,
    TieringEvent,
    decode_trusted,
    split_workspace,
)
from koru.nursery import Pacer

from ._genome import Genome

if TYPE_CHECKING:
    from ._database import Database

__all__ = ["DEFAULT_INTERVALS", "intervals_from", "steps"]


def _frozen(db: Database, namespace: str) -> bool:
    """True if ``namespace`` is a dropped workspace's: its data stays as it was when
    dropped (an audit reads it), so no expiry is recorded in it, as no handle may write
    there either."""
    found = split_workspace(namespace)
    return found is not None and db._workspaces.state.dropped(found[0])


#: Seconds between steps of each process.
DEFAULT_INTERVALS: dict[str, float] = {
    "consolidation": 300.0,
    "distillation": 3_600.0,
    "expiry": 60.0,
    "genome": 86_400.0,
    "vectors": 30.0,
}
#: Keys the distillation process pins in the hot tier at most.
HOT_KEYS = 10_000
#: Reads (halved every distillation) a key needs to be pinned.
_FIT = 2
#: Expiries recorded per batch before the step lets other tasks run.
_EXPIRE_BATCH = 1000


def intervals_from(option: Any) -> dict[str, float]:
    """The intervals ``koru.open(processes=...)`` asks for: True (the defaults), False
    (none), or a mapping of process name to seconds (the others keep their default).

    Raises:
        InvalidArgumentError: another type, an unknown name or a bad interval.
    """
    if option is True:
        return dict(DEFAULT_INTERVALS)
    if option is False:
        return {}
    if not isinstance(option, Mapping):
        raise InvalidArgumentError(
            f"processes must be True, False or a mapping of name to seconds, not {option!r}"
        )
    intervals = dict(DEFAULT_INTERVALS)
    for name, seconds in option.items():
        if name not in DEFAULT_INTERVALS:
            raise InvalidArgumentError(
                f"no process is called {name!r} (processes: {', '.join(DEFAULT_INTERVALS)})"
            )
        if type(seconds) not in (int, float) or not 0 < seconds < float("inf"):
            raise InvalidArgumentError(f"the {name} interval must be positive seconds")
        intervals[name] = float(seconds)
    return intervals


async def scrub(
    db: Database, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Once, after an open: check every table the projections read against its name, in
    a worker thread. Per-entry checksums catch damage as entries are read; a table
    rewritten whole with fresh checksums passes them, and only its name (a hash of its
    content) tells. One that fails stops the database (CorruptCheckpointError naming it:
    the log is intact, and removing the checkpoint rebuilds the state from it).

    Each table's index is read first, paced (see ``Table.load_index``): the first
    lookup of a table opened from a checkpoint read it on the event loop otherwise, a
    Python loop over its blocks (about 60 ms for a million keys) that held every task."""
    task_status.started()
    seen: set[str] = set()
    tables = [t for p in db._projections for t in getattr(p, "tables", ())]
    for table in tables:
        await trio.to_thread.run_sync(table.load_index, Pacer())
    for table in tables:
        if table.name not in seen:
            seen.add(table.name)
            await trio.to_thread.run_sync(table.verify_content)


def _last_genome_count(db: Database) -> int:
    """Events outside the essence log that the last genome this node recorded counted
    (-1 if there is none, or it cannot be read). Why: counted only from the genomes a
    process recorded itself, every open of an idle database recorded one more (h-proc)."""
    node = db._node
    head = db._feeds.heads.get((node, ESSENCE))
    location = None if head is None else db._feeds.location(node, ESSENCE, head[0])
    if location is None:
        return -1
    try:
        event = decode_trusted(db._store.read(location))
        if type(event) is not GenomeEvent:
            return -1
        agents = Genome.from_bytes(event.genome).agents
    except KoruError:
        return -1
    return sum(count for agent, (count, _) in agents.items() if agent != ESSENCE)


def steps(db: Database) -> dict[str, Callable[[], Awaitable[None]]]:
    """One step of each process, for ``db``."""

    recorded: int | None = None  # events outside the essence log at the last genome

    async def genome() -> None:
        """Record the genome in the essence agent's log, unless nothing but genomes was
        written since the last one (an idle database's log does not grow)."""
        nonlocal recorded
        store = db._store
        events = sum(store.cursor(a).count for a in store.agents() if a != ESSENCE)
        if recorded is None:
            recorded = _last_genome_count(db)
        if events == recorded:
            return
        taken = (await db.genome()).to_bytes()
        await db._life.enter_write()
        db._writer.emit(ESSENCE, lambda header: GenomeEvent(*header, taken))
        await db._writer.acknowledge()
        recorded = events

    async def expiry() -> None:
        """Record the expiry of every current value whose time to live is over, as a
        tombstone naming the version that expired (reads hid it already)."""
        # Judged by the earliest timestamp its tombstones take (the clock's, or past the
        # newest timestamp), not by the read floor: after the clock went back behind
        # the floor, a tombstone dated by the clock would fall before the version
        # expired, and time travel to a moment between would change its answer (reads
        # hide the value meanwhile). Nor dated at the expiry: the floor is kept out of
        # the HLC (one glitched reading would date every later event that far ahead).
        writer = db._writer
        now = max(writer.now(), writer.hlc.last + 1)
        due = sorted(k for k, _ in db._kv.expiring.at_most(now) if not _frozen(db, k[0]))
        for start in range(0, len(due), _EXPIRE_BATCH):
            await db._life.enter_write()
            wrote = [
                db._writer.expire(ns, key, now) for ns, key in due[start : start + _EXPIRE_BATCH]
            ]
            if any(wrote):
                await db._writer.acknowledge()
            await trio.lowlevel.checkpoint()

    async def consolidation() -> None:
        """Merge the cold tier's tables when there are too many for their sizes (see
        ``KvState.compaction``), and record it in the sleep agent's log."""
        merges = await db._checkpointer.compact()
        if merges:
            kv = db._kv
            size = sum(t.size for t in kv.tables)
            await db._life.enter_write()
            db._writer.emit(
                SLEEP, lambda header: ConsolidationEvent(*header, merges, len(kv.tables), size)
            )
            await db._writer.acknowledge()

    async def distillation() -> None:
        """Fitness-based selection: pin in the hot tier the keys read most since the
        last distillation (reads halve each time, so recent reads weigh more), unpin the
        rest, and record the change in the lifecycle log (a replay keeps the same)."""
        kv = db._kv
        fitness = kv.fitness()
        ranked = sorted((-n, slot) for slot, n in fitness.items() if n >= _FIT)
        chosen = {slot for _, slot in ranked[:HOT_KEYS]}
        promoted, demoted = sorted(chosen - kv.pinned), sorted(kv.pinned - chosen)
        # At most what one event may name; the rest at the next steps. (A hot set past
        # that, from events of this node's origin taken back by ingest or a checkpoint
        # rewritten with a fresh checksum, made every step's event fail to read back:
        # a crash loop for good, h-proc.)
        del demoted[MAX_TIER_KEYS:]
        kv.decay()
        if promoted or demoted:
            await db._life.enter_write()
            db._writer.emit(
                LIFECYCLE,
                lambda header: TieringEvent(*header, tuple(promoted), tuple(demoted)),
            )
            await db._writer.acknowledge()

    async def vectors() -> None:
        """Train the approximate index of every large vector collection that has none,
        or has grown or shrunk twofold since its index was trained (the model is written
        as an event: every replica then searches alike)."""
        for namespace, model, dim in db._vectors.due():
            await db._vectors.train(namespace, model, dim)

    return {
        "consolidation": consolidation,
        "distillation": distillation,
        "expiry": expiry,
        "genome": genome,
        "vectors": vectors,
    }
