"""Segmented append-only log files on disk, one directory per agent.

Layout of a database directory::

    meta                      node id and the segment manifest (replaced atomically)
    checkpoint                projection state and the log cursors it reflects
    logs/<agent>/<n>.seg      segments 00000001.seg, 00000002.seg, ... (see _frame)
    lost+found/               bytes recovery set aside (never deleted by koru)

The writer holds an exclusive ``flock`` on the database directory itself (not on a file
in it, which could be deleted from under it).

Recovery on replay. A record that fails its checks where the log was proven durable
(anywhere in a sealed segment, before a checkpoint's cursor, or in a segment header the
manifest lists) is corruption: :class:`~koru.CorruptLogError` names the agent, the
record, the byte offset and the file, and nothing after it is served. Past that point
a crash or power cut may have left anything (a record cut short, sectors that never
landed, zeros allocated ahead): the first record that fails ends the log, and whatever
bytes follow are copied to ``lost+found/`` before the segment is cut back. A log
*shorter* than what was proven durable is :class:`~koru.DataLossError`.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import re
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import cbor2

from ._chain import AGENTS, agent_index, genesis_root
from ._disk import Disk, OsDisk
from ._errors import (
    CorruptCheckpointError,
    CorruptLogError,
    DatabaseLockedError,
    DataLossError,
    DurabilityError,
    InvalidArgumentError,
    KeyFileError,
    ReadOnlyError,
    StorageError,
)
from ._event import NODE_ID_SIZE
from ._frame import (
    MAX_BODY_SIZE,
    RECORD_HEADER_SIZE,
    ROOT_SIZE,
    SEGMENT_HEADER_SIZE,
    FrameError,
    SegmentHeader,
    TornRecord,
    encode_next,
    encode_segment_header,
    frame_into,
    parse_record,
    parse_segment_header,
)
from ._landing import still_landing
from ._limits import MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE
from ._scan import SegmentScan
from ._store import (
    _OFF_BITS,
    _SEG_BITS,
    Cursor,
    Offload,
    Record,
    call_here,
    check_read_position,
    pack_location,
    unpack_location,
)
from ._table import HEADER_SIZE, Table, TableEncoder
from ._warn import warn

__all__ = ["DEFAULT_SEGMENT_SIZE", "FileStore"]

#: A segment is closed and a new one started once it would grow past this size.
DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
META_FILE = "meta"
LOST_FOUND = "lost+found"
TABLES = "tables"
_TABLE_NAME = re.compile(r"^[0-9a-f]{32}$")
_META_FORMAT = 2
#: Format 2: magic | blake3(body) | CBOR body. Format 1 was a bare CBOR map.
_META_MAGIC = b"KORUMET2"
_MAX_PRIVATE_FILE = 64 * 1024  # a key file is about a hundred bytes
_MAX_SEGMENT_NUMBER = (1 << 24) - 1  # a location packs the segment number into 24 bits
#: Where a location (``pack_location``) keeps the agent index and the segment number.
_AGENT_SHIFT = _SEG_BITS + _OFF_BITS
_SEG_SHIFT = _OFF_BITS
_BUFFER_LIMIT = 1024 * 1024
_FRAMING = RECORD_HEADER_SIZE + ROOT_SIZE  # a record's bytes besides its event's
_ALLOCATE_AHEAD = 256 * 1024
_READ_AHEAD = 4096
#: How many more times a read-only store lists a log directory that shows a gap.
_RELISTS = 3
_LENGTH = struct.Struct("<I")  # a record header starts with the body length
_MAX_RECORD = RECORD_HEADER_SIZE + MAX_BODY_SIZE  # the longest read a record needs


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _write_all(disk: Disk, fd: int, data: bytes, pos: int) -> int:
    """Write all of ``data`` at ``pos``; returns the position after it. Raises OSError."""
    view = memoryview(data)
    while view:
        n = disk.pwrite(fd, view, pos)
        view = view[n:]
        pos += n
    return pos


def _hash_and_write(disk: Disk, fd: int, hasher: Any, data: bytes, pos: int) -> int:
    """Add ``data`` to ``hasher`` and write it at ``pos``; returns the position after it.
    Raises OSError."""
    hasher.update(data)
    return _write_all(disk, fd, data, pos)


#: Numbers the temporary files of the tables this process writes.
_TABLE_WRITES = itertools.count()


def _whole_records(data: bytes) -> tuple[int, int]:
    """(count, end) of the whole records at the start of ``data``, following length
    headers only: a last record cut short is not counted."""
    # Runs over a whole segment on every open with a checkpoint: locals, no slices.
    unpack, size, header = _LENGTH.unpack_from, len(data), RECORD_HEADER_SIZE
    limit = size - header
    count = offset = 0
    while offset <= limit:
        end = offset + header + unpack(data, offset)[0]
        if end > size:
            break
        offset = end
        count += 1
    return count, offset


def _count_records(data: bytes) -> int:
    """How many records ``data`` holds; FrameError unless they end exactly at its end."""
    count, end = _whole_records(data)
    if end != len(data):
        raise FrameError("record lengths do not add up")
    return count


class _AgentLog:
    """Write state of one agent's log."""

    __slots__ = (
        "allocated",
        "buf",
        "count",
        "dir",
        "dirty",
        "fd",
        "flushed",
        "index",
        "last",
        "listed",
        "map",
        "map_at",
        "name",
        "new_dirs",
        "offset",
        "ready",
        "root",
        "seg",
        "segments",
        "unlisted",
    )

    def __init__(self, name: str, directory: str, segments: list[int], listed: int) -> None:
        self.name = name
        self.index = agent_index(name)
        self.dir = directory
        self.segments = segments
        #: The last segment the manifest lists: it and all before it have a durable
        #: header (0: none listed).
        self.listed = listed
        #: The active segment was started by a roll whose last steps wait for the
        #: next sync (see FileStore._open_for_append): its header and directory entry
        #: are not known durable, and the manifest does not list it yet.
        self.unlisted = False
        #: Directories whose entries a roll added (logs/, the agent's), to sync then.
        self.new_dirs: list[str] = []
        self.ready = False
        self.count = 0
        self.root = genesis_root(name)
        self.seg = 0
        self.offset = 0
        self.last = -1
        self.fd: int | None = None
        #: Bytes of the active segment that reached the OS, and bytes allocated to it.
        self.flushed = 0
        self.allocated = 0
        #: The active segment's allocated space from ``map_at`` mapped for writing
        #: (None: writes go through ``Disk.pwrite``).
        self.map: mmap.mmap | None = None
        self.map_at = 0
        self.dirty = False
        self.buf = bytearray()

    def path(self, seg: int) -> str:
        return os.path.join(self.dir, f"{seg:08d}.seg")


def _parse_meta(raw: bytes) -> Any:
    """The meta file's decoded map: format 2 (magic, blake3 of the body, the CBOR body)
    checked against its digest, or format 1 (bare CBOR). Raises on damage (ValueError,
    or whatever cbor2 raises); what the map holds is the caller's to check."""
    if not raw.startswith(_META_MAGIC):
        return cbor2.loads(raw)  # format 1: no checksum, no manifest
    digest, body = raw[len(_META_MAGIC) : len(_META_MAGIC) + 32], raw[len(_META_MAGIC) + 32 :]
    if blake3.blake3(body).digest() != digest:
        raise ValueError("checksum mismatch")
    return cbor2.loads(body)


