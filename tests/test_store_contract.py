"""The LogStore contract: one test class that every log backend must pass.

``TestLogStoreContract`` runs against the memory store and the file store (plain,
rotating through small segments, buffered, and both). A memory store "reopens" as
itself. ``TestFileStore`` then covers what only a file store has: segment files,
buffering seen from another reader, read-only stores, the lock, torn and damaged tails.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import blake3
import pytest

from conftest import open_store
from koru import (
    CorruptLogError,
    DatabaseLockedError,
    DataLossError,
    DurabilityError,
    InvalidArgumentError,
    ReadOnlyError,
    StorageError,
)
from koru.events import (
    AGENTS,
    LOST_FOUND,
    Cursor,
    FileStore,
    LogStore,
    MemoryStore,
    OsDisk,
    PutEvent,
    Record,
    agent_index,
    encode_event,
    encode_value,
    event_id,
    genesis_root,
    unpack_location,
)
from koru.events._scan import BATCH
from koru.simulations import PowerCut, SimDisk

AGENT = "storage"
OTHER = "chronicle"
ORIGIN = bytes(range(16))


@attrs.frozen
class Appended:
    """What one append produced, as the test remembers it."""

    data: bytes
    event_id: bytes
    location: int
    root: bytes


def make_events(
    n: int, *, agent: str = AGENT, origin: bytes = ORIGIN, size: int = 8, tag: str = "v"
) -> list[tuple[bytes, bytes]]:
    """``n`` encoded put events of one feed (proper seq/prev), with their ids."""
    out: list[tuple[bytes, bytes]] = []
    prev: bytes | None = None
    for seq in range(1, n + 1):
        value = encode_value(f"{tag}{seq}".ljust(size, "x"))
        data = encode_event(
            PutEvent(origin, agent, seq, prev, 1_000 + seq, "ns", f"k{seq % 3}", value, None)
        )
        prev = event_id(data)
        out.append((data, prev))
    return out


def expected_roots(agent: str, eids: list[bytes], root: bytes | None = None) -> list[bytes]:
    """The chain roots after each id: root_n = blake3(root_{n-1} || id_n)."""
    root = genesis_root(agent) if root is None else root
    roots = []
    for eid in eids:
        root = blake3.blake3(root + eid).digest()
        roots.append(root)
    return roots


def append_all(
    store: LogStore, events: list[tuple[bytes, bytes]], agent: str = AGENT
) -> list[Appended]:
    out = []
    for data, eid in events:
        location, root = store.append(agent, data, eid)
        out.append(Appended(data, eid, location, root))
    return out


@attrs.define
class Backend:
    """Opens (and reopens) one kind of store; closes whatever it opened."""

    name: str
    make: Callable[[], LogStore]
    persistent: bool
    opened: list[LogStore] = attrs.field(factory=list)
    disk: SimDisk | None = None

    def cut_last_segment(self, store: FileStore, size: int) -> str:
        """Truncate the agent's last segment file to ``size``; returns its name."""
        if self.disk is None:
            seg = _segment_files(store.path)[-1]
            os.truncate(seg, size)
            return seg.name
        name = sorted(p for p in self.disk.files() if p.endswith(".seg") and f"/{AGENT}/" in p)[-1]
        self.disk.write(name, self.disk.files()[name][:size])
        return os.path.basename(name)

    def open(self) -> LogStore:
        store = self.make()
        self.opened.append(store)
        return store

    def reopen(self, store: LogStore) -> LogStore:
        """Close and open again, replaying every agent (the documented lifecycle).

        A memory store has nothing to reopen: it is the same object.
        """
        if self.persistent:
            store.close()
            store = self.open()
        for agent in store.agents():
            for _ in store.replay(agent):
                pass
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


def sim_backend(name: str, **kw: Any) -> Backend:
    disk = SimDisk()
    return Backend(
        name, lambda: open_store(Path("/db"), disk=disk, **kw), persistent=True, disk=disk
    )


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "memory": lambda tmp: Backend("memory", MemoryStore, persistent=False),
    "simdisk": lambda tmp: sim_backend("simdisk"),
    "simdisk-buffered-rotating": lambda tmp: sim_backend(
        "simdisk-buffered-rotating", buffered=True, segment_size=400
    ),
    "file": lambda tmp: Backend("file", lambda: open_store(tmp / "db"), persistent=True),
    "file-rotating": lambda tmp: Backend(
        "file-rotating", lambda: open_store(tmp / "db", segment_size=400), persistent=True
    ),
    "file-buffered": lambda tmp: Backend(
        "file-buffered", lambda: open_store(tmp / "db", buffered=True), persistent=True
    ),
    "file-buffered-rotating": lambda tmp: Backend(
        "file-buffered-rotating",
        lambda: open_store(tmp / "db", buffered=True, segment_size=400),
        persistent=True,
    ),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = BACKENDS[request.param](tmp_path)
    try:
        yield b
    finally:
        b.close_all()


def first_record(store: LogStore, agent: str, start: Cursor) -> Record | None:
    """Start a replay and take one step: where a bad cursor must already have raised."""
    return next(iter(store.replay(agent, start)), None)


def replay_list(
    store: LogStore, agent: str, start: Cursor | None = None, durable: Cursor | None = None
) -> list[Record]:
    records = list(store.replay(agent, start, durable))
    # The plain form holds the same records (read again: the log was repaired if needed).
    plain = list(store.replay_plain(agent, start, durable))
    assert plain == [(r.location, r.position, r.event_id, r.data) for r in records]
    assert all(type(item) is tuple for item in plain)
    return records


