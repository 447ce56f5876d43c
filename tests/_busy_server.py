"""A served database and a member client, and a server that tells clients to try later
(1013): shared by the attacks on the server's bound on calls and the client's retries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import koru
from koru.nursery import _session as session
from koru.nursery._protocol import Request
from koru.nursery._wire import CLOSE_TRY_LATER


@asynccontextmanager
async def served() -> AsyncIterator[tuple[koru.Database, trio.Nursery, str, koru.Identity]]:
    """A database served on a free port, the nursery serving it, its address and an
    identity granted read and write on everything."""
    async with (
        koru.open(":memory:", difficulty=4) as db,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(db.serve)
        who = koru.Identity.mine(4)
        await db.register(who.public)
        await db.grant(who.public, actions=["read", "write"])
        yield db, nursery, f"127.0.0.1:{port}", who
        nursery.cancel_scope.cancel()


class TryLater:
    """Patches the server's sessions to close a connection with 1013 (try later) at a
    client's call: before taking it while ``refusing``, or just after taking it (its
    task started) while ``closing`` counts down. ``refused`` counts the closes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.refusing = False
        self.closing = 0
        self.refused = 0
        original = session._Runner.do

        async def do(runner: Any, command: Any) -> None:
            if type(command) is not Request or runner.budget is None:
                return await original(runner, command)
            if self.refusing:
                self.refused += 1
                raise runner.close(CLOSE_TRY_LATER, "too many calls waiting on this server")
            await original(runner, command)
            if self.closing:
                self.closing -= 1
                self.refused += 1
                raise runner.close(CLOSE_TRY_LATER, "too many calls waiting on this server")

        monkeypatch.setattr(session._Runner, "do", do)
