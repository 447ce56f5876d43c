"""Plain puts under ``sync="always"`` handed to the group-commit round (``Writer.join``).

Each writer checks and encodes its value, then waits; the round appends every put
handed to it as one batch event before its sync (``Writer._append_joined``). What must
hold is what held when each put appended its own event: every acknowledged put is
durable and readable with the version it was given, a put's ``previous`` is the version
current when it was appended, a bad value fails its own put only, a cancelled put that
no round took writes nothing, and a failed sync fails every put it covered.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock, digest_of
from koru._loader import load
from koru._writer import GROUP_BYTES
from koru.events import DurabilityError, FileStore, InvalidDataError, OsDisk, write_id


async def _events(db: koru.Database) -> int:
    return (await db.stats()).events


async def test_concurrent_puts_are_appended_as_one_event_per_round(tmp_path: Path) -> None:
    """16 writers in one scheduler pass: one event holds their puts, each put's version
    is the one history and a reopened database show."""
    async with koru.open(tmp_path / "db", sync="always") as db:
        before = await _events(db)
        versions: dict[int, koru.Version] = {}

        async def put(i: int) -> None:
            versions[i] = await db.put("ns", f"k{i}", {"i": i})

        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(put, i)
        assert await _events(db) - before < 16
        assert {v.write_id for v in versions.values()}.__len__() == 16
        for i, version in versions.items():
            assert version.previous is None and not version.deleted
            assert await db.get("ns", f"k{i}") == {"i": i}
            [entry] = await db.history("ns", f"k{i}")
            assert (entry.write_id, entry.content_id, entry.timestamp) == (
                version.write_id,
                version.content_id,
                version.timestamp,
            )
        digest = await db.digest()
    async with koru.open(tmp_path / "db", sync="always") as db:
        assert await db.digest() == digest
        for i, version in versions.items():
            assert (await db.history("ns", f"k{i}"))[-1].write_id == version.write_id
    store = FileStore(tmp_path / "db", readonly=True)
    try:
        assert digest_of(load(store, use_checkpoint=False).kv) == digest
    finally:
        store.close()


async def test_puts_of_one_key_in_one_round_follow_each_other(tmp_path: Path) -> None:
    """Several writers put the same key in one round: each put's ``previous`` is the
    version before it (none is lost as a sibling), in the order they came."""
    async with koru.open(tmp_path / "db", sync="always") as db:
        await db.put("ns", "k", 0)
        versions: dict[int, koru.Version] = {}

        async def put(i: int) -> None:
            versions[i] = await db.put("ns", "k", i)

        async with trio.open_nursery() as nursery:
            for i in range(1, 6):
                nursery.start_soon(put, i)
        history = await db.history("ns", "k")
        assert len(history) == 6
        for older, newer in itertools.pairwise(history):
            assert newer.previous == older.write_id
        assert sorted(v.value for v in history[1:]) == [1, 2, 3, 4, 5]
        assert {v.write_id for v in versions.values()} == {v.write_id for v in history[1:]}
        assert await db.get("ns", "k") == history[-1].value


async def test_a_bad_value_fails_its_own_put_only(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db", sync="always", max_value_size=100) as db:
        outcomes: dict[int, Any] = {}

        async def put(i: int, value: Any) -> None:
            try:
                outcomes[i] = await db.put("ns", f"k{i}", value)
            except koru.KoruError as exc:
                outcomes[i] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(put, 0, 1)
            nursery.start_soon(put, 1, {1, 2})  # not encodable
            nursery.start_soon(put, 2, "x" * 500)  # over max_value_size
            nursery.start_soon(put, 3, 3)
        assert isinstance(outcomes[1], InvalidDataError)
        assert isinstance(outcomes[2], InvalidDataError)
        assert await db.get("ns", "k0") == 1 and await db.get("ns", "k3") == 3
        assert not await db.contains("ns", "k1") and not await db.contains("ns", "k2")


class _FailingSync(OsDisk):
    """fdatasync fails once armed."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            raise OSError(5, "simulated EIO")
        super().fdatasync(fd)


