"""Records written through a map of the active segment (``Disk.map_append``).

On the operating system's disk the store copies each record into a shared map of the
space it allocated ahead, rather than calling ``pwrite``: the bytes are in the page
cache at once either way, so what ``sync="os"`` promises (a killed process loses no
acknowledged write) and what an fdatasync covers are unchanged. These tests check that
the map is really what carries the records, that the file holds every record at once
(another reader sees it before any sync or close), that a killed process keeps them,
that rolls, closes and reopens leave the same log as before, and that a disk which
intercepts ``pwrite`` still sees every write.
"""

from __future__ import annotations

import mmap
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_store_contract import AGENT, append_all, make_events

import koru
from conftest import open_store
from koru.events import FileStore, OsDisk, PutEvent, encode_event, encode_value, event_id
from koru.events._disk import overwrites_in_place
from koru.events._frame import encode_next, frame_into

NS = "users"


def _value(i: int) -> dict[str, Any]:
    return {"name": f"user{i}", "age": i % 90, "blob": "x" * (i % 300)}


def _segments(path: Path) -> list[Path]:
    return sorted((path / "logs").rglob("*.seg"))


class _CountingWrites:
    """``os.pwrite`` wrapped: writes to segments that carry data (not zeros alone)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = os.pwrite
        self.data_writes = 0
        self.zero_writes = 0
        monkeypatch.setattr(os, "pwrite", self.pwrite)

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".seg"):
            if bytes(data).count(0) == len(data):
                self.zero_writes += 1
            else:
                self.data_writes += 1
        return self.real(fd, data, offset)


async def test_the_map_carries_the_records_on_the_os_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test's own filesystem must be one the map is used on (ext4 on CI).
    assert overwrites_in_place(os.stat(tmp_path).st_dev)
    writes = _CountingWrites(monkeypatch)
    async with koru.open(tmp_path, sync="os") as db:
        for i in range(3_000):
            await db.put(NS, f"k{i}", _value(i))
        before = await db.digest()
    # Without the map there would be one data write per put (3,000, and the segment's
    # header). With it, only the write that finds the allocated space too short and
    # grows it goes through pwrite: one per 256 KiB allocated.
    assert writes.zero_writes >= 2
    assert writes.data_writes <= writes.zero_writes + 2
    async with koru.open(tmp_path) as db:
        assert await db.digest() == before
        for i in range(0, 3_000, 97):
            assert await db.get(NS, f"k{i}") == _value(i)


def test_a_disk_that_overrides_pwrite_gets_every_write(tmp_path: Path) -> None:
    class Recording(OsDisk):
        def __init__(self) -> None:
            self.writes = 0

        def pwrite(self, fd: int, data: Any, offset: int) -> int:
            self.writes += 1
            return super().pwrite(fd, data, offset)

    disk = Recording()
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, mmap.ALLOCATIONGRANULARITY)
        assert disk.map_append(fd, 0, mmap.ALLOCATIONGRANULARITY) is None
        plain = OsDisk().map_append(fd, 0, mmap.ALLOCATIONGRANULARITY)
        assert plain is not None
        plain.close()
        # Nor past the file's end (a disk whose allocate did not grow the file).
        assert OsDisk().map_append(fd, 0, 2 * mmap.ALLOCATIONGRANULARITY) is None
    finally:
        os.close(fd)
    store = open_store(tmp_path / "db", disk=disk)
    try:
        base = disk.writes
        append_all(store, make_events(500))
        # Every record went through the disk's own pwrite (besides the zeros).
        assert disk.writes - base >= 500
    finally:
        store.close()


async def test_another_reader_sees_every_record_before_any_sync(tmp_path: Path) -> None:
    async with koru.open(tmp_path, sync="os") as db:
        for i in range(2_000):
            await db.put(NS, f"k{i}", _value(i))
        # No sync, no close: a read-only opener (its own descriptors, read()) finds
        # every acknowledged put in the files.
        async with koru.open(tmp_path, readonly=True) as reader:
            for i in range(0, 2_000, 7):
                assert await reader.get(NS, f"k{i}") == _value(i)
            assert len(await reader.keys(NS)) == 2_000


@pytest.mark.parametrize("segment_size", [4_096, 70_000, 300_000])
async def test_rolls_closes_and_reopens_leave_a_whole_log(
    tmp_path: Path, segment_size: int
) -> None:
    """Segments rolled mid-map, maps made from a page inside the segment, files cut back
    to their data at close, and appends resumed after a reopen."""
    written = 0
    for session in range(4):
        async with koru.open(tmp_path, sync="os", segment_size=segment_size) as db:
            for _ in range(700):
                await db.put(NS, f"k{written}", _value(written))
                written += 1
            digest = await db.digest()
        for seg in _segments(tmp_path):
            data = seg.read_bytes()
            assert not data.endswith(bytes(64)), (session, seg)  # no zeros left behind
        async with koru.open(tmp_path) as db:
            assert await db.digest() == digest
            for i in range(0, written, 53):
                assert await db.get(NS, f"k{i}") == _value(i)
    assert len(_segments(tmp_path)) > (1 if segment_size < 300_000 else 0)


def test_a_killed_process_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    """Puts acknowledged under ``sync="os"``, then SIGKILL: nothing was closed, synced or
    unmapped, and every acknowledged put is there."""
    child = textwrap.dedent(
        f"""
        import os, signal, sys, trio, koru
        async def main():
            async with koru.open({str(tmp_path / "db")!r}, sync="os") as db:
                for i in range(5_000):
                    await db.put("users", f"k{{i}}", {{"i": i, "pad": "y" * (i % 200)}})
                print("acked", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        trio.run(main)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        timeout=120,
        check=False,
        cwd=tmp_path,  # not the checkout, whose koru/ would shadow the installed one
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    assert done.stdout == b"acked\n"

    async def check() -> None:
        async with koru.open(tmp_path / "db") as db:
            assert len(await db.keys(NS)) == 5_000
            for i in range(0, 5_000, 11):
                assert await db.get(NS, f"k{i}") == {"i": i, "pad": "y" * (i % 200)}

    trio.run(check)


_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 27 254:3 /sub /srv/my\\040data rw,relatime shared:5 master:2 - btrfs /dev/vdc rw
31 27 254:4 / /mnt/odd rw - xfs /dev/vdd rw
32 27 0:40 / /mnt/broken rw
"""


@pytest.mark.parametrize(
    ("major", "minor", "expected"),
    [
        (254, 0, True),  # ext4, with an optional field before the separator
        (254, 3, False),  # btrfs copies on write, whatever its optional fields
        (254, 4, False),  # xfs: a reflink copy shares the zeros allocated ahead
        (0, 21, False),  # proc: not a filesystem the store maps
        (0, 40, False),  # a line without its separator and type
        (9, 9, False),  # a device the table does not list
    ],
)
def test_the_map_is_used_only_on_filesystems_that_overwrite_in_place(
    tmp_path: Path, major: int, minor: int, expected: bool
) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(_MOUNTINFO)
    assert overwrites_in_place(os.makedev(major, minor), str(table)) is expected
    assert overwrites_in_place(os.makedev(254, 0), str(tmp_path / "absent")) is False


def test_the_os_disk_gives_no_map_on_a_copy_on_write_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from koru.events import _disk

    monkeypatch.setattr(_disk, "overwrites_in_place", lambda device: False)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, mmap.ALLOCATIONGRANULARITY)
        assert OsDisk().map_append(fd, 0, mmap.ALLOCATIONGRANULARITY) is None
    finally:
        os.close(fd)


class _RecordedMap(mmap.mmap):
    """A map of a segment that notes each copy into it: (file offset, bytes)."""

    at: int
    copies: list[tuple[int, bytes]]

    def __setitem__(self, key: Any, data: Any) -> None:
        assert isinstance(key, slice) and key.step is None
        self.copies.append((self.at + key.start, bytes(data)))
        super().__setitem__(key, data)


class _RecordingMaps(OsDisk):
    """The OS disk, whose maps note what is copied into them, in order."""

    def __init__(self) -> None:
        self.copies: list[tuple[int, bytes]] = []

    def map_append(self, fd: int, offset: int, length: int) -> mmap.mmap | None:
        m = _RecordedMap(
            fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset
        )
        m.at, m.copies = offset, self.copies
        return m


def _landing_states(copies: list[tuple[int, bytes]], before: bytes) -> Iterator[bytes]:
    """What a reader in another process can find in the segment (``before``: its bytes
    before the first copy) while the copies land, one after another, the writer stalled
    (a page fault) half-way into any of them. Within one copy (a memcpy) the order of
    the stores is the C library's: here the first 32 bytes land last, as glibc's stores
    its first vector after the rest; or the copy lands in order up to a page fault."""
    state = bytearray(before)
    for at, data in copies:
        if len(data) > 32:
            head_last = bytearray(state)
            head_last[at + 32 : at + len(data)] = data[32:]
            yield bytes(head_last)
        half = bytearray(state)
        half[at : at + len(data) // 2] = data[: len(data) // 2]
        yield bytes(half)
        state[at : at + len(data)] = data
    yield bytes(state)


def _puts(sizes: list[int]) -> list[tuple[bytes, bytes]]:
    """Put events of one feed, with values of these sizes, and their ids."""
    out: list[tuple[bytes, bytes]] = []
    prev: bytes | None = None
    for seq, size in enumerate(sizes, 1):
        value = encode_value("v" * size)
        data = encode_event(
            PutEvent(bytes(range(16)), "storage", seq, prev, 1_000 + seq, "ns", "k", value, None)
        )
        prev = event_id(data)
        out.append((data, prev))
    return out


@pytest.mark.parametrize("buffered", [False, True])
def test_a_reader_beside_a_writer_stalled_mid_copy_finds_the_logs_end(
    tmp_path: Path, buffered: bool
) -> None:
    """A read-only reader in another process reads the active segment while the writer
    is copying a record into the map: whatever part of it has landed, the reader must
    take it for the end of what was written so far, never for corruption (as a record
    half-way through a pwrite). A memcpy does not store in order: glibc stores the
    first 32 bytes (the record's header) after the rest, so a writer stalled by a page
    fault in a long copy showed a reader a zero header before a body, which no re-read
    changes: CorruptLogError ("record header checksum mismatch") beside a healthy
    writer, 7 times in 36 s of a reader tailing a writer of values up to 300 KB."""
    path = tmp_path / "db"
    disk = _RecordingMaps()
    store = open_store(path, disk=disk, buffered=buffered)
    try:
        append_all(store, _puts([10]))
        store.flush()
        (seg,) = _segments(path)
        before = seg.read_bytes()
        disk.copies.clear()
        appended = append_all(store, _puts([10, 300, 5_000, 70_000, 40, 2_000]))
        store.flush()
    finally:
        store.close()
    complete = seg.read_bytes()
    if not buffered:
        assert disk.copies  # the records went through the map
    states = list(_landing_states(disk.copies, before))
    for n, state in enumerate(states):
        work = tmp_path / f"seen{n}"
        shutil.copytree(path, work)
        (work / seg.relative_to(path)).write_bytes(state)
        reader = FileStore(work, readonly=True)
        try:
            seen = [r.event_id for r in reader.records(AGENT)]
        finally:
            reader.close()
        # A prefix of the log: the records that landed whole.
        assert seen == [r.event_id for r in reader_all(path)][: len(seen)], n
    assert complete.rstrip(b"\0") == complete  # cut at close, every record there
    assert [r.event_id for r in reader_all(path)][1:] == [a.event_id for a in appended]


def reader_all(path: Path) -> list[Any]:
    reader = FileStore(path, readonly=True)
    try:
        return list(reader.records(AGENT))
    finally:
        reader.close()


@pytest.mark.parametrize("buffered", [False, True])
def test_only_an_unbuffered_store_maps_its_segment(tmp_path: Path, buffered: bool) -> None:
    """A buffered store (``sync="always"`` and ``"never"``) flushes through pwrite, so
    a map would be made and unmade every 256 KiB for nothing."""
    store = open_store(tmp_path / "db", buffered=buffered)
    try:
        events = make_events(3_000, size=200)
        for start in range(0, len(events), 100):  # flushes smaller than an allocation
            append_all(store, events[start : start + 100])
            store.flush()
        assert store._logs[AGENT].allocated > store._logs[AGENT].flushed  # allocated ahead
        assert (store._logs[AGENT].map is None) is buffered
    finally:
        store.close()


@settings(max_examples=300, deadline=None)
@given(
    root=st.binary(min_size=32, max_size=32),
    eid=st.binary(min_size=32, max_size=32),
    event=st.binary(min_size=4, max_size=600),
    at=st.integers(0, 3_000),
)
def test_frame_into_writes_the_bytes_encode_next_frames(
    root: bytes, eid: bytes, event: bytes, at: int
) -> None:
    """The record copied into a map piece by piece is the framed record, byte for byte,
    with the same chain root after it; nothing around it is touched."""
    expected_root, record = encode_next(blake3.blake3(), root, eid, event)
    out = mmap.mmap(-1, 4_096)
    out[:] = b"\xaa" * 4_096
    hasher = blake3.blake3()
    hasher.update(b"state left by an earlier use")
    assert frame_into(hasher, root, eid, event, out, at) == expected_root
    assert out[at : at + len(record)] == record
    assert out[:at] == b"\xaa" * at
    assert out[at + len(record) :] == b"\xaa" * (4_096 - at - len(record))


async def test_a_disk_without_map_append_still_writes(tmp_path: Path) -> None:
    """A disk written against the protocol before ``map_append`` existed (not an
    ``OsDisk`` subclass) keeps working: every record through its pwrite."""

    class Older:
        def __init__(self) -> None:
            self.inner = OsDisk()
            self.record_writes = 0

        def pwrite(self, fd: int, data: Any, offset: int) -> int:
            if bytes(data).count(0) != len(data):
                self.record_writes += 1
            return self.inner.pwrite(fd, data, offset)

        def __getattr__(self, name: str) -> Any:
            if name == "map_append":
                raise AttributeError(name)
            return getattr(self.inner, name)

    disk = Older()
    async with koru.open(tmp_path, sync="os", disk=disk) as db:  # type: ignore[arg-type]
        for i in range(2_000):
            await db.put(NS, f"k{i}", _value(i))
    assert disk.record_writes >= 2_000
    async with koru.open(tmp_path) as db:
        assert len(await db.keys(NS)) == 2_000
