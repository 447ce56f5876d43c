"""Attacks on subscriptions: a failure in the middle of a replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

import koru
from conftest import StepClock
from koru import KeyChange

NS = "ns"


def summary(c: KeyChange) -> tuple[Any, ...]:
    return (c.position, c.key, c.kind, c.value, c.old and c.old.write_id, c.new.write_id)


async def test_a_replay_that_hit_a_damaged_record_never_skips_past_it(tmp_path: Path) -> None:
    """Attack: a record in the middle of the storage log is damaged on disk; a
    subscriber replaying from position 0 gets CorruptLogError there, catches it and
    reads on (as a consumer that logs errors and retries does). What must hold: it is
    never handed a later change as if nothing were missing; every later read raises the
    typed error again. (It went on with the live changes, silently skipping every
    event from the damaged one to the seam.)"""
    async with koru.open(tmp_path / "db", clock=StepClock(), sync="os") as db:
        for i in range(20):
            await db.put(NS, f"k{i}", {"v": i, "pad": "x" * 50})
        segment = tmp_path / "db" / "logs" / "storage" / "00000001.seg"
        data = segment.read_bytes()
        with segment.open("r+b") as f:
            f.seek(data.find(b"k10"))
            f.write(b"K")
        async with db.subscribe(from_position=0) as sub:
            got = [(await sub.__anext__()).key for _ in range(10)]
            assert got == [f"k{i}" for i in range(10)]
            with pytest.raises(koru.CorruptLogError):
                await sub.__anext__()
            await db.put(NS, "later", 1)  # a live change past the seam
            for _ in range(3):
                with trio.fail_after(5), pytest.raises(koru.CorruptLogError):
                    await sub.__anext__()
