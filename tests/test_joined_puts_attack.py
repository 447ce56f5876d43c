"""Attacks on the group-commit path of plain puts under ``sync="always"``
(``Writer.join``, ``Committer.gather`` = ``Writer._append_joined``).

What must hold, whatever the attack: every acknowledged put is durable and readable
with the version it was given; nothing is acknowledged that was not synced; a put
that failed or was refused wrote nothing once the handle is closed; the state after a
reopen equals a full replay of the log.
"""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

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
