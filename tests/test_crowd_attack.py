"""Attacks on a served database by many clients at once: each test names what the
crowd does and asserts what must hold for the server and its honest clients."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

import koru
import koru._remote as remote_module
from koru.nursery import Limits

DIFFICULTY = 4


async def test_a_client_past_the_connection_bound_is_refused_at_once_not_left_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server holds ``max_connections`` connections; one more is closed as soon as
    it is accepted. It used to be closed with no answer to its HTTP upgrade, and
    trio-websocket's client does not notice a connection closed during the upgrade:
    each attempt waited its whole connect timeout (10 s), so a client of a full
    server waited 4 x 10 s (plus the backoff) before it got ConnectionLostError. The
    server must refuse it (HTTP 503), so that it fails at once with a typed error,
    while the connection it holds goes on being served."""
    monkeypatch.setattr(remote_module, "RETRY_DELAYS", (0.0, 0.0))
    async with (
        koru.open(":memory:", difficulty=DIFFICULTY) as db,
        trio.open_nursery() as nursery,
    ):
        db.peer_limits = Limits(max_connections=1)
        port = await nursery.start(db.serve, "127.0.0.1", 0)
        first, second = koru.Identity.mine(DIFFICULTY), koru.Identity.mine(DIFFICULTY)
        for who in (first, second):
            await db.register(who.public)
            await db.grant(who.public, actions=["read", "write"])
        async with koru.connect(f"127.0.0.1:{port}", first) as held:
            await held.put("n", "k", 1)
            began = time.monotonic()
            with trio.fail_after(8), pytest.raises(koru.ConnectionLostError):
                async with koru.connect(f"127.0.0.1:{port}", second) as refused:
                    await refused.get("n", "k")  # pragma: no cover
            assert time.monotonic() - began < 5
            assert await held.get("n", "k") == 1  # the connection held goes on
        with trio.fail_after(8):  # the slot came back: the second client connects
            async with koru.connect(f"127.0.0.1:{port}", second) as now:
                assert await now.get("n", "k") == 1
        nursery.cancel_scope.cancel()


async def test_a_connection_that_never_reads_its_subscriptions_holds_a_bounded_total(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Attack: a client that never reads its socket sends a subscription request, lets
    the server write until that subscription's queue is full (cut off, but its queue
    kept until it is read: the session's task for it is blocked sending to the
    client), then sends the next one, and so on up to the 64 a connection may hold.
    Each server-side queue is bounded (``MAX_QUEUED_BYTES``, 128 MiB), but each holds
    other events than the last: together one connection pinned 64 times the bound
    (8 GiB), and many connections as many times more. Must hold: what the server's
    subscriptions for one connection keep queued, all together, stays within about
    one subscription's bound (here patched to 1 MiB), not one bound per stream."""
    import gc
    import tracemalloc

    import koru._serving as serving
    import koru._subscriptions as subscriptions
    from koru._remote_codec import pack

    bound = 1 << 20
    monkeypatch.setattr(subscriptions, "MAX_QUEUED_BYTES", bound)
    streams = 16
    async with koru.open(str(tmp_path / "db"), difficulty=DIFFICULTY) as db:
        who = koru.Identity.mine(DIFFICULTY)
        await db.register(who.public)
        await db.grant(who.public, actions=["read", "write"])
        endpoint = serving.ClientEndpoint(
            db.as_identity(who.public_key), who.public_key, "x", serving.ServedCalls()
        )
        payload = pack([None, "subscribe", ["big"], {}])
        value = "x" * (128 << 10)
        gc.collect()
        tracemalloc.start()
        try:
            async with AsyncExitStack() as stack:
                base = tracemalloc.get_traced_memory()[0]
                written = 0
                for _ in range(streams):  # opened one after another, never read
                    await stack.enter_async_context(endpoint.stream(payload))
                    for _ in range(9):  # past this subscription's bound: it is cut off
                        await db.put("big", f"k{written}", value)
                        written += 1
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        assert held <= 4 * bound, held  # 16 streams: about 16 MiB
        assert endpoint._queue_share.queued == 0  # all given back once they ended


async def test_connections_that_never_read_their_subscriptions_hold_a_bounded_total(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Attack: as above, but with one subscription on each of many connections (up to
    1,024 of them), opened one after another, each filled with other events than the
    last. Each connection's queues are bounded (``MAX_QUEUED_BYTES``), but together
    they pinned one bound per connection (1,024 x 128 MiB). Must hold: what the
    server's subscriptions for all its clients keep queued stays within
    ``MAX_SERVED_QUEUED_BYTES`` (here patched to 2 MiB) and about an event per
    connection."""
    import gc
    import tracemalloc

    import koru._serving as serving
    import koru._subscriptions as subscriptions
    from koru._remote_codec import pack

    bound = 1 << 20
    monkeypatch.setattr(subscriptions, "MAX_QUEUED_BYTES", bound)
    monkeypatch.setattr(subscriptions, "MAX_SERVED_QUEUED_BYTES", 2 * bound)
    async with koru.open(str(tmp_path / "db"), difficulty=DIFFICULTY) as db:
        who = koru.Identity.mine(DIFFICULTY)
        await db.register(who.public)
        await db.grant(who.public, actions=["read", "write"])
        payload = pack([None, "subscribe", ["big"], {}])
        value = "x" * (128 << 10)
        gc.collect()
        tracemalloc.start()
        try:
            async with AsyncExitStack() as stack:
                base = tracemalloc.get_traced_memory()[0]
                written = 0
                for _ in range(16):  # a connection each, opened one after another
                    endpoint = serving.ClientEndpoint(
                        db.as_identity(who.public_key), who.public_key, "x", db._served_calls()
                    )
                    await stack.enter_async_context(endpoint.stream(payload))
                    for _ in range(9):  # past this subscription's bound: it is cut off
                        await db.put("big", f"k{written}", value)
                        written += 1
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        assert held <= 2 * bound + 16 * len(value) + bound, held  # 16 connections: 16 MiB
        assert db._hub.served.queued == 0  # all given back once they ended
