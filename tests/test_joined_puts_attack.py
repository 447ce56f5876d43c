"""Attacks on the group-commit path of plain puts under ``sync="always"``
(``Writer.join``, ``Committer.gather`` = ``Writer._append_joined``).

What must hold, whatever the attack: every acknowledged put is durable and readable
with the version it was given; nothing is acknowledged that was not synced; a put
that failed or was refused wrote nothing once the handle is closed; the state after a
reopen equals a full replay of the log.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from test_joined_puts import _Puts, _SlowRecordingDisk

import koru
from conftest import digest_of
from koru._loader import load
from koru.events import FileStore


class _SlowDisk(_SlowRecordingDisk):
    """The gated slow disk of ``test_joined_puts``, which also fails once
    ``fail_sync`` is set (EIO), pwrite once ``fail_write`` is (ENOSPC), and counts
    pwrites after ``closed`` is set."""

    def __init__(self, delay: float = 0.003) -> None:
        super().__init__(delay)
        self.fail_sync = False
        self.fail_write = False
        self.writes_after_close = 0
        self.closed = False

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        if self.fail_write:
            raise OSError(errno.ENOSPC, "simulated ENOSPC")
        if self.closed:
            self.writes_after_close += 1
        return super().pwrite(fd, data, offset)

    def sync_file(self, fd: int) -> None:
        if self.fail_sync:
            raise OSError(errno.EIO, "simulated EIO")
        super().sync_file(fd)


def _replayed(path: Path) -> str:
    store = FileStore(path, readonly=True)
    try:
        return digest_of(load(store, use_checkpoint=False).kv)
    finally:
        store.close()


async def _warm(db: koru.Database) -> None:
    for i in range(3):  # three slow syncs: the committer moves them to a thread
        await db.put("ns", f"warm{i}", i)


async def test_puts_joined_when_a_dead_handle_closes_write_nothing_after_close(
    tmp_path: Path,
) -> None:
    """Attack: the handle dies (a background task failed: ``Lifecycle.die``) while puts
    wait for the next round, a round's sync running in a worker thread; then it
    closes. Close skips its sync on a dead handle, so the waiting puts stayed queued,
    and the next waiter to lead appended them to the closed store (which reopened its
    segment, unlocked) and acknowledged them. What must hold: each such put fails
    typed (KoruError), and nothing is written once the store is closed."""
    disk = _SlowDisk()
    puts = _Puts()

    async with koru.open(tmp_path / "db", sync="always", disk=disk) as db:
        await _warm(db)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(puts.put, db, "k0", 0)  # leads a round: its sync in a thread
            await disk.hold()
            for i in range(1, 5):
                nursery.start_soon(puts.put, db, f"k{i}", i)  # join the next round
            await trio.testing.wait_all_tasks_blocked()
            assert len(db._writer._joined) == 4
            db._die(RuntimeError("a background task failed"))
            disk.gate.set()
            await db.aclose()
            disk.closed = True
    assert disk.writes_after_close == 0
    failed = [i for i in range(5) if isinstance(puts.outcomes[f"k{i}"], koru.KoruError)]
    assert set(range(1, 5)) <= set(failed), puts.outcomes
    async with koru.open(tmp_path / "db", sync="always") as db:
        for i in range(1, 5):  # (put 0 was appended before close: its outcome unknown)
            assert not await db.contains("ns", f"k{i}"), (i, puts.outcomes)
        digest = await db.digest()
    assert _replayed(tmp_path / "db") == digest


async def test_enospc_while_a_round_appends_its_batch_fails_every_put_of_it(
    tmp_path: Path,
) -> None:
    """Attack: pwrite raises ENOSPC while a round appends its batch of joined puts.
    What must hold: every put of the round fails typed (DurabilityError), the handle
    fails typed after, every put acknowledged before is there after a reopen, and the
    reopened state equals a full replay."""
    disk = _SlowDisk(delay=0)
    puts = _Puts()

    async with koru.open(tmp_path / "db", sync="always", disk=disk) as db:
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(puts.put, db, f"a{i}", i)
        assert len(puts.acked) == 8
        disk.fail_write = True
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(puts.put, db, f"b{i}", i)
        assert len(puts.failed) == 8 and all(
            isinstance(e, koru.DurabilityError) for e in puts.failed
        )
        with pytest.raises(koru.KoruError):
            await db.put("ns", "later", 1)
        disk.fail_write = False
    async with koru.open(tmp_path / "db", sync="always") as db:
        for key, value in puts.acked.items():
            assert await db.get("ns", key) == value
        assert sorted(await db.keys("ns")) == sorted(puts.acked)
        digest = await db.digest()
    assert _replayed(tmp_path / "db") == digest


async def test_a_sync_failing_in_a_thread_fails_the_next_round_too(tmp_path: Path) -> None:
    """Attack: fdatasync fails in a worker thread while puts wait for the next round.
    What must hold: no put is acknowledged after the failure; the waiting puts fail
    typed; puts acknowledged before are there after a reopen."""
    disk = _SlowDisk()
    puts = _Puts()

    async with koru.open(tmp_path / "db", sync="always", disk=disk) as db:
        await _warm(db)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(puts.put, db, "lead", 0)
            await disk.hold()
            disk.fail_sync = True  # the sync running in the thread fails
            for i in range(6):
                nursery.start_soon(puts.put, db, f"w{i}", i)
            await trio.testing.wait_all_tasks_blocked()
            disk.gate.set()
        assert "lead" not in puts.acked and not any(k.startswith("w") for k in puts.acked)
        assert len(puts.failed) == 7
        assert all(isinstance(e, koru.DurabilityError) for e in puts.failed)
        disk.fail_sync = False
    async with koru.open(tmp_path / "db", sync="always") as db:
        for i in range(3):
            assert await db.get("ns", f"warm{i}") == i
        for i in range(6):
            assert not await db.contains("ns", f"w{i}")
        digest = await db.digest()
    assert _replayed(tmp_path / "db") == digest


async def test_a_subscriber_sees_every_joined_put_once_in_log_order(tmp_path: Path) -> None:
    """Attack: many writers, some cancelled at random, one key hammered, beside a
    subscriber. What must hold: the subscriber sees each acknowledged put exactly
    once, with the version the put returned, each change's ``old`` the one before."""
    import random

    rng = random.Random(7)
    versions: list[koru.Version] = []
    async with koru.open(tmp_path / "db", sync="always") as db:
        async with db.subscribe("ns") as changes:

            async def writer(w: int) -> None:
                for n in range(10):
                    key = "hot" if rng.random() < 0.5 else f"w{w}"
                    with trio.CancelScope() as scope:
                        if rng.random() < 0.2:
                            scope.cancel()
                        versions.append(await db.put("ns", key, [w, n]))
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                for w in range(12):
                    nursery.start_soon(writer, w)
            seen: list[Any] = []
            with trio.move_on_after(1):
                async for change in changes:
                    seen.append(change)
                    if len(seen) == len(versions):
                        break
            with trio.move_on_after(0.05):  # nothing more comes
                async for change in changes:
                    seen.append(change)
        assert sorted(c.new.write_id for c in seen) == sorted(v.write_id for v in versions)
        by_id = {v.write_id: v for v in versions}
        for c in seen:
            assert c.new == by_id[c.new.write_id]
        last: dict[str, str] = {}
        for c in seen:
            assert (c.old.write_id if c.old else None) == last.get(c.key)
            last[c.key] = c.new.write_id


