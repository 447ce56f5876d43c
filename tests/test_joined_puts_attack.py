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
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import digest_of
from koru._loader import load
from koru.events import FileStore, OsDisk


class _SlowDisk(OsDisk):
    """fdatasync takes real time (the committer then syncs in a worker thread, and
    puts join while it runs); fails once ``fail_sync`` is set, pwrite once
    ``fail_write`` is (ENOSPC)."""

    def __init__(self, delay: float = 0.003) -> None:
        super().__init__()
        self.delay = delay
        self.fail_sync = False
        self.fail_write = False
        self.writes_after_close = 0
        self.closed = False
        self._lock = threading.Lock()

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        if self.fail_write:
            raise OSError(errno.ENOSPC, "simulated ENOSPC")
        if self.closed:
            self.writes_after_close += 1
        return super().pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        time.sleep(self.delay)
        if self.fail_sync:
            raise OSError(errno.EIO, "simulated EIO")
        super().fdatasync(fd)


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
    outcomes: dict[int, Any] = {}

    async def put(db: koru.Database, i: int) -> None:
        try:
            outcomes[i] = await db.put("ns", f"k{i}", i)
        except koru.KoruError as exc:
            outcomes[i] = exc

    async with koru.open(tmp_path / "db", sync="always", disk=disk) as db:
        await _warm(db)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(put, db, 0)  # leads a round: its sync in a thread
            await trio.sleep(0.001)
            for i in range(1, 5):
                nursery.start_soon(put, db, i)  # join the next round
            await trio.testing.wait_all_tasks_blocked()
            assert len(db._writer._joined) == 4
            db._die(RuntimeError("a background task failed"))
            await db.aclose()
            disk.closed = True
    assert disk.writes_after_close == 0
    failed = [i for i in range(5) if isinstance(outcomes[i], koru.KoruError)]
    assert set(range(1, 5)) <= set(failed), outcomes
    async with koru.open(tmp_path / "db", sync="always") as db:
        for i in range(1, 5):  # (put 0 was appended before close: its outcome unknown)
            assert not await db.contains("ns", f"k{i}"), (i, outcomes)
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
    acked: dict[str, int] = {}
    failed: list[BaseException] = []

    async def put(db: koru.Database, key: str, i: int) -> None:
        try:
            await db.put("ns", key, i)
            acked[key] = i
        except koru.KoruError as exc:
            failed.append(exc)

    async with koru.open(tmp_path / "db", sync="always", disk=disk) as db:
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(put, db, f"a{i}", i)
        assert len(acked) == 8
        disk.fail_write = True
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(put, db, f"b{i}", i)
        assert len(failed) == 8 and all(isinstance(e, koru.DurabilityError) for e in failed)
        with pytest.raises(koru.KoruError):
            await db.put("ns", "later", 1)
        disk.fail_write = False
    async with koru.open(tmp_path / "db", sync="always") as db:
        for key, value in acked.items():
            assert await db.get("ns", key) == value
        assert sorted(await db.keys("ns")) == sorted(acked)
        digest = await db.digest()
    assert _replayed(tmp_path / "db") == digest


async def test_a_sync_failing_in_a_thread_fails_the_next_round_too(tmp_path: Path) -> None:
    """Attack: fdatasync fails in a worker thread while puts wait for the next round.
    What must hold: no put is acknowledged after the failure; the waiting puts fail
    typed; puts acknowledged before are there after a reopen."""
    disk = _SlowDisk()
    acked: dict[str, int] = {}
    failed: list[BaseException] = []

    async def put(db: koru.Database, key: str, i: int) -> None:
        try:
            await db.put("ns", key, i)
            acked[key] = i
        except koru.KoruError as exc:
            failed.append(exc)

    async with koru.open(tmp_path / "db", sync="always", disk=disk) as db:
        await _warm(db)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(put, db, "lead", 0)
            await trio.sleep(0.001)
            disk.fail_sync = True  # the sync running in the thread fails
            for i in range(6):
                nursery.start_soon(put, db, f"w{i}", i)
        assert "lead" not in acked and not any(k.startswith("w") for k in acked)
        assert len(failed) == 7
        assert all(isinstance(e, koru.DurabilityError) for e in failed)
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
    """Attack: SIGINT from another thread at an arbitrary moment while 16 writers put
    (some to one key) and rounds sync in worker threads. What must hold: the run ends
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
                await trio.sleep(5)
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
    failed: list[BaseException] = []

    async def put(db: koru.Database, i: int) -> None:
        try:
            await db.put(ns, f"{i:08d}".ljust(MAX_NAME_BYTES, "k"), 1)
        except koru.KoruError as exc:
            failed.append(exc)

    async with koru.open(tmp_path / "db", sync="always") as db:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(put, db, i)
        assert failed[:1] == []
        assert (await db.stats()).keys == n
