"""A hostile reviewer's attacks on the read floor (``koru/_read_floor.py``, the time
expiry is judged by, which never goes back) when the clock goes back (h-seal). Across a
crash the floor is the newest timestamp in the logs (a known limit, see
``koru/_read_floor.py``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio
from test_expiry import SettableClock, opened

import koru


async def _put_reads_back(db: koru.Database, key: str, batch: bool) -> None:
    """A put of ``key`` with ``ttl=20`` reads back at once, with its expiry."""
    if batch:
        (w,) = await db.put_batch([("s", key, "fresh")], ttl=20)
    else:
        w = await db.put("s", key, "fresh", ttl=20)
    assert await db.get("s", key) == "fresh"
    assert (await db.get_versioned("s", key)).expires == w.expires


@pytest.mark.parametrize("reopen", [False, True])
@pytest.mark.parametrize("batch", [False, True])
async def test_a_value_put_with_a_ttl_after_the_clock_went_back_is_not_dead_on_arrival(
    tmp_path: Path, reopen: bool, batch: bool
) -> None:
    """A read judged expiry at a time the clock then went back from: NTP stepping it
    back 100 s, or one glitched reading a century ahead (the floor keeps it, and a
    clean close saves it in ``read-floor``). A put with ``ttl=20`` after that was
    acknowledged, then read as absent at once: its ``expires`` was its timestamp (the
    clock's, behind the floor) plus the ttl, already past the read floor; after the
    glitch, for every ttl put, for good, across reopens. What must hold: a value put
    with a ttl is current right after its put (read your writes)."""
    clock = SettableClock()
    path = tmp_path / "db"
    async with opened(path, clock) as db:
        v = await db.put("s", "x", 1, ttl=10)
        assert v.expires is not None
        ahead = 100 * 365 * 86400 if reopen else 100
        clock.ns = v.expires + ahead * 10**9
        assert not await db.contains("s", "x")  # the read that moves the floor
        clock.ns = v.expires
        if not reopen:
            await _put_reads_back(db, "y", batch)
            return
    for key in ("y", "z"):
        async with opened(path, clock) as db:
            await _put_reads_back(db, key, batch)


_OPEN_ONCE = """
import sys, trio, koru
async def main():
    try:
        async with koru.open(sys.argv[1], sync="os", processes=False) as db:
            print("opened", await db.get("s", "a"))
    except koru.KoruError as exc:
        print("refused", type(exc).__name__)
trio.run(main)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("what", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("name", ["read-floor", "meta", "checkpoint", "node.key"])
async def test_a_named_file_that_is_no_regular_file_never_hangs_the_open(
    tmp_path: Path, name: str, what: str
) -> None:
    """``read-floor`` (and every named file of the directory) replaced by a named
    pipe no one writes to, or a link to ``/dev/zero``: the open blocked for ever in
    ``open()`` of the pipe (on the event loop: no cancel scope ends it), or read an
    endless file into memory. What must hold: the open answers promptly, opened (a
    read floor that does not count is ignored) or refused with a KoruError."""
    path = tmp_path / "db"
    async with opened(path, SettableClock()) as db:
        await db.put("s", "a", 1)
    target = path / name
    target.unlink(missing_ok=True)
    if what == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to(what)
    with trio.move_on_after(20) as waited:
        ran = await trio.run_process(
            [sys.executable, "-c", _OPEN_ONCE, str(path)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=tmp_path,
        )
    if waited.cancelled_caught:
        pytest.fail(f"the open hung with {name} a {what}")
    assert ran.returncode == 0, ran.stderr.decode()
    assert ran.stdout.startswith((b"opened 1", b"refused ")), ran.stdout