def _refusal(path: Path, disk: Any = None) -> CorruptLogError:
    """The ``CorruptLogError`` with which a read-only store's ``records()`` refuses the
    log at ``path`` (read through ``disk`` if given)."""
    reader = (
        FileStore(path, readonly=True)
        if disk is None
        else FileStore(path, readonly=True, disk=disk)
    )
    try:
        with pytest.raises(CorruptLogError) as info:
            list(reader.records(AGENT))
    finally:
        reader.close()
    return info.value


def test_genesis_roots_are_distinct_per_agent() -> None:
    roots = {genesis_root(a) for a in AGENTS}
    assert len(roots) == len(AGENTS)
    assert genesis_root(AGENT) == blake3.blake3(b"koru-delta/genesis/storage").digest()


class TestLogStoreContract:
    def test_empty_store(self, backend: Backend) -> None:
        store = backend.open()
        assert store.agents() == []
        for agent in (AGENT, OTHER):
            cursor = store.cursor(agent)
            assert cursor.count == 0
            assert cursor.root == genesis_root(agent)
            assert replay_list(store, agent) == []
        assert store.read_file("checkpoint") is None
        stats = store.stats()
        assert stats["bytes_appended"] == 0
        assert stats["records"] == 0
        assert stats["syncs"] == 0

    def test_append_returns_locations_and_chained_roots(self, backend: Backend) -> None:
        store = backend.open()
        events = make_events(12)
        done = append_all(store, events)
        assert [a.root for a in done] == expected_roots(AGENT, [eid for _, eid in events])
        assert len({a.location for a in done}) == len(done)
        for a in done:
            assert unpack_location(a.location)[0] == agent_index(AGENT)
        assert store.agents() == [AGENT]

    def test_read_returns_the_event_bytes(self, backend: Backend) -> None:
        store = backend.open()
        # A large event takes the read path that needs a second read (> 4 KiB).
        events = make_events(5) + make_events(1, size=10_000, tag="big")
        events += make_events(3, tag="after")
        done = append_all(store, events)
        for a in reversed(done):
            assert store.read(a.location) == a.data
        store.flush()
        store.sync()
        assert [store.read(a.location) for a in done] == [d for d, _ in events]

    def test_replay_after_reopen_gives_the_same_records(self, backend: Backend) -> None:
        store = backend.open()
        events = make_events(20)
        done = append_all(store, events)
        store.flush()
        store = backend.reopen(store)
        records = replay_list(store, AGENT)
        assert [r.position for r in records] == list(range(20))
        assert [r.data for r in records] == [a.data for a in done]
        assert [r.event_id for r in records] == [a.event_id for a in done]
        assert [r.root for r in records] == [a.root for a in done]
        assert [r.location for r in records] == [a.location for a in done]
        # Locations stay valid across a reopen (checkpoints hold them).
        for a in done:
            assert store.read(a.location) == a.data

    def test_plain_replay_across_its_lists_gives_every_record_once(self, backend: Backend) -> None:
        """The plain replay hands records over in lists (``BATCH`` at most, one per
        generator step): over several lists and segments, from genesis and from cursors
        on either side of a list's end, it yields exactly the records of ``replay``; a
        reader that stops inside a list leaves the next replay whole."""
        store = backend.open()
        n = 2 * BATCH + 7
        cursors = {}
        done = []
        for k, (data, eid) in enumerate(make_events(n), start=1):
            done += append_all(store, [(data, eid)])
            if k in (1, BATCH - 1, BATCH, BATCH + 1, n - 1):
                cursors[k] = store.cursor(AGENT)
        store.flush()
        store = backend.reopen(store)
        records = replay_list(store, AGENT)
        assert [r.position for r in records] == list(range(n))
        assert [r.data for r in records] == [a.data for a in done]
        for k, cursor in cursors.items():
            assert [r.position for r in replay_list(store, AGENT, cursor)] == list(range(k, n))
        partial = store.replay_plain(AGENT)
        assert [next(partial)[1] for _ in range(BATCH // 2)] == list(range(BATCH // 2))
        del partial
        assert [r.position for r in replay_list(store, AGENT)] == list(range(n))

    def test_replay_from_a_cursor_yields_only_later_records(self, backend: Backend) -> None:
        store = backend.open()
        events = make_events(15)
        cursors = []
        done = []
        for data, eid in events:
            done += append_all(store, [(data, eid)])
            cursors.append(store.cursor(AGENT))
        store = backend.reopen(store)
        for k, cursor in enumerate(cursors, start=1):
            records = replay_list(store, AGENT, cursor)
            assert [r.position for r in records] == list(range(k, 15))
            assert [r.data for r in records] == [a.data for a in done[k:]]
            assert [r.root for r in records] == [a.root for a in done[k:]]
        assert store.cursor(AGENT) == cursors[-1]

    def test_cursor_of_an_empty_log_replays_everything(self, backend: Backend) -> None:
        # A cursor is "a position in one agent's local log"; the empty log's end is one.
        store = backend.open()
        empty = store.cursor(AGENT)
        done = append_all(store, make_events(4))
        store = backend.reopen(store)
        assert [r.data for r in replay_list(store, AGENT, empty)] == [a.data for a in done]

    def test_append_after_replay_from_a_cursor_continues_the_chain(self, backend: Backend) -> None:
        # The checkpoint-plus-tail path: replay only the tail, then keep appending.
        events = make_events(14)
        store = backend.open()
        first = append_all(store, events[:6])
        cursor = store.cursor(AGENT)
        first += append_all(store, events[6:9])
        store.flush()
        if backend.persistent:
            store.close()
            store = backend.open()
        tail = replay_list(store, AGENT, cursor)
        assert [r.position for r in tail] == [6, 7, 8]
        rest = append_all(store, events[9:])
        assert [a.root for a in first + rest] == expected_roots(AGENT, [e for _, e in events])
        store = backend.reopen(store)
        records = replay_list(store, AGENT)
        assert [r.data for r in records] == [d for d, _ in events]
        assert store.cursor(AGENT).count == 14

    def test_cursor_with_a_wrong_root_raises(self, backend: Backend) -> None:
        store = backend.open()
        append_all(store, make_events(5))
        bad = store.cursor(AGENT)._replace(root=bytes(32))
        store = backend.reopen(store)
        with pytest.raises(CorruptLogError):
            first_record(store, AGENT, bad)

    def test_cursor_of_another_log_raises(self, backend: Backend) -> None:
        # Same shape (count, segment, offsets), different events: the root gives it away.
        store = backend.open()
        append_all(store, make_events(5))
        append_all(store, make_events(5, agent=OTHER), agent=OTHER)
        foreign = store.cursor(OTHER)
        store = backend.reopen(store)
        with pytest.raises(CorruptLogError):
            first_record(store, AGENT, foreign)

    def test_cursor_past_the_end_raises(self, backend: Backend) -> None:
        store = backend.open()
        append_all(store, make_events(5))
        cursor = store.cursor(AGENT)
        store = backend.reopen(store)
        with pytest.raises(CorruptLogError):
            first_record(store, AGENT, cursor._replace(count=cursor.count + 3))

    def test_cursor_beyond_the_log_is_data_loss(self, backend: Backend) -> None:
        # A checkpoint's cursor proves its records durable: a log that ends before it
        # lost them, which is reported as such, not mistaken for a foreign checkpoint.
        store = backend.open()
        append_all(store, make_events(8))
        later = store.cursor(AGENT)
        store = backend.reopen(store)
        if backend.persistent:  # cut the last record off the file
            store.close()
            assert isinstance(store, FileStore)
            name = backend.cut_last_segment(store, later.last)
            assert name == f"{later.segment:08d}.seg"
            store = backend.open()
            with pytest.raises(DataLossError) as info:
                first_record(store, AGENT, later)
            assert info.value.position == 7
            assert info.value.offset == later.last
        else:
            with pytest.raises(DataLossError):
                first_record(store, AGENT, later._replace(count=later.count + 1))

    def test_cursor_with_a_wrong_count_raises(self, backend: Backend) -> None:
        # The root is right but the count is not: the store would number later records
        # (and later segment headers) wrongly if it accepted this cursor.
        store = backend.open()
        append_all(store, make_events(6))
        cursor = store.cursor(AGENT)
        store = backend.reopen(store)
        with pytest.raises(CorruptLogError):
            first_record(store, AGENT, cursor._replace(count=cursor.count - 1))

    def test_cursor_for_an_agent_without_a_log_raises(self, backend: Backend) -> None:
        store = backend.open()
        append_all(store, make_events(3))
        bogus = Cursor(2, bytes(32))
        # The cursor proves records durable that the log does not have: data lost.
        with pytest.raises(DataLossError):
            first_record(store, OTHER, bogus)

    def test_agents_are_independent(self, backend: Backend) -> None:
        store = backend.open()
        mine, theirs = make_events(7), make_events(5, agent=OTHER, tag="o")
        done: dict[str, list[Appended]] = {AGENT: [], OTHER: []}
        for i in range(7):
            done[AGENT] += append_all(store, mine[i : i + 1])
            if i < 5:
                done[OTHER] += append_all(store, theirs[i : i + 1], agent=OTHER)
        assert sorted(store.agents()) == sorted([AGENT, OTHER])
        for agent, events in ((AGENT, mine), (OTHER, theirs)):
            assert [a.root for a in done[agent]] == expected_roots(agent, [e for _, e in events])
            assert {unpack_location(a.location)[0] for a in done[agent]} == {agent_index(agent)}
            assert store.cursor(agent).count == len(events)
        store = backend.reopen(store)
        for agent, events in ((AGENT, mine), (OTHER, theirs)):
            records = replay_list(store, agent)
            assert [r.data for r in records] == [d for d, _ in events]
            assert [r.position for r in records] == list(range(len(events)))
            for a in done[agent]:
                assert store.read(a.location) == a.data

    def test_small_files_are_replaced_whole(self, backend: Backend) -> None:
        store = backend.open()
        assert store.read_file("checkpoint") is None
        store.write_file("checkpoint", b"first version, rather long" * 10)
        store.write_file("note", b"m")
        store.write_file("checkpoint", b"second")
        assert store.read_file("checkpoint") == b"second"
        assert store.read_file("note") == b"m"
        store.write_file("note", b"")
        assert store.read_file("note") == b""
        store = backend.reopen(store)
        assert store.read_file("checkpoint") == b"second"
        assert store.read_file("note") == b""
        assert store.read_file("absent") is None

    def test_cursor_after_appends_and_after_reopen(self, backend: Backend) -> None:
        store = backend.open()
        done = append_all(store, make_events(9))
        cursor = store.cursor(AGENT)
        assert cursor.count == 9
        assert cursor.root == done[-1].root
        empty = store.cursor(OTHER)
        assert (empty.count, empty.root) == (0, genesis_root(OTHER))
        store = backend.reopen(store)
        assert store.cursor(AGENT) == cursor

    def test_stats_count_appends_and_syncs(self, backend: Backend) -> None:
        store = backend.open()
        events = make_events(6)
        seen = 0
        for i, (data, eid) in enumerate(events, start=1):
            store.append(AGENT, data, eid)
            stats = store.stats()
            assert stats["records"] == i
            assert stats["bytes_appended"] >= seen + len(data)
            seen = stats["bytes_appended"]
        for n in (1, 2, 3):
            store.sync()
            assert store.stats()["syncs"] == n

    def test_close_is_idempotent(self, backend: Backend) -> None:
        store = backend.open()
        done = append_all(store, make_events(3))
        store.close()
        store.close()
        store = backend.reopen(store)
        assert [r.data for r in replay_list(store, AGENT)] == [a.data for a in done]


def _segment_files(root: Path, agent: str = AGENT) -> list[Path]:
    return sorted((root / "logs" / agent).glob("*.seg"))


class TestWriteFileOnPowerCut:
    """``write_file`` replaces a file atomically and durably: a power cut at any disk
    call inside it leaves the old content or the new, and once it has returned, the
    new content survives any cut."""

    def test_every_cut_point_leaves_old_or_new(self) -> None:
        rng = random.Random(5)
        calls = None
        cut = 1
        while calls is None or cut <= calls:
            disk = SimDisk()
            store = open_store(Path("/db"), disk=disk)
            store.write_file("note", b"old" * 300)
            start = disk.calls
            disk.cut_after(cut)
            try:
                store.write_file("note", b"new!" * 500)
            except PowerCut:
                pass
            else:
                calls = disk.calls - start
            disk.cut()
            for _ in range(8):
                after = disk.after_power_cut(rng)
                content = after.read_file("/db/note")
                if calls is not None and cut > calls:
                    assert content == b"new!" * 500
                else:
                    assert content in (b"old" * 300, b"new!" * 500), f"cut at call {cut}"
                assert [p for p in after.walk() if p.endswith(".tmp")] in (
                    [],
                    [p for p in after.walk() if p.endswith(".tmp")],
                )
            cut += 1
        assert calls is not None and calls >= 4

    def test_a_returned_write_survives(self) -> None:
        rng = random.Random(6)
        for _ in range(20):
            disk = SimDisk()
            store = open_store(Path("/db"), disk=disk)
            store.write_file("checkpoint", b"x" * rng.randint(0, 3000))
            store.write_file("checkpoint", b"y" * rng.randint(1, 3000))
            expected = disk.read_file("/db/checkpoint")
            disk.cut()
            assert disk.after_power_cut(rng).read_file("/db/checkpoint") == expected


class TestFileStore:
    def test_segments_rotate_when_full(self, tmp_path: Path) -> None:
        path = tmp_path / "db"
        store = open_store(path, segment_size=512)
        events = make_events(40)
        cursors = []
        done = []
        for ev in events:
            done += append_all(store, [ev])
            cursors.append(store.cursor(AGENT))
        segs = [unpack_location(a.location)[1] for a in done]
        assert segs == sorted(segs)
        assert len(set(segs)) > 3
        assert store.stats()["segments"] == len(set(segs)) == len(_segment_files(path))
        for f in _segment_files(path):
            assert f.stat().st_size <= 512
        for a in done:
            assert store.read(a.location) == a.data
        store.close()

        store = open_store(path, segment_size=512)
        try:
            records = replay_list(store, AGENT)
            assert [r.root for r in records] == [a.root for a in done]
            assert [r.location for r in records] == [a.location for a in done]
            # Cursors in early segments resume across every later segment.
            for k in (1, 2, 10, 25):
                assert [r.position for r in replay_list(store, AGENT, cursors[k - 1])] == list(
                    range(k, 40)
                )
            more = make_events(50)[40:]
            append_all(store, more)
        finally:
            store.close()
        store = FileStore(path, readonly=True)
        try:
            assert len(replay_list(store, AGENT)) == 50
        finally:
            store.close()

    def test_a_record_larger_than_a_segment_gets_its_own(self, tmp_path: Path) -> None:
        store = open_store(tmp_path / "db", segment_size=300)
        try:
            done = append_all(store, make_events(1) + make_events(1, size=2_000, tag="big"))
            done += append_all(store, make_events(3)[2:])
            segs = [unpack_location(a.location)[1] for a in done]
            assert segs == [1, 2, 3]
            assert [store.read(a.location) for a in done] == [a.data for a in done]
        finally:
            store.close()

    def test_buffered_appends_reach_the_file_on_flush(self, tmp_path: Path) -> None:
        path = tmp_path / "db"
        store = open_store(path, buffered=True)
        try:
            done = append_all(store, make_events(5))
            reader = FileStore(path, readonly=True)
            assert replay_list(reader, AGENT) == []
            reader.close()
            store.flush()
            reader = FileStore(path, readonly=True)
            assert [r.data for r in replay_list(reader, AGENT)] == [a.data for a in done]
            reader.close()
            # read() of a record still in the buffer sees it (it flushes first).
            late = append_all(store, make_events(8)[5:])
            assert store.read(late[-1].location) == late[-1].data
            assert store.read(late[0].location) == late[0].data
        finally:
            store.close()
        reader = FileStore(path, readonly=True)
        try:
            assert len(replay_list(reader, AGENT)) == 8
        finally:
            reader.close()

    def test_cursor_names_the_end_of_the_last_record(self, tmp_path: Path) -> None:
        store = open_store(tmp_path / "db", segment_size=400)
        try:
            for ev in make_events(12):
                (a,) = append_all(store, [ev])
                cursor = store.cursor(AGENT)
                _, seg, offset = unpack_location(a.location)
                assert (cursor.segment, cursor.last) == (seg, offset)
                # A record is a 12-byte header, the 32-byte root, then the event.
                assert cursor.offset == offset + 12 + 32 + len(a.data)
        finally:
            store.close()

    def test_readonly_store_rejects_writes(self, tmp_path: Path) -> None:
        path = tmp_path / "db"
        writer = open_store(path)
        done = append_all(writer, make_events(2))
        writer.close()
        store = FileStore(path, readonly=True)
        try:
            assert [r.data for r in replay_list(store, AGENT)] == [a.data for a in done]
            data, eid = make_events(3)[2]
            with pytest.raises(ReadOnlyError):
                store.append(AGENT, data, eid)
            with pytest.raises(ReadOnlyError):
                store.write_file("meta", b"x")
        finally:
            store.close()

    def test_readonly_store_needs_an_existing_database(self, tmp_path: Path) -> None:
        with pytest.raises(StorageError):
            FileStore(tmp_path / "nothing", readonly=True)
        assert not (tmp_path / "nothing").exists()

    def test_a_second_writer_is_locked_out(self, tmp_path: Path) -> None:
        first = open_store(tmp_path / "db")
        try:
            with pytest.raises(DatabaseLockedError):
                open_store(tmp_path / "db")
        finally:
            first.close()
        open_store(tmp_path / "db").close()

    def test_write_file_leaves_no_temporary_file(self, tmp_path: Path) -> None:
        store = open_store(tmp_path / "db")
        try:
            store.write_file("checkpoint", b"abc")
            store.write_file("checkpoint", b"de")
        finally:
            store.close()
        names = sorted(p.name for p in (tmp_path / "db").iterdir())
        assert names == ["checkpoint", "meta"]
        assert (tmp_path / "db" / "checkpoint").read_bytes() == b"de"

    def test_a_torn_tail_is_cut_on_replay(self, tmp_path: Path) -> None:
        path = tmp_path / "db"
        store = open_store(path)
        events = make_events(6)
        done = append_all(store, events[:5])
        store.close()
        (seg,) = _segment_files(path)
        size = seg.stat().st_size
        os.truncate(seg, size - 7)
        store = open_store(path)
        try:
            records = replay_list(store, AGENT)
            assert [r.data for r in records] == [a.data for a in done[:4]]
            assert seg.stat().st_size == unpack_location(done[4].location)[2]
            append_all(store, [events[4]])
        finally:
            store.close()
        store = FileStore(path, readonly=True)
        try:
            assert [r.data for r in replay_list(store, AGENT)] == [d for d, _ in events[:5]]
        finally:
            store.close()

    def test_a_damaged_record_is_reported_not_served(self, tmp_path: Path) -> None:
        # Proven durable (the cursor of a checkpoint covers it): corruption.
        path = tmp_path / "db"
        store = open_store(path)
        done = append_all(store, make_events(5))
        proof = store.cursor(AGENT)
        store.close()
        (seg,) = _segment_files(path)
        raw = bytearray(seg.read_bytes())
        raw[unpack_location(done[2].location)[2] + 60] ^= 0x01
        seg.write_bytes(bytes(raw))
        for readonly in (True, False):
            store = FileStore(path, readonly=True) if readonly else open_store(path)
            try:
                served = []
                with pytest.raises(CorruptLogError) as info:
                    served.extend(store.replay(AGENT, durable=proof))
                assert [r.data for r in served] == [a.data for a in done[:2]]
                assert info.value.agent == AGENT
                assert info.value.position == 2
                assert info.value.offset == unpack_location(done[2].location)[2]
                assert info.value.path == str(seg)
            finally:
                store.close()
        assert seg.read_bytes() == bytes(raw)  # reported, not repaired

    def test_a_failing_record_past_the_durable_point_ends_the_log(self, tmp_path: Path) -> None:
        # Not proven durable (no cursor covers it): what a crash can leave. The log
        # ends there; the bytes from that record on are kept in lost+found/, never lost.
        path = tmp_path / "db"
        store = open_store(path)
        done = append_all(store, make_events(5))
        proof = store.cursor(AGENT)
        append_all(store, make_events(3, tag="unsynced"))
        store.close()
        (seg,) = _segment_files(path)
        raw = bytearray(seg.read_bytes())
        raw[proof.offset + 60] ^= 0x01
        seg.write_bytes(bytes(raw))
        reader = FileStore(path, readonly=True)
        try:
            assert len(replay_list(reader, AGENT, durable=proof)) == 5
            assert reader.stats()["set_aside_files"] == 0  # a reader changes nothing
        finally:
            reader.close()
        assert seg.read_bytes() == bytes(raw)
        store = open_store(path)
        try:
            assert [r.data for r in replay_list(store, AGENT, durable=proof)] == [
                a.data for a in done
            ]
            assert store.stats()["set_aside_files"] == 1
            assert store.stats()["set_aside_bytes"] == len(raw) - proof.offset
        finally:
            store.close()
        assert seg.read_bytes() == bytes(raw[: proof.offset])
        (kept,) = (path / LOST_FOUND).iterdir()
        assert kept.read_bytes() == bytes(raw[proof.offset :])
        assert kept.name == f"{AGENT}-00000001-{proof.offset}.0.bin"


# -- the reader with no side effects --------------------------------------------------------


def test_records_reads_what_replay_reads_from_any_position(backend: Backend) -> None:
    store = backend.open()
    appended = append_all(store, make_events(40, size=30))
    expected = [(a.location, i, a.event_id, a.root, a.data) for i, a in enumerate(appended)]
    for reopen in (False, True):  # the writer live, then reopened
        if reopen:
            store = backend.reopen(store)
        assert [tuple(r) for r in store.records(AGENT)] == expected
        for start in (0, 1, 17, 39, 40, 99):
            assert [tuple(r) for r in store.records(AGENT, start)] == expected[start:]
        assert list(store.records(OTHER)) == []
    store = backend.reopen(store)
    assert [tuple(r) for r in replay_list(store, AGENT)] == expected
    assert [tuple(r) for r in store.records(AGENT)] == expected


def test_records_refuses_a_bad_agent_or_start(backend: Backend) -> None:
    """One typed error for the same mistake on every store: a memory store raised a bare
    KeyError for an unknown agent, and a negative start read the whole log on both."""
    store = backend.open()
    append_all(store, make_events(3))
    for agent, start in [
        ("nobody", 0),
        (None, 0),
        (AGENT, -1),
        (AGENT, "1"),
        (AGENT, 1.5),
        (AGENT, True),
    ]:
        with pytest.raises(InvalidArgumentError):
            list(store.records(agent, start))  # type: ignore[arg-type]
    assert [r.position for r in store.records(AGENT, 3)] == []
    assert [r.position for r in store.records(AGENT, 99)] == []


def test_records_after_a_cursor_reads_only_what_follows_it(backend: Backend) -> None:
    """A checkpoint's cursor vouches for what precedes it: records after it are read
    (and verified from its root) without reading the log before it, at any position,
    across segments, on the live writer and after a reopen."""
    store = backend.open()
    events = make_events(40, size=30)
    appended = append_all(store, events[:15])
    cursors = {15: store.cursor(AGENT)}
    rest = append_all(store, events[15:])
    cursors[40] = store.cursor(AGENT)
    expected = [(a.location, i, a.event_id, a.root, a.data) for i, a in enumerate(appended + rest)]
    for reopen in (False, True):
        if reopen:
            store = backend.reopen(store)
        for count, cursor in cursors.items():
            assert [tuple(r) for r in store.records(AGENT, after=cursor)] == expected[count:]
            assert [tuple(r) for r in store.records(AGENT, 30, after=cursor)] == expected[
                max(count, 30) :
            ]
    # A reader following the log: the cursor after each record reads what follows it.
    for record in store.records(AGENT):
        after = store.cursor_after(record)
        if record.position + 1 in cursors:
            assert after == cursors[record.position + 1]
        following = [tuple(r) for r in store.records(AGENT, after=after)]
        assert following == expected[record.position + 1 :]
    # A cursor whose root is not the log's at that point: the first record after it
    # does not link (file stores), or the cursor is refused outright (memory store).
    forged = cursors[15]._replace(root=bytes(32))
    with pytest.raises((CorruptLogError, DataLossError)):
        list(store.records(AGENT, after=forged))


def test_records_after_a_cursor_past_the_end_is_data_loss(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = open_store(path)
    append_all(store, make_events(10, size=30))
    cursor = store.cursor(AGENT)
    store.close()
    os.truncate(_segment_files(path)[-1], cursor.offset - 10)
    reader = FileStore(path, readonly=True)
    try:
        with pytest.raises(DataLossError):
            list(reader.records(AGENT, after=cursor))
    finally:
        reader.close()


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("segment_size", [400, 1 << 20])
def test_records_on_a_torn_tail_reads_to_it_and_repairs_nothing(
    tmp_path: Path, segment_size: int
) -> None:
    path = tmp_path / "db"
    store = open_store(path, segment_size=segment_size)
    appended = append_all(store, make_events(20, size=30))
    store.close()
    last = _segment_files(path)[-1]
    size = last.stat().st_size
    os.truncate(last, size - 5)  # the last record torn
    before = _tree(path)
    reader = FileStore(path, readonly=True)
    try:
        records = list(reader.records(AGENT))
    finally:
        reader.close()
    assert [r.event_id for r in records] == [a.event_id for a in appended[:-1]]
    assert _tree(path) == before  # nothing was cut, moved or written


def test_records_reports_corruption_before_the_end(tmp_path: Path) -> None:
    path = tmp_path / "db"
    store = open_store(path, segment_size=400)
    append_all(store, make_events(20, size=30))
    store.close()
    segments = _segment_files(path)
    middle = segments[len(segments) // 2]
    data = bytearray(middle.read_bytes())
    data[70] ^= 0x01  # inside the first record of that segment
    middle.write_bytes(bytes(data))
    before = _tree(path)
    assert _refusal(path).path == str(middle)
    assert _tree(path) == before


def test_records_from_a_reader_follows_a_live_writer(tmp_path: Path) -> None:
    path = tmp_path / "db"
    writer = open_store(path, segment_size=400)
    events = make_events(60, size=30)
    append_all(writer, events[:10])
    writer.sync()
    reader = FileStore(path, readonly=True)  # listed while the writer has one segment
    try:
        assert len(list(reader.records(AGENT))) == 10
        append_all(writer, events[10:])  # several more segments
        writer.flush()
        assert [r.event_id for r in reader.records(AGENT)] == [e for _, e in events]
    finally:
        reader.close()
        writer.close()


class _CaughtMidWrite(OsDisk):
    """Reads one file once as ``seen``, then as it is on disk."""

    def __init__(self, path: Path, seen: bytes) -> None:
        self.path, self.seen = str(path), seen

    def read_file(self, path: str) -> bytes:
        if path == self.path and self.seen:
            seen, self.seen = self.seen, b""
            return seen
        return super().read_file(path)


@pytest.mark.parametrize(
    "holes",
    [
        [(1500, 3100)],  # the record's last pages not landed yet: zeros follow it
        [(100, 1100)],  # a later page landed before an earlier one (a racing read)
    ],
)
def test_records_beside_a_writer_ends_at_a_record_still_being_written(
    tmp_path: Path, holes: list[tuple[int, int]]
) -> None:
    """A reader in another process reads a snapshot of the active segment while the
    writer's ``pwrite`` of a record is half-way: the record's header is there, part of
    it is still the zeros allocated ahead. That is the end of what the writer has
    written so far, not corruption (a CorruptLogError in one read of six beside a
    writer of 4 MiB values, before this was handled)."""
    path = tmp_path / "db"
    writer = open_store(path)
    appended = append_all(writer, make_events(5, size=30))
    value = encode_value("x" * 3000)
    big = encode_event(
        PutEvent(ORIGIN, AGENT, 6, appended[-1].event_id, 2_000, "ns", "big", value, None)
    )
    location, _ = writer.append(AGENT, big, event_id(big))
    writer.flush()
    (seg,) = _segment_files(path)
    start = unpack_location(location)[2]
    seen = bytearray(seg.read_bytes())
    assert seen.endswith(bytes(4096))  # allocated ahead
    for lo, hi in holes:
        seen[start + lo : start + hi] = bytes(hi - lo)
    reader = FileStore(path, readonly=True, disk=_CaughtMidWrite(seg, bytes(seen)))
    try:
        records = list(reader.records(AGENT))
        assert [r.event_id for r in records] == [a.event_id for a in appended]
        # Read again once the write has landed: the record is there.
        assert [r.data for r in reader.records(AGENT)][-1] == big
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize("where", [60, 3])  # the body; the length's high byte
def test_records_beside_a_writer_reports_damage_before_a_record_landing_after_it(
    tmp_path: Path, where: int
) -> None:
    """A damaged record in the active segment, and the writer appending after it (into
    the zeros allocated ahead) between the reader's two reads: the damaged record's own
    bytes did not change, so it is corruption, not the end of what was written so far
    (the bytes after it changing says nothing about it; nor does a damaged length that
    points past the end of the file, which its header's checksum refuses)."""
    path = tmp_path / "db"
    writer = open_store(path)
    events = make_events(6, size=30)
    appended = append_all(writer, events[:5])
    writer.flush()
    (seg,) = _segment_files(path)
    start = unpack_location(appended[2].location)[2]
    with open(seg, "r+b") as f:  # a flipped bit in the third record
        f.seek(start + where)
        byte = f.read(1)[0]
        f.seek(start + where)
        f.write(bytes([byte ^ 0x10]))
    seen = seg.read_bytes()
    append_all(writer, events[5:])  # lands after the reader's first read
    writer.flush()
    try:
        assert _refusal(path, _CaughtMidWrite(seg, seen)).position == 2
    finally:
        writer.close()


class _ListedMidCreate(OsDisk):
    """Lists one directory once without ``hidden``, then as it is."""

    def __init__(self, directory: Path, hidden: str) -> None:
        self.directory, self.hidden, self.pending = str(directory), hidden, True

    def listdir(self, path: str) -> list[str]:
        names = super().listdir(path)
        if path == self.directory and self.pending:
            self.pending = False
            return [n for n in names if n != self.hidden]
        return names


def test_a_reader_listing_a_log_while_its_writer_adds_segments_sees_no_gap(
    tmp_path: Path,
) -> None:
    """A directory read racing file creation may return a segment created during it
    and miss the one created just before (directories are read in hash order): seen as
    a missing segment, DataLossError on a healthy log (in 1 of ~2,700 follows beside a
    writer rotating small segments). A read-only store lists again before it believes
    a gap; the writer, the only one creating segments, never needs to."""
    path = tmp_path / "db"
    writer = open_store(path, segment_size=400)
    appended = append_all(writer, make_events(20, size=30))
    writer.flush()
    logs = path / "logs" / AGENT
    names = sorted(p.name for p in logs.glob("*.seg"))
    assert len(names) >= 3
    for make in (
        lambda: FileStore(path, readonly=True, disk=_ListedMidCreate(logs, names[1])),
        lambda: reader_with_later_listing(path, logs, names[-2]),
    ):
        reader = make()
        try:
            assert [r.event_id for r in reader.records(AGENT)] == [a.event_id for a in appended]
        finally:
            reader.close()
    writer.close()


def reader_with_later_listing(path: Path, logs: Path, hidden: str) -> FileStore:
    """A read-only store whose listing in ``records`` (not at open) races a creation."""
    disk = _ListedMidCreate(logs, hidden)
    disk.pending = False
    reader = FileStore(path, readonly=True, disk=disk)
    disk.pending = True
    return reader


def test_records_reports_a_damaged_record_that_does_not_change_when_read_again(
    tmp_path: Path,
) -> None:
    """Not every failing record in the active segment is a write in progress: one with
    more records after it, whose bytes read the same twice, is corruption."""
    path = tmp_path / "db"
    store = open_store(path)
    appended = append_all(store, make_events(10, size=30))
    store.close()
    (seg,) = _segment_files(path)
    data = bytearray(seg.read_bytes())
    data[unpack_location(appended[3].location)[2] + 60] ^= 0x01  # inside record 3
    seg.write_bytes(bytes(data))
    _refusal(path)


def test_a_reader_reads_every_location_its_records_name(tmp_path: Path) -> None:
    """A read-only handle lists segments again when it reads records (another process
    writes more); the values at the locations those records name must be readable
    through the same handle, also in segments created after it opened. (A one-shot
    ``kdelta get`` beside a writer rotating segments reported "a value's segment is
    missing" as corruption.)"""
    path = tmp_path / "db"
    writer = open_store(path, segment_size=400)
    events = make_events(60, size=30)
    append_all(writer, events[:5])
    writer.sync()
    reader = FileStore(path, readonly=True)  # listed while the writer has one segment
    try:
        append_all(writer, events[5:])  # several more segments
        writer.flush()
        records = list(reader.records(AGENT))
        assert len(records) == 60 and unpack_location(records[-1].location)[1] > 1
        for record in records:
            assert reader.read(record.location) == record.data
    finally:
        reader.close()
        writer.close()


def test_a_sync_cut_short_never_lets_a_later_sync_report_success() -> None:
    """A sync interrupted inside fdatasync (here by a power cut) has already taken the
    logs' dirty flags: a later sync would find nothing to do and say "synced" for
    records never made durable, and group commit would acknowledge them (seen as a
    lost acknowledged write in the power-cut test, with syncs in worker threads)."""
    disk = SimDisk()
    store = open_store(Path("/db"), disk=disk)
    append_all(store, make_events(3))
    disk.cut_after(1)  # the sync's fdatasync is the next disk call
    with pytest.raises(PowerCut):
        store.sync()
    with pytest.raises(DurabilityError) as info:
        store.sync()
    assert isinstance(info.value.__cause__, PowerCut)


class _RecordingReads(OsDisk):
    """The operating system's disk, refusing any read longer than a record can be
    (``os.pread`` allocates the whole length first)."""

    def __init__(self) -> None:
        self.longest = 0

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        from koru.events._frame import MAX_BODY_SIZE, RECORD_HEADER_SIZE

        self.longest = max(self.longest, size)
        assert size <= RECORD_HEADER_SIZE + MAX_BODY_SIZE, f"a read of {size:,} bytes"
        return super().pread(fd, size, offset)


def test_a_read_never_asks_for_more_than_a_record_can_hold(tmp_path: Path) -> None:
    """A cold get sizes its read from the value size its version record says; a table
    rewritten with fresh checksums can say nearly 4 GiB, and that many bytes were
    asked of ``pread`` (allocated before the read: a MemoryError on a small machine)
    before any check. No record is longer than the framing's limit: no read is."""
    disk = _RecordingReads()
    store = open_store(tmp_path / "db", disk=disk)
    try:
        appended = append_all(store, make_events(5, size=30))
        store.sync()
        for a in appended:
            assert store.read(a.location, (1 << 32) - 1) == a.data
        assert disk.longest > 0
    finally:
        store.close()


def test_records_takes_a_whole_last_record_that_does_not_link_for_damage(
    tmp_path: Path,
) -> None:
    """The last record of the active segment, its root altered and both checksums made
    to match (every byte of it landed: no write is in progress), followed by the zeros
    allocated ahead: a reader reports corruption. It took it for a write still landing
    and ended the log quietly before it."""
    import struct
    import zlib

    path = tmp_path / "db"
    writer = open_store(path)
    events = make_events(4, size=30)
    # The last event ends in a zero byte (its previous write id's last), as one put in
    # 256 does: its end looks like the zeros allocated ahead.
    last = encode_event(
        PutEvent(ORIGIN, AGENT, 5, events[-1][1], 1_005, "ns", "k2", encode_value("v5"), bytes(32))
    )
    assert last[-1] == 0
    appended = append_all(writer, [*events, (last, event_id(last))])
    writer.flush()
    (seg,) = _segment_files(path)
    start = unpack_location(appended[-1].location)[2]
    data = bytearray(seg.read_bytes())
    n = struct.unpack_from("<I", data, start)[0]
    body = start + 12
    data[body] ^= 0x01  # the stored root: the chain link no longer holds
    crc = zlib.crc32(bytes(data[body : body + n]))
    struct.pack_into("<II", data, start + 4, crc, zlib.crc32(struct.pack("<II", n, crc)))
    assert data[body + n :].count(0) == len(data) - body - n  # zeros follow it
    seg.write_bytes(bytes(data))
    try:
        assert _refusal(path).position == 4
    finally:
        writer.close()


def test_os_disk_allocates_by_writing_zeros(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OsDisk.allocate`` writes zeros over the range rather than reserving it with
    ``posix_fallocate``: an fdatasync after a write into blocks that already hold zeros
    commits no extent conversion through the journal (the sync of a group-commit round
    was 0.23 ms there, 0.13 ms here). The file grows to cover the range, the bytes
    before it are left alone, and a range longer than the shared block of zeros is
    filled whole."""

    def refuse(*args: Any) -> None:
        raise AssertionError("posix_fallocate called")

    monkeypatch.setattr(os, "posix_fallocate", refuse)
    disk = OsDisk()
    fd = disk.open(str(tmp_path / "f"), os.O_RDWR | os.O_CREAT)
    try:
        disk.pwrite(fd, b"data", 0)
        disk.allocate(fd, 4, 1000)
        assert disk.size(fd) == 1004
        disk.allocate(fd, 1004, 3 << 20)  # longer than the shared block
        assert disk.size(fd) == 1004 + (3 << 20)
        content = disk.pread(fd, disk.size(fd), 0)
        assert content[:4] == b"data"
        assert content.count(0) == len(content) - 4
    finally:
        disk.close(fd)
