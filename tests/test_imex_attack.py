"""Attacks on lost+found and on export/import raced by other processes (h-imex).

lost+found holds what recovery set aside; it is never trusted. Whatever sits there
(garbage, a directory, a link to a device, a named pipe, a dangling link, a huge
file) under the name a new recovery would use, the open still recovers, sets the new
tail aside under a fresh name, and changes nothing already there. Concurrent openers
of a database that does not exist yet each either open it or are refused because
another holds it, never fail because the other created a directory first.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import koru
from koru._loader import CHECKPOINT_FILE
from koru.events import (
    LOST_FOUND,
    DatabaseLockedError,
    FileStore,
    KoruError,
    StorageError,
    unpack_location,
)

NS = "ns"


def seg_path(db: Path) -> Path:
    return db / "logs" / "storage" / "00000001.seg"


async def torn_database(path: Path) -> tuple[int, bytes]:
    """Five puts, the last never named by a checkpoint and damaged (as a crash may leave
    it): returns the byte where the log will end and the bytes recovery sets aside."""
    async with koru.open(path, sync="always") as db:
        for i in range(4):
            await db.put(NS, f"k{i}", {"i": i})
    stale = (path / CHECKPOINT_FILE).read_bytes()
    async with koru.open(path, sync="always") as db:
        await db.put(NS, "k4", {"i": 4})
    (path / CHECKPOINT_FILE).write_bytes(stale)
    store = FileStore(path, readonly=True)
    try:
        # Where the fifth record starts: the log will end there.
        start = [unpack_location(r.location)[2] for r in store.replay("storage")][-1]
    finally:
        store.close()
    data = bytearray(seg_path(path).read_bytes())
    end = len(data.rstrip(b"\0"))
    data[end - 3] ^= 0xFF  # the last record's body: its checksum fails
    seg_path(path).write_bytes(bytes(data))
    return start, bytes(data[start:end])


def _plant(entry: Path, kind: str) -> None:
    if kind == "directory":
        entry.mkdir()
        (entry / "inside").write_bytes(b"kept")
    elif kind == "device link":
        os.symlink("/dev/zero", entry)
    elif kind == "named pipe":
        os.mkfifo(entry)
    elif kind == "dangling link":
        os.symlink(entry.parent / "nowhere", entry)
    elif kind == "big sparse file":
        with open(entry, "wb") as f:
            f.truncate(1 << 30)


@pytest.mark.parametrize(
    "kind", ["directory", "device link", "named pipe", "dangling link", "big sparse file"]
)
async def test_an_entry_planted_under_the_next_lost_found_name_never_stops_the_open(
    tmp_path: Path, kind: str
) -> None:
    """Attack: under the name the next recovery will use in lost+found
    (``<agent>-<segment>-<offset>.0.bin``) sits something that is no set-aside file:
    a directory, a link to /dev/zero, a named pipe, a dangling link, a 1 GiB sparse
    file. Must hold: the writable open recovers as usual (the torn tail set aside under
    the next free name, whole), what was there is left as it was, and it is never read
    whole (the sparse file is not loaded to be compared)."""
    db = tmp_path / "db"
    offset, tail = await torn_database(db)
    lost = db / LOST_FOUND
    lost.mkdir()
    planted = lost / f"storage-00000001-{offset}.0.bin"
    _plant(planted, kind)
    async with koru.open(db, sync="always") as opened:
        assert await opened.keys(NS) == ["k0", "k1", "k2", "k3"]
        assert (await opened.stats()).set_aside_files == 1
    assert (lost / f"storage-00000001-{offset}.1.bin").read_bytes() == tail
    assert planted.is_symlink() or planted.exists()
    if kind == "directory":
        assert (planted / "inside").read_bytes() == b"kept"
    assert seg_path(db).stat().st_size == offset
    async with koru.open(db) as opened:  # and the next open is quiet
        assert await opened.keys(NS) == ["k0", "k1", "k2", "k3"]
        assert (await opened.stats()).set_aside_files == 0


def _open_fresh(path: str, barrier: Any) -> str:
    barrier.wait()
    try:
        FileStore(path).close()
    except DatabaseLockedError:
        return "locked"
    except KoruError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "opened"


def test_openers_racing_to_create_one_database_never_fail_on_its_directory(
    tmp_path: Path,
) -> None:
    """Attack: four processes open (create) the same database, which does not exist
    yet, at once (two ``kdelta import`` into a new path do). Must hold: each opens it
    or is refused with DatabaseLockedError; none fails with "cannot create the
    database ...: File exists" because another made a directory of the path first."""
    context = multiprocessing.get_context("spawn")
    outcomes: set[str] = set()
    with context.Manager() as manager, context.Pool(4) as pool:
        for attempt in range(12):
            root = tmp_path / str(attempt)
            path = str(root / "a" / "b" / "c" / "db")
            barrier = manager.Barrier(4)
            outcomes.update(pool.starmap(_open_fresh, [(path, barrier)] * 4))
            shutil.rmtree(root)
    assert outcomes <= {"opened", "locked"}, outcomes


