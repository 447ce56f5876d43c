"""A hostile review of checkpoints written in slices on the event loop (``Slicer``):
writes, deletions, expiries, ingests and batches landing between every two slices,
cancellation, close, errors and power cuts in the middle of a sliced checkpoint, puts
that never leave the loop idle, and the timer under a mock clock."""

from __future__ import annotations

import contextlib
import random
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import koru
import koru.nursery._checkpointer as ckmod
from conftest import StepClock
from koru._processes import steps
from koru.events import MemoryStore
from koru.nursery import CHECKPOINT_FILE
from koru.nursery._slicer import Slicer
from koru.projections import encode_captured
from koru.simulations import SimDisk

KEYS = [f"k{i}" for i in range(12)]
NAMESPACES = ["a", "b"]


def every_pace_yields(monkeypatch: pytest.MonkeyPatch) -> list[Slicer]:
    """Make each checkpoint's slicer give the loop a turn at every pace point (slices
    of zero length, however far behind the checkpoints are), and return the slicers
    made."""
    made: list[Slicer] = []

    def zero(**_: Any) -> Slicer:
        slicer = Slicer(shortest=0.0, longest=0.0)
        made.append(slicer)
        return slicer

    monkeypatch.setattr(ckmod, "Slicer", zero)
    return made


@contextlib.asynccontextmanager
async def checkpoint_beside(
    db: koru.Database, on_capture: Callable[[dict[str, Any]], None]
) -> AsyncIterator[trio.Event]:
    """A checkpoint running in the background while the block writes (the event it
    gives is set once the checkpoint is written), ``on_capture`` called with what it
    captured, at its capture."""
    ck = db._checkpointer
    real_capture = ck._capture

    def capture() -> dict[str, Any]:
        captured = real_capture()
        on_capture(captured)
        return captured

    done = trio.Event()

    async def checkpoint() -> None:
        await db.checkpoint()
        done.set()

    ck._capture = capture
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(checkpoint)
            await trio.lowlevel.checkpoint()
            yield done
    finally:
        ck._capture = real_capture


async def observable(db: koru.Database) -> dict[str, Any]:
    """Everything a user sees of the state touched by the operations below."""
    state: dict[str, Any] = {"digest": await db.digest(), "ns": await db.namespaces()}
    for ns in NAMESPACES:
        for key in KEYS:
            history = await db.history(ns, key)
            state[f"{ns}/{key}"] = [(v.write_id, v.value, v.deleted) for v in history]
            state[f"{ns}/{key}:up"] = await db.ancestors((ns, key))
    state["feeds"] = await db.feed_heads()
    return state


op = st.one_of(
    st.tuples(
        st.just("put"), st.sampled_from(NAMESPACES), st.sampled_from(KEYS), st.integers(-1000, 1000)
    ),
    st.tuples(
        st.just("ttl"), st.sampled_from(NAMESPACES), st.sampled_from(KEYS), st.integers(-1000, 1000)
    ),
    st.tuples(
        st.just("del"), st.sampled_from(NAMESPACES), st.sampled_from(KEYS), st.integers(-1000, 1000)
    ),
    st.tuples(
        st.just("batch"),
        st.sampled_from(NAMESPACES),
        st.lists(st.sampled_from(KEYS), min_size=1, max_size=6, unique=True),
        st.integers(-1000, 1000),
    ),
    st.tuples(
        st.just("link"),
        st.sampled_from(NAMESPACES),
        st.sampled_from(KEYS),
        st.integers(-1000, 1000),
    ),
    st.tuples(st.just("expire"), st.none(), st.none(), st.none()),
    st.tuples(st.just("ingest"), st.none(), st.none(), st.integers(0, 10_000)),
    st.tuples(st.just("yield"), st.none(), st.none(), st.integers(1, 5)),
)


