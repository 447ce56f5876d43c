"""Auth on a database: the node key and the node id it derives (existing databases
keep opening), registering identities, storing grants and revocations (each refused
before anything is written when it could not take effect), ``check``, and the
authorized handle of ``as_identity`` enforcing capabilities on every call."""

from __future__ import annotations

import inspect
import logging
import os
import random
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import koru
from conftest import StepClock
from koru import AuthorizedDatabase, DatabaseAPI
from koru._nodekey import NODE_KEY_FILE
from koru.events import IDENTITY, FileStore, Grant, Revocation, node_id_of
from koru.projections import MAX_DEPTH

D = 4  # proof-of-work difficulty in these tests: cheap, and still checked


def person(seed: int, difficulty: int = D) -> koru.Identity:
    return koru.Identity.mine(difficulty, rng=random.Random(seed))


def db_open(path: Any = ":memory:", **kw: Any) -> Any:
    options: dict[str, Any] = {"difficulty": D, "clock": StepClock(), "sync": "os"}
    options.update(kw)
    return koru.open(path, **options)


async def identity_head(db: koru.Database) -> int:
    return (await db.feed_heads()).get((db.node_id, IDENTITY), 0)


# -- the node key ---------------------------------------------------------------------------------


async def test_a_new_database_derives_its_node_id_from_its_private_node_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    async with db_open(path) as db:
        assert db.identity is not None
        assert db.node_id == node_id_of(db.identity.public_key).hex()
        node = db.node_id
    key_file = path / NODE_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    async with db_open(path) as db:
        assert db.node_id == node
    async with db_open(path, readonly=True) as db:
        assert db.node_id == node and db.identity is None


async def test_seeded_databases_get_the_same_node_key() -> None:
    async with db_open(seed=11) as one:
        first = one.node_id
    async with db_open(seed=11) as two:
        assert two.node_id == first
    async with db_open() as three, db_open() as four:
        assert three.node_id != four.node_id


