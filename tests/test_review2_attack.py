"""Attacks (h-review2) on the server's bound on all calls (CallBudget), the remote
client's wait after a 1013 (try later), and the named-key listing: each test names
what the adversary does and asserts what must hold."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import koru
from koru.nursery import _session as session


async def test_a_subscription_cut_off_by_a_busy_server_waits_before_resuming(
    monkeypatch: Any,
) -> None:
    """Attack (a busy server): a live remote subscription's connection is lost, and the
    server closes every new connection's request with 1013 (try later) for a second
    and a half. Resuming must wait as a call does after a 1013 (its reconnection
    delays), not reconnect and resend at once in a loop; the change written once the
    server has room must still reach the subscriber, none twice."""
    from koru.nursery._protocol import Request
    from koru.nursery._wire import CLOSE_TRY_LATER

    refusing = [False]
    refused = [0]
    original = session._Runner.do

    async def do(self: Any, command: Any) -> None:
        if type(command) is Request and self.budget is not None and refusing[0]:
            refused[0] += 1
            raise self.close(CLOSE_TRY_LATER, "too many calls waiting on this server")
        await original(self, command)

    monkeypatch.setattr(session._Runner, "do", do)
    async with (
        koru.open(":memory:", difficulty=4) as db,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(db.serve)
        who = koru.Identity.mine(4)
        await db.register(who.public)
        await db.grant(who.public, actions=["read", "write"])
        async with (
            koru.connect(f"127.0.0.1:{port}", who) as remote,
            remote.subscribe("n") as sub,
        ):
            await db.put("n", "k", 0)
            with trio.fail_after(10):
                first = await sub.__anext__()
            assert first.value == 0
            refusing[0] = True
            sub._link.drop(sub._runner)  # the connection is lost

            async def room() -> None:
                await trio.sleep(1.5)
                refusing[0] = False
                await db.put("n", "k", 1)

            nursery.start_soon(room)
            with trio.fail_after(20):
                second = await sub.__anext__()
            assert second.value == 1
            assert 1 <= refused[0] <= 4, refused  # a few attempts, not a burst
        nursery.cancel_scope.cancel()
