"""A hostile reviewer's attacks on identities, capabilities and the authorized handle
(h-auth2): clocks that jump, grants whose windows are judged on them, sessions, and
``as_identity`` handles calling every part of the interface."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from test_expiry import SettableClock

import koru

D = 4  # proof of work in these tests: cheap, and still checked


def person(seed: int) -> koru.Identity:
    return koru.Identity.mine(D, rng=random.Random(seed))


def db_open(clock: Any = None, **kw: Any) -> Any:
    options: dict[str, Any] = {"difficulty": D, "sync": "os", "processes": False}
    if clock is not None:
        options["clock"] = clock
    options.update(kw)
    return koru.open(":memory:", **options)


# -- clocks -------------------------------------------------------------------------------------


async def test_a_clock_set_back_never_brings_an_expired_grant_back_on_a_handle() -> None:
    """Attack: a grant expired; the wall clock is then set back before its expiry. The
    database's own ``check`` judges by its read time, which never goes back, and says
    no; an authorized handle judged by the raw clock and let the expired grant read
    again. What must hold: every handle agrees with ``check``."""
    clock = SettableClock()
    bob = person(2)
    async with db_open(clock) as db:
        await db.register(bob)
        await db.put("s", "k", "secret")
        t = clock.ns
        await db.grant(bob, namespace="s", key="*", actions=["read"], expires=t + 10**9)
        clock.ns = t + 2 * 10**9
        assert not await db.check(bob, "read", "s", "k")
        clock.ns = t - 10**9  # set back, before the grant's expiry
        assert not await db.check(bob, "read", "s", "k")
        session = await db.open_session(bob.respond(await db.challenge()), ttl=600)
        for who in (bob, bob.public, session):
            with pytest.raises(koru.PermissionDeniedError):
                await db.as_identity(who).get("s", "k")


async def test_a_clock_set_back_never_brings_an_expired_session_back() -> None:
    """Attack: a session reached its ttl; the wall clock is then set back. What must
    hold: the session stays expired (its end is on the database clock, which never goes
    back), for the handle and for ``check``."""
    clock = SettableClock()
    bob = person(2)
    async with db_open(clock) as db:
        await db.register(bob)
        await db.put("s", "k", "v")
        await db.grant(bob, namespace="s", key="*", actions=["read"])
        session = await db.open_session(bob.respond(await db.challenge()), ttl=10)
        handle = db.as_identity(session)
        assert await handle.get("s", "k") == "v"
        clock.advance(11)
        with pytest.raises(koru.SessionExpiredError):
            await handle.get("s", "k")
        clock.advance(-60)
        with pytest.raises(koru.SessionExpiredError):
            await handle.get("s", "k")
        with pytest.raises(koru.SessionExpiredError):
            await db.check(session, "read", "s", "k")


async def test_a_peer_s_timestamp_ahead_of_the_clock_does_not_end_sessions() -> None:
    """Attack: a peer that may write somewhere sends a sealed event stamped 50 minutes
    ahead (ingest takes up to an hour ahead), which moves the receiver's newest
    timestamp. What must hold: sessions keep their ttl by the clock; the peer cannot
    end everyone's session early."""
    ca, cb = SettableClock(), SettableClock()
    bob = person(2)
    async with db_open(ca, seed=1) as a, db_open(cb, seed=2) as b:
        public = await a.mine_identity(D)
        await b.register(public)
        await b.register(bob)
        await b.grant(public, namespace="x", actions="write")
        await b.grant(bob, namespace="t", actions="read")
        await b.put("t", "k", "v")
        session = await b.open_session(bob.respond(await b.challenge()), ttl=600)
        ca.ns = cb.ns + 3000 * 10**9
        await a.put("x", "ahead", 1)
        await a.seal()
        events: list[bytes] = []
        for origin, agent in sorted(await a.feed_heads()):
            events += await a.feed_events(origin, agent)
        await b.as_identity(public).ingest(events)
        assert await b.get("x", "ahead") == 1
        cb.advance(10)
        assert await b.as_identity(session).get("t", "k") == "v"
        assert await b.check(session, "read", "t", "k")


# -- views ---------------------------------------------------------------------------------------