async def apply(db: koru.Database, clock: StepClock, foreign: list[bytes], o: Any) -> None:
    kind, ns, key, n = o
    if kind == "put":
        await db.put(ns, key, n)
    elif kind == "ttl":
        await db.put(ns, key, n, ttl=0.000_5)
    elif kind == "del":
        if await db.contains(ns, key):
            await db.delete(ns, key)
    elif kind == "batch":
        await db.put_batch([(ns, k, n + i) for i, k in enumerate(key)])
    elif kind == "link":
        parents = [(p_ns, p_key) for p_ns in NAMESPACES for p_key in KEYS[:3]]
        alive = [p for p in parents if p != (ns, key) and await db.contains(*p)]
        await db.put(ns, key, n, parents=alive[:2])
    elif kind == "expire":
        clock.now += 10**6  # a millisecond: the ttl puts above are over
        await steps(db)["expiry"]()
    elif kind == "ingest":
        start = n % max(1, len(foreign))
        await db.ingest(foreign[start : start + 5])
    else:
        for _ in range(n):
            await trio.lowlevel.checkpoint()


async def foreign_events() -> list[bytes]:
    """Another node's events (puts, a batch, deletions, some with a time to live)."""
    async with koru.open(koru.MEMORY, clock=StepClock(step=777), seed=99) as other:
        for i, key in enumerate(KEYS):
            await other.put("a", key, -i)
        await other.put_batch([("b", k, 1000) for k in KEYS[::2]])
        await other.delete("a", KEYS[1])
        await other.put("b", KEYS[3], 5, ttl=0.000_5)
        out: list[bytes] = []
        for origin, agent in await other.feed_heads():
            out += await other.feed_events(origin, agent)
        return out


interleaved: list[int] = []


