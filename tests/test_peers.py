"""Peer sync: two or three databases over in-memory connections and websockets."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

import trio
import trio.testing

import koru
from koru._peering import _run
from koru.nursery import Limits, memory_pair

# Tests poll for convergence: what they wait for is a state of two databases.

DIFFICULTY = 4


@asynccontextmanager
async def _nodes(n: int, owner: koru.Identity | None = None):  # type: ignore[no-untyped-def]
    """``n`` in-memory databases, each enrolled by ``owner`` (one shared owner by
    default, so they accept each other as peers)."""
    owner = koru.Identity.mine(DIFFICULTY) if owner is None else owner
    async with AsyncExitStack() as stack:
        dbs = []
        for _ in range(n):
            db = await stack.enter_async_context(
                koru.open(":memory:", difficulty=DIFFICULTY, sync="os")
            )
            await db.enroll(owner)
            dbs.append(db)
        yield dbs


def _link(a, b, nursery, ends=None):  # type: ignore[no-untyped-def]
    """Connect ``b`` (client) to ``a`` (server) in memory; how each side ended goes
    to ``ends``."""
    ends = [] if ends is None else ends

    async def run(*args, **kw):  # type: ignore[no-untyped-def]
        ends.append(await _run(*args, **kw))

    ca, cb = memory_pair("b", "a")
    book_a, sessions_a = a._peering()
    book_b, sessions_b = b._peering()
    limits = a.peer_limits
    nursery.start_soon(
        lambda: run(a, book_a, ca, server=True, role="peer", limits=limits, sessions=sessions_a)
    )
    nursery.start_soon(
        lambda: run(b, book_b, cb, server=False, role="peer", limits=limits, sessions=sessions_b)
    )


async def _settled(*dbs) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(30):
        while True:
            digests = {await db.digest() for db in dbs}
            heads = [await db.feed_heads() for db in dbs]
            if len(digests) == 1 and all(h == heads[0] for h in heads):
                return
            await trio.sleep(0.05)


async def test_two_nodes_converge_and_stream_new_writes() -> None:
    async with _nodes(2) as (a, b):
        for i in range(50):
            await a.put("users", f"a{i}", {"n": i})
            await b.put("users", f"b{i}", {"n": i})
        async with trio.open_nursery() as nursery:
            _link(a, b, nursery)
            await _settled(a, b)
            assert await b.get("users", "a7") == {"n": 7}
            assert await a.get("users", "b49") == {"n": 49}
            # Live push: a new write on either side reaches the other.
            await a.put("users", "late", "from a")
            await b.delete("users", "a3")
            await _settled(a, b)
            assert await b.get("users", "late") == "from a"
            assert not await a.contains("users", "a3")
            nursery.cancel_scope.cancel()


async def test_identical_sets_cost_one_summary_each_way() -> None:
    async with _nodes(2) as (a, b):
        await a.put("k", "v", 1)
        async with trio.open_nursery() as nursery:
            _link(a, b, nursery)
            await _settled(a, b)
            nursery.cancel_scope.cancel()
        # A second connection between nodes that hold the same events.
        async with trio.open_nursery() as nursery:
            _link(a, b, nursery)
            with trio.fail_after(10):
                while not all(p.open for p in a._peer_protocols() + b._peer_protocols()):  # noqa: ASYNC110
                    await trio.sleep(0.01)
                await trio.sleep(0.5)
            protocols = a._peer_protocols() + b._peer_protocols()
            assert len(protocols) == 2
            for p in protocols:
                assert p.reconcile_bytes_sent <= 64, p.reconcile_bytes_sent
                assert p.events_sent == 0
                assert p.in_sync
            nursery.cancel_scope.cancel()


async def test_a_stranger_is_refused_with_policy_violation() -> None:
    # Two owners: nothing grants b anything on a.
    async with _nodes(1) as (a,), _nodes(1) as (b,):
        await b.put("secret", "k", 1)
        await a.mine_identity(DIFFICULTY)
        before = await a.feed_heads()
        ends: list = []
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                _link(a, b, nursery, ends)
        # The server refused b's AUTH: policy violation, on both sides.
        assert [end.code for end in ends] == [1008, 1008]
        assert all("refused" in end.reason for end in ends)
        assert not await a.contains("secret", "k")
        assert await a.feed_heads() != await b.feed_heads()
        # The grant b presented (its own owner's) counts for nothing on a: a did not
        # register b for it, nor write anything else.
        assert await a.feed_heads() == before


async def test_three_nodes_in_a_line_relay_each_others_events() -> None:
    async with _nodes(3) as (a, b, c), trio.open_nursery() as nursery:
        _link(a, b, nursery)  # a - b - c: a and c never meet
        _link(b, c, nursery)
        for i in range(20):
            await a.put("x", f"a{i}", i)
            await c.put("x", f"c{i}", i)
        await _settled(a, b, c)
        assert await c.get("x", "a19") == 19
        assert await a.get("x", "c0") == 0
        nursery.cancel_scope.cancel()


async def test_serve_and_join_over_websockets() -> None:
    async with _nodes(2) as (a, b):
        await a.put("n", "before", 1)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(a.serve, "127.0.0.1", 0)
            await nursery.start(b.join, f"127.0.0.1:{port}")
            await b.put("n", "from-b", 2)
            await _settled(a, b)
            assert await a.get("n", "from-b") == 2
            assert await b.get("n", "before") == 1
            nursery.cancel_scope.cancel()


async def test_gossiped_addresses_are_dialed_into_a_mesh() -> None:
    async with _nodes(3) as (a, b, c), trio.open_nursery() as nursery:
        port = await nursery.start(a.serve, "127.0.0.1", 0)
        for db in (b, c):
            await nursery.start(db.serve, "127.0.0.1", 0)
            await nursery.start(db.join, f"127.0.0.1:{port}")
        # b and c only know a; a tells each about the other, and they connect.
        with trio.fail_after(20):
            while not all(len(db._peering()[0].connected) == 2 for db in (a, b, c)):  # noqa: ASYNC110
                await trio.sleep(0.05)
        # One connection per pair of nodes: three in all, six ends.
        assert sum(len(db._peer_protocols()) for db in (a, b, c)) == 6
        await b.put("m", "k", "via the mesh")
        await _settled(a, b, c)
        assert await c.get("m", "k") == "via the mesh"
        nursery.cancel_scope.cancel()


async def test_bloom_mode_between_databases() -> None:
    async with _nodes(2) as (a, b):
        for db in (a, b):
            db.peer_limits = Limits(bloom_window=32)
        for i in range(40):
            await a.put("n", f"k{i}", i)
        async with trio.open_nursery() as nursery:
            _link(a, b, nursery)
            await _settled(a, b)
            nursery.cancel_scope.cancel()
        for i in range(40, 45):  # b is now 5 behind a's tail: the filter finds them
            await a.put("n", f"k{i}", i)
        async with trio.open_nursery() as nursery:
            _link(a, b, nursery)
            await _settled(a, b)
            assert await b.get("n", "k44") == 44
            nursery.cancel_scope.cancel()


async def test_enrolled_nodes_pass_each_other_definitions() -> None:
    async with _nodes(2) as (a, b):
        await a.put("users", "u1", {"age": 30})
        await a.create_index("users", "age")
        async with trio.open_nursery() as nursery:
            _link(a, b, nursery)
            await _settled(a, b)
            nursery.cancel_scope.cancel()
        assert [i.field for i in await b.list_indexes("users")] == ["age"]


async def test_events_are_never_echoed_back_to_the_peer_that_sent_them() -> None:
    async with _nodes(2) as (a, b), trio.open_nursery() as nursery:
        _link(a, b, nursery)
        await _settled(a, b)
        (pa,) = a._peer_protocols()
        (pb,) = b._peer_protocols()
        before = pb.events_sent
        for i in range(30):
            await a.put("echo", f"k{i}", i)
        await _settled(a, b)
        # b received a's 30 puts (and a's seal) and sent none of them back.
        assert pa.events_sent >= 30
        assert pb.events_sent == before
        nursery.cancel_scope.cancel()


async def test_feed_of_reads_the_place_of_real_events() -> None:
    from koru.nursery._peek import feed_of

    async with koru.open(":memory:", difficulty=DIFFICULTY, sync="os") as db:
        for i in range(3):
            await db.put("n", "k" * (1 + i * 40), "v" * (i * 300))
        await db.embed("v", "k", [1.0, 2.0, 3.0])
        heads = await db.feed_heads()
        for (origin, agent), seq in heads.items():
            for n, data in enumerate(await db.feed_events(origin, agent, 0, seq), 1):
                assert feed_of(data) == ((bytes.fromhex(origin), agent), n)
        assert feed_of(b"") is None
        assert feed_of(b"\x85\x01\x63put") is None
