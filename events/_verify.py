"""Checking a database's logs from end to end, reporting every problem found.

Recovery and the side-effect-free reader stop at the first record that fails (what
follows cannot be trusted for serving). Verification is for a person who wants the
whole picture: it walks every segment of every agent's log, checks each segment
header, each record's two checksums, each chain link and each event's shape, and after
a damaged record carries on with the next one wherever the framing still says where
that is, so one bad byte does not hide others. It reads files only: no lock, no
repair, safe beside a live writer (whose tail may be torn mid-write: a warning).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import blake3

from ._chain import AGENTS, genesis_root
from ._codec import decode_trusted
from ._disk import OsDisk
from ._errors import CodecError
from ._file_store import read_manifest
from ._frame import (
    MAX_BODY_SIZE,
    RECORD_HEADER_SIZE,
    ROOT_SIZE,
    SEGMENT_HEADER_SIZE,
    FrameError,
    parse_segment_header,
)
from ._landing import still_landing

__all__ = ["Problem", "SegmentSummary", "verify_logs"]

_REC = struct.Struct("<III")
_LEN_CRC = struct.Struct("<II")
_ZEROS = bytes(RECORD_HEADER_SIZE)  # never a record header: its checksum is not zero


def _read_from(path: str, offset: int) -> bytes | None:
    """A file's bytes from ``offset`` on, read again (None if it cannot be read any
    more: as a file now shorter, taken for one that changed)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return None


class Problem(NamedTuple):
    """One thing wrong in a log, located exactly."""

    #: "error" (damage) or "warning" (a torn tail: a write cut short, never acknowledged).
    severity: str
    agent: str
    path: str
    #: Byte offset in the file, and the record's position in the agent's log (-1: none).
    offset: int
    position: int
    message: str


class SegmentSummary(NamedTuple):
    """What a segment holds: its file, records and bytes checked."""

    agent: str
    path: str
    records: int
    size: int


def _segments(directory: str) -> list[int]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(n[:-4]) for n in names if n.endswith(".seg") and n[:-4].isdigit())


def verify_logs(
    root_dir: str | os.PathLike[str], summaries: list[SegmentSummary] | None = None
) -> Iterator[Problem]:
    """Yield every problem in the logs under ``root_dir`` (a database directory), in
    file order; append what each segment held to ``summaries`` if given."""
    # Read before any segment is listed: a live writer's roll lists a segment only once
    # its header is durable, so one listed here is whole unless damaged.
    manifest = read_manifest(root_dir)
    for index, agent in enumerate(AGENTS):
        directory = os.path.join(os.fspath(root_dir), "logs", agent)
        try:
            segs = _segments(directory)
        except OSError as exc:
            yield Problem("error", agent, directory, 0, 0, f"cannot list: {exc.strerror}")
            continue
        root, count, previous = genesis_root(agent), 0, 0
        listed = manifest.get(agent, 0)
        for n, seg in enumerate(segs):
            path = os.path.join(directory, f"{seg:08d}.seg")
            if seg != previous + 1:
                gap = f"{previous + 1:08d}.seg" + (
                    "" if seg == previous + 2 else f" to {seg - 1:08d}.seg"
                )
                yield Problem("error", agent, path, 0, count, f"segment {gap} is missing")
            previous = seg
            try:
                # (OsDisk's read refuses a named pipe or device in a segment's place,
                # which a plain open would block on, or read without end)
                data = OsDisk().read_file(path)
            except OSError as exc:
                yield Problem("error", agent, path, 0, count, f"cannot read: {exc.strerror}")
                continue
            last = n == len(segs) - 1
            walk = _Walk(agent, index, path, data, root, count, last, seg > listed)
            yield from walk.run()
            root, count = walk.root, walk.count
            if summaries is not None:
                summaries.append(SegmentSummary(agent, path, walk.records, len(data)))