@settings(max_examples=30, deadline=None)
@given(
    plan=st.lists(
        st.tuples(
            st.integers(0, 4),  # writer
            st.sampled_from(["put", "put", "put", "ttl", "parents", "batch", "delete"]),
            st.integers(0, 2),  # key
            st.integers(0, 2),  # scheduler passes before
            st.sampled_from([None, None, 0.0, 1e-9, 1e-4]),  # deadline
        ),
        min_size=1,
        max_size=30,
    )
)
def test_joined_puts_mixed_with_other_writes_match_a_replay(
    plan: list[tuple[int, str, int, int, float | None]],
) -> None:
    """Attack: joined puts in the same rounds as put_batch, delete, puts with a ttl
    (expiring under the mock clock), puts with parents, each maybe under a tiny
    ``move_on_after``. What must hold: each key's history is one chain of
    ``previous`` links, in each writer's order; each writer reads its own write back
    (or a later one); each acknowledged version is in the history as returned; the
    reopened state equals a full replay."""
    import tempfile

    async def main(path: str) -> None:
        acked: list[koru.Version] = []
        async with koru.open(path, sync="always", seed=1) as db:
            await db.put("ns", "root", 0)
            per: dict[int, list[tuple[str, int, int, float | None]]] = {}
            for w, op, k, passes, deadline in plan:
                per.setdefault(w, []).append((op, k, passes, deadline))

            async def writer(w: int) -> None:
                for n, (op, k, passes, deadline) in enumerate(per[w]):
                    for _ in range(passes):
                        await trio.lowlevel.checkpoint()
                    key = f"k{k}"
                    value = [w, n]
                    with trio.move_on_after(1e9 if deadline is None else deadline):
                        try:
                            if op == "put":
                                got = [await db.put("ns", key, value)]
                            elif op == "ttl":
                                got = [await db.put("ns", key, value, ttl=0.5)]
                            elif op == "parents":
                                got = [await db.put("ns", key, value, parents=["root"])]
                            elif op == "batch":
                                other = f"k{(k + 1) % 3}"
                                got = await db.put_batch([("ns", key, value), ("ns", other, value)])
                            else:
                                got = [await db.delete("ns", key)]
                        except koru.KeyNotFoundError:
                            continue
                        acked.extend(got)
                        if op != "delete":
                            # read-your-writes: this value, or a later write's
                            current = (await db.history("ns", key))[-1]
                            assert current.timestamp >= got[0].timestamp
                            if current.write_id == got[0].write_id:
                                assert await db.get("ns", key) in (value, None)

            async with trio.open_nursery() as nursery:
                for w in per:
                    nursery.start_soon(writer, w)
                nursery.start_soon(trio.sleep, 1)  # past every ttl: the expiry runs
            for k in range(3):
                history = await db.history("ns", f"k{k}")
                for older, newer in itertools.pairwise(history):
                    assert newer.previous == older.write_id
                    assert newer.timestamp > older.timestamp
                for w in per:
                    mine = [v.value[1] for v in history if v.value and v.value[0] == w]
                    assert mine == sorted(mine)
                ids = {v.write_id for v in history}
                for version in acked:
                    if version.key == f"k{k}":
                        assert version.write_id in ids
            digest = await db.digest()
        assert _replayed(Path(path)) == digest
        async with koru.open(path, sync="always", seed=1) as db:
            assert await db.digest() == digest

    with tempfile.TemporaryDirectory() as d:
        trio.run(main, os.path.join(d, "db"), clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.fixture
def interactive() -> Any:
    """SIGINT handled by Python's default handler, as a user pressing Ctrl-C meets it
    (a background job inherits it ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.usefixtures("interactive")
@pytest.mark.parametrize("delay_ms", [1, 3, 7, 12, 20])
def test_ctrl_c_among_joined_puts_loses_no_acknowledged_put(tmp_path: Path, delay_ms: int) -> None:
    """Attack: SIGINT from another thread at an arbitrary moment while 17 writers put
    (some to one key; the main task, which trio delivers it to, among them) and rounds
    sync in worker threads. What must hold: the run ends
    in KeyboardInterrupt, and after a reopen every acknowledged put is there with the
    version it was given, and the state equals a full replay."""
    path = tmp_path / "db"
    acked: dict[str, koru.Version] = {}

    async def main() -> None:
        disk = _SlowDisk(delay=0.0015)
        async with koru.open(path, sync="always", disk=disk) as db:

            async def writer(w: int) -> None:
                for n in range(10_000):
                    key = "hot" if n % 3 == 0 else f"w{w}"
                    version = await db.put("ns", key, [w, n])
                    acked[version.write_id] = version

            async with trio.open_nursery() as nursery:
                for w in range(16):
                    nursery.start_soon(writer, w)
                pid = os.getpid()
                threading.Timer(delay_ms / 1000, os.kill, (pid, signal.SIGINT)).start()
                # The main task (where trio delivers the interrupt) writes too: a
                # leader in its yields or its sync, or a parked waiter, when it lands.
                await writer(99)
                raise AssertionError("no interrupt arrived")

    with pytest.raises(BaseException) as info:
        trio.run(main)
    assert (
        info.group_contains(KeyboardInterrupt)
        if isinstance(info.value, BaseExceptionGroup)
        else isinstance(info.value, KeyboardInterrupt)
    ), info.value

    async def check() -> None:
        async with koru.open(path, sync="always") as db:
            for version in acked.values():
                history = await db.history("ns", version.key)
                assert version.write_id in {v.write_id for v in history}
            for key in await db.keys("ns"):
                history = await db.history("ns", key)
                for older, newer in itertools.pairwise(history):
                    assert newer.previous == older.write_id
            digest = await db.digest()
        assert _replayed(path) == digest

    trio.run(check)


@pytest.mark.parametrize("close_after", [0.0, 0.002, 0.005, 0.011])
async def test_writers_that_keep_putting_while_another_task_closes(
    tmp_path: Path, close_after: float
) -> None:
    """Attack: 8 writers keep putting (one key shared) while another task closes the
    handle, syncs running in worker threads. What must hold: each put returns its
    version or fails with DatabaseClosedError (nothing else); every acknowledged put
    is there after a reopen; the state equals a full replay."""
    disk = _SlowDisk(delay=0.002)
    acked: list[koru.Version] = []
    errors: list[BaseException] = []

    async def writer(db: koru.Database, w: int) -> None:
        for n in range(1000):
            try:
                acked.append(await db.put("ns", "hot" if n % 2 else f"w{w}", [w, n]))
            except koru.DatabaseClosedError:
                return
            except BaseException as exc:
                errors.append(exc)
                return

    async with koru.open(tmp_path / "db", sync="always", disk=disk) as db:
        await _warm(db)
        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, db, w)
            await trio.sleep(close_after)
            await db.aclose()
    assert errors == []
    async with koru.open(tmp_path / "db", sync="always") as db:
        for version in acked:
            [entry] = [
                v for v in await db.history("ns", version.key) if v.write_id == version.write_id
            ]
            assert (entry.timestamp, entry.previous, entry.content_id) == (
                version.timestamp,
                version.previous,
                version.content_id,
            )
        digest = await db.digest()
    assert _replayed(tmp_path / "db") == digest


async def test_a_round_of_many_puts_with_long_names_stays_under_the_event_limit(
    tmp_path: Path,
) -> None:
    """Attack: 33,000 writers in one scheduler pass, each putting a one-byte value under
    a 1,024-byte namespace and a 1,024-byte key: valid puts, each far under every
    limit. The round's budget counted values only (``GROUP_BYTES``), so it grouped
    them all into one batch of ~69 MB, past ``MAX_EVENT_SIZE``, and every put of the
    round failed with InvalidDataError. What must hold: every put is written."""
    from koru.events import MAX_EVENT_SIZE, MAX_NAME_BYTES

    n = MAX_EVENT_SIZE // (2 * MAX_NAME_BYTES) + 1000
    ns = "n" * MAX_NAME_BYTES
    puts = _Puts(ns)

    async with koru.open(tmp_path / "db", sync="always") as db:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(puts.put, db, f"{i:08d}".ljust(MAX_NAME_BYTES, "k"), 1)
        assert puts.failed[:1] == []
        assert (await db.stats()).keys == n


async def test_a_peer_and_its_subscriber_see_every_joined_put_once(tmp_path: Path) -> None:
    """Attack: two linked nodes under sync="always", writers on both putting
    concurrently (a shared hot key, some puts cancelled at once, rounds syncing in
    worker threads on one side), a subscriber on the second (a hot key per
    node: a version of a peer older than a concurrent local one is no change to
    current). What must hold: the nodes converge to one digest; every put
    acknowledged on the first reaches the second's subscriber exactly once, with its
    version; each key's history is the same on both."""
    import random

    from test_peers import DIFFICULTY, _link, _settled

    owner = koru.Identity.mine(DIFFICULTY)
    rng = random.Random(3)
    acked: list[koru.Version] = []
    async with (
        koru.open(tmp_path / "a", sync="always", difficulty=DIFFICULTY, disk=_SlowDisk(0.002)) as a,
        koru.open(tmp_path / "b", sync="always", difficulty=DIFFICULTY) as b,
    ):
        await a.enroll(owner)
        await b.enroll(owner)
        async with b.subscribe("ns") as changes, trio.open_nursery() as nursery:
            _link(a, b, nursery)

            async def writer(db: koru.Database, w: int, mine: bool) -> None:
                for n in range(15):
                    hot = "hot" if mine else "bhot"  # (each node its own: no siblings)
                    key = hot if rng.random() < 0.4 else f"w{w}"
                    with trio.CancelScope() as scope:
                        if rng.random() < 0.15:
                            scope.cancel()
                        version = await db.put("ns", key, [w, n])
                        if mine:
                            acked.append(version)
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as writers:
                for w in range(6):
                    writers.start_soon(writer, a, w, True)
                    writers.start_soon(writer, b, 100 + w, False)
            await _settled(a, b)
            seen: dict[str, Any] = {}
            dups = 0
            with trio.move_on_after(0.5):
                async for change in changes:
                    if change.new.write_id in seen:
                        dups += 1
                    seen[change.new.write_id] = change.new
            nursery.cancel_scope.cancel()
        assert dups == 0
        for version in acked:
            assert seen[version.write_id] == version
        for key in await a.keys("ns"):
            ha = [(v.write_id, v.previous) for v in await a.history("ns", key)]
            hb = [(v.write_id, v.previous) for v in await b.history("ns", key)]
            assert ha == hb


async def test_views_and_indexes_agree_with_the_values_after_rounds_of_joined_puts(
    tmp_path: Path,
) -> None:
    """Attack: writers storm a few keys with joined puts (some cancelled at once, some
    under tiny deadlines, deletes and batches beside), with an index and views
    defined. What must hold: the views and an indexed query give what the current
    values give, before and after a reopen."""
    import random

    from koru import F, Query

    rng = random.Random(11)

    async def check(db: koru.Database) -> None:
        values = [await db.get("ns", k) for k in await db.keys("ns")]
        values = [v for v in values if v is not None]
        assert await db.view("total") == sum(v["n"] for v in values)
        assert await db.view("count") == len(values)
        got = await db.query("ns", Query().where(F("g") == 1).count())
        assert got == len([v for v in values if v["g"] == 1])

    async with koru.open(tmp_path / "db", sync="always", disk=_SlowDisk(0.002)) as db:
        await db.create_index("ns", "g")
        await db.create_view("total", "ns", Query().sum("n"))
        await db.create_view("count", "ns", Query().count())

        async def writer(w: int) -> None:
            for i in range(20):
                key = f"k{rng.randrange(5)}"
                value = {"n": w * 100 + i, "g": rng.randrange(3)}
                with trio.move_on_after(rng.choice([1e9, 1e9, 0, 1e-4, 1e-3])):
                    r = rng.random()
                    try:
                        if r < 0.1:
                            await db.delete("ns", key)
                        elif r < 0.2:
                            await db.put_batch([("ns", key, value), ("ns", "b", value)])
                        else:
                            await db.put("ns", key, value)
                    except koru.KeyNotFoundError:
                        pass

        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, w)
        await check(db)
        digest = await db.digest()
    async with koru.open(tmp_path / "db", sync="always") as db:
        await check(db)
        assert await db.digest() == digest
    assert _replayed(tmp_path / "db") == digest


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_puts_cancelled_at_random_moments_with_syncs_in_threads(
    tmp_path: Path, seed: int
) -> None:
    """Attack: 12 writers (a shared hot key), each put in its own cancel scope, a
    canceller cancelling random scopes every 0.3 ms (leaders in their yields or in a
    worker thread's sync, parked waiters, puts about to join), beside a checkpointer
    that syncs often. What must hold: every acknowledged put is in its key's history
    with its version; no put withdrawn by its cancellation is there; each history is
    one chain; the reopened state equals a full replay."""
    import random

    rng = random.Random(seed)
    disk = _SlowDisk(delay=0.001)
    acked: list[koru.Version] = []
    withdrawn: list[Any] = []
    scopes: dict[int, trio.CancelScope] = {}
    async with koru.open(tmp_path / "db", sync="always", disk=disk, checkpoint_every=20) as db:
        writer_obj = db._writer
        leave = writer_obj.leave

        def recording_leave(joined: Any, exc: BaseException) -> None:
            if joined.target is None and joined.error is None:
                withdrawn.append(joined.data)
            leave(joined, exc)

        writer_obj.leave = recording_leave  # type: ignore[method-assign]
        await _warm(db)

        async def writer(w: int) -> None:
            for n in range(25):
                key = "hot" if n % 2 else f"w{w}"
                with trio.CancelScope() as scope:
                    scopes[w] = scope
                    acked.append(await db.put("ns", key, [w, n]))
                scopes.pop(w, None)
                await trio.lowlevel.checkpoint()

        async def canceller() -> None:
            while True:
                await trio.sleep(0.0003)
                if scopes:
                    scopes[rng.choice(list(scopes))].cancel()

        async with trio.open_nursery() as outer:
            outer.start_soon(canceller)
            async with trio.open_nursery() as nursery:
                for w in range(12):
                    nursery.start_soon(writer, w)
            outer.cancel_scope.cancel()
        assert withdrawn  # the attack reached the window it aims at
        from koru.events import encode_value

        gone = set(withdrawn)
        for key in await db.keys("ns"):
            history = await db.history("ns", key)
            for older, newer in itertools.pairwise(history):
                assert newer.previous == older.write_id
            for v in history:
                assert encode_value(v.value) not in gone
        for version in acked:
            [entry] = [
                v for v in await db.history("ns", version.key) if v.write_id == version.write_id
            ]
            assert (entry.timestamp, entry.previous) == (version.timestamp, version.previous)
        digest = await db.digest()
    async with koru.open(tmp_path / "db", sync="always") as db:
        assert await db.digest() == digest
    assert _replayed(tmp_path / "db") == digest


