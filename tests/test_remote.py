"""Remote clients: ``koru.connect`` gives a database served by another node with the
same async API as a local one, every call checked against the client's capabilities
there; lost connections are restored, retried writes applied once, subscriptions
resumed with no gap and no duplicate."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock
from koru import DatabaseAPI, RemoteDatabase, RemoteSpace, SpaceAPI
from koru._remote_codec import pack, pack_error, unpack
from koru._serving import DATABASE_CALLS, ServedCalls

DIFFICULTY = 4


def _identity() -> koru.Identity:
    return koru.Identity.mine(DIFFICULTY)


@asynccontextmanager
async def _served(clock: Any = None) -> AsyncIterator[tuple[koru.Database, int, trio.Nursery]]:
    """A database serving on a free port of 127.0.0.1."""
    async with (
        koru.open(":memory:", difficulty=DIFFICULTY, clock=clock) as db,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(db.serve)
        yield db, port, nursery
        nursery.cancel_scope.cancel()


async def _member(
    db: koru.Database, actions: Any = ("read", "write"), **scope: Any
) -> koru.Identity:
    """A registered identity holding ``actions`` (on everything, or on ``scope``)."""
    who = _identity()
    await db.register(who.public)
    await db.grant(who.public, actions=list(actions), **scope)
    return who


# -- one interface ------------------------------------------------------------------------


def _members(protocol: type) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for cls in reversed(protocol.__mro__):
        if cls in (SpaceAPI, DatabaseAPI):
            found.update(vars(cls))
    return found


CALLS = sorted(n for n, m in _members(DatabaseAPI).items() if inspect.iscoroutinefunction(m))


@pytest.mark.parametrize("name", CALLS)
def test_each_call_has_the_local_signature(name: str) -> None:
    ours = inspect.signature(getattr(RemoteDatabase, name))
    local = inspect.signature(getattr(koru.Database, name))
    assert inspect.iscoroutinefunction(getattr(RemoteDatabase, name))
    assert list(ours.parameters) == list(local.parameters)
    for p in local.parameters.values():
        assert ours.parameters[p.name].default == p.default, (name, p.name)
        assert ours.parameters[p.name].kind == p.kind, (name, p.name)


def test_the_server_serves_every_call_but_closing_its_database() -> None:
    assert set(CALLS) - DATABASE_CALLS == {"aclose"}


def test_mypy_checks_both_databases_satisfy_the_one_protocol(tmp_path: Path) -> None:
    from mypy import api

    good = tmp_path / "good.py"
    good.write_text(
        "import koru\n"
        "def local(db: koru.Database) -> koru.DatabaseAPI:\n    return db\n"
        "def remote(db: koru.RemoteDatabase) -> koru.DatabaseAPI:\n    return db\n"
        "def space(s: koru.RemoteSpace) -> koru.SpaceAPI:\n    return s\n"
    )
    # The negative control: a class missing one call does not satisfy it.
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import koru\n"
        "class Partial(koru.RemoteSpace):\n    stats = None\n"
        "def remote(db: Partial) -> koru.DatabaseAPI:\n    return db\n"
    )
    root = Path(__file__).resolve().parent.parent
    options = ["--strict", "--cache-dir", str(root / ".mypy_cache"), "--no-error-summary"]
    out, err, status = api.run([*options, str(good)])
    assert status == 0, out + err
    out, _, status = api.run([*options, str(bad)])
    assert status == 1 and "DatabaseAPI" in out, out


async def _scenario(db: DatabaseAPI) -> list[Any]:
    """Code written against the interface alone; what it saw, without ids or times."""
    seen: list[Any] = []
    v1 = await db.put("users", "alice", {"name": "Alice", "age": 30})
    await db.put("users", "bob", {"name": "Bob", "age": 25}, parents=[("users", "alice")])
    await db.put_batch([("users", "carol", {"name": "Carol", "age": 41}), ("tags", "t", [1, 2])])
    await db.put("users", "alice", {"name": "Alice", "age": 31})
    seen.append(await db.get("users", "alice"))
    seen.append((await db.get_at("users", "alice", v1.timestamp)).value)
    seen.append([v.value for v in await db.history("users", "alice")])
    seen.append(await db.contains("users", "carol"))
    seen.append(sorted(await db.keys("users")))
    seen.append(sorted(await db.namespaces()))
    seen.append([(c.op, c.path, c.old, c.new) for c in (await db.diff("users", "alice")).changes])
    await db.delete("tags", "t")
    seen.append(await db.contains("tags", "t"))
    q = koru.Query().where(koru.F("age") >= 30).order_by("age")
    seen.append(await db.query("users", q))
    seen.append(await db.query("users", {"aggregate": ["count"]}))
    await db.create_index("users", "age")
    seen.append((await db.explain("users", q)).indexes)
    seen.append([(i.namespace, i.field) for i in await db.list_indexes()])
    await db.create_view("adults", "users", q)
    seen.append(await db.view("adults"))
    seen.append([v.name for v in await db.list_views()])
    seen.append(await db.ancestors(("users", "bob")))
    seen.append(await db.are_connected(("users", "bob"), ("users", "alice")))
    await db.create_workspace("lab")
    lab = db.workspace("lab")
    await lab.put("notes", "n1", "in the lab")
    seen.append((await lab.get("notes", "n1"), await db.contains("notes", "n1")))
    seen.append([w.name for w in await db.workspaces()])
    await db.embed("docs", "d1", np.array([1.0, 0.0, 0.0], dtype=np.float32), model="m")
    await db.embed("docs", "d2", [0.0, 1.0, 0.0], model="m", metadata={"lang": "en"})
    hits = await db.embed_search("docs", [0.9, 0.1, 0.0], top_k=2, model="m")
    seen.append([(h.key, round(h.score, 4), h.metadata) for h in hits])
    stats = await db.stats()
    seen.append((stats.keys, stats.namespaces, type(stats.tiers).__name__))
    seen.append((len(await db.digest()), len(await db.roots()) > 0))
    seen.append(sum((await db.feed_heads()).values()) > 0)
    try:
        await db.get("users", "nobody")
    except koru.KeyNotFoundError as exc:
        seen.append(("missing", exc.namespace, exc.key))
    return seen


async def test_the_same_code_sees_the_same_on_a_local_and_a_remote_database() -> None:
    async with koru.open(":memory:", difficulty=DIFFICULTY) as local:
        expected = await _scenario(local)
    async with _served() as (db, port, _):
        owner = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            assert remote.node_id == db.node_id
            got = await _scenario(remote)
        assert await db.get("users", "alice") == {"name": "Alice", "age": 31}
    assert got == expected


# -- capabilities, refusals, errors --------------------------------------------------------


async def test_each_call_is_checked_against_the_clients_capabilities() -> None:
    async with _served() as (db, port, _):
        reader = await _member(db, actions=["read"], namespace="users")
        await db.put("users", "alice", 1)
        await db.put("secret", "s", 2)
        events = (await db.stats()).events
        async with koru.connect(f"ws://127.0.0.1:{port}", reader) as remote:
            assert await remote.get("users", "alice") == 1
            with pytest.raises(koru.PermissionDeniedError) as denied:
                await remote.put("users", "alice", 99)
            assert isinstance(denied.value, PermissionError)
            assert denied.value.action == "write" and denied.value.namespace == "users"
            with pytest.raises(koru.PermissionDeniedError):
                await remote.get("secret", "s")
            with pytest.raises(koru.PermissionDeniedError):
                await remote.digest()  # needs read on everything
            # Still usable after refusals.
            assert await remote.keys("users") == ["alice"]
        assert (await db.stats()).events == events
        assert await db.get("users", "alice") == 1


async def test_a_client_can_only_reach_the_interface() -> None:
    async with _served() as (db, port, _):
        owner = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            for method in ("aclose", "_allow_everything", "serve", "__class__", "challenge"):
                with pytest.raises(koru.InvalidArgumentError):
                    await remote._call(method)
            with pytest.raises(koru.InvalidArgumentError):
                await RemoteSpace(remote._link, ["nowhere", "x"])._call("get", "n", "k")  # type: ignore[list-item]
            # A call with arguments its signature refuses: a typed error, not a crash.
            with pytest.raises(koru.InvalidArgumentError):
                await remote._call("get", "n", "k", "extra")
            await remote.put("n", "k", 1)
            assert await remote.get("n", "k") == 1
        await db.put("n", "still", "open")  # the served database was not closed


async def test_a_malformed_request_gets_an_error_and_the_connection_stays() -> None:
    async with _served() as (db, port, _):
        owner = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            link = remote._link
            for payload in (b"c\xff\x00", b"c" + pack([None, "get"]), b"c" + pack("x")):
                with pytest.raises(koru.CodecError):
                    await link.call(payload)
            assert await remote.namespaces() == []
            assert remote.connections == 1


async def test_the_handshake_refuses_a_stranger_an_impostor_and_a_weak_identity() -> None:
    async with _served() as (db, port, _):
        member = await _member(db)
        url = f"127.0.0.1:{port}"
        # A stranger connects (its calls are refused one by one, by capability).
        async with koru.connect(url, _identity()) as stranger:
            with pytest.raises(koru.PermissionDeniedError):
                await stranger.get("users", "alice")
        # Pinning another server's key: refused before anything is sent.
        with pytest.raises(koru.HandshakeRefusedError):
            async with koru.connect(url, member, server_key=b"\x01" * 32):
                pass  # pragma: no cover
        node_key = db._authority.node.public_key
        async with koru.connect(url, member, server_key=node_key) as pinned:
            assert await pinned.keys("users") == []
        weak = koru.Identity.mine(0)
        if weak.work < DIFFICULTY:  # almost always: a key with no work mined
            with pytest.raises(koru.HandshakeRefusedError) as refused:
                async with koru.connect(url, weak):
                    pass  # pragma: no cover
            assert refused.value.code == 1008 and "proof" in refused.value.reason.lower()


async def test_an_unreachable_server_raises_connection_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import koru._remote as remote

    tried: list[int] = []
    opening = remote._Link._open

    async def counted(self: Any) -> Any:
        tried.append(1)
        return await opening(self)

    monkeypatch.setattr(remote, "RETRY_DELAYS", (0.0, 0.01, 0.02))
    monkeypatch.setattr(remote._Link, "_open", counted)
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with trio.fail_after(30), pytest.raises(koru.ConnectionLostError):
            async with koru.connect(f"127.0.0.1:{port}", _identity()):
                pass  # pragma: no cover
    assert len(tried) == 3  # one attempt per delay, then the error


async def test_grants_and_revocations_are_signed_by_the_client() -> None:
    async with _served() as (db, port, _):
        lead, bob = _identity(), _identity()
        await db.register(lead.public)
        leads = await db.grant(lead.public, namespace="team", actions="admin")
        url = f"127.0.0.1:{port}"
        async with koru.connect(url, lead) as remote:
            await remote.register(bob)  # its public half travels, never the secret
            grant = await remote.grant(bob, namespace="team", actions="read", parent=leads.id)
            assert grant.granter == lead.public_key
            await remote.put("team", "plan", "ship it")
            async with koru.connect(url, bob) as bobs:
                assert await bobs.get("team", "plan") == "ship it"
                assert await remote.check(lead, "admin", "team", "plan")
                await remote.revoke(grant)
                with pytest.raises(koru.PermissionDeniedError):
                    await bobs.get("team", "plan")


# -- lost connections ----------------------------------------------------------------------


async def test_a_write_retried_after_a_lost_answer_is_applied_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import koru._serving as serving

    original = serving.ClientEndpoint.serve
    cut: list[int] = []

    async def lose_first_answer(self: Any, payload: bytes) -> bytes:
        answer = await original(self, payload)
        if not cut and b"put" in payload:
            cut.append(1)
            raise RuntimeError("the connection breaks after the write, before its answer")
        return answer

    monkeypatch.setattr(serving.ClientEndpoint, "serve", lose_first_answer)
    async with _served() as (db, port, _):
        owner = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            version = await remote.put("orders", "o1", {"qty": 1})
            assert cut and remote.connections == 2  # the answer came on a new connection
            assert len(await db.history("orders", "o1")) == 1  # applied once
            assert (await db.get_versioned("orders", "o1")).write_id == version.write_id
            assert db._served_calls().repeated == 1


async def test_the_kept_answer_waits_for_the_first_attempt() -> None:
    served = ServedCalls(limit=2)
    runs: list[int] = []
    release = trio.Event()

    async def slow() -> bytes:
        runs.append(1)
        await release.wait()
        return b"done"

    answers: list[bytes] = []

    async def attempt() -> None:
        answers.append(await served.once((b"me", b"k" * 16), slow))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attempt)
        nursery.start_soon(attempt)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert answers == [b"done", b"done"] and runs == [1]
    # Bounded: older answers go first.
    for key in (b"a", b"b", b"c"):
        await served.once((b"me", key * 16), slow)
    assert served.kept((b"me", b"k" * 16)) is None and served.count == 2


async def test_a_subscription_resumes_with_no_gap_and_no_duplicate() -> None:
    async with _served() as (db, port, _):
        owner = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            got: list[tuple[str, Any]] = []
            async with remote.subscribe("n") as changes:
                await remote.put_batch([("n", f"k{i}", i) for i in range(5)])  # one event
                async for change in changes:
                    got.append((change.key, change.value))
                    if len(got) == 2:  # mid-event: the connection is lost
                        remote._link._runner.nursery.cancel_scope.cancel()
                        await db.put("n", "later", "x")
                    if len(got) == 6:
                        break
            assert got == [*((f"k{i}", i) for i in range(5)), ("later", "x")]
            assert remote.connections == 2


async def test_a_subscriber_that_falls_behind_is_cut_off() -> None:
    async with _served() as (db, port, _):
        owner = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            async with remote.subscribe("n", buffer=4) as changes:
                for i in range(40):
                    await db.put("n", f"k{i}", i)
                taken = []
                with pytest.raises(koru.LaggedError) as lagged:
                    async for change in changes:
                        taken.append(change.key)
                assert len(taken) < 40
            # Resuming from the position it names gives the rest, from where it stopped.
            async with remote.subscribe("n", from_position=lagged.value.position) as rest:
                async for change in rest:
                    if change.key == "k39":
                        break
            assert remote.connections == 1


async def test_an_expired_session_is_renewed_by_a_new_handshake() -> None:
    clock = StepClock()
    async with _served(clock) as (db, port, _):
        owner = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            await remote.put("n", "k", 1)
            clock.now += 2 * 3600 * 10**9  # past the session's hour
            assert await remote.get("n", "k") == 1
            assert remote.connections == 2


async def test_many_calls_at_once_are_all_answered() -> None:
    async with _served() as (db, port, _):
        owner = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            answers: dict[int, Any] = {}

            async def one(i: int) -> None:
                await remote.put("n", f"k{i}", i)
                answers[i] = await remote.get("n", f"k{i}")

            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(one, i)
            assert answers == {i: i for i in range(300)}


# -- the data of calls ---------------------------------------------------------------------

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    )


_values = st.recursive(_leaves, _containers, max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(_values)
def test_values_travel_with_their_types(value: Any) -> None:
    assert unpack(pack(value)) == value
    assert type(unpack(pack(value))) is type(value)


def test_records_arrays_queries_and_errors_travel_as_themselves() -> None:
    version = koru.Version("n", "k", "w" * 64, None, 5, None, "o" * 32, False)
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    query = koru.Query().where((koru.F("a") > 1) & ~(koru.F("b") == "x")).limit(3)
    back = unpack(pack([version, array, query, (1, (2, 3))]))
    assert back[0] == version and type(back[0]) is koru.Version
    assert back[1].dtype == np.float32 and np.array_equal(back[1], array)
    assert back[2] == query and back[3] == (1, (2, 3))
    error = unpack(pack_error(koru.NoValueAtTimeError("n", "k", 7)), errors=True)
    assert type(error) is koru.NoValueAtTimeError and error.at_ns == 7
    assert str(error) == str(koru.NoValueAtTimeError("n", "k", 7))


def test_what_cannot_travel_is_refused_with_a_typed_error() -> None:
    with pytest.raises(koru.CodecError):
        pack(object())
    with pytest.raises(koru.CodecError):
        pack(np.array(["text"]))
    # An error where a value is expected (a client cannot make the server raise).
    with pytest.raises(koru.CodecError):
        unpack(pack_error(koru.KeyNotFoundError("n", "k")))
    # An array whose bytes do not fit its shape; an unknown record; a built-in tag.
    import cbor2

    for bad in (
        cbor2.CBORTag(39993, ["<f4", [3], b"\x00" * 4]),
        cbor2.CBORTag(39991, ["Database"]),
        cbor2.CBORTag(28, [1]),
        cbor2.CBORTag(39992, ["KeyNotFoundError", "x", {}]),
    ):
        with pytest.raises(koru.CodecError):
            unpack(cbor2.dumps(bad))
    # An error class from outside the library's tree is not built from a peer's bytes.
    foreign = unpack(cbor2.dumps(cbor2.CBORTag(39992, ["SystemExit", "bye", {}])), errors=True)
    assert type(foreign) is koru.RemoteFailureError


async def test_a_server_gone_gives_a_typed_error_and_the_next_call_reconnects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import koru._remote as remote_module

    monkeypatch.setattr(remote_module, "RETRY_DELAYS", (0.0, 0.01))
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # free (closed again before the server binds it)
    async with koru.open(":memory:", difficulty=DIFFICULTY) as db:
        owner = await _member(db, actions=["admin"])

        async def server(scope: trio.CancelScope, task_status: Any) -> None:
            with scope:
                await db.serve("127.0.0.1", port, task_status=task_status)

        async with trio.open_nursery() as nursery:
            first = trio.CancelScope()
            await nursery.start(server, first)
            async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
                await remote.put("n", "k", 1)
                first.cancel()  # the server goes away
                with trio.fail_after(10), pytest.raises(koru.ConnectionLostError):
                    while True:  # until the client sees the connection gone
                        await remote.get("n", "k")
                        await trio.sleep(0.01)
                second = trio.CancelScope()
                await nursery.start(server, second)  # back again, on the same port
                assert await remote.get("n", "k") == 1
                assert remote.connections == 2
                second.cancel()
