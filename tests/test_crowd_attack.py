"""Attacks on a served database by many clients at once: each test names what the
crowd does and asserts what must hold for the server and its honest clients."""

from __future__ import annotations

import time

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
