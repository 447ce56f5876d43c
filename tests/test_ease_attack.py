"""A hostile review of the back-pressure on writes behind background checkpoints
(``Checkpointer.stall``, ``easing``, ``EASE``, ``LAG``, the slice a checkpoint gets
once behind, ``Checkpointer._slice``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
    async with koru.open(path, sync="never", processes=False, checkpoint_every=10**6) as db:
        for i in range(3000):
            await db.put("n", f"k{i}", i)
    (path / CHECKPOINT_FILE).unlink()
    async with koru.open(path, sync="never", checkpoint_every=5) as db:
        ck = db._checkpointer
        assert ck.lag / ck.every > 400
        assert ck._slice() == ckmod.SLICE_MOST
        await db.put("n", "x", 1)
        await eventually(lambda: ck.written > 0)
        assert max(s.budget for s in slicers) == ckmod.SLICE_MOST
        await db.put("n", "y", 2)  # still serving
        assert await db.get("n", "k2999") == 2999