@pytest.mark.parametrize("kind", ["file", "dangling link"])
async def test_a_lost_found_that_is_no_directory_is_named_when_recovery_needs_it(
    tmp_path: Path, kind: str
) -> None:
    """Attack: ``lost+found`` is a file (or a dangling link) when a torn tail must be
    set aside. Must hold: nothing is lost or overwritten (the file stays as it was, the
    log is not cut), the writable open is refused with a StorageError that names
    lost+found (it said "cannot read or repair <segment>: File exists"), a read-only
    open still reads, and ``kdelta verify`` names the problem."""
    db = tmp_path / "db"
    offset, _ = await torn_database(db)
    lost = db / LOST_FOUND
    if kind == "file":
        lost.write_bytes(b"mine")
    else:
        os.symlink(tmp_path / "nowhere", lost)
    before = seg_path(db).read_bytes()
    with pytest.raises(StorageError, match=r"lost\+found is not a directory"):
        async with koru.open(db, sync="always"):
            pass
    assert seg_path(db).read_bytes() == before
    assert lost.read_bytes() == b"mine" if kind == "file" else lost.is_symlink()
    async with koru.open(db, readonly=True) as opened:
        assert await opened.keys(NS) == ["k0", "k1", "k2", "k3"]
    kdelta = str(Path(sys.executable).parent / "kdelta")
    verify = await trio.run_process(
        [kdelta, "--db", str(db), "verify", "--json"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,  # the torn tail is reported too
    )
    report = json.loads(verify.stdout)
    assert any(p["where"] == LOST_FOUND for p in report["problems"]), report
    put = await trio.run_process(
        [kdelta, "--db", str(db), "set", "ns/k9", "9"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert put.returncode == 3, put
    assert put.stderr.decode().startswith("kdelta: ") and b"lost+found" in put.stderr, put
    lost.unlink()
    async with koru.open(db, sync="always") as opened:  # moved away: recovery runs
        assert (await opened.stats()).set_aside_files == 1
    assert seg_path(db).stat().st_size == offset


async def test_verify_blames_no_checkpoint_for_a_bad_record_past_its_cursor(
    tmp_path: Path,
) -> None:
    """Attack: a crash leaves the record after the checkpoint's cursor complete but
    failing its checksum (sectors that never landed); the next writable open sets it
    aside. Must hold: ``kdelta verify`` reports that record, and no problem with the
    checkpoint, whose records are all intact (the audit read one record past the
    cursor and reported "checkpoint: replaying 'storage' to the checkpoint failed")."""
    db = tmp_path / "db"
    await torn_database(db)
    kdelta = str(Path(sys.executable).parent / "kdelta")
    verify = await trio.run_process(
        [kdelta, "--db", str(db), "verify", "--json"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    report = json.loads(verify.stdout)
    wheres = [p["where"] for p in report["problems"]]
    assert any(w.startswith("logs/storage/00000001.seg") for w in wheres), report
    assert "checkpoint" not in wheres, report


@pytest.mark.parametrize("fmt", ["jsonl", "cbor"])
async def test_an_export_to_a_pipe_cut_short_by_damage_is_never_imported_as_whole(
    tmp_path: Path, fmt: str
) -> None:
    """Attack: ``kdelta export | kdelta import -`` where the export meets a damaged
    record half-way (exit 3): what it wrote before is a valid export of part of the
    database. Must hold: the stream says it was cut short, so the import refuses it
    (exit 3, nothing written) instead of importing the part and exiting 0."""
    db = tmp_path / "db"
    async with koru.open(db, sync="always") as opened:
        for i in range(40):
            await opened.put(NS, f"k{i}", {"i": i})
    data = bytearray(seg_path(db).read_bytes())
    data[len(data.rstrip(b"\0")) // 2] ^= 0xFF  # under the checkpoint: corruption
    seg_path(db).write_bytes(bytes(data))
    kdelta = str(Path(sys.executable).parent / "kdelta")
    export = await trio.run_process(
        [kdelta, "--db", str(db), "export", "--format", fmt],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert export.returncode == 3, export
    assert export.stdout, "the export wrote part of the log before the damage"
    copy = tmp_path / "copy"
    imported = await trio.run_process(
        [kdelta, "--db", str(copy), "import", "-"],
        stdin=export.stdout,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert imported.returncode == 3, imported
    assert imported.stderr.decode().startswith("kdelta: "), imported
    assert b"cut short" in imported.stderr and b"Traceback" not in imported.stderr, imported
    assert not (copy / "meta").exists()


def test_verify_reports_a_lost_found_it_may_not_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack: ``kdelta verify`` run by a user who may read the logs but not list
    lost+found (a writer's private directory; as root no permission bites, so the
    refusal is simulated). Must hold: a report naming lost+found and why, never a
    traceback (the PermissionError escaped main)."""
    from koru._cli import main

    db = tmp_path / "db"
    assert main(["--db", str(db), "set", "ns/k", "1"]) == 0
    (db / LOST_FOUND).mkdir()
    (db / LOST_FOUND / "storage-00000001-56.0.bin").write_bytes(b"tail")
    listdir = os.listdir

    def refused(path: Any = ".") -> list[str]:
        if os.fspath(path).endswith(LOST_FOUND):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listdir(path)

    monkeypatch.setattr(os, "listdir", refused)
    capsys.readouterr()
    assert main(["--db", str(db), "verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [problem] = [p for p in report["problems"] if p["where"] == LOST_FOUND]
    assert "Permission denied" in problem["message"], problem


def test_an_export_to_a_named_pipe_or_a_link_to_stdout_writes_through_it(
    tmp_path: Path,
) -> None:
    """Attack: ``kdelta export -o`` names a named pipe another process reads, a link
    to ``/proc/self/fd/1`` (what ``/dev/stdout`` is), or a link to a file elsewhere.
    Must hold: the export is written through it, as a shell redirection would (to the
    file a link names, still whole or not at all), and the pipe or link stays what it
    was; each was replaced by a regular file (the reader of the pipe waited for ever;
    as root, ``-o /dev/stdout`` would replace the system's /dev/stdout)."""
    import stat
    import subprocess
    import threading

    from koru._cli import main

    db = tmp_path / "db"
    assert main(["--db", str(db), "set", "ns/k", "1"]) == 0
    kdelta = str(Path(sys.executable).parent / "kdelta")
    reference = tmp_path / "reference.jsonl"
    subprocess.run([kdelta, "--db", str(db), "export", "-o", str(reference)], check=True)

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_bytes()), daemon=True)
    reader.start()
    done = subprocess.run(
        [kdelta, "--db", str(db), "export", "--format", "jsonl", "-o", str(pipe)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    reader.join(5)  # (if the pipe was replaced, its reader waits for ever: a daemon)
    assert done.returncode == 0, done
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode), "the named pipe was replaced"
    assert received == [reference.read_bytes()]

    link = tmp_path / "stdout"
    os.symlink("/proc/self/fd/1", link)
    done = subprocess.run(
        [kdelta, "--db", str(db), "export", "--format", "jsonl", "-o", str(link)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done
    assert link.is_symlink(), "the link was replaced"
    assert done.stdout == reference.read_bytes()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "backup.jsonl").write_bytes(b"old")
    named = tmp_path / "backup.jsonl"
    os.symlink(elsewhere / "backup.jsonl", named)
    subprocess.run([kdelta, "--db", str(db), "export", "-o", str(named)], check=True)
    assert named.is_symlink(), "the link was replaced"
    assert (elsewhere / "backup.jsonl").read_bytes() == reference.read_bytes()
    assert sorted(os.listdir(elsewhere)) == ["backup.jsonl"]


async def test_torn_tails_set_aside_at_one_offset_never_overwrite_each_other(
    tmp_path: Path,
) -> None:
    """Attack: a torn tail set aside at byte X; the log grows again from X and a second
    crash tears it there too, after a recovery that crashed half-way through saving it
    (a short copy under the next name). Then the same tail is met again (a recovery
    that saved it and crashed before the cut). Must hold: every earlier file keeps its
    bytes, the new tail gets the next free name whole, and a tail already saved is not
    saved twice."""
    db = tmp_path / "db"
    offset, first = await torn_database(db)
    stale = (db / CHECKPOINT_FILE).read_bytes()
    async with koru.open(db, sync="always") as opened:
        await opened.put(NS, "k4", {"i": "again"})
    lost = db / LOST_FOUND
    base = f"storage-00000001-{offset}"
    (db / CHECKPOINT_FILE).write_bytes(stale)
    data = bytearray(seg_path(db).read_bytes())
    end = len(data.rstrip(b"\0"))
    data[end - 3] ^= 0xFF
    seg_path(db).write_bytes(bytes(data))
    second = bytes(data[offset:end])
    (lost / f"{base}.1.bin").write_bytes(second[:10])
    async with koru.open(db, sync="always") as opened:
        assert (await opened.stats()).set_aside_files == 1
    expected = {f"{base}.0.bin": first, f"{base}.1.bin": second[:10], f"{base}.2.bin": second}
    assert {p.name: p.read_bytes() for p in lost.iterdir()} == expected
    seg_path(db).write_bytes(seg_path(db).read_bytes() + second)
    async with koru.open(db, sync="always") as opened:
        assert (await opened.stats()).set_aside_files == 0
        assert await opened.keys(NS) == ["k0", "k1", "k2", "k3"]
    assert {p.name: p.read_bytes() for p in lost.iterdir()} == expected
    assert seg_path(db).stat().st_size == offset
