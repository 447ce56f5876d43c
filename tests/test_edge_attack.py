"""Attacks on edges no review had tried: a database written before node keys (its own
values with a time to live, under its old node id), tampered ``put-ttl`` records, two
processes on one directory, and remote subscriptions cancelled while lagging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import koru
from koru._nodekey import NODE_KEY_FILE


class SettableClock:
    """A wall clock a test moves by hand."""

    def __init__(self, ns: int = 1_700_000_000 * 10**9) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)


def opened(path: Any, clock: Any, **kw: Any) -> Any:
    return koru.open(path, clock=clock, sync="os", processes=kw.pop("processes", False), **kw)


async def test_a_legacy_origins_expired_values_get_their_expiry_recorded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Attack: a database whose values with a time to live were written under the node
    id it had before its node key (a key deleted: as good as a database made before
    node keys, which then switches to the id its new key derives). Only the node that
    wrote a version records its expiry, and this node is the only one that ever wrote
    as the old id: must hold that the expiry process still records those expiries
    (else ``expiring()`` lists them as due for ever, the process sorts them every pass,
    and their history never shows the tombstone)."""
    path = tmp_path / "db"
    clock = koru.TrioClock()
    async with opened(path, clock) as db:
        old = db.node_id
        for i in range(3):
            await db.put("cache", f"k{i}", i, ttl=5)
    (path / NODE_KEY_FILE).unlink()  # the key is gone: as good as a legacy database
    async with opened(path, clock, processes={"expiry": 10}) as db:
        assert db.node_id != old
        await trio.sleep(31)  # the expiry process ran three times, each past the ttl
        assert await db.keys("cache") == []
        assert await db.expiring(within=0) == []
        for i in range(3):
            assert [h.deleted for h in await db.history("cache", f"k{i}")] == [False, True]
