"""Values with a time to live, on the database clock: absent the moment they expire,
recorded as tombstones by the expiry process, listed by ``expiring``, the same after a
replay and on another node, and never brought back by a clock set back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import koru
from koru._snapshot import Snapshot


class SettableClock:
    """A wall clock a test moves by hand (forwards or back)."""

    def __init__(self, ns: int = 1_700_000_000 * 10**9) -> None:  # 2023: in the past
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)


def opened(path: Any, clock: Any, **kw: Any) -> Any:
    # No periodic processes unless asked: these tests decide when expiry is recorded.
    return koru.open(path, clock=clock, sync="os", processes=kw.pop("processes", False), **kw)


async def test_an_expired_value_reads_as_absent_at_once(tmp_path: Path) -> None:
    clock = SettableClock()
    async with opened(tmp_path / "db", clock) as db:
        v = await db.put("sessions", "s1", {"user": "alice"}, ttl=60)
        await db.put("sessions", "keep", "forever")
        assert v.expires == v.timestamp + 60 * 10**9
        clock.advance(59.9)
        assert await db.get("sessions", "s1") == {"user": "alice"}
        assert (await db.get_versioned("sessions", "s1")).expires == v.expires
        assert await db.keys("sessions") == ["keep", "s1"]
        clock.advance(0.1)  # exactly at expiry
        with pytest.raises(koru.KeyNotFoundError):
            await db.get("sessions", "s1")
        with pytest.raises(koru.KeyNotFoundError):
            await db.get_versioned("sessions", "s1")
        assert not await db.contains("sessions", "s1")
        assert await db.keys("sessions") == ["keep"]
        # Time travel: present before expiry, absent after; history keeps the version.
        assert (await db.get_at("sessions", "s1", v.expires - 1)).value == {"user": "alice"}
        with pytest.raises(koru.NoValueAtTimeError):
            await db.get_at("sessions", "s1", v.expires)
        [h] = await db.history("sessions", "s1")
        assert h.expires == v.expires and not h.deleted
        # A new value (without a ttl) makes the key current again, for good.
        await db.put("sessions", "s1", "back")
        clock.advance(3600)
        assert await db.get("sessions", "s1") == "back"


async def test_the_expiry_process_records_tombstones(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    clock = koru.TrioClock()
    async with opened(tmp_path / "db", clock, processes={"expiry": 10}) as db:
        await db.put_batch([("cache", f"k{i}", i) for i in range(5)], ttl=30)
        short = await db.put("cache", "short", 1, ttl=5)
        await db.put("cache", "plain", 1)
        soon = await db.expiring(within=10)
        assert [(e.namespace, e.key) for e in soon] == [("cache", "short")]
        assert soon[0].expires == short.expires
        assert len(await db.expiring(within=60)) == 6
        await trio.sleep(11)  # the process ran at 10 s: "short" expired at 5 s
        [gone] = (await db.history("cache", "short"))[1:]
        assert gone.deleted and gone.previous == short.write_id
        assert short.expires <= gone.timestamp <= short.expires + 10 * 10**9
        assert [e.key for e in await db.expiring(within=60)] == [f"k{i}" for i in range(5)]
        await trio.sleep(30)
        assert await db.keys("cache") == ["plain"]
        assert await db.expiring(within=10**6) == []
        events = len(await db.feed_events(db.node_id))
        await trio.sleep(600)  # nothing more to expire: nothing more written
        assert len(await db.feed_events(db.node_id)) == events
        stats = await db.stats()
        assert (stats.keys, stats.deleted_keys) == (1, 6)


async def test_expiry_survives_reopen_replay_and_checkpoints(tmp_path: Path) -> None:
    clock = SettableClock()
    path = tmp_path / "db"
    async with opened(path, clock) as db:
        await db.put("a", "ttl", 1, ttl=100)
        await db.put("a", "ttl2", 2, ttl=1000)
        expected = await db.expiring(within=10**6)
    for drop_checkpoint in (False, True):
        if drop_checkpoint:
            (path / "checkpoint").unlink()
        async with opened(path, clock) as db:
            assert await db.expiring(within=10**6) == expected
            assert await db.get("a", "ttl") == 1
    clock.advance(500)
    async with opened(path, clock) as db:
        assert await db.keys("a") == ["ttl2"]
    # The command line's one-shot reads judge by the same rule (by this machine's
    # clock, which is long past these expiries).
    with Snapshot(path) as snap, pytest.raises(koru.KeyNotFoundError):
        snap.reads.versioned("a", "ttl")


async def test_a_clock_set_back_never_brings_an_expired_value_back(tmp_path: Path) -> None:
    clock = SettableClock()
    async with opened(tmp_path / "db", clock) as db:
        await db.put("a", "k", "v", ttl=10)
        clock.advance(20)
        await db.put("a", "other", 1)  # the newest timestamp is now past the expiry
        clock.advance(-3600)  # the wall clock jumps back an hour
        with pytest.raises(koru.KeyNotFoundError):
            await db.get("a", "k")
        assert await db.keys("a") == ["other"]


async def test_a_peer_sees_the_same_expiry(tmp_path: Path) -> None:
    clock = SettableClock()
    async with opened(":memory:", clock) as a, opened(":memory:", clock) as b:
        await a.put("a", "k", "v", ttl=10)
        clock.advance(11)
        assert a._writer.expire("a", "k", a._writer.read_time())
        await a._writer.acknowledge()
        result = await b.ingest(await a.feed_events(a.node_id))
        assert result.accepted == 2 and await b.digest() == await a.digest()
        assert [h.deleted for h in await b.history("a", "k")] == [False, True]


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), "60", True, 10**12])
async def test_bad_ttls_are_refused_before_writing(tmp_path: Path, ttl: Any) -> None:
    async with opened(tmp_path / "db", SettableClock()) as db:
        with pytest.raises(koru.InvalidDataError, match="ttl"):
            await db.put("a", "k", 1, ttl=ttl)
        with pytest.raises(koru.InvalidDataError, match="ttl"):
            await db.put_batch([("a", "k", 1)], ttl=ttl)
        assert await db.feed_heads() == {}
        with pytest.raises(koru.InvalidArgumentError, match="within"):
            await db.expiring(within=-1)


async def test_stats_count_an_expired_value_as_no_value(tmp_path: Path) -> None:
    """``stats().keys`` agrees with ``keys()``: a value whose time to live is over is
    no value, before its expiry is recorded too (it counted as a key until then: on a
    node that did not write it, until the writer's tombstone arrives)."""
    clock = SettableClock()
    async with opened(tmp_path / "db", clock) as db:
        for k in ("a", "b"):
            await db.put("ns", k, 1)
        await db.put("ns", "short", 1, ttl=1)
        await db.delete("ns", "b")
        stats = await db.stats()
        assert (stats.keys, stats.deleted_keys) == (2, 1)
        clock.advance(2)
        stats = await db.stats()
        assert await db.keys("ns") == ["a"]
        assert (stats.keys, stats.deleted_keys) == (1, 2)


async def test_no_expiry_is_recorded_in_a_dropped_workspace(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A dropped workspace's data stays as it was when dropped (an audit handle reads
    its history, no handle may write there): the expiry process records no tombstone
    in it, while it still records those of live workspaces and of the default space."""
    clock = koru.TrioClock()
    async with opened(tmp_path / "db", clock, processes={"expiry": 10}) as db:
        gone, kept = db.workspace("gone"), db.workspace("kept")
        await gone.put("cache", "k", 1, ttl=5)
        await kept.put("cache", "k", 2, ttl=5)
        await db.put("cache", "k", 3, ttl=5)
        await db.drop_workspace("gone")
        await trio.sleep(11)
        audit = db.audit_workspace("gone")
        assert [h.deleted for h in await audit.history("cache", "k")] == [False]
        assert [h.deleted for h in await kept.history("cache", "k")] == [False, True]
        assert [h.deleted for h in await db.history("cache", "k")] == [False, True]
        with pytest.raises(koru.KeyNotFoundError):
            await audit.get("cache", "k")  # (expired all the same: reads judge by time)
