"""A hostile review of the back-pressure on writes behind background checkpoints
(``Checkpointer.stall``, ``easing``, ``EASE``, ``LAG``, the slice a checkpoint gets
once behind, ``Checkpointer._slice``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import koru
import koru.nursery._checkpointer as ckmod
from conftest import eventually
from koru.nursery import CHECKPOINT_FILE
from koru.nursery._slicer import Slicer


def every_pace_yields_urgently(monkeypatch: pytest.MonkeyPatch) -> list[Slicer]:
    """Make each checkpoint's slicer give the loop a turn at every pace point (its
    ``urgent`` kept, so it is asked after each turn), and return the slicers made."""
    made: list[Slicer] = []

    def zero(**kw: Any) -> Slicer:
        slicer = Slicer(shortest=0.0, longest=0.0, **kw)
        made.append(slicer)
        return slicer

    monkeypatch.setattr(ckmod, "Slicer", zero)
    return made


async def far_behind(path: Path, events: int) -> None:
    """A database at ``path`` whose log holds ``events`` puts and no checkpoint."""
    async with koru.open(path, sync="never", processes=False, checkpoint_every=10**6) as db:
        for i in range(events):
            await db.put("n", f"k{i}", i)
    (path / CHECKPOINT_FILE).unlink()


async def test_a_log_far_beyond_its_checkpoint_does_not_kill_the_handle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: open a database whose log holds hundreds of checkpoint intervals
    more than its checkpoint (here none is valid: the checkpoint file is gone, as
    after damage; a handle opened with ``processes=False`` that crashed, or a smaller
    ``checkpoint_every`` than the writer's, do the same), then write. The first
    background checkpoint asks for its slice (``Checkpointer._slice``), which
    computed ``8 ** behind`` with ``behind`` in the hundreds: an OverflowError out of
    the checkpointer, and the supervisor killed the handle (every later operation
    raised DatabaseClosedError). What must hold: the checkpoint gets the longest
    slice, is written, and the handle goes on serving."""
    slicers = every_pace_yields_urgently(monkeypatch)
    path = tmp_path / "db"
    await far_behind(path, 3000)
    async with koru.open(path, sync="never", checkpoint_every=5) as db:
        ck = db._checkpointer
        assert ck.lag / ck.every > 400
        assert ck._slice() == ckmod.SLICE_MOST
        await db.put("n", "x", 1)
        await eventually(lambda: ck.written > 0)
        assert max(s.budget for s in slicers) == ckmod.SLICE_MOST
        await db.put("n", "y", 2)  # still serving
        assert await db.get("n", "k2999") == 2999


async def test_a_batch_first_after_opening_far_behind_gets_its_checkpoint(tmp_path: Path) -> None:
    """Found by a simulation seed (30048, 4 nodes, heavy faults): a node restarted with
    its log ``LAG`` or more intervals beyond its checkpoint, whose first writes after
    the open were batches (ingest from peers, a remote client's ``put_batch``). Each
    waited for the checkpoint to catch up, and none was ever due: only an appended
    event marks one due, and every writer was waiting. The node never ingested again
    (its sessions timed out, idle, for ever). What must hold: a batch that waits for a
    checkpoint makes one due, and goes on once it is written."""
    path = tmp_path / "db"
    await far_behind(path, 300)
    async with koru.open(path, sync="never", checkpoint_every=10) as db:
        ck = db._checkpointer
        assert ck.lagging
        with trio.fail_after(20):
            await db.put_batch([("n", "a", 1), ("n", "b", 2)])
        assert ck.written >= 1 and ck.stalls >= 1
        assert await db.get("n", "b") == 2


async def test_a_failing_checkpoint_is_tried_again_only_after_the_next_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: the checkpoint file cannot be written (a full disk for small files,
    a permission changed), while a loop of single puts goes on and the log still
    takes them. Each background
    checkpoint fails (counted, not fatal: "try again after the next ``every``
    events"). But once the checkpoints were ``LAG`` intervals behind, every put waited
    for the checkpoint in progress, its write counted one more event, which made the
    next checkpoint due at once: a checkpoint attempted (captured, synced, encoded,
    failed) for every single put, each put waiting for a whole attempt. What must
    hold: from ``LAG`` intervals behind, a failed checkpoint is tried again once per
    interval, not once per write, and writers wait for those attempts only (below
    ``LAG`` an attempt still follows the next event, as before)."""
    every, total = 50, 2000
    async with koru.open(tmp_path / "db", sync="never", checkpoint_every=every) as db:
        ck = db._checkpointer
        store = db._store
        real = store.write_file

        def refusing(name: str, *parts: bytes) -> None:
            if name == CHECKPOINT_FILE:
                raise OSError(28, "No space left on device (injected)")
            real(name, *parts)

        monkeypatch.setattr(store, "write_file", refusing)
        for i in range(total):
            await db.put("n", f"k{i}", i)
        monkeypatch.setattr(store, "write_file", real)
        assert ck.stalls <= total // every + 2, (ck.failures, ck.stalls)
        assert ck.failures <= total // every + ckmod.LAG * every, (ck.failures, ck.stalls)
