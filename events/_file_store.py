"""Segmented append-only log files on disk, one directory per agent.

Layout of a database directory::

    LOCK                      advisory lock (flock) held by the one writing process
    meta, checkpoint          small files replaced atomically (temp, fsync, rename, fsync dir)
    logs/<agent>/<n>.seg      segments 00000001.seg, 00000002.seg, ... (see _frame)

Recovery on replay: a log may end inside a record (a write cut short by a crash); that
torn tail is cut back to the last whole record. A complete record whose checksum or
chain link fails is corruption: :class:`~koru.CorruptLogError` names the agent, the
record and the byte offset, and nothing after it is served.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import blake3

from koru._errors import (
    CorruptCheckpointError,
    CorruptLogError,
    DatabaseLockedError,
    DurabilityError,
    ReadOnlyError,
    StorageError,
)

from ._chain import AGENTS, agent_index, chain, genesis_root
from ._frame import (
    RECORD_HEADER_SIZE,
    ROOT_SIZE,
    SEGMENT_HEADER_SIZE,
    FrameError,
    TornRecord,
    encode_record,
    encode_segment_header,
    parse_record,
    parse_segment_header,
)
from ._store import Cursor, Record, pack_location, unpack_location

__all__ = ["DEFAULT_SEGMENT_SIZE", "FileStore"]

#: A segment is closed and a new one started once it would grow past this size.
DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
_BUFFER_LIMIT = 1024 * 1024
_SECTOR = 512
_ALLOCATE_AHEAD = 1024 * 1024
_blake3 = blake3.blake3
_crc32 = zlib.crc32
_unpack_header = struct.Struct("<III").unpack_from
_pack_len_crc = struct.Struct("<II").pack
_READ_AHEAD = 4096


def _zero_tail(data: bytes | mmap.mmap, offset: int, size: int, live: bool = False) -> bool:
    """True if the failing record at ``offset`` is where the written log ends.

    Past the last record lie zeros: space allocated ahead, or data that never reached
    the disk. A write cut short (a kill between pages, a power cut between sectors)
    stops at a sector boundary, so a record cut short that way has zeros from a
    boundary *inside its own extent* to the end of the file. A damaged record whose
    bytes all landed is not followed by such a run, so it stays corruption. ``live``
    (read-only opens, which may race the writer) accepts any record cut short.
    """
    written = bytes(data[offset:size]).rstrip(b"\x00")  # only on the failure path
    if not written:
        return True
    end = offset + RECORD_HEADER_SIZE
    if size - offset >= RECORD_HEADER_SIZE:
        n, body_crc, head_crc = _unpack_header(data, offset)
        if _crc32(_pack_len_crc(n, body_crc)) == head_crc:
            end += n
    stop = offset + len(written)
    if live:
        # A read-only opener may meet a record the writer is still writing: any record
        # whose bytes run out before its end is where the log ends for now.
        return stop < end
    boundary = -(-stop // _SECTOR) * _SECTOR
    return boundary < end


def _count_records(data: bytes) -> int:
    """How many whole records ``data`` holds, following length headers only."""
    count, offset = 0, 0
    while offset < len(data):
        offset += RECORD_HEADER_SIZE + int.from_bytes(data[offset : offset + 4], "little")
        count += 1
    if offset != len(data):
        raise FrameError("record lengths do not add up")
    return count


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        "name",
        "offset",
        "ready",
        "root",
        "seg",
        "segments",
    )

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.index = agent_index(name)
        self.dir = directory
        self.segments = (
            sorted(int(p.stem) for p in directory.glob("*.seg") if p.stem.isdigit())
            if directory.is_dir()
            else []
        )
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
        self.dirty = False
        self.buf = bytearray()

    def path(self, seg: int) -> Path:
        return self.dir / f"{seg:08d}.seg"


class FileStore:
    """The on-disk log store. See the module docstring for the layout."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        buffered: bool = False,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._buffered = buffered
        self._segment_size = segment_size
        self._lock_fd: int | None = None
        self._broken: BaseException | None = None
        self._closed = False
        self._dirty_dirs: set[Path] = set()
        self._swap = threading.Lock()
        self._allocate_ahead = True
        self._sync_lock = threading.Lock()
        self._readers: dict[tuple[int, int], int] = {}
        self._appended = 0
        self._syncs = 0
        if readonly:
            if not (self.path / "logs").is_dir():
                raise StorageError(f"no koru database at {self.path}")
        else:
            self._create_dirs()
            self._lock()
        self._logs = {name: _AgentLog(name, self.path / "logs" / name) for name in AGENTS}

    # -- opening -----------------------------------------------------------------------

    def _create_dirs(self) -> None:
        created = []
        for d in (self.path, self.path / "logs"):
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                created.append(d)
        # Why: a directory entry is durable only once its parent directory is synced.
        for d in created:
            _fsync_dir(d.parent)

    def _lock(self) -> None:
        fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseLockedError(
                f"{self.path} is open for writing in another process (or handle); "
                "open it with readonly=True to read alongside"
            ) from None
        self._lock_fd = fd

    def agents(self) -> list[str]:
        return [name for name, log in self._logs.items() if log.segments]

    # -- replay ------------------------------------------------------------------------

    def replay(self, agent: str, start: Cursor | None = None) -> Iterator[Record]:
        log = self._logs[agent]
        log.ready = False
        count, root = 0, genesis_root(agent)
        segs = list(log.segments)
        first = 0
        if start is not None:
            start = self._check_cursor(log, start)
        if start is not None:
            count, root = start.count, start.root
            first = segs.index(start.segment) if segs else 0
        end = (segs[first], SEGMENT_HEADER_SIZE, -1) if segs else (0, 0, -1)
        for pos in range(first, len(segs)):
            seg = segs[pos]
            is_last = pos == len(segs) - 1
            resume = start is not None and pos == first
            offset, last = (
                (start.offset, start.last) if resume and start else (SEGMENT_HEADER_SIZE, -1)
            )
            path = log.path(seg)
            base = pack_location(log.index, seg, 0)
            new = tuple.__new__
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data: bytes | mmap.mmap = (
                    mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) if size else b""
                )
            try:
                head = data[:SEGMENT_HEADER_SIZE]
                try:
                    header = parse_segment_header(head)
                except (TornRecord, FrameError) as exc:
                    if is_last and (
                        (isinstance(exc, TornRecord) and size <= SEGMENT_HEADER_SIZE)
                        or not any(data[:size])
                    ):
                        # A segment created just before a crash; its header never landed
                        # (cut short, or all zeros: the size reached disk, the data did not).
                        self._drop_segment(log, seg)
                        break
                    raise CorruptLogError(agent, count, 0, str(exc), str(path)) from None
                if not resume and (header.first_index != count or header.prev_root != root):
                    raise CorruptLogError(
                        agent, count, 0, "segment does not continue the chain", str(path)
                    )
                view = memoryview(data)
                try:
                    while offset < size:
                        # Fast path inlined (a replay reads millions of records); any
                        # failure goes through parse_record to name the exact problem.
                        if size - offset >= RECORD_HEADER_SIZE:
                            n, body_crc, head_crc = _unpack_header(data, offset)
                            body = offset + RECORD_HEADER_SIZE
                            nxt = body + n
                            ok = (
                                nxt <= size
                                and n > ROOT_SIZE
                                and _crc32(_pack_len_crc(n, body_crc)) == head_crc
                                and _crc32(view[body:nxt]) == body_crc
                            )
                        else:
                            ok = False
                        if ok:
                            stored_root = data[body : body + ROOT_SIZE]
                            event = data[body + ROOT_SIZE : nxt]
                        else:
                            try:
                                parse_record(data, offset)
                                raise FrameError("record failed its checks")
                            except TornRecord as exc:
                                if not is_last:
                                    raise CorruptLogError(
                                        agent, count, offset, str(exc), str(path)
                                    ) from None
                                self._cut_tail(log, seg, offset, size)
                                break
                            except FrameError as exc:
                                if is_last and _zero_tail(data, offset, size, self.readonly):
                                    # Zero-filled tail: the size grew, the data never landed.
                                    self._cut_tail(log, seg, offset, size)
                                    break
                                raise CorruptLogError(
                                    agent, count, offset, str(exc), str(path)
                                ) from None
                        eid = _blake3(event).digest()
                        if _blake3(root + eid).digest() != stored_root:
                            raise CorruptLogError(
                                agent, count, offset, "hash chain link broken", str(path)
                            )
                        yield new(Record, (base | offset, count, eid, stored_root, event))
                        count += 1
                        root = stored_root
                        last = offset
                        offset = nxt
                finally:
                    view.release()
            finally:
                if isinstance(data, mmap.mmap):
                    data.close()
            end = (seg, offset, last)
        log.count, log.root = count, root
        log.seg, log.offset, log.last = end
        log.flushed = log.offset
        log.ready = True

    def _check_cursor(self, log: _AgentLog, start: Cursor) -> Cursor | None:
        """Check a checkpoint's cursor against the log; None means "from genesis".

        The record ending at the cursor must carry the cursor's root, and the number of
        records before it must be the cursor's count (walking the length headers of its
        segment, which costs no checksums).
        """
        bad = CorruptCheckpointError(f"checkpoint cursor for {log.name!r} does not match the log")
        if start.count == 0:
            if start.root != genesis_root(log.name):
                raise bad
            return None
        if start.segment not in log.segments:
            raise bad
        path = log.path(start.segment)
        try:
            with open(path, "rb") as f:
                header = parse_segment_header(f.read(SEGMENT_HEADER_SIZE))
                if start.last < 0:
                    ok = (
                        start.offset == SEGMENT_HEADER_SIZE
                        and header.first_index == start.count
                        and header.prev_root == start.root
                    )
                else:
                    before = f.read(start.last - SEGMENT_HEADER_SIZE)
                    chunk = f.read(start.offset - start.last)
                    end, root, _ = parse_record(chunk, 0)
                    ok = (
                        end == len(chunk)
                        and root == start.root
                        and header.first_index + _count_records(before) + 1 == start.count
                    )
        except (OSError, TornRecord, FrameError):
            ok = False
        if not ok:
            raise bad
        return start

    def _cut_tail(self, log: _AgentLog, seg: int, offset: int, size: int) -> None:
        if self.readonly or offset >= size:
            return
        path = log.path(seg)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _drop_segment(self, log: _AgentLog, seg: int) -> None:
        if self.readonly:
            return
        log.path(seg).unlink()
        log.segments.remove(seg)
        _fsync_dir(log.dir)

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
        log = self._logs[agent]
        if not log.ready and log.segments:
            raise StorageError(f"log {agent!r} must be replayed before appending")
        root = chain(log.root, event_id)
        rec = encode_record(root, data)
        if log.fd is None or (
            log.offset + len(rec) > self._segment_size and log.offset > SEGMENT_HEADER_SIZE
        ):
            self._open_for_append(log, len(rec))
        offset = log.offset
        if self._buffered:
            log.buf += rec
            if len(log.buf) >= _BUFFER_LIMIT:
                self._flush_log(log)
        else:
            self._write(log, rec)
        log.offset = offset + len(rec)
        log.last = offset
        log.count += 1
        log.root = root
        self._appended += len(rec)
        return pack_location(log.index, log.seg, offset), root

    def _open_for_append(self, log: _AgentLog, size: int) -> None:
        """Open the active segment for writing, starting a new one when full or absent."""
        try:
            fits = log.offset + size <= self._segment_size or log.offset <= SEGMENT_HEADER_SIZE
            if log.fd is None and log.segments and fits:
                log.fd = os.open(log.path(log.seg), os.O_WRONLY)
                log.allocated = os.fstat(log.fd).st_size
                return
            if log.fd is not None:
                # Seal the full segment: cut its unused allocation and make it durable
                # before a new segment exists, so that a power cut can never leave a
                # later segment whose predecessor lost its last records (that would
                # read as a broken chain), and only the last segment can end in zeros.
                self._flush_log(log)
                with self._sync_lock:
                    os.ftruncate(log.fd, log.flushed)
                    os.fdatasync(log.fd)
                    os.close(log.fd)
                log.fd = None
            if not log.dir.is_dir():
                log.dir.mkdir(parents=True)
                with self._swap:
                    self._dirty_dirs.add(log.dir.parent)
            seg = (log.segments[-1] + 1) if log.segments else 1
            fd = os.open(log.path(seg), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
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
            with self._swap:
                self._dirty_dirs.add(log.dir)
        except OSError as exc:
            self._fail(exc)

    def _write(self, log: _AgentLog, data: bytes | bytearray) -> None:
        """Write ``data`` where the bytes that reached the OS end, allocating first."""
        assert log.fd is not None
        end = log.flushed + len(data)
        pos = log.flushed
        try:
            if end > log.allocated:
                self._allocate(log, end)
            view = memoryview(data)
            while view:
                n = os.pwrite(log.fd, view, pos)
                view = view[n:]
                pos += n
        except OSError as exc:
            if pos > log.flushed:
                # Best effort: erase the part that landed, so the log ends in zeros
                # where it ended before (recovery reads a cut-off record that does not
                # stop at a sector boundary as corruption, not as the log's end).
                with contextlib.suppress(OSError):
                    os.pwrite(log.fd, bytes(pos - log.flushed), log.flushed)
            self._fail(exc)
        log.flushed = end
        log.dirty = True

    def _allocate(self, log: _AgentLog, end: int) -> None:
        # Why allocate ahead: an fdatasync after a write that grows the file must also
        # commit the new size through the filesystem journal; inside allocated space it
        # is measurably cheaper (about 170 -> 120 µs here). The zeros after the last
        # record mark the log's end on replay; close and sealing cut them off.
        assert log.fd is not None
        target = max(end, min(log.allocated + _ALLOCATE_AHEAD, self._segment_size))
        if self._allocate_ahead:
            try:
                os.posix_fallocate(log.fd, log.allocated, target - log.allocated)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                self._allocate_ahead = False  # this filesystem cannot: plain appends
                target = end
        else:
            target = end
        log.allocated = target

    def _fail(self, exc: OSError) -> None:
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
        """Fsync every segment written since the last sync, and new directories.

        Covers what reached the operating system: with ``buffered=True`` call
        :meth:`flush` first, on the appending thread. Safe to run in a worker thread
        while the event loop keeps appending: it syncs what was written before it
        started, which is what the caller counts on.
        """
        # Serialised: a second sync must not return while the first is still inside
        # fdatasync for records the second one's caller counts on.
        with self._sync_lock:
            self._sync()

    def _sync(self) -> None:
        if self._broken is not None:
            raise DurabilityError("the log failed earlier; reopen the database") from self._broken
        # No flush here: this may run in a worker thread while the event loop appends,
        # and only the appending thread may touch the buffers (callers flush first).
        fds = []
        for log in self._logs.values():
            if log.dirty and log.fd is not None:
                log.dirty = False
                fds.append(log.fd)
        with self._swap:
            dirs, self._dirty_dirs = self._dirty_dirs, set()
        try:
            for fd in fds:
                os.fdatasync(fd)
            for d in sorted(dirs):
                _fsync_dir(d)
        except OSError as exc:
            self._broken = exc
            raise DurabilityError(f"fsync failed: {exc}") from exc
        self._syncs += 1

    # -- reading -----------------------------------------------------------------------

    def read(self, location: int) -> bytes:
        idx, seg, offset = unpack_location(location)
        log = self._logs[AGENTS[idx]]
        if seg == log.seg and offset >= log.flushed:
            self._flush_log(log)
        fd = self._readers.get((idx, seg))
        if fd is None:
            fd = os.open(log.path(seg), os.O_RDONLY)
            self._readers[(idx, seg)] = fd
        chunk = os.pread(fd, _READ_AHEAD, offset)
        try:
            try:
                _, _, event = parse_record(chunk, 0)
            except TornRecord:
                if len(chunk) < RECORD_HEADER_SIZE:
                    raise
                n = int.from_bytes(chunk[:4], "little")
                chunk = os.pread(fd, RECORD_HEADER_SIZE + n, offset)
                _, _, event = parse_record(chunk, 0)
        except (TornRecord, FrameError) as exc:
            raise CorruptLogError(log.name, -1, offset, str(exc), str(log.path(seg))) from None
        return event

    # -- small files -------------------------------------------------------------------

    def read_file(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None

    def write_file(self, name: str, *parts: bytes) -> None:
        if self.readonly:
            raise ReadOnlyError("the database is open read-only")
        # Why temp + fsync + rename + fsync(dir): a crash at any point leaves either the
        # old file or the new one, never a mix.
        tmp = self.path / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path / name)
        _fsync_dir(self.path)

    # -- lifecycle ---------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {
            "bytes_appended": self._appended,
            "syncs": self._syncs,
            "records": sum(log.count for log in self._logs.values()),
            "segments": sum(len(log.segments) for log in self._logs.values()),
        }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self.readonly and self._broken is None:
                self.flush()
                for log in self._logs.values():
                    if log.fd is not None:  # leave no allocated zeros behind
                        os.ftruncate(log.fd, log.flushed)
        finally:
            fds = [log.fd for log in self._logs.values() if log.fd is not None]
            fds += list(self._readers.values())
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            for log in self._logs.values():
                log.fd = None
            self._readers.clear()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