@settings(
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    before=st.lists(op, max_size=15),
    tables=st.integers(0, 2),
    during=st.lists(op, min_size=1, max_size=25),
    after=st.lists(op, max_size=5),
)
async def test_a_checkpoint_built_in_slices_is_the_one_built_at_once(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    before: list[Any],
    tables: int,
    during: list[Any],
    after: list[Any],
) -> None:
    """The attack: every kind of write (puts, ttl puts, deletions, expiry tombstones,
    ingests, batches, linked puts) lands between every two slices of a checkpoint (each
    pace point yields), on top of state that already has tables below memory. What must
    hold: the checkpoint file written in slices is byte for byte the one encoded at once
    at the moment of capture, and a reopen from it gives the state a full replay gives."""
    slicers = every_pace_yields(monkeypatch)
    path = tmp_path_factory.mktemp("slices") / "db"
    foreign = await foreign_events()
    clock = StepClock()
    reference: list[bytes] = []
    async with koru.open(path, sync="os", clock=clock, seed=7, processes=False) as db:
        for i, o in enumerate(before):
            await apply(db, clock, foreign, o)
            if tables and i % (len(before) // tables + 1) == 0:
                await db.checkpoint()
        writer = db._writer

        def encode_at_once(captured: dict[str, Any]) -> None:
            pieces, _ = encode_captured(captured, write_table=MemoryStore().write_table)
            reference.append(b"".join(bytes(p) for p in pieces))

        async with checkpoint_beside(db, encode_at_once) as done:
            landed = 0
            for o in during:
                landed += not done.is_set()
                await apply(db, clock, foreign, o)
            await done.wait()
        # How many operations landed between the slices of that checkpoint.
        interleaved.append(min(landed, slicers[-1].pauses))
        assert len(reference) == 1
        assert db._store.read_file(CHECKPOINT_FILE) == reference[0]
        assert writer is db._writer
        for o in after:
            await apply(db, clock, foreign, o)
        expected = await observable(db)
    async with koru.open(path, sync="os", clock=clock, seed=7, processes=False) as db:
        stats = await db.stats()
        assert stats.checkpoint_ignored is None and not stats.projections_rebuilt
        assert await observable(db) == expected
    (path / CHECKPOINT_FILE).unlink()
    shutil.rmtree(path / "tables", ignore_errors=True)
    async with koru.open(path, sync="os", clock=clock, seed=7, processes=False) as db:
        assert await observable(db) == expected


def test_the_property_above_interleaved_many_operations() -> None:
    """(A check of the property test itself: its operations ran amid the slices.)"""
    if interleaved:
        assert max(interleaved) >= 5, interleaved


PRELOAD = 1500


async def _run_sliced_until_cut(disk: SimDisk, sync: str, rng: random.Random) -> list[Any]:
    import test_powercut as pc

    writers = [pc.Writer(i) for i in range(4)]
    try:
        async with koru.open(
            pc.PATH, disk=disk, sync=sync, checkpoint_every=10**6, seed=rng.randrange(2**32)
        ) as db:
            for start in range(0, PRELOAD, 500):
                await db.put_batch([("pre", f"p{i}", i) for i in range(start, start + 500)])
            await db.checkpoint()
            await db.put_batch([("pre", f"p{i}", -i) for i in range(0, PRELOAD, 3)])
            disk.cut_after(rng.randint(1, 400))

            async def checkpoints() -> None:
                while True:
                    await db.checkpoint()
                    await db.put_batch(
                        [("pre", f"p{i}", i) for i in range(rng.randrange(3), PRELOAD, 5)]
                    )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(checkpoints)
                async with trio.open_nursery() as inner:
                    for w in writers:
                        inner.start_soon(pc.write, db, w, random.Random(rng.random()))
                nursery.cancel_scope.cancel()
    except BaseException as exc:
        if not disk.dead or not pc._is_power_cut(exc):
            raise
    disk.cut()
    return writers


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["always", "os"])
async def test_a_power_cut_between_the_slices_of_a_checkpoint_loses_nothing_acknowledged(
    sync: str, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: checkpoints of a database with tables below memory, each pace point
    giving the loop a turn (writers' puts, batches and deletions run between every two
    slices), and the power cut at a random disk call among the checkpoint's table
    writes, its atomic replace and the writers' syncs; sometimes again during recovery.
    What must hold (as in test_powercut): the database opens without help from a
    checkpoint it believes (never a half-built one), every acknowledged write is there
    under ``always``, each writer's surviving operations are a prefix, and a full
    replay gives the same digest."""
    import test_powercut as pc

    slicers = every_pace_yields(monkeypatch)
    tally: dict[str, int] = dict.fromkeys(
        ["acknowledged", "survived", "set aside", "from checkpoint", "cut during recovery"], 0
    )
    for seed in range(12):
        rng = random.Random(seed * 31 + (sync == "os"))
        disk = SimDisk()
        writers = await _run_sliced_until_cut(disk, sync, rng)
        image = await pc.recover(disk, rng, tally)
        await pc.verify(image, writers, sync, tally)
        async with koru.open(pc.PATH, disk=image, sync=sync) as db:
            for i in range(0, PRELOAD, 7):
                assert await db.get("pre", f"p{i}") in (i, -i)
    assert sum(s.pauses for s in slicers) > 100
    assert tally["from checkpoint"] >= 6


@pytest.mark.parametrize(("sync", "writers"), [("os", 1), ("never", 1), ("always", 100)])
async def test_single_puts_do_not_starve_the_background_checkpoints(
    tmp_path: Path, sync: str, writers: int
) -> None:
    """The attack: a bulk load of single puts, from one task looping (``os``,
    ``never``: a put yields every 64th call) or from a hundred at once (``always``: a
    commit round of a hundred puts per turn of the loop). The checkpoint, sliced on
    the loop, gets one short slice per turn, so each checkpoint captured more than the
    one before it ran: 60,000 puts with a checkpoint due every 2,000 wrote 1 or 2, the
    last 50,000 to 58,000 versions all held in memory, and that backlog grows with the
    load. What must hold (as for batches, ``LAG``): writers are slowed once the
    background checkpoints are ``EASE`` intervals behind, and wait for the checkpoint
    in progress at ``LAG``, so the versions held since the newest checkpoint stay
    bounded."""
    every, total = 2000, 60_000
    async with koru.open(tmp_path / "db", sync=sync, checkpoint_every=every) as db:
        ck = db._checkpointer
        worst = 0

        async def load(w: int) -> None:
            nonlocal worst
            for i in range(total // writers):
                await db.put("n", f"w{w}-{i}", i)
                worst = max(worst, ck.lag)

        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(load, w)
        assert worst <= (ckmod.LAG + 1) * every + writers, (worst, ck.written)
        assert ck.written >= total // every // (ckmod.LAG + 1)
        # The writers were held back, if the checkpoints ever fell behind: on a slow
        # disk (``always``) or a busy machine they may keep up without it.
        assert ck.eased or ck.stalls or worst <= ckmod.EASE * every + writers, worst


@pytest.mark.parametrize("work", ["merge", "checkpoint"])
async def test_nothing_is_written_into_the_directory_after_close_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, work: str
) -> None:
    """The attack: ``aclose()`` called while a merge of tables (or a checkpoint with
    nothing new to save, which close does not wait for) runs in slices on the loop.
    Close released the directory's lock and returned, and the sliced work went on: it
    wrote its merged table into ``tables/`` and replaced ``checkpoint`` afterwards,
    a closed handle writing where another writer may have opened the database by
    then. What must hold: once close returns, the handle changes nothing on disk."""
    every_pace_yields(monkeypatch)
    path = tmp_path / "db"
    async with koru.open(path, sync="os", processes=False) as db:
        for r in range(3):
            await db.put_batch([("u", f"k{r}-{i}", i) for i in range(3000)])
            await db.checkpoint()
        db._kv.max_tables = 1
        ck = db._checkpointer
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ck.compact if work == "merge" else db.checkpoint)
            for _ in range(20):
                await trio.lowlevel.checkpoint()
            assert ck._merge_lock.locked() or ck._lock.locked()  # still at work
            await db.aclose()
            tables = sorted(p.name for p in (path / "tables").iterdir())
            checkpoint = (path / CHECKPOINT_FILE).stat().st_ino
        assert sorted(p.name for p in (path / "tables").iterdir()) == tables
        assert (path / CHECKPOINT_FILE).stat().st_ino == checkpoint  # not replaced
    async with koru.open(path) as db:
        assert (await db.stats()).checkpoint_ignored is None
        for r in range(3):
            assert await db.get("u", f"k{r}-2999") == 2999


async def test_a_table_write_failing_part_way_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: the disk fills (ENOSPC) while a checkpoint's table is being written,
    a buffer at a time, between slices. The checkpoint fails (a StorageError, counted
    in the background) and the next one succeeds, but the partial temp file stayed in
    ``tables/`` for the handle's life (each failure another, named by a counter; no
    clean-up removes them before the next open), holding the very space whose lack
    failed it: the log's next allocation then fails and the handle dies. What must
    hold: a failed table write removes what it wrote."""
    import errno

    import koru.events._file_store as fsmod

    every_pace_yields(monkeypatch)
    real = fsmod._hash_and_write
    calls = 0

    def filling(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real(*args)

    path = tmp_path / "db"
    async with koru.open(path, sync="os", processes=False) as db:
        await db.put_batch([("u", f"k{i}", "x" * 200) for i in range(5000)])
        monkeypatch.setattr(fsmod, "_hash_and_write", filling)
        with pytest.raises(koru.StorageError, match="No space left"):
            await db.checkpoint()
        monkeypatch.setattr(fsmod, "_hash_and_write", real)
        assert calls >= 2
        assert not [p.name for p in (path / "tables").glob(".*")]
        await db.put("u", "after", 1)
        await db.checkpoint()
        assert not [p.name for p in (path / "tables").glob(".*")]
    async with koru.open(path) as db:
        assert (await db.stats()).checkpoint_ignored is None
        assert await db.get("u", "k4999") == "x" * 200 and await db.get("u", "after") == 1


async def test_slices_timed_by_an_injected_timer_are_the_same_under_a_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Under ``MockClock`` (autojump: time leaps whenever every task waits, as while a
    worker thread runs an offloaded call), a slicer given a timer moved by the work
    makes the same turns run after run, whatever the machine's speed or the mock
    clock's leaps; and an offload still returns (a leap wakes no slice)."""

    class Timer:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    async def once() -> tuple[list[int], float]:
        timer = Timer()
        slicer = Slicer(shortest=1e-6, longest=1e-4, timer=timer)
        turns: list[int] = []

        def work() -> None:
            for i in range(2000):
                timer.now += 3e-7
                before = slicer.pauses
                slicer()
                if slicer.pauses != before:
                    turns.append(i)
                if i % 500 == 0:
                    slicer.offload(lambda: None)

        began = trio.current_time()
        await slicer.run(work)
        return turns, trio.current_time() - began

    first, second = await once(), await once()
    assert first[0] == second[0] and len(first[0]) >= 10
