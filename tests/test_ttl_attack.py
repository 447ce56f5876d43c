"""A hostile reviewer's attacks on values with a time to live where they meet the other
features: parents, batches, deletes, peers (h-ttl)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_expiry import SettableClock, opened

import koru

_CENTURY = 100 * 365 * 86400


@pytest.mark.parametrize("how", ["parents", "batch", "plain"])
async def test_a_ttl_whose_expiry_passes_64_bits_is_refused_before_writing(
    tmp_path: Path, how: str
) -> None:
    """The clock may read up to 2**64 - 2**32 ns (the writer's limit), and one glitched
    reading that far ahead is kept by the read floor. A put with a ttl then expires
    after 2**64 ns. The fused put refused it (InvalidDataError); a put with ``parents``
    and a ``put_batch`` encoded ``expires`` as a CBOR bignum, appended the event, then
    failed to fold it (struct.error): the handle died, and every later open refused the
    log as corrupt. What must hold: the put is refused before anything is written, the
    handle stays usable, and the database reopens."""
    clock = SettableClock(2**64 - 2**32 - 10**12)
    path = tmp_path / "db"
    async with opened(path, clock) as db:
        await db.put("s", "p", 1)
        heads = await db.feed_heads()
        with pytest.raises(koru.InvalidDataError, match="expires"):
            if how == "parents":
                await db.put("s", "q", 2, ttl=_CENTURY, parents=["p"])
            elif how == "batch":
                await db.put_batch([("s", "q", 2)], ttl=_CENTURY)
            else:
                await db.put("s", "q", 2, ttl=_CENTURY)
        assert await db.feed_heads() == heads
        await db.put("s", "r", 3, ttl=1)  # still usable: a ttl that fits is taken
    async with opened(path, clock) as db:
        assert await db.keys("s") == ["p", "r"]


async def test_deleting_a_value_whose_time_to_live_is_over_is_refused(tmp_path: Path) -> None:
    """A value past its ttl reads as absent everywhere (get, contains, keys), but
    ``delete`` judged only tombstones: it wrote a tombstone over the expired value and
    returned a version, so the history recorded a deletion the caller could not have
    seen the value for (and the expiry process then had nothing to expire). What must
    hold: ``delete`` is refused with KeyNotFoundError ("no current value", as its
    docstring says) and nothing is written; the expiry process records the expiry."""
    clock = SettableClock()
    async with opened(tmp_path / "db", clock) as db:
        v = await db.put("s", "k", 1, ttl=10)
        clock.advance(10)
        assert not await db.contains("s", "k")
        heads = await db.feed_heads()
        with pytest.raises(koru.KeyNotFoundError):
            await db.delete("s", "k")
        assert await db.feed_heads() == heads
        ws = db.workspace("w")
        await db.create_workspace("w")
        await ws.put("s", "k", 1, ttl=10)
        heads = await db.feed_heads()
        clock.advance(11)
        with pytest.raises(koru.KeyNotFoundError):
            await ws.delete("s", "k")
        assert await db.feed_heads() == heads
        assert db._writer.expire("s", "k", db._writer.read_time())
        [_, gone] = await db.history("s", "k")
        assert gone.deleted and gone.previous == v.write_id


@pytest.mark.parametrize("tamper", [False, True])
def test_the_audit_agrees_with_a_checkpoint_of_filled_views(tmp_path: Path, tamper: bool) -> None:
    """``kdelta verify`` audits a checkpoint against a replay of the log. A replay
    leaves every view pending with every key written since its creation dirty (the
    database fills a view and catches it up when it is read), so a checkpoint of any
    database with a view was reported as "section 'views' disagrees with a replay of
    the log" (exit 3, "damaged"), even one never read. A view also drops values whose
    time to live has passed when it is read, before any event says so. What must hold:
    a healthy database audits clean (views read or not, keys with a ttl expired or
    not); a view whose members a buggy build got wrong is still reported."""
    from koru._audit import audit_checkpoint
    from koru.events import FileStore
    from koru.projections._views import Views

    path = tmp_path / "db"

    async def write() -> None:
        clock = SettableClock()
        async with opened(path, clock) as db:
            await db.put("ns", "before", {"v": 0})
            await db.create_view("count", "ns", koru.Query().count())
            await db.create_view("rows", "ns", koru.Query().where(koru.F("v") >= 1).order_by("v"))
            await db.create_view("sums", "ns", koru.Query().group_by("g").sum("v"))
            await db.create_view("unread", "ns", koru.Query().count())
            for i in range(20):
                await db.put("ns", f"k{i}", {"v": i % 5, "g": i % 3}, ttl=10 if i % 4 else None)
            await db.delete("ns", "k4")
            assert await db.view("count") == 20
            await db.view("rows")
            await db.view("sums")
            clock.advance(11)  # the keys with a ttl expire; the views drop them when read
            assert await db.view("count") == 5
            await db.view("sums")
            await db.put("ns", "late", {"v": 3, "g": 1})  # dirty, not caught up
            if tamper:
                views = db.projection("views")
                assert isinstance(views, Views)
                members = views.by_name["rows"].members
                members["ghost"] = next(iter(members.values()))
            await db.checkpoint()

    import trio

    trio.run(write)
    store = FileStore(path, readonly=True)
    try:
        problems, _ = audit_checkpoint(store)
    finally:
        store.close()
    assert problems == (["section 'views' disagrees with a replay of the log"] if tamper else [])


async def test_a_one_shot_read_never_brings_back_a_value_the_database_found_expired(
    tmp_path: Path,
) -> None:
    """A read found ``k`` expired and the clock was then set back (the value's expiry
    not yet recorded by the expiry process): a clean close keeps that read time in the
    signed ``read-floor`` file, and a reopen judges by it, so the value stays absent.
    The command line's one-shot reads (``kdelta get``, ``keys``: ``koru._snapshot``)
    judged by this machine's clock and the newest timestamp in the logs only, so they
    showed the value as current again while the database said it had none. What must
    hold: a one-shot read judges by the saved floor too."""
    import time

    from koru._snapshot import Snapshot

    clock = SettableClock(time.time_ns() + 86_400 * 10**9)  # a day ahead of this machine
    path = tmp_path / "db"
    async with opened(path, clock) as db:
        await db.put("s", "k", "v", ttl=10)
        clock.advance(20)
        assert not await db.contains("s", "k")  # the read floor is now past the expiry
    clock.advance(-3600)
    async with opened(path, clock) as db:
        assert not await db.contains("s", "k")
    with Snapshot(path) as snap:
        with pytest.raises(koru.KeyNotFoundError):
            snap.reads.versioned("s", "k")
        assert snap.reads.keys("s") == []


async def test_the_expiry_process_never_stops_a_nodes_feed_at_a_peer() -> None:
    """Node B trusts node A to write namespace ``x`` only; A takes B's values (it
    trusts B). B puts ``y/session`` with a ttl; A syncs it. When it expires, A's expiry
    process (the database's own, no call of a user) records the expiry in A's storage
    feed, authored by A. B refuses that event (A may not write ``y/session``), and so
    holds every later event of A's storage feed as a gap: A's put of ``x/k``, which A
    may write at B, never reaches B, nor does anything A writes after. What must hold:
    a node's own expiry process never makes a peer refuse its feed."""
    from test_auth_sync import everything, node, trusting

    clock = SettableClock()
    async with node(1, clock) as a, node(2, clock) as b:
        a_at_b = await trusting(b, a, namespace="x", actions=["read", "write"])
        b_at_a = await trusting(a, b, actions=["read", "write"])
        await b.put("y", "session", 1, ttl=10)
        await b.seal()
        await b_at_a.ingest(await everything(b))
        assert await a.get("y", "session") == 1
        clock.advance(11)
        # One step of A's expiry process (what it does every 60 s).
        from koru._processes import steps

        await steps(a)["expiry"]()
        await a.put("x", "k", "after")
        await a.seal()
        result = await a_at_b.ingest(await everything(a))
        assert result.held == 0, result
        assert await b.get("x", "k") == "after"
        # B wrote the version: B's own expiry process records its expiry, which A takes.
        await steps(b)["expiry"]()
        await b.seal()
        await b_at_a.ingest(await everything(b))
        for db in (a, b):
            [_, gone] = await db.history("y", "session")
            assert gone.deleted


async def test_an_expiry_is_never_dated_before_the_version_expired() -> None:
    """``k`` is put with ttl 10 s; a read 20 s later finds it expired (the read floor
    keeps that time), then the clock steps back to 5 s after the put. The expiry
    process judged by the floor, but dated its tombstone by the clock: 5 s after the
    put, 5 s before the value expired. Time travel to 7 s after the put answered the
    value before the expiry was recorded and no value after it. What must hold: the
    tombstone is dated no earlier than the expiry it records (recorded once the clock
    has passed it; reads hide the value meanwhile), and an answer of ``get_at`` for a
    moment before the expiry stays the same."""
    from koru._processes import steps

    clock = SettableClock()
    async with opened(":memory:", clock) as db:
        v = await db.put("s", "k", "v", ttl=10)
        assert v.expires is not None
        clock.advance(20)
        assert not await db.contains("s", "k")
        clock.advance(-15)
        mid = v.timestamp + 7 * 10**9
        assert (await db.get_at("s", "k", mid)).value == "v"
        await steps(db)["expiry"]()
        assert not await db.contains("s", "k")
        assert (await db.get_at("s", "k", mid)).value == "v"
        clock.advance(6)  # the clock passes the expiry: now it is recorded
        await steps(db)["expiry"]()
        [_, gone] = await db.history("s", "k")
        assert gone.deleted and gone.previous == v.write_id
        assert gone.timestamp >= v.expires
        assert (await db.get_at("s", "k", mid)).value == "v"


async def test_an_expiry_judged_by_a_glitched_reading_never_dates_later_events_ahead() -> None:
    """One reading of the clock a year ahead, taken by a read, is kept as the read
    floor: values with a time to live read as expired. The expiry process must not
    date their tombstones at their expiries (up to a year ahead): every later event of
    this node would be dated after them, a year ahead, and refused by every peer (an
    hour ahead is the most a peer takes). What must hold: a put after the expiry
    process ran is dated by the clock."""
    from koru._processes import steps

    clock = SettableClock()
    async with opened(":memory:", clock) as db:
        await db.put("s", "k", "v", ttl=30 * 86400)
        clock.advance(365 * 86400)  # the glitch
        assert not await db.contains("s", "k")
        clock.advance(-365 * 86400 + 1)
        await steps(db)["expiry"]()
        w = await db.put("s", "later", 1)
        assert w.timestamp < clock.ns + 10**9