def read_manifest(root: str | os.PathLike[str]) -> dict[str, int]:
    """The last segment of each agent's log that the meta file's manifest lists (its
    header, and every earlier one's, proven durable), read without a lock or a store;
    empty when there is none to read (no meta file, a format-1 one, damage)."""
    try:
        # (OsDisk's read: a named pipe in its place would block a plain open for ever)
        meta = _parse_meta(OsDisk().read_file(os.path.join(os.fspath(root), META_FILE)))
        logs = meta.get("logs", {})
        return {a: n for a, n in logs.items() if type(a) is str and type(n) is int}
    except Exception:
        return {}


def _unmap(log: _AgentLog) -> None:
    """Close the map of ``log``'s active segment, if it has one (before the file is
    cut or closed)."""
    if log.map is not None:
        m, log.map = log.map, None
        m.close()


class _NewerFormat(Exception):
    """A meta file of a later format than this version reads (its format)."""


class FileStore:
    """The on-disk log store. See the module docstring for the layout."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        buffered: bool = False,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        disk: Disk | None = None,
    ) -> None:
        if type(segment_size) is not int or not (
            MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE
        ):
            raise InvalidArgumentError(
                f"segment_size must be an int from {MIN_SEGMENT_SIZE} to {MAX_SEGMENT_SIZE}, "
                f"not {segment_size!r}"
            )
        self.path = Path(path)
        self._root = os.fspath(path)
        self._disk: Disk = disk if disk is not None else OsDisk()
        self.readonly = readonly
        self._buffered = buffered
        self._segment_size = segment_size
        self.segment_size: int | None = segment_size
        self._lock_handle: int | None = None
        self._broken: BaseException | None = None
        self._closed = False
        self._allocate_ahead = True
        self._sync_lock = threading.Lock()
        #: The chain's hasher, reused (appends run on one thread: the event loop's).
        self._hasher = blake3.blake3()
        self._readers: dict[tuple[int, int], int] = {}
        self._appended = 0
        self._syncs = 0
        self._set_aside_files = 0
        self._set_aside_bytes = 0
        self._manifest: dict[str, int] = {}
        self._legacy_meta = False
        self._node: bytes | None = None
        try:
            if readonly:
                if not self._disk.is_dir(self._root):
                    raise StorageError(f"no koru database at {self._root}")
            else:
                self._create_dirs()
                self._lock()
            self._read_meta()
            self._logs = {name: self._agent_log(name) for name in AGENTS}
            if self._node is None and any(log.segments for log in self._logs.values()):
                raise StorageError(
                    f"{self._file(META_FILE)} is missing, but {self._file('logs')} holds "
                    "logs: the database's node id cannot be known, so it is not opened "
                    "(restore the meta file)"
                )
            if self._node is None and readonly:
                raise StorageError(f"no koru database at {self._root}")
            if not readonly:
                self._remove_stale_temp_files()
        except BaseException:
            self._release()
            raise

    # -- opening -----------------------------------------------------------------------

    def _file(self, *parts: str) -> str:
        return os.path.join(self._root, *parts)

    def _create_dirs(self) -> None:
        disk = self._disk
        if disk.exists(self._root) and not disk.is_dir(self._root):
            raise StorageError(f"{self._root} is not a directory")
        # Only the directory itself: logs/ appears with the first segment, so that an
        # open never creates what a damaged database lost (the manifest reports it).
        missing = []
        d = os.path.abspath(self._root)
        while not disk.is_dir(d):
            missing.append(d)
            d = os.path.dirname(d)
        try:
            for d in reversed(missing):
                try:
                    disk.mkdir(d)
                except FileExistsError:
                    # Another opener made it first (two imports into a new path): the
                    # lock decides who writes. Synced here too: its maker may not have
                    # synced it yet.
                    if not disk.is_dir(d):
                        raise
                # Why: a directory entry is durable only once its parent is synced.
                disk.fsync_dir(os.path.dirname(d))
        except OSError as exc:
            raise StorageError(f"cannot create the database at {self._root}: {_why(exc)}") from exc

    def _lock(self) -> None:
        try:
            self._lock_handle = self._disk.lock(self._root)
        except BlockingIOError:
            raise DatabaseLockedError(
                f"{self._root} is open for writing in another process (or handle); "
                "open it with readonly=True to read alongside"
            ) from None
        except OSError as exc:
            raise StorageError(f"cannot lock {self._root}: {_why(exc)}") from exc

    def _read_meta(self) -> None:
        path = self._file(META_FILE)
        try:
            raw = self._disk.read_file(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {_why(exc)}") from exc
        try:
            meta = _parse_meta(raw)
            if raw.startswith(_META_MAGIC):
                ok = meta["format"] == _META_FORMAT
                newer = meta["format"]
                if type(newer) is int and newer > _META_FORMAT:
                    # Whole and checksummed, but a later version's: not damage, which
                    # its user might answer by restoring or deleting it.
                    raise _NewerFormat(newer)
            else:  # format 1: plain CBOR, no checksum, no manifest
                ok = meta["format"] == 1 and set(meta) == {"format", "node"}
            node, logs = meta["node"], meta.get("logs", {})
            ok = (
                ok
                and type(node) is bytes
                and len(node) == NODE_ID_SIZE
                and type(logs) is dict
                and all(
                    a in AGENTS and type(n) is int and 0 <= n <= _MAX_SEGMENT_NUMBER
                    for a, n in logs.items()
                )
            )
        except _NewerFormat as exc:
            raise StorageError(
                f"{self._root} was written by a newer koru-delta (meta format {exc.args[0]}; "
                f"this version reads format {_META_FORMAT} and older): upgrade to open it"
            ) from None
        except Exception:
            ok = False
        if not ok:
            raise StorageError(f"{path} is damaged: the database's node id cannot be read")
        self._node = node
        self._manifest = dict(logs)
        # Format 1 was written before the manifest existed: see _agent_log.
        self._legacy_meta = meta["format"] == 1

    def _list_segments(self, directory: str) -> list[int]:
        try:
            names = self._disk.listdir(directory)
        except FileNotFoundError:
            names = []
        except OSError as exc:
            raise StorageError(f"cannot list {directory}: {_why(exc)}") from exc
        return sorted(
            int(n[:-4]) for n in names if n.endswith(".seg") and n[:-4].isdigit() and n[0] != "."
        )

    def _agent_log(self, name: str) -> _AgentLog:
        directory = self._file("logs", name)
        segments = self._list_segments(directory)
        if self.readonly:
            # A directory read racing a writer in another process may return a segment
            # created during it and miss one created just before (entries come in hash
            # order): a gap that is not there. Every segment that existed when a listing
            # began is in it, so a few listings together show the log; a gap that
            # persists is real.
            for _ in range(_RELISTS):
                if segments == list(range(1, len(segments) + 1)):
                    break
                segments = sorted(set(segments) | set(self._list_segments(directory)))
        for seg in segments:
            path = os.path.join(directory, f"{seg:08d}.seg")
            if self._disk.is_dir(path):
                raise StorageError(f"{path} is a directory, not a log segment")
        listed = self._manifest.get(name, 0)
        if self._legacy_meta and segments:
            # Every segment but the last was sealed, so their headers are durable; the
            # last one's may not be.
            listed = self._manifest[name] = segments[-1] - 1
        # Segments are numbered from 1 without gaps (nothing removes old ones yet), and
        # every segment the manifest lists must be there.
        expected = list(range(1, max(segments[-1] if segments else 0, listed) + 1))
        if segments != expected:
            missing = sorted(set(expected) - set(segments))
            raise DataLossError(
                name,
                0,
                0,
                f"segment {missing[0]:08d}.seg is missing (the log holds segments "
                f"{segments or 'none'}; the manifest lists {listed})",
                directory,
            )
        return _AgentLog(name, directory, segments, listed)

    def _remove_stale_temp_files(self) -> None:
        # Left by a crash in the middle of an atomic file replacement.
        try:
            names = self._disk.listdir(self._root)
            for n in names:
                if n.startswith(".") and n.endswith(".tmp"):
                    self._disk.unlink(self._file(n))
            if self._disk.is_dir(self._file(TABLES)):
                for n in self._disk.listdir(self._file(TABLES)):
                    if n.startswith(".") and n.endswith(".tmp"):
                        self._disk.unlink(self._file(TABLES, n))
        except OSError as exc:
            raise StorageError(f"cannot clean up {self._root}: {_why(exc)}") from exc

    @property
    def node_id(self) -> bytes | None:
        """This database's node id, or None for a new database (see :meth:`create_node`)."""
        return self._node

    def create_node(self, node: bytes) -> None:
        """Record the node id of a new database (the first writable open)."""
        if self._node is not None:
            raise StorageError("the database already has a node id")
        self._node = node
        if not self.readonly:
            self._write_meta()

    def replace_node(self, node: bytes) -> None:
        """Switch to another node id (its node key changed); see LogStore."""
        if self.readonly:
            raise ReadOnlyError("the database is open read-only")
        self._node = node
        self._write_meta()

    def _write_meta(self) -> None:
        assert self._node is not None
        body = cbor2.dumps(
            {"format": _META_FORMAT, "node": self._node, "logs": self._manifest}, canonical=True
        )
        self.write_file(META_FILE, _META_MAGIC, blake3.blake3(body).digest(), body)
        self._legacy_meta = False

    def agents(self) -> list[str]:
        return [name for name, log in self._logs.items() if log.segments]

    # -- replay and recovery -------------------------------------------------------------

    def _segment_bytes(self, path: str) -> contextlib.AbstractContextManager[Any]:
        if self.readonly:
            # A writer may truncate this file while it is read: read a snapshot, never
            # a memory map (a page past the new end would kill this process).
            return contextlib.nullcontext(self._disk.read_file(path))
        return self._disk.mapped(path)

    def replay(
        self, agent: str, start: Cursor | None = None, durable: Cursor | None = None
    ) -> Iterator[Record]:
        return self._replay(agent, start, durable, plain=False)

    def replay_plain(
        self, agent: str, start: Cursor | None = None, durable: Cursor | None = None
    ) -> Iterator[tuple[int, int, bytes, bytes]]:
        # The scan yields lists of records: one generator step per list, not per record.
        return itertools.chain.from_iterable(self._replay(agent, start, durable, plain=True))

    def _replay(
        self, agent: str, start: Cursor | None, durable: Cursor | None, *, plain: bool
    ) -> Iterator[Any]:
        log = self._logs[agent]
        if self.readonly and any(
            c is not None and c.count and c.segment > (log.segments[-1] if log.segments else 0)
            for c in (start, durable)
        ):
            # A writer in another process started segments since this store listed
            # them, and checkpointed there: list again (it synced them first).
            log = self._logs[agent] = self._agent_log(agent)
        log.ready = False
        if start is not None:
            self._check_cursor(log, start)
            if start.count == 0:
                start = None
        if durable is not None and durable.count and durable is not start:
            self._check_cursor(log, durable)
        count, root = (start.count, start.root) if start is not None else (0, genesis_root(agent))
        segs = list(log.segments)
        first = segs.index(start.segment) if start is not None else 0
        end = (segs[first], SEGMENT_HEADER_SIZE, -1) if segs else (0, 0, -1)
        for pos in range(first, len(segs)):
            seg = segs[pos]
            is_last = pos == len(segs) - 1
            path = log.path(seg)
            try:
                with self._segment_bytes(path) as data:
                    if start is not None and pos == first:
                        offset, last = start.offset, start.last
                    else:
                        try:
                            header = parse_segment_header(data[:SEGMENT_HEADER_SIZE])
                        except (TornRecord, FrameError) as exc:
                            if is_last and seg > log.listed:
                                # Created just before a crash: its header never landed.
                                self._discard_segment(log, seg, data)
                                break
                            raise CorruptLogError(agent, count, 0, str(exc), path) from None
                        if header.agent_index != log.index:
                            raise CorruptLogError(
                                agent, count, 0, "segment of another agent's log", path
                            )
                        if header.first_index != count or header.prev_root != root:
                            raise CorruptLogError(
                                agent, count, 0, "segment does not continue the chain", path
                            )
                        offset, last = SEGMENT_HEADER_SIZE, -1
                    scan = SegmentScan(
                        data,
                        offset,
                        root,
                        count,
                        pack_location(log.index, seg, 0),
                        last,
                        plain=plain,
                    )
                    yield from scan
                    count, root = scan.count, scan.root
                    end = (seg, scan.offset, scan.last)
                    if scan.failure is not None:
                        floor = SEGMENT_HEADER_SIZE
                        if durable is not None and durable.count and durable.segment == seg:
                            floor = durable.offset
                        if not is_last or scan.offset < floor:
                            raise CorruptLogError(agent, count, scan.offset, scan.failure, path)
                        # Past what was proven durable: a crash's leftovers end the log.
                        self._cut_tail(log, seg, scan.offset, data, scan.failure)
            except OSError as exc:
                raise StorageError(f"cannot read or repair {path}: {_why(exc)}") from exc
        log.count, log.root = count, root
        log.seg, log.offset, log.last = end
        log.flushed = log.offset
        log.ready = True

    def _check_cursor(self, log: _AgentLog, cursor: Cursor) -> None:
        """Check a checkpoint's cursor against the log, which must hold everything the
        cursor names (it was synced before the checkpoint was written).

        Raises:
            DataLossError: the log ends before the cursor.
            CorruptLogError: the log differs from what the cursor describes.
        """
        name = log.name
        if cursor.count == 0:
            if cursor.root != genesis_root(name):
                raise CorruptLogError(name, 0, 0, "checkpoint cursor has a foreign genesis root")
            return
        if cursor.segment not in log.segments:
            raise DataLossError(
                name,
                self._records_before(log, log.segments[-1]) if log.segments else 0,
                0,
                f"the checkpoint proves {cursor.count} records durable, up to segment "
                f"{cursor.segment:08d}.seg, which is missing",
                log.path(cursor.segment),
            )
        path = log.path(cursor.segment)
        try:
            fd = self._disk.open(path, os.O_RDONLY)
            try:
                size = self._disk.size(fd)
                head = self._disk.pread(fd, SEGMENT_HEADER_SIZE, 0)
                body = self._disk.pread(
                    fd, max(cursor.offset - SEGMENT_HEADER_SIZE, 0), SEGMENT_HEADER_SIZE
                )
            finally:
                self._disk.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {_why(exc)}") from exc
        try:
            header = parse_segment_header(head)
        except (TornRecord, FrameError) as exc:
            raise CorruptLogError(
                name, 0, 0, f"{exc} (the checkpoint needs this segment)", path
            ) from None
        if size < cursor.offset:
            # Short: first look for an altered record in what is there (the more exact
            # report); a log that is intact as far as it goes was cut.
            scan = SegmentScan(
                head + body,
                SEGMENT_HEADER_SIZE,
                header.prev_root,
                header.first_index,
                pack_location(log.index, cursor.segment, 0),
            )
            for _ in scan:
                pass
            if scan.failure is not None and not scan.torn:
                raise CorruptLogError(name, scan.count, scan.offset, scan.failure, path)
            raise DataLossError(
                name,
                scan.count,
                scan.offset,
                f"the segment ends at byte {size}, but the checkpoint proves {cursor.count} "
                f"records durable up to byte {cursor.offset}",
                path,
            )
        if cursor.last < 0:
            ok = (
                cursor.offset == SEGMENT_HEADER_SIZE
                and header.first_index == cursor.count
                and header.prev_root == cursor.root
            )
        else:
            rel = cursor.last - SEGMENT_HEADER_SIZE
            try:
                if rel < 0:
                    raise FrameError("cursor before the first record")
                end, root, _ = parse_record(body[rel:], 0)
                ok = (
                    end == cursor.offset - cursor.last
                    and root == cursor.root
                    and header.first_index + _count_records(body[:rel]) + 1 == cursor.count
                )
            except (TornRecord, FrameError):
                ok = False
        if not ok:
            self._diagnose(log, cursor, head + body, header.first_index, header.prev_root)

    def _diagnose(
        self, log: _AgentLog, cursor: Cursor, data: bytes, first: int, root: bytes
    ) -> None:
        """Say exactly where a segment stops matching a checkpoint's cursor: the first
        record (before the cursor) that fails its checks, else what disagrees."""
        path = log.path(cursor.segment)
        base = pack_location(log.index, cursor.segment, 0)
        scan = SegmentScan(data, SEGMENT_HEADER_SIZE, root, first, base)
        for _ in scan:
            pass
        if scan.failure is not None:
            raise CorruptLogError(log.name, scan.count, scan.offset, scan.failure, path)
        if scan.count != cursor.count:
            raise CorruptLogError(
                log.name,
                first,
                0,
                f"the segment header does not continue the chain: its records end at "
                f"number {scan.count}, the checkpoint's cursor at {cursor.count}",
                path,
            )
        raise CorruptLogError(
            log.name,
            cursor.count - 1,
            max(cursor.last, 0),
            "the log does not match the checkpoint's cursor here (altered or replaced)",
            path,
        )

    def _records_before(self, log: _AgentLog, seg: int) -> int:
        """The number of records before the end of segment ``seg`` (lengths only)."""
        try:
            data = self._disk.read_file(log.path(seg))
            first = parse_segment_header(data[:SEGMENT_HEADER_SIZE]).first_index
            return first + _count_records(data[SEGMENT_HEADER_SIZE:])
        except (OSError, TornRecord, FrameError):
            return -1

    def _cut_tail(self, log: _AgentLog, seg: int, offset: int, data: Any, why: str) -> None:
        """End the log at ``offset``: set aside any bytes that follow, cut the file."""
        if self.readonly:
            return
        path = log.path(seg)
        self._set_aside(log.name, seg, offset, data[offset:], why)
        if offset < len(data):
            fd = self._disk.open(path, os.O_WRONLY)
            try:
                self._disk.truncate(fd, offset)
                self._disk.fsync(fd)
            finally:
                self._disk.close(fd)

    def _discard_segment(self, log: _AgentLog, seg: int, data: Any) -> None:
        if self.readonly:
            return
        self._set_aside(log.name, seg, 0, data, "segment header never landed")
        self._disk.unlink(log.path(seg))
        log.segments.remove(seg)
        self._disk.fsync_dir(log.dir)

    def _set_aside(self, agent: str, seg: int, offset: int, tail: Any, why: str) -> None:
        """Copy bytes a recovery drops into lost+found/, durably, before dropping them."""
        # Zeros after the last written byte carry nothing (space allocated ahead).
        tail = bytes(tail).rstrip(b"\x00")
        if not tail:
            return
        directory = self._file(LOST_FOUND)
        base = f"{agent}-{seg:08d}-{offset}"
        disk = self._disk
        if not disk.is_dir(directory):
            if disk.exists(directory):
                # A file (or a dangling link) there may be someone's: never replaced,
                # and the bytes are never dropped unsaved, so the log stays as it is.
                raise StorageError(
                    f"recovery must set aside {len(tail)} bytes of log {agent!r} (segment "
                    f"{seg}, from byte {offset}: {why}), but {LOST_FOUND} is not a "
                    f"directory ({directory}): move it away and open again"
                )
            disk.mkdir(directory)
            disk.fsync_dir(self._root)
        existing = set(disk.listdir(directory))
        n = 0
        while f"{base}.{n}.bin" in existing:
            if self._holds(os.path.join(directory, f"{base}.{n}.bin"), tail):
                return  # an earlier recovery saved it and crashed before the cut
            n += 1
        target = os.path.join(directory, f"{base}.{n}.bin")
        fd = disk.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            view = memoryview(tail)
            pos = 0
            while pos < len(tail):
                pos += disk.pwrite(fd, view[pos:], pos)
            disk.fsync(fd)
        finally:
            disk.close(fd)
        disk.fsync_dir(directory)
        self._set_aside_files += 1
        self._set_aside_bytes += len(tail)
        warn(
            "koru: log %r segment %d ends at byte %d (%s); %d bytes after it were not "
            "proven durable and were moved to %s",
            agent,
            seg,
            offset,
            why,
            len(tail),
            target,
        )

    def _holds(self, path: str, tail: bytes) -> bool:
        """Whether the file at ``path`` (in lost+found) holds exactly ``tail``. Nothing
        there is trusted: an entry that cannot be read as a file of that size (a
        directory, a device, a named pipe, a dangling link, a huge file) holds something
        else, and is neither read whole nor allowed to stop the recovery."""
        disk = self._disk
        try:
            fd = disk.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            if disk.size(fd) != len(tail):
                return False
            pos, view = 0, memoryview(tail)
            while pos < len(tail):  # pread returns at most 2 GiB a call
                chunk = disk.pread(fd, min(len(tail) - pos, 1 << 30), pos)
                if not chunk or view[pos : pos + len(chunk)] != chunk:
                    return False
                pos += len(chunk)
            return True
        except OSError:
            return False
        finally:
            disk.close(fd)

    def records(
        self, agent: str, start: int = 0, *, after: Cursor | None = None
    ) -> Iterator[Record]:
        """See :meth:`LogStore.records`. Reads snapshots of the segment files; the chain
        is verified from the header of the segment holding ``start``, or from ``after``
        (only the bytes past it are read). A writer's handle first pushes its buffered
        records to the file, so that they are included: on a writer's handle, call it on
        the thread that appends (only that thread may touch the buffers; see sync)."""
        check_read_position(agent, start)
        log = self._logs[agent]
        writer = not self.readonly and log.ready
        if writer:
            self._flush_log(log)
            segments, end = list(log.segments), (log.seg, log.offset)
        else:
            # Listed again: another process may have written more since this store opened.
            segments, end = self._agent_log(agent).segments, None
        first = 0
        if after is not None:
            start = max(start, after.count)
            if after.segment:
                if after.segment not in segments:
                    raise DataLossError(
                        agent, after.count, after.offset, "the cursor's segment is missing"
                    )
                first = segments.index(after.segment)
        else:
            for i, seg in enumerate(segments[1:], 1):  # the last segment starting at or before
                header = self._read_header(log, seg)
                if header is None or header.first_index > start:
                    break
                first = i
        for i in range(first, len(segments)):
            seg, last = segments[i], i == len(segments) - 1
            path = log.path(seg)
            resume = after if after is not None and i == first and after.segment else None
            skip = 0 if resume is None else resume.offset
            if resume is not None and resume.last >= 0:
                # The cursor's own record (the last before it) must be there and end the
                # chain at the cursor's root: a log rewritten under a checkpoint is
                # caught here even when nothing follows the cursor.
                skip = resume.last
            try:
                data = self._disk.read_file(path) if resume is None else self._read_from(path, skip)
            except OSError as exc:
                raise StorageError(f"cannot read {path}: {_why(exc)}") from exc
            if resume is not None and data is None:
                raise DataLossError(
                    agent, resume.count, skip, "the log ends before the cursor", path
                )
            assert data is not None
            if end is not None and seg == end[0]:
                data = data[: end[1] - skip]
            if resume is not None:
                # The cursor stands for what came before it: its root is the chain's root
                # there, so the records after it are verified from it.
                begin = 0
                if skip != resume.offset:
                    try:
                        begin, root, _ = parse_record(data, 0)
                    except TornRecord:
                        raise DataLossError(
                            agent, resume.count - 1, skip, "the log ends before the cursor", path
                        ) from None
                    except FrameError as exc:
                        raise CorruptLogError(
                            agent, resume.count - 1, skip, f"the cursor's record: {exc}", path
                        ) from None
                    if begin != resume.offset - skip or root != resume.root:
                        raise CorruptLogError(
                            agent,
                            resume.count - 1,
                            skip,
                            "the log differs from the cursor (its record ends elsewhere or "
                            "at another root)",
                            path,
                        )
                scan = SegmentScan(
                    data, begin, resume.root, resume.count, pack_location(log.index, seg, skip)
                )
            else:
                try:
                    header = parse_segment_header(data[:SEGMENT_HEADER_SIZE])
                except TornRecord:
                    if last and end is None:
                        return  # a segment another process has just created
                    raise CorruptLogError(
                        agent, start, 0, "segment header is incomplete", path
                    ) from None
                except FrameError as exc:
                    raise CorruptLogError(agent, start, 0, str(exc), path) from None
                if header.agent_index != log.index:
                    raise CorruptLogError(
                        agent, header.first_index, 0, "segment of another agent's log", path
                    )
                scan = SegmentScan(
                    data,
                    SEGMENT_HEADER_SIZE,
                    header.prev_root,
                    header.first_index,
                    pack_location(log.index, seg, 0),
                )
            for record in scan:
                if record.position >= start:
                    yield record
            if scan.failure is not None:
                if (
                    last
                    and end is None
                    and (
                        scan.torn
                        or self._still_landing(path, skip + scan.offset, data[scan.offset :])
                    )
                ):
                    return  # the end of what another process has written so far
                raise CorruptLogError(agent, scan.count, skip + scan.offset, scan.failure, path)
            if i + 1 < len(segments):
                following = self._read_header(log, segments[i + 1])
                if following is not None and (
                    following.first_index != scan.count or following.prev_root != scan.root
                ):
                    raise CorruptLogError(
                        agent,
                        scan.count,
                        0,
                        "segment does not continue the chain",
                        log.path(segments[i + 1]),
                    )

    def _still_landing(self, path: str, offset: int, seen: bytes) -> bool:
        """Whether the record failing its checks at ``offset`` of the active segment
        (``seen``: the bytes read from there) may be one another process is still
        writing (:func:`~._landing.still_landing`)."""

        def read_again() -> bytes | None:
            try:
                return self._read_from(path, offset)
            except OSError as exc:
                raise StorageError(f"cannot read {path}: {_why(exc)}") from exc

        return still_landing(bytes(seen), read_again)

    def _read_from(self, path: str, offset: int) -> bytes | None:
        """A segment's bytes from ``offset`` on (None if the file is shorter)."""
        fd = self._disk.open(path, os.O_RDONLY)
        try:
            size = self._disk.size(fd)
            return None if size < offset else self._disk.pread(fd, size - offset, offset)
        finally:
            self._disk.close(fd)

    def _read_header(self, log: _AgentLog, seg: int) -> SegmentHeader | None:
        """A segment's header; None if it is not all there (a segment being created)."""
        path = log.path(seg)
        try:
            fd = self._disk.open(path, os.O_RDONLY)
            try:
                head = self._disk.pread(fd, SEGMENT_HEADER_SIZE, 0)
            finally:
                self._disk.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {_why(exc)}") from exc
        try:
            return parse_segment_header(head)
        except TornRecord:
            return None
        except FrameError as exc:
            raise CorruptLogError(log.name, 0, 0, str(exc), path) from None

    def cursor_after(self, record: Record) -> Cursor:
        _, seg, offset = unpack_location(record.location)
        end = offset + RECORD_HEADER_SIZE + ROOT_SIZE + len(record.data)
        return Cursor(record.position + 1, record.root, seg, end, offset)

    def cursor(self, agent: str) -> Cursor:
        log = self._logs[agent]
        if not log.segments:
            return Cursor(log.count, log.root, 0, 0, -1)
        return Cursor(log.count, log.root, log.seg, log.offset, log.last)

    # -- appending ---------------------------------------------------------------------

    def append(self, agent: str, data: bytes, event_id: bytes) -> tuple[int, bytes]:
        if self.readonly:
            raise ReadOnlyError("the database is open read-only")
        if self._broken is not None:
            raise DurabilityError("the log failed earlier; reopen the database") from self._broken
        if self._closed:
            # A write handed to a group-commit round of a handle that then closed
            # (see Writer.join): its segment would be reopened, without the lock.
            raise DurabilityError("the log is closed; nothing was written")
        log = self._logs[agent]
        if not log.ready and log.segments:
            raise StorageError(f"log {agent!r} must be replayed before appending")
        if self._node is None:
            raise StorageError("the store has no node id yet (create_node first)")
        size = _FRAMING + len(data)
        if log.fd is None or (
            log.offset + size > self._segment_size and log.offset > SEGMENT_HEADER_SIZE
        ):
            self._open_for_append(log, size)
        offset = log.offset
        m, pos = log.map, log.flushed
        end = pos + size
        if m is not None and end <= log.allocated and len(data) >= 4:
            # An unbuffered store's (only they map): chained, framed and copied into
            # the map in the order a reader beside it needs (see frame_into).
            root = frame_into(self._hasher, log.root, event_id, data, m, pos - log.map_at)
            log.flushed = end
            log.dirty = True
        else:
            root, rec = encode_next(self._hasher, log.root, event_id, data)  # chain, frame
            if self._buffered:
                log.buf += rec
                if len(log.buf) >= _BUFFER_LIMIT:
                    self._flush_log(log)
            else:
                self._write(log, rec)
        log.offset = offset + size
        log.last = offset
        log.count += 1
        log.root = root
        self._appended += size
        # pack_location(log.index, log.seg, offset), inlined (every write comes here)
        return (log.index << _AGENT_SHIFT) | (log.seg << _SEG_SHIFT) | offset, root

    def _open_for_append(self, log: _AgentLog, size: int) -> None:
        """Open the active segment for writing, starting a new one when full or absent."""
        disk = self._disk
        try:
            fits = log.offset + size <= self._segment_size or log.offset <= SEGMENT_HEADER_SIZE
            if log.fd is None and log.segments and fits:
                log.fd = disk.open(log.path(log.seg), os.O_RDWR)  # RDWR: to map
                log.allocated = disk.size(log.fd)
                # A segment a crash left beyond the manifest: listed by the next sync.
                log.unlisted = log.seg > log.listed
                return
            if log.fd is not None:
                # Seal the full segment: cut its unused allocation and make it durable
                # before a new segment exists, so that a power cut can never leave a
                # later segment whose predecessor lost its last records (that would
                # read as a broken chain), and only the last segment can end in zeros.
                self._flush_log(log)
                with self._sync_lock:
                    if log.unlisted:
                        # Its own roll is not finished yet (no sync since): finish it
                        # first, or a power cut could lose its directory entry while
                        # the next segment's survives (a gap).
                        self._finish_roll(log, sync_file=True)
                    # Under the lock, and the descriptor forgotten before it is released:
                    # a sync in a worker thread must never pick up a closed descriptor
                    # (whose number the OS may already have given to another file).
                    fd, log.fd = log.fd, None
                    assert fd is not None
                    _unmap(log)  # first: a mapped page past the new end is SIGBUS
                    disk.truncate(fd, log.flushed)
                    disk.fdatasync(fd)
                    disk.close(fd)
                    log.dirty = False
            seg = (log.segments[-1] + 1) if log.segments else 1
            if seg > _MAX_SEGMENT_NUMBER:
                raise OSError(errno.EFBIG, f"log {log.name!r} has used every segment number")
            for d in (os.path.dirname(log.dir), log.dir):
                if not disk.is_dir(d):
                    disk.mkdir(d)
                    # Its entry is synced with the roll's last steps, before the
                    # segment's own (and before the manifest can list it).
                    log.new_dirs.append(os.path.dirname(d))
            fd = disk.open(log.path(seg), os.O_RDWR | os.O_CREAT | os.O_EXCL)
            log.fd = fd
            log.ready = True
            log.segments.append(seg)
            log.seg = seg
            log.offset = log.flushed = 0
            log.last = -1
            # The header goes in before any space is allocated ahead, so a segment on
            # disk either has its header or is empty (or cut short) and gets dropped.
            log.allocated = SEGMENT_HEADER_SIZE
            self._write(log, encode_segment_header(log.index, log.count, log.root))
            log.offset = SEGMENT_HEADER_SIZE
            # The header and the directory entry are made durable, then the manifest
            # lists the segment: a listed segment's header is proven durable, so
            # recovery reads damage there as corruption, not as a crash's leftovers.
            # Those steps (fsyncs and the manifest's atomic write, 5 to 30 ms, a put
            # waiting) are left to the next sync, which finishes them before it
            # reports anything durable (the writer asks for one in the background at
            # once), or to the next roll or close. Until then a crash finds a segment
            # beyond the manifest: its records are read as past the durable point,
            # none of them acknowledged as durable yet; one whose header never landed
            # is set aside.
            log.unlisted = True
        except (OSError, StorageError) as exc:
            self._fail(exc)
        except BaseException as exc:
            # Interrupted half-way (KeyboardInterrupt, a simulated power cut): the log's
            # state is unknown, so the handle takes no more writes and syncs.
            self._broken = exc
            raise

    def _finish_roll(self, log: _AgentLog, *, sync_file: bool) -> None:
        """The last steps of a roll (see :meth:`_open_for_append`), under the sync lock:
        the new segment's header made durable (unless the caller has just synced its
        file, ``sync_file=False``), the directories it made, its directory entry, then
        the manifest lists it."""
        assert log.fd is not None
        if sync_file:
            self._disk.fdatasync(log.fd)
        for d in log.new_dirs:  # directories the roll made, outermost first
            self._disk.fsync_dir(d)
        log.new_dirs.clear()
        self._disk.fsync_dir(log.dir)
        self._list(log)

    def _list(self, log: _AgentLog) -> None:
        """The manifest lists ``log``'s active segment (under the sync lock: a worker
        thread's sync may write the manifest too)."""
        self._manifest[log.name] = log.seg
        log.listed = log.seg
        log.unlisted = False
        self._write_meta()

    def _write(self, log: _AgentLog, data: bytes | bytearray) -> None:
        """Write ``data`` where the bytes that reached the OS end, allocating first."""
        assert log.fd is not None
        end = log.flushed + len(data)
        pos = log.flushed
        # Through pwrite even where the map would take it (a buffer of many records,
        # a segment's header): its pages land in order, where one memcpy of many
        # records could show a reader a later record before an earlier one's header.
        disk = self._disk
        try:
            if end > log.allocated:
                self._allocate(log, end)
            n = disk.pwrite(log.fd, data, pos)
            pos += n
            if pos < end:  # a short write (rare): the rest, piece by piece
                view = memoryview(data)[n:]
                while view:
                    n = disk.pwrite(log.fd, view, pos)
                    view = view[n:]
                    pos += n
        except OSError as exc:
            if pos > log.flushed:
                # Best effort: erase the part that landed, so the log ends in zeros
                # where it ended before.
                with contextlib.suppress(OSError):
                    disk.pwrite(log.fd, bytes(pos - log.flushed), log.flushed)
            self._fail(exc)
        except BaseException as exc:
            self._broken = exc  # interrupted half-way: see _open_for_append
            raise
        log.flushed = end
        log.dirty = True

    def _allocate(self, log: _AgentLog, end: int) -> None:
        # Why allocate ahead: an fdatasync after a write that grows the file must also
        # commit the new size through the filesystem journal; inside space allocated
        # (as zeros written: see OsDisk.allocate) it flushes the data alone, about 230
        # -> 130 µs here. The zeros after the last record mark the log's end on replay;
        # close and sealing cut them off. Why 256 KiB at a time: writing the zeros
        # costs the event loop 0.1 ms, and a megabyte 0.9 ms.
        assert log.fd is not None
        target = max(end, min(log.allocated + _ALLOCATE_AHEAD, self._segment_size))
        if self._allocate_ahead and target > end:
            try:
                # From the data's end: what the write itself covers needs no zeros.
                self._disk.allocate(log.fd, end, target - end)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                self._allocate_ahead = False  # this filesystem cannot: plain appends
                target = end
        else:
            target = end
        log.allocated = target
        _unmap(log)
        if target > end and not self._buffered:
            # The unbuffered appends up to ``target`` go through a map of the new space,
            # where the disk gives one (see Disk.map_append), from the page the data
            # ends in (a buffered store's flushes go through pwrite: see append).
            at = log.flushed - log.flushed % mmap.ALLOCATIONGRANULARITY
            # (A disk written before Disk.map_append existed has none: pwrite.)
            map_append = getattr(self._disk, "map_append", None)
            try:
                log.map = None if map_append is None else map_append(log.fd, at, target - at)
            except (OSError, ValueError):
                log.map = None  # a filesystem that cannot map: pwrite, as before
            log.map_at = at

    def _fail(self, exc: BaseException) -> None:
        self._broken = exc
        raise DurabilityError(f"writing the log failed: {exc}") from exc

    def _flush_log(self, log: _AgentLog) -> None:
        if log.buf:
            buf, log.buf = log.buf, bytearray()
            self._write(log, buf)

    def flush(self) -> None:
        for log in self._logs.values():
            self._flush_log(log)

    def sync(self) -> None:
        """Fsync every segment written since the last sync.

        Covers what reached the operating system: with ``buffered=True`` call
        :meth:`flush` first, on the appending thread. Safe to run in a worker thread
        while the event loop keeps appending: it syncs what was written before it
        started, which is what the caller counts on.
        """
        # Serialised: a second sync must not return while the first is still inside
        # fdatasync for records the second one's caller counts on.
        with self._sync_lock:
            if self._broken is not None:
                raise DurabilityError(
                    "the log failed earlier; reopen the database"
                ) from self._broken
            if self._closed:
                # A sync that finds the store closed (a close that raced it) has made
                # nothing durable, and must not report that it has.
                raise DurabilityError("the log is closed; nothing was synced")
            # No flush here: this may run in a worker thread while the event loop
            # appends, and only the appending thread may touch the buffers.
            fds = []
            for log in self._logs.values():
                if log.dirty:
                    # A dirty log always has its descriptor (sealing a segment clears
                    # the flag with it); anything else is a state this sync cannot vouch
                    # for, and saying "synced" would acknowledge writes it never saw.
                    if log.fd is None:
                        raise DurabilityError(f"log {log.name!r} lost its segment file")
                    log.dirty = False
                    fds.append(log.fd)
            try:
                for fd in fds:
                    self._disk.fdatasync(fd)
                for log in self._logs.values():
                    if log.unlisted:
                        # A roll's last steps: its header was synced just above (it
                        # was written after the last sync that cleared the flag).
                        self._finish_roll(log, sync_file=log.fd not in fds)
            except OSError as exc:
                self._broken = exc
                raise DurabilityError(f"fsync failed: {exc}") from exc
            except BaseException as exc:
                # Interrupted (a simulated power cut): the dirty flags are already
                # cleared, so a later sync would find nothing to do and report success
                # for records this one never made durable. The handle is done.
                self._broken = exc
                raise
            self._syncs += 1

    # -- reading -----------------------------------------------------------------------

    def read(self, location: int, expect: int = _READ_AHEAD) -> bytes:
        idx, seg, offset = unpack_location(location)
        if idx >= len(AGENTS):
            raise CorruptLogError("?", 0, offset, f"location {location:#x} names no agent")
        log = self._logs[AGENTS[idx]]
        fd = self._readers.get((idx, seg))
        if fd is None and seg not in log.segments and not self._written_since(log, seg):
            raise CorruptLogError(
                log.name, 0, offset, "a value's segment is missing", log.path(seg)
            )
        if seg == log.seg and offset >= log.flushed:
            self._flush_log(log)
        disk = self._disk
        try:
            if fd is None:
                fd = disk.open(log.path(seg), os.O_RDONLY)
                self._readers[(idx, seg)] = fd
            # ``expect`` may come from a version record a forged table supplied (a value
            # size near 4 GiB): no record is longer than the framing allows.
            chunk = disk.pread(fd, min(expect, _MAX_RECORD), offset)
            try:
                try:
                    _, _, event = parse_record(chunk, 0)
                except TornRecord:
                    if len(chunk) < RECORD_HEADER_SIZE:
                        raise
                    # The header checksum passed inside parse_record, so the length is
                    # the one written (and within the limit): read the whole record.
                    n = int.from_bytes(chunk[:4], "little")
                    chunk = disk.pread(fd, RECORD_HEADER_SIZE + n, offset)
                    _, _, event = parse_record(chunk, 0)
            except (TornRecord, FrameError) as exc:
                raise CorruptLogError(
                    log.name, self._position(log, seg, offset), offset, str(exc), log.path(seg)
                ) from None
        except OSError as exc:
            raise StorageError(f"cannot read {log.path(seg)}: {_why(exc)}") from exc
        return event

    def _written_since(self, log: _AgentLog, seg: int) -> bool:
        """True if ``seg`` was not listed when this read-only handle opened but is now:
        another process wrote it since. Why: :meth:`records` lists the segments again
        and names locations in new ones, and what it names must be readable here."""
        if not self.readonly:
            return False
        if (log.index, seg) in self._readers:
            return True
        return seg in self._agent_log(log.name).segments

    def locate(self, location: int) -> tuple[str, int, int, str]:
        idx, seg, offset = unpack_location(location)
        if idx >= len(AGENTS):
            return "?", -1, offset, ""
        log = self._logs[AGENTS[idx]]
        return log.name, self._position(log, seg, offset), offset, log.path(seg)

    def _position(self, log: _AgentLog, seg: int, offset: int) -> int:
        """The record number at ``offset`` of a segment (for reports; walks lengths)."""
        try:
            with self._segment_bytes(log.path(seg)) as data:
                first = parse_segment_header(data[:SEGMENT_HEADER_SIZE]).first_index
                return first + _count_records(bytes(data[SEGMENT_HEADER_SIZE:offset]))
        except (OSError, TornRecord, FrameError):
            return -1

    # -- small files -------------------------------------------------------------------

    def read_file(self, name: str) -> bytes | None:
        path = self._file(name)
        try:
            return self._disk.read_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {_why(exc)}") from exc

    def read_range(self, name: str, offset: int, size: int) -> bytes | None:
        """Up to ``size`` bytes of a small named file from ``offset`` (fewer at its end),
        or None if the file is absent: a few bytes of a large checkpoint, without
        reading it all."""
        path = self._file(name)
        try:
            fd = self._disk.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {_why(exc)}") from exc
        try:
            return self._disk.pread(fd, size, offset)
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {_why(exc)}") from exc
        finally:
            self._disk.close(fd)

    # -- tables ------------------------------------------------------------------------

    def _table_path(self, name: str) -> str:
        if type(name) is not str or not _TABLE_NAME.match(name):
            # A name comes from a checkpoint: never let one reach outside tables/.
            raise CorruptCheckpointError(f"{name!r} is not a table name")
        return self._file(TABLES, f"{name}.tab")

    def write_table(self, encoder: TableEncoder, offload: Offload = call_here) -> Table:
        if self.readonly:
            raise ReadOnlyError("the database is open read-only")
        disk = self._disk
        directory = self._file(TABLES)
        # Named by a counter, not by thread: two tables may be written at once from one
        # thread (a checkpoint's and a merge's, both sliced on the event loop).
        tmp = os.path.join(directory, f".{os.getpid()}.{next(_TABLE_WRITES)}.tab.tmp")
        try:
            if not disk.is_dir(directory):
                offload(self._make_directory, directory)
            # Streamed: the entries as they come (in buffers of a few hundred KiB: one
            # write and one hash update each, both without the GIL), then the index, then
            # the header at the front (it is known last). The name is the hash of all but
            # the header.
            hasher = blake3.blake3()
            fd = offload(disk.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                try:
                    pos = HEADER_SIZE
                    for piece in encoder.chunks():
                        pos = offload(_hash_and_write, disk, fd, hasher, piece, pos)
                    index = encoder.index()
                    pos = offload(_hash_and_write, disk, fd, hasher, index, pos)
                    header = encoder.header()
                    offload(_write_all, disk, fd, header, 0)
                    offload(disk.fsync, fd)
                finally:
                    offload(disk.close, fd)
                name = hasher.hexdigest()[:32]
                target = self._table_path(name)
                # Replaced even when a file has the name already: it should hold the
                # same bytes, but a file damaged or swapped in under it (a rebuild from
                # the log writes the table it replaced again) was kept, opened, and
                # named by the next checkpoint. A reader holding the old file keeps its
                # inode.
                offload(self._put_in_place, tmp, target, directory)
            except Exception:
                # What was written goes (best effort): a table that failed part-way
                # (the disk full) otherwise held its space until the next open, which
                # the log's next allocation then lacked.
                with contextlib.suppress(OSError):
                    offload(disk.unlink, tmp)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write a table in {directory}: {_why(exc)}") from exc
        table: Table = offload(self.open_table, name)
        # Opened by its name: what is there must be what was written (its header's index
        # hash), or the checkpoint that names it would trust a file swapped in between.
        if table.index_digest != header[-32:] or table.size != pos:
            table.release()
            raise StorageError(f"table {name} is not the one just written ({target})")
        return table

    def _make_directory(self, directory: str) -> None:
        with contextlib.suppress(FileExistsError):  # (made by another writer meanwhile)
            self._disk.mkdir(directory)
        self._disk.fsync_dir(self._root)

    def _put_in_place(self, tmp: str, target: str, directory: str) -> None:
        self._disk.replace(tmp, target)
        self._disk.fsync_dir(directory)

    def open_table(self, name: str) -> Table:
        path = self._table_path(name)
        try:
            data = self._disk.map_file(path)
        except FileNotFoundError:
            raise CorruptCheckpointError(f"table {name} is missing ({path})") from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {_why(exc)}") from exc
        # The map and the descriptor are let go with the table (its projection), not
        # with the store: state loaded from a store may be read after the store is closed.
        disk = self._disk
        try:
            fd = disk.open(path, os.O_RDONLY)
        except OSError as exc:
            getattr(data, "close", lambda: None)()
            raise StorageError(f"cannot read {path}: {_why(exc)}") from exc

        def read(at: int, length: int) -> bytes:
            try:
                return disk.pread(fd, length, at)
            except OSError as exc:
                raise StorageError(f"cannot read {path}: {_why(exc)}") from exc

        try:
            return Table(data, name, read, lambda: disk.close(fd))
        except BaseException:
            disk.close(fd)
            getattr(data, "close", lambda: None)()
            raise

    def table_names(self) -> set[str]:
        try:
            names = self._disk.listdir(self._file(TABLES))
        except FileNotFoundError:
            return set()
        except OSError as exc:
            raise StorageError(f"cannot list {self._file(TABLES)}: {_why(exc)}") from exc
        return {n[:-4] for n in names if n.endswith(".tab") and _TABLE_NAME.match(n[:-4])}

    def remove_tables(self, keep: set[str]) -> int:
        if self.readonly:
            raise ReadOnlyError("the database is open read-only")
        removed = 0
        for name in self.table_names() - keep:
            try:
                self._disk.unlink(self._table_path(name))
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageError(f"cannot remove {self._table_path(name)}: {_why(exc)}") from exc
        return removed

    def write_file(self, name: str, *parts: bytes | memoryview) -> None:
        self._replace_file(name, parts, 0o644)

    def write_private(self, name: str, data: bytes) -> None:
        self._replace_file(name, (data,), 0o600)

    def read_private(self, name: str) -> bytes | None:
        path = self._file(name)
        disk = self._disk
        try:
            # O_NOFOLLOW: a symbolic link put in a key file's place is refused, never
            # followed to whatever it names.
            fd = disk.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise KeyFileError(f"{path} is a symbolic link, not a key file") from None
            raise StorageError(f"cannot read {path}: {_why(exc)}") from exc
        try:
            if not disk.is_private(fd):
                raise KeyFileError(
                    f"{path} may be read or written by others, or is not a regular file "
                    "of this user: a secret key must be private (chmod 600 it)"
                )
            size = disk.size(fd)
            if size > _MAX_PRIVATE_FILE:
                raise KeyFileError(f"{path} is {size} bytes: not a key file")
            return disk.pread(fd, size, 0)
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {_why(exc)}") from exc
        finally:
            disk.close(fd)

    def _replace_file(self, name: str, parts: tuple[bytes | memoryview, ...], mode: int) -> None:
        if self.readonly:
            raise ReadOnlyError("the database is open read-only")
        try:
            self._write_atomically(self._root, name, parts, mode)
        except OSError as exc:
            raise StorageError(f"cannot write {self._file(name)}: {_why(exc)}") from exc

    def _write_atomically(self, directory: str, name: str, parts: Any, mode: int = 0o644) -> None:
        """Replace ``directory/name`` with ``parts``: temp file, fsync, rename, fsync of
        the directory. Why: a crash at any point leaves either the old file or the new
        one, never a mix. Raises OSError."""
        disk = self._disk
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        target = os.path.join(directory, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        if mode & 0o077 == 0:
            # A stale temp file would keep its own (wider) mode: a secret is only ever
            # written into a file created for it.
            with contextlib.suppress(FileNotFoundError):
                disk.unlink(tmp)
            flags |= os.O_EXCL
        fd = disk.open(tmp, flags, mode)
        try:
            pos = 0
            for part in parts:
                view = memoryview(part)
                while view:
                    n = disk.pwrite(fd, view, pos)
                    view = view[n:]
                    pos += n
            disk.fsync(fd)
        finally:
            disk.close(fd)
        disk.replace(tmp, target)
        disk.fsync_dir(directory)

    # -- lifecycle ---------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {
            "bytes_appended": self._appended,
            "syncs": self._syncs,
            "records": sum(log.count for log in self._logs.values()),
            "segments": sum(len(log.segments) for log in self._logs.values()),
            "set_aside_files": self._set_aside_files,
            "set_aside_bytes": self._set_aside_bytes,
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self.readonly and self._broken is None:
                self.flush()
                with self._sync_lock:
                    for log in self._logs.values():
                        if log.unlisted:  # a roll no sync finished
                            self._finish_roll(log, sync_file=True)
                for log in self._logs.values():
                    if log.fd is not None:  # leave no allocated zeros behind
                        _unmap(log)
                        self._disk.truncate(log.fd, log.flushed)
        except OSError as exc:
            raise StorageError(f"closing the log failed: {_why(exc)}") from exc
        finally:
            self._release()

    def _release(self) -> None:
        # Under the sync lock: a sync running in a worker thread finishes with the
        # descriptors it picked up before they are closed (and their numbers reused).
        with self._sync_lock:
            self._release_locked()

    def _release_locked(self) -> None:
        logs = getattr(self, "_logs", {})
        fds = [log.fd for log in logs.values() if log.fd is not None]
        fds += list(self._readers.values())
        for log in logs.values():
            _unmap(log)
        for fd in fds:
            with contextlib.suppress(OSError):
                self._disk.close(fd)
        for log in logs.values():
            log.fd = None
        self._readers.clear()
        if self._lock_handle is not None:
            with contextlib.suppress(OSError):
                self._disk.unlock(self._lock_handle)
            self._lock_handle = None