async def test_a_failed_sync_fails_every_put_of_its_round(tmp_path: Path) -> None:
    disk = _FailingSync()
    async with koru.open(tmp_path / "db", sync="always", disk=disk) as db:
        await db.put("ns", "before", 1)
        disk.armed = True
        errors: list[BaseException] = []

        async def put(i: int) -> None:
            try:
                await db.put("ns", f"k{i}", i)
            except DurabilityError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(put, i)
        assert len(errors) == 8
        # Each writer gets its own error object (one object raised in eight tasks
        # chained every raise's frames onto one traceback), with the same message and
        # the same cause.
        assert len({id(e) for e in errors}) == 8
        assert len({(type(e), str(e), id(e.__cause__)) for e in errors}) == 1
        # Each traceback holds its own raise's few frames, not every writer's.
        depths = [len(traceback.extract_tb(e.__traceback__)) for e in errors]
        assert max(depths) <= 8, depths
        with pytest.raises(koru.KoruError):
            await db.put("ns", "later", 1)
        disk.armed = False


async def test_values_past_the_round_budget_go_in_several_events(tmp_path: Path) -> None:
    """Values whose sum passes ``GROUP_BYTES`` are split into several events, and a
    value of more than ``GROUP_BYTES`` goes alone; every put is written."""
    size = GROUP_BYTES // 3
    async with koru.open(tmp_path / "db", sync="always", max_value_size=4 * GROUP_BYTES) as db:
        before = await _events(db)
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(db.put, "ns", f"k{i}", "x" * size)
            nursery.start_soon(db.put, "ns", "big", "y" * (GROUP_BYTES + 10))
        added = await _events(db) - before
        assert 3 <= added < 7
        assert sorted(await db.keys("ns")) == sorted([f"k{i}" for i in range(6)] + ["big"])
        assert await db.get("ns", "big") == "y" * (GROUP_BYTES + 10)


class _SlowRecordingDisk(OsDisk):
    """fdatasync takes real time, ``delay`` (so the committer syncs in a worker thread,
    and puts join while it runs), and can be held shut (``gate``) while a test arranges
    what joins the next round; records how many pwrites each completed sync covers.
    (``test_joined_puts_attack._SlowDisk`` adds failures.)"""

    def __init__(self, delay: float = 0.003) -> None:
        super().__init__()
        self.delay = delay
        self.writes = 0
        self.covered = 0
        self._lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        n = super().pwrite(fd, data, offset)
        with self._lock:
            self.writes += 1
        return n

    def fdatasync(self, fd: int) -> None:
        with self._lock:
            began = self.writes
        self.entered.set()
        self.gate.wait(10)
        time.sleep(self.delay)
        self.sync_file(fd)
        with self._lock:
            self.covered = max(self.covered, began)

    def sync_file(self, fd: int) -> None:
        """The device's own fdatasync, once the gate and the delay are passed."""
        super().fdatasync(fd)

    async def hold(self) -> None:
        """Shut the gate, and return once a sync waits at it (in its worker thread)."""
        self.gate.clear()
        self.entered.clear()
        assert await trio.to_thread.run_sync(self.entered.wait, 10)


class _Puts:
    """Concurrent puts' outcomes, by key: ``outcomes`` (its Version, or the KoruError
    it raised), ``acked`` (the value of each put acknowledged) and ``failed`` (the
    errors, in the order they came)."""

    def __init__(self, namespace: str = "ns") -> None:
        self.namespace = namespace
        self.outcomes: dict[str, Any] = {}
        self.acked: dict[str, Any] = {}
        self.failed: list[koru.KoruError] = []

    async def put(self, db: koru.Database, key: str, value: Any) -> None:
        try:
            self.outcomes[key] = await db.put(self.namespace, key, value)
            self.acked[key] = value
        except koru.KoruError as exc:
            self.outcomes[key] = exc
            self.failed.append(exc)


async def _slow(tmp_path: Path) -> tuple[_SlowRecordingDisk, Any]:
    disk = _SlowRecordingDisk()
    return disk, koru.open(tmp_path / "db", sync="always", disk=disk)


