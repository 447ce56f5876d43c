"""Attacks on the changes of one day (group commit's error copies and withdrawn puts,
the write path's lazily registered observers, the bound on all of a server's calls):
each test names what the adversary does and asserts what must hold."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

import koru
from koru.events import DurabilityError, OsDisk


class _FailingSync(OsDisk):
    """fdatasync fails once armed."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            raise OSError(5, "simulated EIO")
        super().fdatasync(fd)


async def test_a_writers_notes_on_a_failed_rounds_error_stay_its_own(tmp_path: Path) -> None:
    """Attack: eight writers of a round whose sync fails each add a note to the error
    they get (``add_note``, as a caller does to say what it was doing), and so do the
    writers after it. Each writer must get its own copy (the point of raising a copy
    per waiter): its notes must not show in another's, nor another's in its."""
    disk = _FailingSync()
    async with koru.open(tmp_path / "db", sync="always", disk=disk) as db:
        await db.put("ns", "before", 1)
        disk.armed = True
        errors: dict[int, BaseException] = {}

        async def put(i: int) -> None:
            try:
                await db.put("ns", f"k{i}", i)
            except DurabilityError as exc:
                exc.add_note(f"writer {i}")
                errors[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(put, i)
        assert len(errors) == 8
        for i, exc in errors.items():
            assert exc.__notes__ == [f"writer {i}"], (i, exc.__notes__)
        committer = db._committer  # type: ignore[attr-defined]
        assert committer.error is not None
        # What a later waiter is handed carries none of theirs either.
        later = []
        for _ in range(2):
            try:
                await committer.sync_now()
            except DurabilityError as exc:
                later.append(exc)
        assert [getattr(e, "__notes__", None) for e in later] == [None, None]
        later[0].add_note("mine")
        assert getattr(later[1], "__notes__", None) is None
        disk.armed = False