async def view_v_over_public(db: koru.Database, action: str) -> Any:
    """Bob's handle, allowed ``action`` on namespace ``public``, which view ``v``
    reads; namespace ``secret`` holds a value too."""
    bob = person(2)
    await db.register(bob)
    await db.put("public", "p", {"x": 1})
    await db.put("secret", "s", {"x": 2})
    await db.grant(bob, namespace="public", key="*", actions=[action])
    await db.create_view("v", "public", {})
    return db.as_identity(bob)


def replace_v_at_the_next_yield(db: koru.Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another task replaces view ``v`` by one over ``secret`` at the database's next
    yield, which is made the second operation from now (the 64th yields)."""
    life = type(db._life)
    yielded = life.pause

    async def replaced_meanwhile(self: Any) -> None:
        await yielded(self)
        monkeypatch.setattr(life, "pause", yielded)
        await db.create_view("v", "secret", {})  # another task, at this yield

    monkeypatch.setattr(life, "pause", replaced_meanwhile)
    db._life._ops = 62


async def test_a_view_replaced_while_its_reader_yields_is_not_read_unchecked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack (a race): an identity that may read namespace ``public`` reads view ``v``
    over it; the handle checked the view's namespace, then the database's operation
    yielded (every 64th does) and meanwhile the view was replaced by one over
    ``secret`` (an admin's own ``create_view``, or a definition arriving from a peer).
    What must hold: the answer given is of a view whose namespace was checked, so the
    reader gets ``public``'s rows or a refusal, never ``secret``'s."""
    async with db_open() as db:
        as_bob = await view_v_over_public(db, "read")
        assert [r.key for r in await as_bob.view("v")] == ["p"]
        # The handle's list_views is the next operation, the view's read the one after:
        # make that one the 64th, which yields.
        replace_v_at_the_next_yield(db, monkeypatch)
        try:
            rows = await as_bob.view("v")
        except koru.PermissionDeniedError:
            return
        assert [r.key for r in rows] != ["s"]


@pytest.mark.parametrize("call", ["delete", "replace", "refresh"])
async def test_a_view_replaced_while_its_administrator_yields_is_not_touched_unchecked(
    monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """Attack (a race, as for ``view``): an identity with admin on ``public`` deletes,
    replaces or refreshes view ``v`` over it; the database's operation yields first,
    and meanwhile an admin replaced ``v`` by a view over ``secret``. What must hold: a
    view over ``secret`` is never deleted, replaced or recomputed by someone who may
    not administer ``secret``: the call is refused, the view stays as it is."""
    async with db_open() as db:
        as_bob = await view_v_over_public(db, "admin")
        replace_v_at_the_next_yield(db, monkeypatch)  # in the call after list_views
        with pytest.raises(koru.PermissionDeniedError):
            if call == "delete":
                await as_bob.delete_view("v")
            elif call == "replace":
                await as_bob.create_view("v", "public", {"limit": 1})
            else:
                await as_bob.refresh_view("v")
        assert [(v.namespace, v.query) for v in await db.list_views()] == [("secret", {})]


# -- statements from peers -----------------------------------------------------------------------


async def test_a_peer_cannot_store_a_grant_to_an_identity_never_registered() -> None:
    """Attack: a delegate (admin on ``x`` here) signs a grant to a key that has no
    proof of work and was never registered; locally that grant is refused (register
    the grantee first: its proof of work is checked then). A hostile node that may
    write somewhere here puts the grant in its own identity log, seals it, and sends
    it. What must hold: a peer cannot do by sending an event what it could not do
    through a handle: the grant takes no effect here."""
    delegate = person(3)
    weak = koru.Identity.mine(0, rng=random.Random(1))
    assert weak.public.work < D
    async with db_open(seed=2) as b, db_open(seed=9) as m:
        await b.register(delegate)
        parent = await b.grant(delegate, namespace="x", actions="admin")
        child = koru.Grant.create(
            delegate, weak.public_key, namespace="x", actions="write", parent=parent.id
        )
        with pytest.raises(koru.InvalidGrantError, match="not a registered identity"):
            await b.as_identity(delegate).grant(child)
        node_public = await m.mine_identity(D)
        await b.register(node_public)
        await b.grant(node_public, namespace="y", actions="write")  # it takes part
        m._authority.emit_grant(m._writer.emit, child)  # m writes whatever it likes
        await m.seal()
        events: list[bytes] = []
        for origin, agent in sorted(await m.feed_heads()):
            events += await m.feed_events(origin, agent)
        await b.as_identity(node_public).ingest(events)
        assert not await b.check(weak, "write", "x", "k")


# -- the evaluator ---------------------------------------------------------------------------------


@pytest.mark.parametrize("live", [True, False])
def test_mutual_revocations_at_one_time_are_decided_whatever_was_asked_first(live: bool) -> None:
    """Attack: two admins revoke each other's grant, dated the same instant (a
    revocation's ``at`` is its revoker's claim, so B can match A's). Each revocation's
    authority then hangs on the other's: a cycle. The database keeps one evaluator per
    state and asks it every question; what it remembered from an earlier question (a
    revocation decided inside the cycle) decided later ones. What must hold: the answer
    about an identity does not depend on which identities were asked about before (nor
    differ between nodes that asked in another order): a fresh evaluator's answer."""
    from koru.events import IDENTITY, READ, GrantEvent, Revocation, RevokeEvent
    from koru.projections import AuthState, Evaluator

    node, a, b = (koru.Identity.mine(0, rng=random.Random(s)) for s in (0, 3, 4))
    t = 1_767_225_600 * 10**9
    x = koru.Grant.create(node, a.public_key, namespace="users", actions="admin")
    y = koru.Grant.create(node, b.public_key, namespace="users", actions="admin")
    facts = [x, y, Revocation.create(a, y.id, t), Revocation.create(b, x.id, t)]
    state = AuthState()
    for n, fact in enumerate(facts, 1):
        header = (b"o" * 16, IDENTITY, n, None if n == 1 else b"p" * 32, t)
        kind = GrantEvent if isinstance(fact, koru.Grant) else RevokeEvent
        state.apply(kind(*header, fact), bytes(32), 0)

    def asked(evaluator: Evaluator, who: koru.Identity) -> bool:
        return evaluator.effective(who.public_key, t, live=live).allows(READ, "users", "k")

    fresh = {p: asked(Evaluator(state, [node.public_key]), p) for p in (a, b)}
    for first, then in ((a, b), (b, a)):
        evaluator = Evaluator(state, [node.public_key])
        asked(evaluator, first)
        assert asked(evaluator, then) == fresh[then]


# -- key files ---------------------------------------------------------------------------------


def test_a_fifo_in_place_of_a_key_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Attack: a named pipe (say, made by another user in a shared directory) where a
    key file is expected. Opening it for reading waits for a writer, so ``load`` hung
    before it could see it is no regular file. What must hold: refused at once
    (KeyFileError), as a directory or a link is."""
    import os
    import threading

    where = tmp_path / "alice.key"
    os.mkfifo(where, 0o600)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            koru.Identity.load(where)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(2)
    if thread.is_alive():
        with open(where, "wb"):  # a writer: the open it waits in returns
            pass
        thread.join(2)
        pytest.fail("Identity.load waited on a named pipe")
    assert isinstance(outcome[0], koru.KeyFileError)


async def test_a_peer_cannot_pile_up_seals_of_nodes_that_hold_nothing_here() -> None:
    """Attack: a peer that may write one namespace relays seals made by fresh keys (they
    cost nothing: a node id derives from any key), each naming 4,096 points. A seal
    needs no right, so every one was stored, and its points (of feeds nobody will ever
    send) were held in memory for ever: 200 seals held 819,200 points and 37 MB of log.
    What must hold: a seal of a node that holds no grant here is refused (a node
    revoked since still holds its grants, so it can still prove what it wrote)."""
    from koru.events import IDENTITY, SealEvent, SealPoint, encode_event, node_id_of

    relay = person(7)
    async with db_open(seed=2) as b:
        await b.register(relay)
        await b.grant(relay, namespace="x", actions="write")
        rng = random.Random(1)
        t = 1_767_225_600 * 10**9
        junk = []
        for _ in range(5):
            key = koru.Identity.mine(0, rng=rng)
            points = tuple(SealPoint("storage", s, rng.randbytes(32)) for s in range(1, 257))
            unsigned = SealEvent(
                node_id_of(key.public_key), IDENTITY, 1, None, t, key.public_key, points, b""
            )
            junk.append(encode_event(unsigned._replace(signature=key.sign(unsigned.message()))))
        result = await b.as_identity(relay).ingest(junk)
        assert result.accepted == 0
        assert not b._authority.state.seals
