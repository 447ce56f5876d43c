"""Attacks on edges no review had tried: a database written before node keys (its own
values with a time to live, under its old node id), tampered ``put-ttl`` records, two
processes on one directory, and remote subscriptions cancelled while lagging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from test_expiry import opened

import koru
from koru._nodekey import NODE_KEY_FILE
from koru.nursery import Limits


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


# -- tampered put-ttl records ---------------------------------------------------------------


def _tamper_put_ttl(path: Path, kind: str) -> None:
    """Rewrite the first ``put-ttl`` record of the storage log in place, its expiry,
    value or key changed (same size), both checksums recomputed: only the hash chain
    and the content ids can tell."""
    import cbor2
    from test_recovery import record_spans, seg_path

    from koru.events._frame import encode_record, parse_record

    data = seg_path(path).read_bytes()
    _, start, end = record_spans(path)[0]
    _, root, event = parse_record(data, start)
    raw = cbor2.loads(event)
    assert raw[1] == "put-ttl"
    body = raw[7]
    if kind == "expires":
        body[4] += 10**15
    elif kind == "value":
        body[2] = cbor2.dumps({"v": "XXXX"})
    else:
        body[1] = "z"
    new = encode_record(root, cbor2.dumps(raw))
    assert len(new) == end - start
    seg_path(path).write_bytes(data[:start] + new + data[end:])


@pytest.mark.parametrize("kind", ["expires", "value", "key"])
@pytest.mark.parametrize("checkpoint", [True, False], ids=["checkpoint", "no-checkpoint"])
async def test_a_tampered_put_ttl_record_is_never_served(
    tmp_path: Path, kind: str, checkpoint: bool
) -> None:
    """Attack: a ``put-ttl`` record rewritten on disk (its expiry pushed 11 days on, its
    value or its key changed) with both checksums fixed. Must hold: ``kdelta verify``
    reports the broken chain; without a checkpoint the open ends the log there; under a
    checkpoint a read serves the value the checkpoint proved (with its own expiry) or
    raises ``CorruptLogError``, never the forged value, key or expiry, and the feed
    (what a peer is served) refuses the record."""
    from koru._loader import CHECKPOINT_FILE
    from koru.events import verify_logs

    path = tmp_path / "db"
    async with koru.open(path, sync="always") as db:
        a = await db.put("ns", "a", {"v": "aaaa"}, ttl=1000)
        await db.put("ns", "b", {"v": "bbbb"})
        node = db.node_id
    if not checkpoint:
        (path / CHECKPOINT_FILE).unlink()
    _tamper_put_ttl(path, kind)
    assert any("chain" in p.message for p in verify_logs(path) if p.severity == "error")
    async with koru.open(path, readonly=True) as db:
        assert not await db.contains("ns", "z")
        if not checkpoint:
            assert await db.keys("ns") == []
            return
        try:
            [h] = await db.history("ns", "a")
            assert (h.value, h.expires) == ({"v": "aaaa"}, a.expires)
            assert await db.get("ns", "a") == {"v": "aaaa"}
        except koru.CorruptLogError:
            assert kind != "expires"  # the value is proven against its content id
        assert await db.get("ns", "b") == {"v": "bbbb"}
        with pytest.raises(koru.CorruptLogError):
            await db.feed_events(node)


# -- remote subscriptions and calls when one side stops reading ------------------------------

_SLOW = Limits(idle_timeout=3.0, heartbeat=1.0)


async def test_a_client_that_stops_reading_its_subscription_is_closed_going_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: a client subscribes, then stops reading its socket while the server
    streams it large changes (the server's sends block). Must hold: the server closes
    that connection as a peer that stopped reading (1001), its session ends as a
    session does (no exception out of it: one was logged as a failed session with its
    traceback, and the close code said 1000 "closed"), its subscription is released,
    and another client is served meanwhile."""
    from test_remote_attack import _member, _served

    import koru._peering as peering

    ends: list[Any] = []
    run_session = peering.run_session

    async def watched(*args: Any, **kw: Any) -> Any:
        try:
            end = await run_session(*args, **kw)
        except BaseException as exc:
            ends.append(exc)
            raise
        ends.append(end)
        return end

    monkeypatch.setattr(peering, "run_session", watched)
    async with _served(_SLOW) as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        async with (
            koru.connect(f"127.0.0.1:{port}", owner) as remote,
            koru.connect(f"127.0.0.1:{port}", owner) as good,
        ):
            async with remote.subscribe("big"):
                monkeypatch.setattr(remote._link._runner.conn, "receive", trio.sleep_forever)
                for i in range(48):  # 12 MiB: more than the sockets' buffers hold
                    await db.put("big", f"k{i}", "x" * (256 * 1024))
                with trio.fail_after(20):
                    while not ends:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                assert await good.get("big", "k0") == "x" * (256 * 1024)
            [end] = ends
            assert not isinstance(end, BaseException), repr(end)
            assert (end.code, end.reason, end.ours) == (1001, "the peer stopped reading", True)
            assert not [s for s in db._hub.subscriptions if s.namespace == "big"]


async def test_a_call_sent_to_a_server_that_stops_reading_is_sent_again_not_a_private_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: the server stops reading its socket while a client sends large writes
    (the client's sends block). Must hold: each call ends as a call over a lost
    connection does (sent again over a new connection, applied once, or
    ``ConnectionLostError``), never with the session's private ``_Closing`` (which
    is no ``KoruError``) raised in the caller's face."""
    from test_remote_attack import _member, _served

    import koru._peering as peering

    made: list[Any] = []

    class Watched(peering.WebSocketConnection):  # type: ignore[misc,name-defined]
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            made.append(self)

    monkeypatch.setattr(peering, "WebSocketConnection", Watched)
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner, limits=_SLOW) as remote:
            await remote.put("n", "k", 1)
            (server_side,) = made
            monkeypatch.setattr(server_side, "receive", trio.sleep_forever)
            failures: list[BaseException] = []

            async def write(i: int) -> None:
                try:
                    await remote.put("n", f"big{i}", "x" * (12 << 20))
                except koru.ConnectionLostError:
                    pass
                except Exception as exc:
                    failures.append(exc)

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for i in range(6):
                        nursery.start_soon(write, i)
            assert failures == []
            for i in range(6):
                assert len(await db.history("n", f"big{i}")) <= 1
