"""Power cuts at random instants, on a simulated disk (``koru.simulations.SimDisk``).

A SIGKILL keeps the page cache, so it cannot tell ``sync="always"`` from ``"os"``; a
power cut can. Each round runs staggered writers (puts, batches, deletes, each writer
on keys of its own) against a database with small segments and frequent checkpoints,
cuts the power after a random number of disk calls, and builds the disk a reboot
would find: every sector written since its file's last sync holds its old or its new
content, independently; of the directory changes since a directory's last sync, a
prefix survives. Sometimes the power is cut again during the recovery itself. Then the
database must open without help, and:

* under ``always``, every acknowledged write is there;
* in every mode, each writer's operations that survived are a prefix of those it
  began, in order, and a batch survived whole or not at all;
* a full replay from genesis verifies every checksum and chain link, held to the
  checkpoint's cursor, and gives the same digest as the open;
* the checkpoint and ``meta`` are readable (both are replaced atomically, so a cut
  leaves the old file or the new one, never a damaged one).

Set ``KORU_POWERCUT_SEED`` to replay a failing run (its seed is printed).
"""

from __future__ import annotations

import os
import random
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import koru
from conftest import digest_of
from koru._loader import load
from koru.events import FileStore
from koru.simulations import PowerCut, SimDisk

pytestmark = pytest.mark.slow

PATH = "/db"
WRITERS = 8
KEYS_PER_WRITER = 4
OPS_PER_WRITER = 60
ROUNDS = 24
# Rounds go on, up to this, until each case below was seen. Why so many: a torn tail
# set aside under "always" comes about once in 20 rounds (5 to 13 in 200 rounds, three
# seeds), so 4 * ROUNDS missed it about once a hundred runs; 8 * ROUNDS, once in 10,000.
MAX_ROUNDS = 8 * ROUNDS


@attrs.define
class Writer:
    """What one writer began and what was acknowledged, in order."""

    index: int
    #: op number -> its writes [(namespace, key, value or None for a delete)].
    ops: list[list[tuple[str, str, Any]]] = attrs.Factory(list)
    acked: int = 0

    def keys(self) -> list[tuple[str, str]]:
        return [("ns", f"w{self.index}-k{j}") for j in range(KEYS_PER_WRITER)]


async def write(db: koru.Database, w: Writer, rng: random.Random) -> None:
    live: set[tuple[str, str]] = set()
    for n in range(OPS_PER_WRITER):
        # Staggered by a random number of scheduler passes, so that the writers run
        # together (sharing group-commit rounds, joining rounds in progress) in ever
        # new interleavings. (Under the mock clock a sleep would not stagger them:
        # time only moves when every task is blocked.)
        for _ in range(rng.choice((0, 0, 1, 2, 5))):
            await trio.lowlevel.checkpoint()

        def value(key: str, n: int = n) -> dict[str, Any]:
            return {"w": w.index, "op": n, "key": key, "pad": "x" * rng.choice((0, 40, 700))}

        roll = rng.random()
        if roll < 0.15 and live:
            ns, key = rng.choice(sorted(live))
            w.ops.append([(ns, key, None)])
            await db.delete(ns, key)
            live.discard((ns, key))
        elif roll < 0.4:
            keys = rng.sample(w.keys(), rng.randint(2, 3))
            items = [(ns, key, value(key)) for ns, key in keys]
            w.ops.append(items)
            await db.put_batch(items)
            live.update(keys)
        else:
            ns, key = rng.choice(w.keys())
            v = value(key)
            w.ops.append([(ns, key, v)])
            await db.put(ns, key, v)
            live.add((ns, key))
        w.acked = n + 1


async def run_until_cut(disk: SimDisk, sync: str, rng: random.Random) -> list[Writer]:
    writers = [Writer(i) for i in range(WRITERS)]
    disk.cut_after(rng.randint(1, 1500))
    try:
        async with (
            koru.open(
                PATH,
                disk=disk,
                sync=sync,
                segment_size=rng.choice((2048, 16384, 1 << 20)),
                checkpoint_every=rng.choice((3, 20, 10**6)),
                flush_interval=0.002,
                seed=rng.randrange(2**32),
            ) as db,
            trio.open_nursery() as nursery,
        ):
            for w in writers:
                nursery.start_soon(write, db, w, random.Random(rng.random()))
    except BaseException as exc:  # the cut surfaces as PowerCut, maybe in a group
        if not disk.dead or not _is_power_cut(exc):
            raise
    disk.cut()  # a cut after a clean close, if the writers finished first
    return writers