async def test_a_thousand_writers_half_on_one_key_in_small_segments(tmp_path: Path) -> None:
    """Attack: 1,000 writers in one pass, half putting one key (a storm: each round
    splits at every repeat of it), values of ~300 bytes in 4 KiB segments (rounds
    roll segments mid-batch). What must hold: every put written once; the hot key's
    history one chain of 500 versions; fewer events than puts; reopen equals a full
    replay."""
    async with koru.open(tmp_path / "db", sync="always", segment_size=4096) as db:
        before = (await db.stats()).events
        versions: list[koru.Version] = []

        async def put(i: int) -> None:
            versions.append(await db.put("ns", "hot" if i % 2 else f"k{i}", "x" * 300 + str(i)))

        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(put, i)
        assert len(versions) == 1000
        assert (await db.stats()).events - before < 1000
        history = await db.history("ns", "hot")
        assert len(history) == 500
        for older, newer in itertools.pairwise(history):
            assert newer.previous == older.write_id
        assert len(await db.keys("ns")) == 501
        digest = await db.digest()
    async with koru.open(tmp_path / "db", sync="always", segment_size=4096) as db:
        assert await db.digest() == digest
    assert _replayed(tmp_path / "db") == digest


async def test_values_at_the_round_budget_edge(tmp_path: Path) -> None:
    """Attack: values sized so the round's budget is met exactly, passed by one byte,
    and a value past ``MAX_EVENT_SIZE``'s share beside small ones. What must hold:
    every valid put is written, whatever the grouping; the one over
    ``max_value_size`` fails alone."""
    from koru._writer import GROUP_BYTES

    async with koru.open(tmp_path / "db", sync="always", max_value_size=3 * GROUP_BYTES) as db:
        outcomes: dict[str, Any] = {}

        async def put(key: str, value: Any) -> None:
            try:
                outcomes[key] = await db.put("ns", key, value)
            except koru.KoruError as exc:
                outcomes[key] = exc

        sizes = {
            "half1": GROUP_BYTES // 2 - 64,
            "half2": GROUP_BYTES // 2 - 64,
            "edge": GROUP_BYTES,
            "edge1": GROUP_BYTES + 1,
            "big": 2 * GROUP_BYTES,
            "over": 3 * GROUP_BYTES + 1,
            "tiny": 1,
        }
        async with trio.open_nursery() as nursery:
            for key, size in sizes.items():
                nursery.start_soon(put, key, b"v" * size)
        assert isinstance(outcomes.pop("over"), koru.InvalidDataError)
        for key, version in outcomes.items():
            assert isinstance(version, koru.Version), (key, version)
            assert await db.get("ns", key) == b"v" * sizes[key]
        digest = await db.digest()
    assert _replayed(tmp_path / "db") == digest


