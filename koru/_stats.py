"""Statistics: one snapshot of the counters every collaborator of a database keeps.

Each collaborator counts what it does (the store its bytes and set-aside files, the
committer its syncs, the checkpointer its saves, the reader corrupt records met, the
ingest path events taken in); this module only gathers them, plus what the open found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from koru.events import LogStore
from koru.nursery import Checkpointer, Committer, ProcessInfo
from koru.projections import KvState

from ._cache import ValueCache
from ._ingest import Ingest
from ._reader import ValueReader
from ._types import Stats, Tiers

__all__ = ["OpenReport", "Statistics"]


class OpenReport(NamedTuple):
    """What opening the database found: events restored from the checkpoint and
    replayed from the log, why the checkpoint was ignored (or None), and which
    projections were rebuilt from the log (name -> why)."""

    from_checkpoint: int = 0
    replayed: int = 0
    checkpoint_problem: str | None = None
    rebuilt: dict[str, str] = {}  # noqa: RUF012 - never mutated; copied by snapshot


class Statistics(NamedTuple):
    """The counters' owners, read together by :meth:`snapshot`."""

    path: str | None
    node_hex: str
    store: LogStore
    kv: KvState
    committer: Committer
    checkpointer: Checkpointer
    cache: ValueCache
    values: ValueReader
    ingest: Ingest
    opened: OpenReport
    processes: Callable[[], list[ProcessInfo]]
    #: The time reads judge a time to live by (see ``Writer.read_time``).
    read_time: Callable[[], int]

    def snapshot(self) -> Stats:
        s = self.store.stats()
        processes = self.processes()
        kv, cache, opened = self.kv, self.cache, self.opened
        # A value whose time to live is over counts as no value, as every read says,
        # before its expiry is recorded too (by its writer's node: on a reader, when
        # that tombstone arrives).
        now = self.read_time()
        keys = kv.live_at(now)
        return Stats(
            path=self.path,
            node_id=self.node_hex,
            sync=self.committer.mode,
            keys=keys,
            deleted_keys=kv.key_count() - keys,
            namespaces=len(kv.live_namespaces(now)),
            versions=kv.versions,
            events=self.checkpointer.events,
            log_bytes=s.get("bytes_appended", 0),
            syncs=self.committer.syncs,
            cache_entries=len(cache),
            cache_bytes=cache.size,
            cache_hits=cache.hits,
            cache_misses=cache.misses,
            checkpoints=self.checkpointer.written,
            checkpoint_failures=self.checkpointer.failures,
            checkpoint_events=opened.from_checkpoint,
            replayed_events=opened.replayed,
            checkpoint_ignored=opened.checkpoint_problem,
            projections_rebuilt=dict(opened.rebuilt),
            corruptions=self.values.corruptions,
            set_aside_files=s.get("set_aside_files", 0),
            set_aside_bytes=s.get("set_aside_bytes", 0),
            ingested=self.ingest.accepted,
            forks=self.ingest.forks,
            held=self.ingest.held,
            process_failures=sum(p.failures for p in processes),
            crash_loops=tuple(p.name for p in processes if p.state == "crash-loop"),
            tiers=Tiers(
                memory_bytes=kv.mem_bytes,
                warm_bytes=kv.warm_bytes,
                warm_hits=kv.warm_hits,
                hot_bytes=kv.hot_bytes,
                hot_hits=kv.hot_hits,
                cold_tables=len(kv.tables),
                cold_bytes=sum(t.size for t in kv.tables),
                cold_reads=kv.table_reads,
                compactions=self.checkpointer.compactions,
                recent_hits=kv.recent_hits,
            ),
        )