async def test_puts_cancelled_while_they_wait_for_a_round_write_nothing(tmp_path: Path) -> None:
    """Puts that joined while a round syncs in a worker thread, cancelled before the
    next round takes them: withdrawn, nothing written; the others of that round are."""
    disk, opening = await _slow(tmp_path)
    async with opening as db:
        for i in range(3):  # three slow syncs: the committer moves them to a thread
            await db.put("ns", f"warm{i}", i)
        before = await _events(db)
        scopes: list[trio.CancelScope] = []
        cancelled: list[int] = []

        async def victim(i: int) -> None:
            scope = trio.CancelScope()
            scopes.append(scope)
            with scope:
                await db.put("ns", f"v{i}", i)
            if scope.cancelled_caught:
                cancelled.append(i)

        def cancel_all() -> None:
            for scope in scopes:
                scope.cancel()
            scopes.clear()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.put, "ns", "a", 1)  # leads a round, synced in a thread
            await disk.hold()  # ... held there until the others have joined the next
            for i in range(4):
                nursery.start_soon(victim, i)
            nursery.start_soon(db.put, "ns", "b", 2)
            await trio.testing.wait_all_tasks_blocked()  # all joined, waiting
            cancel_all()
            await trio.testing.wait_all_tasks_blocked()
            # Withdrawn by a mark, not searched for in the queue: the round drops them.
            assert db._writer._withdrawn == 4  # type: ignore[attr-defined]
            disk.gate.set()
        assert db._writer._withdrawn == 0 and not db._writer._joined  # type: ignore[attr-defined]
        assert sorted(cancelled) == [0, 1, 2, 3]
        assert await db.get("ns", "a") == 1 and await db.get("ns", "b") == 2
        assert not any([await db.contains("ns", f"v{i}") for i in range(4)])
        assert await _events(db) - before == 2  # a's round, then b's alone

        # Every writer of a round cancelled: no event at all, and the handle writes on.
        cancelled.clear()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(db.put, "ns", "c", 3)
            await disk.hold()
            for i in range(4):
                nursery.start_soon(victim, i)
            await trio.testing.wait_all_tasks_blocked()
            cancel_all()
            await trio.testing.wait_all_tasks_blocked()
            disk.gate.set()
        assert sorted(cancelled) == [0, 1, 2, 3]
        assert await _events(db) - before == 3
        await db.put("ns", "after", 4)
        assert await db.get("ns", "after") == 4
    assert disk.covered > 0


async def test_a_put_is_acknowledged_only_after_a_sync_that_began_after_it_was_written(
    tmp_path: Path,
) -> None:
    """Syncs in a worker thread, writers joining while one runs: when a put returns, a
    sync that began after its event was written has completed."""
    disk = _SlowRecordingDisk()
    written: dict[str, int] = {}  # write id -> pwrites done once its event was written
    # Frequent checkpoints: each syncs in a worker thread too, and appends the puts
    # waiting for a round (a put whose round was not the one that synced it).
    async with koru.open(tmp_path / "db", sync="always", disk=disk, checkpoint_every=7) as db:
        # One file: the log's (the test's count of pwrites is per disk, not per file).
        def observe(event: Any, eid: bytes, location: int) -> None:
            count = len(event.writes) if event.writes else 1
            for i in range(count):
                written[write_id(eid, i).hex()] = disk.writes

        db._writer.observers.append(observe)
        rng = random.Random(5)
        late: list[str] = []
        acked = 0

        async def writer(w: int) -> None:
            nonlocal acked
            for n in range(12):
                for _ in range(rng.choice((0, 1, 3))):
                    await trio.lowlevel.checkpoint()
                version = await db.put("ns", f"w{w}-{n % 3}", {"w": w, "n": n})
                if disk.covered < written[version.write_id]:
                    late.append(version.write_id)
                acked += 1

        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, w)
        assert late == [] and acked == 96
        assert db._committer.syncs < 96  # rounds were shared


async def test_puts_waiting_for_a_round_when_the_database_closes_are_written(
    tmp_path: Path,
) -> None:
    """Close begins while puts wait for the next round (a sync runs in a worker
    thread): close's own sync appends them, and each is acknowledged and kept."""
    disk = _SlowRecordingDisk()
    acked: dict[str, int] = {}
    refused: list[BaseException] = []

    async def put(db: koru.Database, i: int) -> None:
        try:
            await db.put("ns", f"k{i}", i)
            acked[f"k{i}"] = i
        except koru.DatabaseClosedError as exc:
            refused.append(exc)

    async with (
        koru.open(tmp_path / "db", sync="always", disk=disk) as db,
        trio.open_nursery() as nursery,
    ):
        for i in range(3):  # three slow syncs: the committer moves them to a thread
            await db.put("ns", f"warm{i}", i)
        for i in range(8):
            nursery.start_soon(put, db, i)
        await disk.hold()  # the first round syncs in its thread, held there...
        for i in range(8, 16):
            nursery.start_soon(put, db, i)  # ... while these join the next
        await trio.testing.wait_all_tasks_blocked()
        assert len(db._writer._joined) == 8  # waiting for a round when close begins
        closing = trio.Event()

        async def close() -> None:
            await db.aclose()
            closing.set()

        nursery.start_soon(close)
        await trio.testing.wait_all_tasks_blocked()
        disk.gate.set()
        await closing.wait()
    assert len(acked) == 16 and refused == []
    async with koru.open(tmp_path / "db", sync="always") as db:
        for key, value in acked.items():
            assert await db.get("ns", key) == value