def _is_power_cut(exc: BaseException) -> bool:
    """The cut itself, or what it left: cancelled tasks, and errors of a handle whose log
    was interrupted by it (a DurabilityError, or a DatabaseClosedError after one, whose
    chain of causes ends in the cut)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_power_cut(e) for e in exc.exceptions)
    if isinstance(exc, koru.DurabilityError | koru.DatabaseClosedError):
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, PowerCut):
            cause = cause.__cause__
        return cause is not None
    return isinstance(exc, PowerCut | trio.Cancelled)


async def recover(disk: SimDisk, rng: random.Random, tally: dict[str, int]) -> SimDisk:
    """The disk after the cut; sometimes the power fails again during recovery."""
    image = disk.after_power_cut(rng)
    while rng.random() < 0.4:
        # A recovery open makes a few dozen disk calls: cut within them.
        image.cut_after(rng.randint(1, 40))
        try:
            async with koru.open(PATH, disk=image, sync="always"):
                pass
        except BaseException as exc:
            if not image.dead or not _is_power_cut(exc):
                raise
            tally["cut during recovery"] += 1
        image.cut()
        image = image.after_power_cut(rng)
    return image


async def verify(image: SimDisk, writers: list[Writer], sync: str, tally: dict[str, int]) -> None:
    async with koru.open(PATH, disk=image, sync=sync) as db:
        stats = await db.stats()
        assert stats.checkpoint_ignored is None, stats.checkpoint_ignored
        tally["set aside"] += stats.set_aside_files
        tally["from checkpoint"] += bool(stats.checkpoint_events)
        for w in writers:
            expected: dict[tuple[str, str], list[tuple[int, Any]]] = {}
            for n, op in enumerate(w.ops):
                for ns, key, value in op:
                    expected.setdefault((ns, key), []).append((n, value))
            landed: dict[int, set[tuple[str, str]]] = {}
            for (ns, key), writes in expected.items():
                history = [None if v.deleted else v.value for v in await db.history(ns, key)]
                assert history == [v for _, v in writes[: len(history)]], (
                    f"writer {w.index} {key}: history is not a prefix of its writes"
                )
                for n, _ in writes[: len(history)]:
                    landed.setdefault(n, set()).add((ns, key))
            survived = sorted(landed)
            assert survived == list(range(len(survived))), f"writer {w.index}: not a prefix"
            for n in survived:
                assert landed[n] == {(ns, key) for ns, key, _ in w.ops[n]}, "a torn batch"
            if sync == "always":
                assert len(survived) >= w.acked, (
                    f"writer {w.index}: {w.acked} writes acknowledged, {len(survived)} survived"
                )
            tally["acknowledged"] += w.acked
            tally["survived"] += len(survived)
        digest = await db.digest()
    store = FileStore(PATH, readonly=True, disk=image)
    try:
        full = load(store, use_checkpoint=False)  # every checksum and chain link
    finally:
        store.close()
    assert digest_of(full.kv) == digest


@pytest.mark.parametrize("sync", ["always", "os", "never"])
async def test_power_cut_at_a_random_instant(
    sync: str, autojump_clock: trio.testing.MockClock
) -> None:
    seed = int(os.environ.get("KORU_POWERCUT_SEED", random.randrange(2**32)))
    print(f"power-cut seed: {seed} (rerun with KORU_POWERCUT_SEED={seed})")
    rng = random.Random(seed)
    tally: dict[str, int] = dict.fromkeys(
        ["acknowledged", "survived", "set aside", "from checkpoint", "cut during recovery"], 0
    )

    def covered() -> bool:
        return (
            tally["from checkpoint"] >= 2
            and tally["cut during recovery"] >= 1
            and (sync != "always" or tally["set aside"] >= 1)
        )

    try:
        # Worker-thread syncs make a round's timing vary from run to run, so a seed
        # does not fix which cases a round meets: rounds continue past ROUNDS until
        # every case was met (a bounded number: a case never met still fails).
        rounds = 0
        while rounds < ROUNDS or (rounds < MAX_ROUNDS and not covered()):
            rounds += 1
            # A third of the rounds on a slow device: the database then syncs in a
            # worker thread, and writers append (and wait) while a sync is running.
            disk = SimDisk(sync_latency=rng.choice((0, 0, 0.002)))
            writers = await run_until_cut(disk, sync, rng)
            image = await recover(disk, rng, tally)
            await verify(image, writers, sync, tally)
    except BaseException as exc:
        exc.add_note(f"power-cut seed: {seed} (rerun with KORU_POWERCUT_SEED={seed})")
        raise
    print(tally)
    # The rounds exercised what they claim: many writes, checkpoints, torn tails set
    # aside, and cuts during recovery.
    assert tally["acknowledged"] > ROUNDS * 20
    assert tally["from checkpoint"] >= 2
    assert tally["cut during recovery"] >= 1
    if sync == "always":
        assert tally["set aside"] >= 1