async def test_joined_rounds_over_keys_held_in_checkpoint_tables(tmp_path: Path) -> None:
    """Attack: keys written, then checkpointed into tables (below memory), then rounds
    of joined puts mixing those keys (their versions copied up from the tables) with
    new ones, and the last writer of a round on a key just missed. What must hold:
    each key's full history; the key and live counts; reopen equals a full replay."""
    async with koru.open(tmp_path / "db", sync="always", checkpoint_every=10**9) as db:
        await db.put_batch([("ns", f"old{i}", i) for i in range(200)])
        await db.delete("ns", "old7")
        await db.checkpoint()
        await db.checkpoint()
        kv = db._writer._kv
        assert (kv.tables or kv.frozen) and not kv.namespaces.get("ns")  # all below memory
        for round_ in range(3):
            async with trio.open_nursery() as nursery:
                for i in range(0, 200, 3):
                    nursery.start_soon(db.put, "ns", f"old{i}", [round_, i])
                    nursery.start_soon(db.put, "ns", f"new{round_}-{i}", i)
            await db.checkpoint()
        for i in range(0, 200, 3):
            history = await db.history("ns", f"old{i}")
            assert [v.value for v in history][-3:] == [[r, i] for r in range(3)]
            for older, newer in itertools.pairwise(history):
                assert newer.previous == older.write_id
        stats = await db.stats()
        keys = await db.keys("ns")
        assert len(keys) == 199 + 3 * len(range(0, 200, 3))  # old7 deleted
        digest = await db.digest()
    async with koru.open(tmp_path / "db", sync="always") as db:
        assert await db.digest() == digest
        assert (await db.stats()).keys == stats.keys
    assert _replayed(tmp_path / "db") == digest


