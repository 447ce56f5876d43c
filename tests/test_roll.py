"""The roll from a full segment to the next, cut by a power failure at every disk call.

A roll seals the full segment (truncate, fdatasync) before the next one exists, then
creates the next one and writes its header; the steps that make the new segment known
durable (its header synced, its directory entry synced, the manifest listing it) wait
for the next sync, which finishes them before it reports anything durable (or for the
next roll, or close). Whatever instant the power fails at, the store must reopen with
every record a sync acknowledged, and the records it holds must be a prefix of those
appended, in order.
"""

from __future__ import annotations

import random

import blake3

from conftest import open_store
from koru.events import FileStore
from koru.simulations import SimDisk

PATH = "/db"
AGENT = "storage"
APPENDS = 40
#: Syncs after these appends (mod 7): some segments see a sync, some roll again first.
SYNC_AFTER = {2, 3, 6}


def _data(i: int) -> bytes:
    return i.to_bytes(4, "big") * 25


def _write(disk: SimDisk, cut: int | None) -> tuple[int, int]:
    """Appends and syncs on ``disk`` (cut after ``cut`` disk calls); (acknowledged,
    appended)."""
    store = open_store(PATH, disk=disk, segment_size=600)  # three records a segment
    if cut is not None:
        disk.cut_after(cut)
    acked = appended = 0
    try:
        for i in range(APPENDS):
            data = _data(i)
            store.append(AGENT, data, blake3.blake3(data).digest())
            appended = i + 1
            if i % 7 in SYNC_AFTER:
                store.sync()
                acked = appended
        store.close()
    except BaseException:
        assert disk.dead  # the cut, and nothing else, stopped the writes
    disk.cut()
    return acked, appended


def _records(disk: SimDisk) -> list[bytes]:
    store = FileStore(PATH, disk=disk)
    try:
        return [r.data for r in store.replay(AGENT)]
    finally:
        store.close()


def test_a_power_cut_at_any_step_of_a_roll_loses_no_acknowledged_record() -> None:
    clean = SimDisk()
    assert _write(clean, None) == (APPENDS - 1, APPENDS)  # the last append: not synced
    calls = clean.calls
    rolls = len([n for n in clean.files() if n.endswith(".seg")])
    assert rolls >= 10
    rng = random.Random(0)
    for cut in range(1, calls + 1):
        disk = SimDisk()
        acked, appended = _write(disk, cut)
        for _ in range(3):  # three of the disks a reboot may find
            image = disk.after_power_cut(random.Random(rng.random()))
            held = _records(image)
            assert len(held) >= acked, f"cut after {cut} calls: acknowledged records lost"
            assert held == [_data(i) for i in range(len(held))], f"cut after {cut}: not a prefix"
            assert len(held) <= appended
            # Reopened once, it opens again the same (recovery finished its work).
            assert _records(image) == held


def test_the_manifest_lists_every_segment_once_synced() -> None:
    disk = SimDisk()
    store = open_store(PATH, disk=disk, segment_size=600)
    for i in range(10):
        store.append(AGENT, _data(i), blake3.blake3(_data(i)).digest())
    log = store._logs[AGENT]
    assert log.unlisted and log.listed == log.seg - 1  # rolled; waiting for a sync
    store.sync()
    assert not log.unlisted and log.listed == log.seg
    store.close()
