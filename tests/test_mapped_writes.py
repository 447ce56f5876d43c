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
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio
from test_store_contract import append_all, make_events

import koru
from conftest import open_store
from koru.events import OsDisk
from koru.events._disk import overwrites_in_place

NS = "users"
AGENT = "a"


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
        (254, 4, True),  # xfs
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