@settings(max_examples=40)
@given(
    plan=st.lists(
        st.tuples(
            st.integers(0, 5),  # writer
            st.integers(0, 3),  # key
            st.integers(0, 3),  # scheduler passes before the put
            st.booleans(),  # cancelled at once
            st.sampled_from([None, None, 1000.0, 2000.0]),  # ttl (none expires here)
        ),
        min_size=1,
        max_size=40,
    )
)
def test_joined_puts_match_a_model(plan: list[tuple[int, int, int, bool, float | None]]) -> None:
    """Random writers, keys, ttls, interleavings and cancellations under a mock clock:
    every acknowledged put is in its key's history with a time to live if and only if
    it was given one, each writer's puts to a key appear in its own order, each
    version's ``previous`` is the one before it, nothing cancelled before its round is
    there, and a full replay gives the same digest."""
    import tempfile

    async def main(path: str) -> None:
        acked: list[tuple[int, int, int]] = []  # writer, key, op
        withdrawn: list[tuple[int, int, int]] = []
        async with koru.open(path, sync="always", seed=1) as db:
            per_writer: dict[int, list[tuple[int, int, int, bool, float | None]]] = {}
            for op, (w, k, passes, cancel, ttl) in enumerate(plan):
                per_writer.setdefault(w, []).append((op, k, passes, cancel, ttl))
            ttls = {op: ttl for op, (_, _, _, _, ttl) in enumerate(plan)}

            async def writer(w: int) -> None:
                for op, k, passes, cancel, ttl in per_writer[w]:
                    for _ in range(passes):
                        await trio.lowlevel.checkpoint()
                    with trio.CancelScope() as scope:
                        if cancel:
                            scope.cancel()
                        version = await db.put("ns", f"k{k}", [w, op], ttl=ttl)
                        assert (version.expires is None) == (ttl is None)
                        if ttl is not None:
                            assert version.expires == version.timestamp + int(ttl * 1e9)
                        acked.append((w, k, op))
                    if scope.cancelled_caught:
                        withdrawn.append((w, k, op))

            async with trio.open_nursery() as nursery:
                for w in per_writer:
                    nursery.start_soon(writer, w)
            for k in range(4):
                history = await db.history("ns", f"k{k}")
                values = [tuple(v.value) for v in history]
                for older, newer in itertools.pairwise(history):
                    assert newer.previous == older.write_id
                for version in history:
                    ttl = ttls[version.value[1]]
                    assert version.expires == (
                        None if ttl is None else version.timestamp + int(ttl * 1e9)
                    )
                for w in per_writer:
                    mine = [op for (ww, op) in values if ww == w]
                    assert mine == sorted(mine)
                assert {(w, k, op) for w, kk, op in acked if kk == k} == {
                    (w, k, op) for w, op in values
                }
            for w, k, op in withdrawn:
                assert (w, op) not in [tuple(v.value) for v in await db.history("ns", f"k{k}")]
            digest = await db.digest()
        store = FileStore(path, readonly=True)
        try:
            assert digest_of(load(store, use_checkpoint=False).kv) == digest
        finally:
            store.close()

    with tempfile.TemporaryDirectory() as d:
        trio.run(main, os.path.join(d, "db"), clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("where", ["memory", "file"])
async def test_puts_waiting_for_a_round_when_the_handle_dies_fail_unwritten(
    tmp_path: Path, where: str
) -> None:
    """The handle dies (a background task failed) as a round begins, with puts queued
    for it: each fails typed (``DatabaseClosedError``) and none is written, in a file
    database or in memory (whose store has no closed state of its own)."""
    path = ":memory:" if where == "memory" else tmp_path / "db"
    puts = _Puts()

    async with koru.open(path, sync="always") as db:
        await db.put("ns", "before", 0)
        committer = db._committer
        gather = committer.gather
        assert gather is not None

        def dying() -> None:
            db._die(RuntimeError("a background task failed"))
            gather()

        committer.gather = dying
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(puts.put, db, f"k{i}", i)
        assert all(
            isinstance(puts.outcomes[f"k{i}"], koru.DatabaseClosedError) for i in range(5)
        ), puts.outcomes
        stored = db._store.cursor("storage").count
    assert stored == 1  # only "before" in the log


async def test_the_first_cause_of_a_handles_death_is_kept(tmp_path: Path) -> None:
    """A background failure kills the handle; the waiters' errors after it must not
    replace it as the cause every later operation reports."""
    disk = _FailingSync()
    async with koru.open(tmp_path / "db", sync="always", disk=disk) as db:
        await db.put("ns", "before", 1)
        cause = RuntimeError("a background task failed")
        db._die(cause)
        disk.armed = True
        with pytest.raises(koru.DatabaseClosedError) as first:
            await db.put("ns", "k", 1)
        db._writer._die(DurabilityError("a later sync failed"))
        with pytest.raises(koru.DatabaseClosedError) as later:
            await db.get("ns", "before")
        assert first.value.__cause__ is cause and later.value.__cause__ is cause
        disk.armed = False


async def test_puts_with_a_ttl_join_rounds_a_batch_per_ttl(tmp_path: Path) -> None:
    """Puts with a time to live are handed to the round as plain puts are: those of one
    ttl share a batch, another ttl (or none) starts the next; each expires at its
    ttl after its round's timestamp, reads as absent after that, and a reopen equals
    a full replay."""
    clock = StepClock()
    async with koru.open(tmp_path / "db", sync="always", clock=clock) as db:
        before = await _events(db)
        ttls = [60.0] * 6 + [None] * 4 + [120.0] * 6
        versions: dict[int, koru.Version] = {}

        async def put(i: int) -> None:
            versions[i] = await db.put("ns", f"k{i}", i, ttl=ttls[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(ttls)):
                nursery.start_soon(put, i)
        added = await _events(db) - before
        assert 3 <= added <= 5  # a batch per run of one ttl (one event each, alone)
        for i, version in versions.items():
            ttl = ttls[i]
            want = None if ttl is None else version.timestamp + int(ttl * 1e9)
            assert version.expires == want
            [entry] = await db.history("ns", f"k{i}")
            assert (entry.write_id, entry.expires) == (version.write_id, want)
            assert await db.get("ns", f"k{i}") == i
        clock.now += 90 * 10**9  # past the 60 s ttl, not the 120 s one
        for i, ttl in enumerate(ttls):
            assert await db.contains("ns", f"k{i}") == (ttl != 60.0)
        digest = await db.digest()
    store = FileStore(tmp_path / "db", readonly=True)
    try:
        assert digest_of(load(store, use_checkpoint=False).kv) == digest
    finally:
        store.close()


async def test_a_keys_puts_of_other_ttls_are_appended_in_the_order_they_came(
    tmp_path: Path,
) -> None:
    """A round's batch takes its first put's time to live; a put of another ttl waits
    for a later batch, and so does every later put of its key, even one of the batch's
    ttl: a key's puts are appended in the order they came."""
    async with koru.open(tmp_path / "db", sync="always") as db:
        writer = db._writer
        first = writer.join("ns", "a", 1, None)
        other = writer.join("ns", "b", 2, 60 * 10**9)  # another ttl: a later batch
        after = writer.join("ns", "b", 3, None)  # the batch's ttl, but after `other`
        last = writer.join("ns", "c", 4, None)
        await db._committer.sync_now()
        assert all(j.error is None and j.version is not None for j in (first, other, after, last))
        history = await db.history("ns", "b")
        assert [v.value for v in history] == [2, 3]
        assert history[1].previous == history[0].write_id
        assert history[0].expires is not None and history[1].expires is None
        assert await db.get("ns", "b") == 3


async def test_a_round_of_many_ttls_appends_every_put_in_order(tmp_path: Path) -> None:
    """Forty puts of forty ttls in one round (past the batches a round builds by
    scanning, ``_GROUP_PASSES``): each is appended, with its own ttl, and each key's
    puts in the order they came."""
    async with koru.open(tmp_path / "db", sync="always") as db:
        writer = db._writer
        joined = [
            writer.join("ns", "ab"[i % 2], i, (i + 1) * 10**9 if i % 3 else None) for i in range(40)
        ]
        await db._committer.sync_now()
        assert all(j.error is None and j.target is not None for j in joined)
        for k, key in enumerate("ab"):
            history = await db.history("ns", key)
            assert [v.value for v in history] == list(range(k, 40, 2))
            for older, newer in itertools.pairwise(history):
                assert newer.previous == older.write_id
            for v in history:
                ttl = (v.value + 1) * 10**9 if v.value % 3 else None
                assert v.expires == (None if ttl is None else v.timestamp + ttl)
