"""The storage port: a narrow interface every log backend implements.

A store keeps one append-only log per agent. It frames, checksums and chains each
appended event (the one write choke point below the database), serves events back by
location, replays each log with verification, makes appended bytes durable on
request, and keeps a few small named files (node metadata, checkpoints) atomically.

Two backends implement it: :class:`~koru.events.MemoryStore` (no files; also the base
of simulations) and :class:`~koru.events.FileStore` (segmented files). One contract
test suite runs against both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

if TYPE_CHECKING:
    from ._table import Table, TableEncoder

from ._chain import AGENTS
from ._errors import InvalidArgumentError

__all__ = [
    "Cursor",
    "LogStore",
    "Offload",
    "Record",
    "call_here",
    "check_read_position",
    "pack_location",
    "unpack_location",
]

T = TypeVar("T")

#: Runs a call that may block in the kernel (a write, an fsync, a rename) and returns
#: what it returns: at once (:func:`call_here`), or in a worker thread while the caller's
#: event loop goes on (the shell's slicer).
Offload = Callable[..., Any]


def call_here(fn: Callable[..., T], *args: Any) -> T:
    """The :data:`Offload` that calls ``fn(*args)`` at once, where it is."""
    return fn(*args)


_SEG_BITS = 24
_OFF_BITS = 32


class Cursor(NamedTuple):
    """A position in one agent's local log, as saved in checkpoints.

    ``count`` records lie before it and the chain root there is ``root``. ``segment``,
    ``offset`` and ``last`` place it in a file store (the end of the last record, and
    where that record starts, or -1 at a segment's start); the memory store ignores them.
    (A named tuple: immutable, and cheap to import, which one-shot readers care about.)
    """

    count: int  # type: ignore[assignment]  # shadows tuple.count, on purpose
    root: bytes
    segment: int = 0
    offset: int = 0
    last: int = -1


class Record(NamedTuple):
    """One verified record from a replay."""

    location: int
    position: int
    event_id: bytes
    root: bytes
    data: bytes


def pack_location(agent_index: int, segment: int, offset: int) -> int:
    """Pack where an event lives into one int: agent, segment, byte offset (or index)."""
    return (agent_index << (_SEG_BITS + _OFF_BITS)) | (segment << _OFF_BITS) | offset


def unpack_location(location: int) -> tuple[int, int, int]:
    """The (agent index, segment, offset) packed by :func:`pack_location`."""
    return (
        location >> (_SEG_BITS + _OFF_BITS),
        (location >> _OFF_BITS) & ((1 << _SEG_BITS) - 1),
        location & ((1 << _OFF_BITS) - 1),
    )


def check_read_position(agent: object, start: object) -> None:
    """Refuse what :meth:`LogStore.records` cannot read from, the same way on every
    store: an agent that is not one of :data:`AGENTS`, or a ``start`` that is not a
    record position (an int from 0; a bool is refused, True == 1 in Python).

    Raises:
        InvalidArgumentError: naming the argument.
    """
    if agent not in AGENTS:
        raise InvalidArgumentError(f"no agent is called {agent!r}")
    if type(start) is not int or start < 0:
        raise InvalidArgumentError(f"start must be a record position (an int >= 0), not {start!r}")


class LogStore(Protocol):
    """What the database needs from a log backend.

    Lifecycle: construct, then :meth:`replay` every agent in :meth:`agents` (consuming
    the iterator) before appending to it; append; :meth:`flush`/:meth:`sync`; close.
    """

    readonly: bool
    #: Bytes at which the log starts a new segment (None: a store without segments).
    #: Sealing a full segment syncs it on the write path; the shell syncs the last
    #: part of a segment ahead of that, in the background (see ``Writer``).
    segment_size: int | None

    @property
    def node_id(self) -> bytes | None:
        """The database's node id (None until :meth:`create_node` for a new one)."""
        ...

    def create_node(self, node: bytes) -> None:
        """Record the node id of a new database."""
        ...

    def agents(self) -> list[str]:
        """Agents that have a stored log."""
        ...

    def replay(
        self, agent: str, start: Cursor | None = None, durable: Cursor | None = None
    ) -> Iterator[Record]:
        """Yield the agent's records after ``start`` (from genesis if None), verified.

        ``durable`` (usually the same cursor as ``start``, from a checkpoint) is a
        position the log was proven durable up to: a record failing its checks before
        it is corruption; after it, in the last segment, it ends the log (a crash's
        leftovers, set aside, unless read-only). The log must reach both cursors.

        Raises:
            DataLossError: the log ends before ``start`` or ``durable`` (before yielding).
            CorruptLogError: the log differs from a cursor, or a record that was proven
                durable fails a check.

        When the iterator is exhausted the log is positioned for appends.
        """
        ...

    def replay_plain(
        self, agent: str, start: Cursor | None = None, durable: Cursor | None = None
    ) -> Iterator[tuple[int, int, bytes, bytes]]:
        """:meth:`replay`, each record as a plain tuple ``(location, position, event id,
        event bytes)``: what a full replay reads, one object fewer per record."""
        ...

    def records(
        self, agent: str, start: int = 0, *, after: Cursor | None = None
    ) -> Iterator[Record]:
        """Yield the agent's records from position ``start``, verified (checksums and
        chain from the log's genesis, or from ``after``: a cursor of this log, such as a
        checkpoint's, whose root vouches for what precedes it, so that only the records
        past it are read), with no side effects: never repairs, never moves
        the log's end, safe on a read-only handle or a live writer's. For export, sync,
        ``kdelta events`` and ``verify``; recovery is :meth:`replay`'s business.

        It ends where the log ends: at this handle's end for a writer, and for a reader
        at the last whole record (a record another process is still writing, or space
        allocated ahead, is not an error).

        Raises:
            InvalidArgumentError: an unknown agent, or a ``start`` that is not an int
                from 0 (:func:`check_read_position`).
            CorruptLogError: a record before that end fails a check.
            DataLossError: the log ends before ``after``.
        """
        ...

    def cursor_after(self, record: Record) -> Cursor:
        """The cursor just past ``record`` (one from :meth:`records` or :meth:`replay`):
        what a reader following the log hands to ``records(after=...)`` next time."""
        ...

    def cursor(self, agent: str) -> Cursor:
        """The current end of the agent's log."""
        ...

    def append(self, agent: str, data: bytes, event_id: bytes) -> tuple[int, bytes]:
        """Append one event; returns (location, new chain root).

        The bytes reach the operating system before this returns unless the store
        buffers (``buffered=True``); :meth:`flush` pushes buffers, :meth:`sync` makes
        everything appended so far durable.
        """
        ...

    def read(self, location: int, expect: int = 4096) -> bytes:
        """The event bytes stored at ``location`` (checksum verified). ``expect``: how
        many bytes the record likely takes (a store that reads files reads that much
        first, then the rest of a longer record).

        Raises:
            CorruptLogError: the record there fails its checks (or is missing).
        """
        ...

    def locate(self, location: int) -> tuple[str, int, int, str]:
        """Where ``location`` is, for reports: (agent, record position, byte offset,
        file path or "")."""
        ...

    def flush(self) -> None:
        """Push user-space buffers to the operating system."""
        ...

    def sync(self) -> None:
        """Make every record that reached the OS durable (fsync; :meth:`flush` first
        when buffering). May run in a worker thread, so it never touches the buffers.
        Raises DurabilityError on failure."""
        ...

    def read_file(self, name: str) -> bytes | None:
        """A small named file's content, or None if absent."""
        ...

    def read_range(self, name: str, offset: int, size: int) -> bytes | None:
        """Up to ``size`` bytes of a named file from ``offset`` (fewer at its end), or
        None if absent: a file of known size read without trusting its length."""
        ...

    def write_file(self, name: str, *parts: bytes | memoryview) -> None:
        """Replace a named file atomically and durably with the concatenation of
        ``parts`` (pieces, so a large file never needs one big buffer)."""
        ...

    def write_table(self, encoder: TableEncoder, offload: Offload = call_here) -> Table:
        """Write a table (streamed from ``encoder``) durably under its content name,
        unless it exists, and return it opened. For checkpoints: called before the
        checkpoint that names it is written. Every call that may block in the kernel
        goes through ``offload``; the encoding runs where this is called."""
        ...

    def open_table(self, name: str) -> Table:
        """The table called ``name``, read in place.

        Raises:
            CorruptCheckpointError: no such table, a bad name, or not a table.
        """
        ...

    def table_names(self) -> set[str]:
        """The names of the tables stored."""
        ...

    def remove_tables(self, keep: set[str]) -> int:
        """Remove every table but those in ``keep`` (the newest checkpoint's, once it is
        durable); returns how many were removed."""
        ...

    def read_private(self, name: str) -> bytes | None:
        """A private named file's content (a secret key), or None if absent.

        Raises:
            KeyFileError: the file may be read or written by others, is not a regular
                file (a symbolic link, say) or belongs to another user.
        """
        ...

    def write_private(self, name: str, data: bytes) -> None:
        """Replace a private named file atomically and durably; created with mode 0600
        (only this user may read or write it)."""
        ...

    def replace_node(self, node: bytes) -> None:
        """Switch the database to another node id (its node key changed); what was
        written keeps the id it was written under."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters: bytes appended, syncs, segments and the like."""
        ...

    def close(self) -> None:
        """Flush and release everything; idempotent."""
        ...
