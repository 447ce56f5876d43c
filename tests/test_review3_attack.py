"""Attacks of the third hostile review (h-review3): what an authorized handle lists when
its grant or session changes while the call is parked at its one yield."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import koru
from koru._lifecycle import _YIELD_MASK, Lifecycle


def _parking(monkeypatch: pytest.MonkeyPatch) -> tuple[trio.Event, trio.Event, Any]:
    """A stand-in for ``Lifecycle.pause`` that parks its first caller: ``parked`` is set
    as it parks, and it goes on once ``changed`` is set (then the real pause runs)."""
    parked, changed = trio.Event(), trio.Event()
    original = Lifecycle.pause

    async def pause(self: Any) -> None:
        monkeypatch.setattr(Lifecycle, "pause", original)
        parked.set()
        await changed.wait()
        await original(self)

    return parked, changed, pause


async def _race(
    db: Any, monkeypatch: pytest.MonkeyPatch, pause: Any, call: Any, change: Any
) -> None:
    """``call`` and ``change`` run together, the next operation of ``db`` parked in
    ``pause`` (see _parking)."""
    db._life._ops |= _YIELD_MASK  # the next operation yields
    monkeypatch.setattr(Lifecycle, "pause", pause)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            nursery.start_soon(change)


@pytest.mark.parametrize("pattern", ["u*", "u1", "*1"])  # a prefix's range, a key, a walk
@pytest.mark.parametrize("change", ["revoke", "end the session", "write after revoking"])
async def test_a_listing_parked_while_its_grant_goes_lists_nothing_it_no_longer_may(
    pattern: str, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a client lists a namespace and, while the listing is parked at its yield
    (every 64th operation yields), its grant is revoked or its session ended (and a key
    is written meanwhile). ``get`` checks again after that yield; ``keys`` listed what
    the grant allowed before it (all three ways: a prefix's range, keys named one by
    one, a walk), with the state after it (a key written after the revocation). Must
    hold: the listing is refused (session over) or lists nothing the client no longer
    may read."""
    async with koru.open(":memory:", difficulty=4, checkpoint_every=10**9) as db:
        await db.put_batch([("users", f"u{i}", i) for i in range(5)])
        alice = koru.Identity.mine(4)
        await db.register(alice.public)
        grant = await db.grant(alice.public, namespace="users", key=pattern, actions="read")
        session = await db.open_session(alice.respond(await db.challenge()))
        handle = db.as_identity(session if change == "end the session" else alice)
        assert "u1" in await handle.keys("users")
        parked, changed, pause = _parking(monkeypatch)

        got: list[Any] = []

        async def lister() -> None:
            try:
                got.append(await handle.keys("users"))
            except koru.SessionError as exc:
                got.append(type(exc))

        async def changer() -> None:
            await parked.wait()
            if change == "end the session":
                await db.end_session(session)
            else:
                await db.revoke(grant)
                if change == "write after revoking":
                    await db.put("users", "u1-new", 1)
            changed.set()

        await _race(db, monkeypatch, pause, lister, changer)
        assert parked.is_set()
        if change == "end the session":
            assert got == [koru.SessionError]
        else:
            assert got == [[]]


_READS: dict[str, Any] = {
    "workspace get": lambda h, w: w.get("docs", "u1"),
    "workspace get_versioned": lambda h, w: w.get_versioned("docs", "u1"),
    "get_versioned": lambda h, w: h.get_versioned("docs", "u1"),
    "get_at": lambda h, w: h.get_at("docs", "u1", 2**62),
    "history": lambda h, w: h.history("docs", "u1"),
    "contains": lambda h, w: h.contains("docs", "u1"),
    "diff": lambda h, w: h.diff("docs", "u1", 0, -1),
    "query": lambda h, w: h.query("docs", {}),
    "workspace query": lambda h, w: w.query("docs", {}),
}


@pytest.mark.parametrize("refreshed", [False, True])
@pytest.mark.parametrize("call", list(_READS))
async def test_a_read_parked_while_its_grant_is_revoked_is_refused(
    call: str, refreshed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a client reads a key (by a workspace's handle, or any read but the
    default handle's get) and, while the read is parked at the database's yield, its
    grant is revoked (and, ``refreshed``, another call of the same handles takes the
    new decision). The default handle's ``get`` checks again after that yield; the
    others read and answered what the grant no longer allowed. Must hold: refused."""
    async with koru.open(":memory:", difficulty=4, checkpoint_every=10**9) as db:
        ws = db.workspace("team")
        await ws.put("docs", "u1", "w")
        await db.put("docs", "u1", "d")
        alice = koru.Identity.mine(4)
        await db.register(alice.public)
        grants = [
            await db.grant(alice.public, namespace=ns, key="*", actions="read")
            for ns in ("docs", koru.workspace_namespace("team", "docs"))
        ]
        handle = db.as_identity(alice)
        team = handle.workspace("team")
        await _READS[call](handle, team)  # allowed
        parked, changed, pause = _parking(monkeypatch)

        got: list[Any] = []

        async def reader() -> None:
            try:
                got.append(await _READS[call](handle, team))
            except koru.PermissionDeniedError as exc:
                got.append(type(exc))

        async def changer() -> None:
            await parked.wait()
            for grant in grants:
                await db.revoke(grant)
            if refreshed:
                for h in (handle, team):
                    with pytest.raises(koru.PermissionDeniedError):
                        h._allow(koru.events.READ, "docs", "u1")
            changed.set()

        await _race(db, monkeypatch, pause, reader, changer)
        assert parked.is_set()
        assert got == [koru.PermissionDeniedError]