def test_the_auth_checkpoint_does_not_depend_on_the_order_feeds_were_folded() -> None:
    """Found running the simulations twice (``--seed 2``: a different disk digest with
    a different PYTHONHASHSEED, the logs byte-identical): the auth section listed
    feed heads in the order the feeds were first folded, which events of different
    agents' logs do not fix. What must hold: the same heads, the same capture."""
    from koru.projections import AuthState

    feeds = [(bytes([n]) * 16, agent) for n in (3, 1, 2) for agent in ("storage", "identity")]
    one, two = AuthState(), AuthState()
    for i, feed in enumerate(feeds):
        one.heads[feed] = one.sealed_to[feed] = i + 1
    for i, feed in reversed(list(enumerate(feeds))):
        two.heads[feed] = two.sealed_to[feed] = i + 1
    assert one.capture() == two.capture()


@pytest.mark.parametrize("sync", ["os", "always"])
async def test_a_subscriber_of_a_quiet_namespace_is_not_charged_for_its_rounds_neighbours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str
) -> None:
    """Attack: a subscriber of one namespace ("small") reads nothing while 64 writers
    put 16 KiB values into another ("big") and one writer puts small values into its
    namespace, under ``sync="always"`` (the default): each round appends every
    writer's put as one batch event, and the subscriber was charged the whole event
    against its queue's byte bound, so it was cut off (LaggedError) with a few hundred
    bytes of its own changes queued, where under ``"os"`` (one event per put) it got
    them all. What must hold: a subscriber is charged (and holds) only the writes it
    is queued, whatever other writers shared its round."""
    from koru import _subscriptions

    monkeypatch.setattr(_subscriptions, "MAX_QUEUED_BYTES", 1 << 20)
    small = 40
    value = b"x" * (16 << 10)
    seen = []
    async with (
        koru.open(tmp_path / "db", sync=sync, processes=False) as db,
        db.subscribe("small") as changes,
    ):

        async def big(w: int) -> None:
            for _ in range(small):
                await db.put("big", f"b{w}", value)

        async def quiet() -> None:
            for n in range(small):
                await db.put("small", "s", n)

        async with trio.open_nursery() as nursery:
            for w in range(64):
                nursery.start_soon(big, w)
            nursery.start_soon(quiet)
        async for change in changes:  # LaggedError here if it was cut off
            seen.append(change.value)
            if len(seen) == small:
                break
    assert seen == list(range(small))