async def test_a_database_without_a_node_key_gets_one_and_keeps_its_history(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every database written before node keys existed (events under a random node id,
    no key file): it keeps opening, its data stays under the id it was written as, and
    from then on it writes as the node id its new key derives."""
    path = tmp_path / "db"
    store = FileStore(path)
    legacy = bytes(range(16))  # as koru.open made node ids before keys
    store.create_node(legacy)
    store.close()
    async with db_open(path) as db:
        written_as = db.node_id
        assert written_as != legacy.hex()
        await db.put("users", "alice", 1)
    (path / NODE_KEY_FILE).unlink()  # the key is gone: as good as a legacy database
    with caplog.at_level(logging.WARNING, logger="koru"):
        async with db_open(path) as db:
            assert db.node_id != written_as
            assert await db.get("users", "alice") == 1
            history = await db.history("users", "alice")
            assert history[0].origin == written_as
            version = await db.put("users", "alice", 2)
            assert version.origin == db.node_id == node_id_of(db.identity.public_key).hex()
            new_id = db.node_id
    assert "no node key" in caplog.text
    async with db_open(path) as db:  # and it stays so
        assert db.node_id == new_id
        assert [v.value for v in await db.history("users", "alice")] == [1, 2]


async def test_an_interrupted_switch_completes_and_a_foreign_key_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    async with db_open(path) as db:
        await db.put("n", "k", 1)
        old = bytes.fromhex(db.node_id)
    # A key written for the switch, the meta file not yet switched (a crash between).
    (path / NODE_KEY_FILE).unlink()
    store = FileStore(path)
    key = koru.Identity(os.urandom(32), bytes(8), old)
    store.write_private(NODE_KEY_FILE, key.key_file_bytes())
    store.close()
    async with db_open(path) as db:
        assert db.node_id == key.node_id
    # A key file copied from another database is refused.
    other = tmp_path / "other"
    async with db_open(other):
        pass
    (path / NODE_KEY_FILE).unlink()
    (path / NODE_KEY_FILE).write_bytes((other / NODE_KEY_FILE).read_bytes())
    (path / NODE_KEY_FILE).chmod(0o600)
    with pytest.raises(koru.KeyFileError, match="another database"):
        async with db_open(path):
            pass


async def test_an_exposed_or_linked_node_key_is_refused_for_writing_not_reading(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    async with db_open(path) as db:
        await db.put("n", "k", 1)
    key_file = path / NODE_KEY_FILE
    key_file.chmod(0o644)
    with pytest.raises(koru.KeyFileError, match="chmod 600"):
        async with db_open(path):
            pass
    async with db_open(path, readonly=True) as db:  # a reader never reads the key
        assert await db.get("n", "k") == 1
    key_file.chmod(0o600)
    real = tmp_path / "real.key"
    key_file.rename(real)
    key_file.symlink_to(real)
    with pytest.raises(koru.KeyFileError, match="symbolic link"):
        async with db_open(path):
            pass


# -- registering identities -----------------------------------------------------------


async def test_registering_checks_the_proof_of_work_first_and_writes_an_event() -> None:
    alice = person(1)
    async with db_open() as db:
        assert await db.register(alice)
        assert not await db.register(alice.public)  # already there
        assert await identity_head(db) == 1
        weak = koru.Identity.mine(0, rng=random.Random(5))
        assert weak.work < D
        with pytest.raises(koru.ProofOfWorkError):
            await db.register(weak)
        borrowed = koru.PublicIdentity(weak.public_key, alice.nonce)
        with pytest.raises(koru.ProofOfWorkError):
            await db.register(borrowed)
        with pytest.raises(koru.InvalidArgumentError):
            await db.register("alice")  # type: ignore[arg-type]
        assert await identity_head(db) == 1  # nothing written by the refusals


# -- grants ---------------------------------------------------------------------------


async def test_grants_are_checked_before_anything_is_written() -> None:
    alice, bob, carol = person(1), person(2), person(3)
    async with db_open() as db:
        with pytest.raises(koru.InvalidGrantError, match="not a registered identity"):
            await db.grant(alice)
        await db.register(alice)
        await db.register(bob)
        parent = await db.grant(alice, namespace="users", key="*", actions="read")
        head = await identity_head(db)
        # Forged: any flipped bit of the signature.
        forged = parent._replace(signature=bytes([parent.signature[0] ^ 1]) + parent.signature[1:])
        with pytest.raises(koru.SignatureError):
            await db.grant(forged)
        # Altered after signing (another key space).
        with pytest.raises(koru.SignatureError):
            await db.grant(parent._replace(namespace="orders"))
        # A non-root without a parent.
        with pytest.raises(koru.InvalidGrantError, match="not a root"):
            await db.grant(bob, granter=alice, namespace="users")
        # Escalation beyond the parent: actions, and another key space.
        with pytest.raises(koru.InvalidGrantError, match="escalates"):
            await db.grant(bob, granter=alice, namespace="users", actions="write", parent=parent.id)
        with pytest.raises(koru.InvalidGrantError, match="escalates"):
            await db.grant(bob, granter=alice, namespace="orders", parent=parent.id)
        # Someone else's parent.
        with pytest.raises(koru.InvalidGrantError, match="another identity"):
            await db.grant(bob, granter=carol, namespace="users", parent=parent.id)
        # An unknown parent.
        with pytest.raises(koru.InvalidGrantError, match="not held"):
            await db.grant(bob, granter=alice, namespace="users", parent=bytes(32))
        # Already expired.
        with pytest.raises(koru.InvalidGrantError, match="expired"):
            await db.grant(bob, expires=1)
        assert await identity_head(db) == head
        # And a good delegation goes through.
        child = await db.grant(bob, granter=alice, namespace="users", key="b*", parent=parent.id)
        assert await db.check(bob, "read", "users", "bob")
        assert not await db.check(bob, "read", "users", "alice")
        assert not await db.check(bob, "write", "users", "bob")
        assert child.parent == parent.id


async def test_an_over_deep_chain_is_refused() -> None:
    people = [person(10 + i) for i in range(MAX_DEPTH + 1)]
    async with db_open() as db:
        for p in people:
            await db.register(p)
        previous = await db.grant(people[0], namespace="users")
        for i in range(1, MAX_DEPTH):
            previous = await db.grant(
                people[i], granter=people[i - 1], namespace="users", parent=previous.id
            )
        assert await db.check(people[MAX_DEPTH - 1], "read", "users", "x")
        with pytest.raises(koru.InvalidGrantError, match="deep"):
            await db.grant(
                people[MAX_DEPTH], granter=people[MAX_DEPTH - 1], namespace="users",
                parent=previous.id,
            )  # fmt: skip


async def test_a_revocation_takes_effect_at_once_and_cannot_be_undone() -> None:
    alice, bob = person(1), person(2)
    async with db_open() as db:
        await db.register(alice)
        await db.register(bob)
        g = await db.grant(alice, namespace="users", actions="read,write")
        handle = db.as_identity(alice)
        await handle.put("users", "a", 1)
        # A forged revocation: bad signature, or a revoker without authority.
        r = Revocation.create(bob, g.id, 0)
        with pytest.raises(koru.InvalidGrantError, match="revoker"):
            await db.revoke(r)
        with pytest.raises(koru.SignatureError):
            await db.revoke(r._replace(revoker=alice.public_key))
        assert await handle.get("users", "a") == 1
        await db.revoke(g)
        with pytest.raises(koru.PermissionDeniedError):
            await handle.get("users", "a")
        assert not await db.check(alice, "read", "users", "a")
        # Storing the same grant again does not revive it, and says so (it did nothing,
        # silently: h-review3); the same terms again are the same grant; a new grant
        # is a new one.
        with pytest.raises(koru.InvalidGrantError, match="was revoked"):
            await db.grant(g)
        with pytest.raises(koru.InvalidGrantError, match="was revoked"):
            await db.grant(alice, namespace="users", actions="read,write")
        assert not await db.check(alice, "read", "users", "a")
        await db.grant(alice, namespace="users", actions="read", not_before=5)
        assert await db.check(alice, "read", "users", "a")
        with pytest.raises(koru.InvalidGrantError, match="no grant"):
            await db.revoke(bytes(32))


async def test_grants_survive_reopening_with_and_without_a_checkpoint(tmp_path: Path) -> None:
    alice = person(1)
    path = tmp_path / "db"
    async with db_open(path) as db:
        await db.register(alice)
        g = await db.grant(alice, namespace="users", actions="write")
        revoked = await db.grant(alice, namespace="orders", actions="write")
        await db.revoke(revoked)
    for _ in range(2):
        async with db_open(path) as db:
            assert await db.check(alice, "write", "users", "x")
            assert not await db.check(alice, "write", "orders", "x")
            assert db._authority.state.grants[g.id] == g
        (path / "checkpoint").unlink()


# -- the authorized handle ------------------------------------------------------------------------


def test_the_authorized_handle_follows_the_interface() -> None:
    calls = [n for n, m in vars(DatabaseAPI).items() if inspect.iscoroutinefunction(m)]
    for name in calls:
        ours = getattr(AuthorizedDatabase, name)
        assert inspect.iscoroutinefunction(ours), name
        theirs = inspect.signature(getattr(DatabaseAPI, name))
        assert list(inspect.signature(ours).parameters) == list(theirs.parameters), name


async def test_every_call_of_the_handle_is_checked() -> None:
    alice, bob = person(1), person(2)
    async with db_open() as db:
        for p in (alice, bob):
            await db.register(p)
        await db.grant(alice, namespace="users", key="a*", actions="read,write")
        await db.grant(alice, namespace="public", key="*", actions="read")
        await db.put("users", "bob", "secret")
        await db.put("public", "notice", "hello")
        await db.put("orders", "o1", 1)
        h = db.as_identity(alice)
        await h.put("users", "alice", {"x": 1})
        await h.put_batch([("users", "al", 1), ("users", "am", 2)])
        assert await h.get("users", "alice") == {"x": 1}
        assert (await h.get_versioned("users", "alice")).value == {"x": 1}
        assert len(await h.history("users", "alice")) == 1
        assert await h.contains("users", "alice")
        assert await h.get("public", "notice") == "hello"
        assert await h.keys("users") == ["al", "alice", "am"]  # not bob
        assert await h.namespaces() == ["public", "users"]  # not orders
        denied = [
            lambda: h.get("users", "bob"),
            lambda: h.get_versioned("users", "bob"),
            lambda: h.history("users", "bob"),
            lambda: h.contains("users", "bob"),
            lambda: h.diff("users", "bob"),
            lambda: h.get_at("users", "bob", 0),
            lambda: h.put("users", "bob", 2),
            lambda: h.put("public", "notice", "defaced"),
            lambda: h.delete("users", "bob"),
            lambda: h.put_batch([("users", "ax", 1), ("orders", "o2", 1)]),
            lambda: h.feed_heads(),
            lambda: h.feed_events(db.node_id),
            lambda: h.roots(),
            lambda: h.digest(),
            lambda: h.genome(),
            lambda: h.checkpoint(),
            lambda: h.processes(),
            lambda: h.check(bob, "read", "users", "x"),
        ]
        for call in denied:
            with pytest.raises(koru.PermissionDeniedError):
                await call()
        assert await db.get("users", "bob") == "secret"
        assert not await db.contains("orders", "o2") and not await db.contains("users", "ax")
        assert await h.check(alice, "write", "users", "ab")
        await h.stats()
        # A stranger may do nothing at all.
        stranger = db.as_identity(person(9).public)
        with pytest.raises(koru.PermissionDeniedError):
            await stranger.get("public", "notice")
        with pytest.raises(koru.PermissionDeniedError):
            await stranger.stats()
        with pytest.raises(koru.PermissionDeniedError):
            await stranger.ingest([])
        assert await stranger.keys("users") == [] and await stranger.namespaces() == []
        await h.aclose()
        with pytest.raises(koru.DatabaseClosedError):
            await h.get("users", "alice")


async def test_a_handle_stores_only_its_own_statements() -> None:
    alice, bob = person(1), person(2)
    async with db_open() as db:
        for p in (alice, bob):
            await db.register(p)
        g = await db.grant(alice, namespace="users", actions="admin")
        h = db.as_identity(alice.public)  # no secret: signed statements only
        with pytest.raises(koru.InvalidArgumentError, match="own identity"):
            await h.grant(bob, namespace="users", parent=g.id)
        mine = Grant.create(alice, bob.public_key, namespace="users", parent=g.id)
        assert (await h.grant(mine)).id == mine.id
        theirs = Grant.create(bob, alice.public_key, namespace="users")
        with pytest.raises(koru.PermissionDeniedError):
            await h.grant(theirs)
        with pytest.raises(koru.PermissionDeniedError):
            await h.revoke(Revocation.create(bob, mine.id, 0))
        await h.revoke(Revocation.create(alice, mine.id, 0))
        assert not await db.check(bob, "read", "users", "x")
        signer = db.as_identity(alice)  # with the secret: signs here
        await signer.grant(bob, namespace="users", key="b*", parent=g.id)
        assert await db.check(bob, "read", "users", "bob")


async def test_authorization_follows_grants_as_they_change(
    autojump_clock: trio.testing.MockClock,
) -> None:
    alice = person(1)
    async with db_open(clock=koru.TrioClock()) as db:
        await db.register(alice)
        h = db.as_identity(alice)
        with pytest.raises(koru.PermissionDeniedError):
            await h.get("n", "k")
        now = koru.TrioClock().now_ns()
        await db.grant(alice, namespace="n", expires=now + 10 * 10**9)
        with pytest.raises(koru.KeyNotFoundError):  # allowed now: the key is absent
            await h.get("n", "k")
        await trio.sleep(9)  # the decision is cached until the grant expires...
        with pytest.raises(koru.KeyNotFoundError):
            await h.get("n", "k")
        await trio.sleep(1)
        with pytest.raises(koru.PermissionDeniedError):  # ...and not after
            await h.get("n", "k")


class Item(Sequence[Any]):
    """A batch item that is neither a tuple nor a list (the database takes any
    sequence of three), and that may name one key when read first and another when
    read again."""

    def __init__(self, key: str, later: str | None = None) -> None:
        self.key, self.later, self.reads = key, later, 0

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: Any) -> Any:
        if index == 1:
            self.reads += 1
            return self.key if self.later is None or self.reads == 1 else self.later
        if isinstance(index, int) and 0 <= index < 3:
            return ("users", None, 1)[index]
        raise IndexError(index)


async def test_a_batch_item_of_any_sequence_is_checked_as_written() -> None:
    alice = person(1)
    async with db_open() as db:
        await db.register(alice)
        await db.grant(alice, namespace="users", key="allowed", actions="write")
        h = db.as_identity(alice)
        with pytest.raises(koru.PermissionDeniedError):
            await h.put_batch([Item("forbidden")])
        versions = await h.put_batch([Item("allowed", later="forbidden")])
        assert [v.key for v in versions] == ["allowed"]
        assert not await db.contains("users", "forbidden")
        with pytest.raises(koru.PermissionDeniedError):
            await h.put_batch([("users", "allowed", 1), ("users", "other", 2)])
        with pytest.raises(koru.InvalidDataError):
            await h.put_batch(["nonsense"])


async def test_a_public_key_that_could_never_sign_is_not_registered() -> None:
    from koru._identity import mine_nonce

    small_order = bytes.fromhex("0100000000000000000000000000000000000000000000000000000000000000")
    async with db_open() as db:
        forged = koru.PublicIdentity(small_order, mine_nonce(small_order, D))
        with pytest.raises(koru.InvalidArgumentError, match="usable"):
            await db.register(forged)
        assert await identity_head(db) == 0


async def test_queries_indexes_views_and_subscriptions_are_checked() -> None:
    """A query reads (and an aggregate sums) every document of its namespace: it needs
    read on all of it; indexes and views need admin there; subscriptions are checked
    when opened and on every change delivered."""
    alice = person(1)
    async with db_open(clock=StepClock()) as db:
        await db.register(alice)
        await db.grant(alice, namespace="public", actions="read")
        await db.grant(alice, namespace="users", key="a*", actions="read,write")
        g = await db.grant(alice, namespace="mine", actions="admin")
        for ns in ("public", "users", "mine"):
            await db.put(ns, "alice", {"n": 1})
            await db.put(ns, "bob", {"n": 2})
        await db.create_view("secret", "users", koru.Query().count())
        h = db.as_identity(alice)
        assert await h.query("public", koru.Query().count()) == 2
        with pytest.raises(koru.PermissionDeniedError):
            await h.query("users", koru.Query().count())  # bob's document is not hers
        with pytest.raises(koru.PermissionDeniedError):
            await h.explain("users", koru.Query())
        with pytest.raises(koru.PermissionDeniedError):
            await h.create_index("public", "n")  # read is not admin
        assert await h.create_index("mine", "n")
        assert [(i.namespace, i.field) for i in await h.list_indexes()] == [("mine", "n")]
        await db.create_index("users", "n")
        assert [i.namespace for i in await h.list_indexes()] == ["mine"]
        with pytest.raises(koru.PermissionDeniedError):
            await h.list_indexes("users")
        with pytest.raises(koru.PermissionDeniedError):
            await h.view("secret")
        with pytest.raises(koru.PermissionDeniedError):  # replacing a view elsewhere
            await h.create_view("secret", "mine", koru.Query().count())
        with pytest.raises(koru.PermissionDeniedError):
            await h.delete_view("secret")
        await h.create_view("own", "mine", koru.Query().count())
        assert await h.view("own") == 2
        assert [v.name for v in await h.list_views()] == ["own"]
        with pytest.raises(koru.PermissionDeniedError):
            async with h.subscribe("users"):
                pass
        with pytest.raises(koru.PermissionDeniedError):
            async with h.subscribe():
                pass
        async with h.subscribe("mine") as changes:
            await db.put("mine", "carol", {"n": 3})
            first = await changes.__anext__()
            assert first.key == "carol"
            await db.revoke(g)
            await db.put("mine", "dave", {"n": 4})
            with pytest.raises(koru.PermissionDeniedError):
                await changes.__anext__()


class SetClock:
    """A wall clock that reads what the test sets (and can be set back)."""

    def __init__(self, now: int = 1_767_225_600 * 10**9) -> None:
        self.now = now

    def now_ns(self) -> int:
        return self.now


async def test_a_warm_get_is_refused_as_soon_as_anything_it_depends_on_changes() -> None:
    # AuthorizedDatabase.get skips the whole check while nothing it depends on
    # changed: each change below comes right after gets that took that shortcut.
    clock = SetClock()
    s = 10**9
    alice = person(1)
    async with db_open(clock=clock) as db:
        await db.put("users", "u1", 1)
        await db.put("users", "x1", 2)
        await db.register(alice)
        grant = await db.grant(alice, namespace="users", key="u*", expires=clock.now + 100 * s)
        session = await db.open_session(alice.respond(await db.challenge()), ttl=50)
        by_session, by_key = db.as_identity(session), db.as_identity(alice)
        for h in (by_session, by_key):
            for _ in range(3):
                assert await h.get("users", "u1") == 1
                with pytest.raises(koru.PermissionDeniedError):  # outside the grant
                    await h.get("users", "x1")
                with pytest.raises(koru.PermissionDeniedError):
                    await h.get("other", "u1")
        # The session's end (before the grant's): refused, and still when the clock is
        # set back (the read time never goes back).
        clock.now += 50 * s
        with pytest.raises(koru.SessionExpiredError):
            await by_session.get("users", "u1")
        clock.now -= 10 * s
        with pytest.raises(koru.SessionExpiredError):
            await by_session.get("users", "u1")
        clock.now += 10 * s
        # The grant's end, for the handle without a session.
        assert await by_key.get("users", "u1") == 1
        clock.now += 50 * s
        with pytest.raises(koru.PermissionDeniedError):
            await by_key.get("users", "u1")
        # A grant lasting for ever, then its revocation; a session ended; a handle closed.
        grant = await db.grant(alice, namespace="users", key="u*")
        session = await db.open_session(alice.respond(await db.challenge()), ttl=50)
        by_session = db.as_identity(session)
        other = db.as_identity(await db.open_session(alice.respond(await db.challenge())))
        for h in (by_session, by_key, other):
            assert await h.get("users", "u1") == 1
            assert await h.get("users", "u1") == 1
        await db.revoke(grant)
        for h in (by_session, by_key, other):
            with pytest.raises(koru.PermissionDeniedError):
                await h.get("users", "u1")
        await db.grant(alice, namespace="users", key="u1")
        for h in (by_session, by_key, other):
            assert await h.get("users", "u1") == 1
            with pytest.raises(koru.PermissionDeniedError):
                await h.get("users", "u2")
        await db.end_session(session)
        with pytest.raises(koru.SessionError):
            await by_session.get("users", "u1")
        await by_key.aclose()
        await other.aclose()
        for h in (by_key, other):
            with pytest.raises(koru.DatabaseClosedError):
                await h.get("users", "u1")
        # A clock reading out of range is refused on the way, as by every read.
        again = db.as_identity(await db.open_session(alice.respond(await db.challenge())))
        assert await again.get("users", "u1") == 1
        clock.now = -1
        with pytest.raises(koru.KoruError):
            await again.get("users", "u1")