class _Walk:
    """One segment: its header, then its records, carrying on past damage."""

    def __init__(
        self,
        agent: str,
        index: int,
        path: str,
        data: bytes,
        root: bytes,
        count: int,
        last: bool,
        unlisted: bool = True,
    ) -> None:
        self.agent, self.index, self.path, self.data = agent, index, path, data
        self.root, self.count, self.last = root, count, last
        #: The manifest does not list it: its header is not known to be durable.
        self.unlisted = unlisted
        self.records = 0

    def problem(self, offset: int, message: str, severity: str = "error") -> Problem:
        return Problem(severity, self.agent, self.path, offset, self.count, message)

    def run(self) -> Iterator[Problem]:
        data = self.data
        if len(data) < SEGMENT_HEADER_SIZE:
            why = f"segment of {len(data)} bytes has no complete header"
            # The last one, unlisted: being created by a live writer (a roll makes the
            # file, then writes its header), or a crash came between; recovery sets it
            # aside. A listed one had its header made durable first: recovery refuses it.
            yield self._torn(0, why) if self.last and self.unlisted else self.problem(0, why)
            return
        try:
            header = parse_segment_header(data[:SEGMENT_HEADER_SIZE])
        except FrameError as exc:
            yield self.problem(0, f"segment header unreadable: {exc}")
        else:
            if header.agent_index != self.index:
                yield self.problem(0, f"segment header names agent index {header.agent_index}")
            if header.first_index != self.count:
                yield self.problem(
                    0,
                    f"segment starts at record {header.first_index}, "
                    f"but {self.count} records come before it",
                )
                self.count = header.first_index  # carry on from what the segment says
            if header.prev_root != self.root:
                yield self.problem(0, "segment header's root is not the chain's root before it")
                self.root = header.prev_root  # carry on from what the segment says
        yield from self._records(SEGMENT_HEADER_SIZE)

    def _records(self, offset: int) -> Iterator[Problem]:
        data, size = self.data, len(self.data)
        while offset < size:
            rest = size - offset
            head = data[offset : offset + RECORD_HEADER_SIZE]
            if head == _ZEROS[: len(head)] and data.count(0, offset) == rest:
                # Zeros allocated ahead of the last record (only the last segment).
                if not self.last:
                    yield self.problem(offset, f"{rest} zero bytes end a sealed segment")
                return
            if rest < RECORD_HEADER_SIZE:
                yield self._torn(offset, "the record header is incomplete")
                return
            n, body_crc, head_crc = _REC.unpack_from(data, offset)
            if zlib.crc32(_LEN_CRC.pack(n, body_crc)) != head_crc:
                if self._landing(offset):
                    yield self._torn(offset, "the record header is not all there")
                    return
                yield self.problem(
                    offset,
                    f"record header checksum mismatch: the rest of the segment "
                    f"({rest} bytes) cannot be framed and is unchecked",
                )
                return
            if not ROOT_SIZE < n <= MAX_BODY_SIZE:
                yield self.problem(offset, f"record body length {n} is out of range")
                return
            body, end = offset + RECORD_HEADER_SIZE, offset + RECORD_HEADER_SIZE + n
            if end > size:
                yield self._torn(offset, f"the record body needs {end - size} more bytes")
                return
            if zlib.crc32(data[body:end]) != body_crc and self._landing(offset):
                yield self._torn(offset, "the record's last bytes are not there")
                return
            yield from self._record(offset, data[body:end], body_crc)
            offset = end

    def _record(self, offset: int, body: bytes, body_crc: int) -> Iterator[Problem]:
        stored, event = body[:ROOT_SIZE], body[ROOT_SIZE:]
        if zlib.crc32(body) != body_crc:
            yield self.problem(offset, "record body checksum mismatch")
        elif blake3.blake3(self.root + blake3.blake3(event).digest()).digest() != stored:
            yield self.problem(offset, "hash chain link broken")
        else:
            try:
                agent = decode_trusted(event).agent
            except CodecError as exc:
                yield self.problem(offset, f"malformed event: {exc}")
            else:
                if agent != self.agent:
                    yield self.problem(offset, f"an event of agent {agent!r} in this log")
        # Carry on from the root the record stores: later links are checked against it.
        self.root = stored
        self.count += 1
        self.records += 1

    def _landing(self, offset: int) -> bool:
        """Whether the record failing its checks at ``offset`` may be one a live writer
        is still writing, judged as every reader of the log judges it
        (:func:`~._landing.still_landing`): only in the last segment."""
        if not self.last:
            return False
        return still_landing(self.data[offset:], lambda: _read_from(self.path, offset))

    def _torn(self, offset: int, why: str) -> Problem:
        if self.last:
            return self.problem(
                offset,
                f"torn tail: {why} (a write cut short, never acknowledged; "
                "the next writable open sets it aside)",
                "warning",
            )
        return self.problem(offset, f"a sealed segment ends inside a record: {why}")
