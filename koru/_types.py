"""Result types: version metadata, values with their metadata, statistics.

They are named tuples: immutable, cheap to create (``history`` builds thousands),
and readable by field name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import datetime as _dt

__all__ = [
    "EXPIRING_FIELDS",
    "Expiring",
    "IngestResult",
    "Refused",
    "Stats",
    "Tiers",
    "Version",
    "Versioned",
]


def _to_datetime(ns: int) -> _dt.datetime:
    # (datetime imported here: a one-shot ``kdelta get`` prints no time)
    import datetime

    return datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        microseconds=ns // 1000
    )


class Version(NamedTuple):
    """Metadata of one version of a key.

    Ids are lowercase hex. ``write_id`` is unique per write; ``content_id`` is blake3 of
    the canonical value (None for a deletion), so equal values share it; ``previous`` is
    the write id of the version the writer saw as current (the causal link; None for
    a key's first write); ``timestamp`` is the hybrid-logical-clock time in ns since
    the Unix epoch; ``origin`` is the id of the node that wrote it.
    """

    namespace: str
    key: str
    write_id: str
    content_id: str | None
    timestamp: int
    previous: str | None
    origin: str
    deleted: bool
    #: When this version stops being current (ns since the epoch), for a value written
    #: with a time to live; None for the rest.
    expires: int | None = None

    @property
    def datetime(self) -> _dt.datetime:
        """``timestamp`` as an aware UTC datetime (microsecond precision)."""
        return _to_datetime(self.timestamp)


class Versioned(NamedTuple):
    """A value together with its version metadata (see :class:`Version`).

    ``value`` is None for a deletion in history.
    """

    value: Any
    namespace: str
    key: str
    write_id: str
    content_id: str | None
    timestamp: int
    previous: str | None
    origin: str
    deleted: bool
    expires: int | None = None

    @property
    def datetime(self) -> _dt.datetime:
        """``timestamp`` as an aware UTC datetime (microsecond precision)."""
        return _to_datetime(self.timestamp)

    @property
    def version(self) -> Version:
        """The metadata alone."""
        return Version(*self[1:])


class Tiers(NamedTuple):
    """Where the key/value state lives (``Stats.tiers``): the memory layer (what changed
    since the last checkpoint), the warm tier (written lately, still in memory), the
    hot tier (read lately from tables), the cold tier (tables on disk, read in place);
    hits count lookups each answered, ``cold_reads`` those that searched the tables;
    ``recent_hits`` counts the reads of keys read lately (their values cached) that
    needed no lookup at all: those count toward no tier's hits."""

    memory_bytes: int
    warm_bytes: int
    warm_hits: int
    hot_bytes: int
    hot_hits: int
    cold_tables: int
    cold_bytes: int
    cold_reads: int
    compactions: int
    recent_hits: int = 0


class Stats(NamedTuple):
    """A snapshot of the database's counters (``db.stats()``)."""

    path: str | None
    node_id: str
    sync: str
    keys: int
    deleted_keys: int
    namespaces: int
    versions: int
    events: int
    log_bytes: int
    syncs: int
    cache_entries: int
    cache_bytes: int
    cache_hits: int
    cache_misses: int
    #: Checkpoints written by this handle, and background attempts that failed (the
    #: log is the truth, so a failed checkpoint only makes the next open slower).
    checkpoints: int
    checkpoint_failures: int
    #: Events restored from a checkpoint when opened, and replayed from the log then.
    checkpoint_events: int
    replayed_events: int
    #: Why the checkpoint file was not used at open (unreadable, another node's), or None.
    checkpoint_ignored: str | None
    #: Projections rebuilt from the log at open because their checkpoint section was
    #: missing, of another version or unusable (name -> why); the others loaded theirs.
    projections_rebuilt: dict[str, str]
    #: Corrupt records met by reads since the open (each read also raised CorruptLogError).
    corruptions: int
    #: Files recovery moved to ``lost+found/`` at this open (bytes past the point the log
    #: was proven durable, after a record that failed its checks), and their size.
    set_aside_files: int
    set_aside_bytes: int
    #: Events from other nodes taken in by ``ingest`` since the open, forks refused,
    #: and events held back waiting for their predecessors now.
    ingested: int
    forks: int
    held: int
    #: Failed steps of the background processes since the open (each is restarted), and
    #: the processes failing again and again right now (see ``Database.processes``).
    process_failures: int
    crash_loops: tuple[str, ...]
    tiers: Tiers


#: Fewer bytes than an :class:`Expiring` takes in a served answer besides its
#: namespace and key.
EXPIRING_FIELDS = 16


class Expiring(NamedTuple):
    """A key whose current value has a time to live (see ``Database.expiring``)."""

    namespace: str
    key: str
    #: When it expires (ns since the epoch, the database's clock).
    expires: int

    @property
    def datetime(self) -> _dt.datetime:
        """``expires`` as an aware UTC datetime."""
        return _to_datetime(self.expires)


class Refused(NamedTuple):
    """An event the ingest path would not take, and why."""

    #: The event's id (hex), or None if the bytes were not an event at all.
    event_id: str | None
    reason: str
    #: True for a fork: a second, different event where the feed already has one.
    fork: bool = False


class IngestResult(NamedTuple):
    """What :meth:`Database.ingest` did with the events it was offered."""

    #: Appended to the local log and folded (including held events they released).
    accepted: int
    #: Already held: nothing changed.
    duplicates: int
    #: Events (from this call or earlier ones) waiting for their predecessors.
    held: int
    #: Events refused, with why (forks among them, marked).
    refused: tuple[Refused, ...]
