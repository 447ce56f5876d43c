"""AuthorizedSpace.keys: the path that looks up the keys an identity's grants name
one by one (no wildcard) must answer exactly what walking the namespace with a
per-key capability check answers, whatever the grants' time windows, revocations,
mix of named and wildcard keys, the keys' deletions and ttl expiry, the space
(default or a workspace) and the transport (local handle or a remote client)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import koru
import koru._authorized_space as authorized_space
from koru import workspace_namespace

D = 4
SECOND = 10**9
START = 1_767_225_600 * SECOND


class Clock:
    """A wall clock moved by hand, one microsecond per reading (distinct stamps)."""

    def __init__(self) -> None:
        self.now = START + SECOND // 2  # readings sit between whole-second boundaries

    def now_ns(self) -> int:
        self.now += 1_000
        return self.now


def person(seed: int) -> koru.Identity:
    return koru.Identity.mine(D, rng=random.Random(seed))


SPACES = [None, "team"]
NAMESPACES = ["docs", "logs"]
KEYS = ["a", "b", "ab", "é", "a*", "z?"]
NS_GLOBS = [
    "docs",
    "logs",
    "*",
    "d*",
    workspace_namespace("team", "docs"),
    workspace_namespace("team"),
    workspace_namespace("other"),
]
KEY_GLOBS = ["a", "b", "ab", "é", "a*", "z?", "*", "?", "nobody"]

OPS = st.one_of(
    st.tuples(
        st.just("put"),
        st.sampled_from(SPACES),
        st.sampled_from(NAMESPACES),
        st.sampled_from(KEYS),
        st.sampled_from([None, None, 1, 2]),
    ),
    st.tuples(
        st.just("delete"),
        st.sampled_from(SPACES),
        st.sampled_from(NAMESPACES),
        st.sampled_from(KEYS),
    ),
    st.tuples(
        st.just("grant"),
        st.sampled_from(NS_GLOBS),
        st.sampled_from(KEY_GLOBS),
        st.sampled_from(["read", "write", "admin", "read,write"]),
        st.sampled_from([None, None, -1, 1, 2]),  # not_before, whole seconds from now
        st.sampled_from([None, None, 1, 2, 3]),  # expires
    ),
    st.tuples(st.just("revoke"), st.integers(0, 20)),
    st.tuples(st.just("advance"), st.integers(0, 2)),
    st.tuples(st.just("list"), st.sampled_from(SPACES), st.sampled_from(NAMESPACES)),
)


def _second(clock: Clock, offset: int) -> int:
    """A whole-second boundary ``offset`` seconds from now (readings never sit on one)."""
    return (clock.now // SECOND + offset) * SECOND


async def _slow(h: Any, namespace: str) -> list[str]:
    """What the handle answers walking the namespace (the named-key path off)."""
    held = authorized_space._NAMED_KEYS
    authorized_space._NAMED_KEYS = -1
    try:
        return list(await h.keys(namespace))
    finally:
        authorized_space._NAMED_KEYS = held


async def _oracle(db: koru.Database, who: Any, space: str | None, namespace: str) -> list[str]:
    """Every key the database lists, kept if ``db.check`` says ``who`` may read it."""
    target: Any = db if space is None else db.workspace(space)
    stored = namespace if space is None else workspace_namespace(space, namespace)
    return [k for k in await target.keys(namespace) if await db.check(who, "read", stored, k)]


async def _apply(
    db: koru.Database, clock: Clock, alice: koru.Identity, grants: list[Any], op: tuple[Any, ...]
) -> None:
    kind = op[0]
    if kind == "put":
        _, space, ns, key, ttl = op
        target: Any = db if space is None else db.workspace(space)
        await target.put(ns, key, 1, ttl=ttl)
    elif kind == "delete":
        _, space, ns, key = op
        target = db if space is None else db.workspace(space)
        if await target.contains(ns, key):
            await target.delete(ns, key)
    elif kind == "grant":
        _, ns, key, actions, not_before, expires = op
        terms: dict[str, Any] = {}
        if not_before is not None:
            terms["not_before"] = _second(clock, not_before)
        if expires is not None:
            terms["expires"] = _second(clock, expires + max(0, not_before or 0))
        try:
            grants.append(
                await db.grant(alice.public, namespace=ns, key=key, actions=actions, **terms)
            )
        except koru.InvalidGrantError as exc:  # the same terms as a grant revoked
            assert "was revoked" in str(exc), exc
            assert any(g.id in db._authority.state.revocations for g in grants), exc
    elif kind == "revoke":
        if grants:
            await db.revoke(grants[op[1] % len(grants)])
    elif kind == "advance":
        clock.now += op[1] * SECOND


async def _run_model(ops: list[tuple[Any, ...]]) -> None:
    clock = Clock()
    alice = person(1)
    grants: list[Any] = []
    async with koru.open(":memory:", difficulty=D, clock=clock, sync="os") as db:
        await db.register(alice.public)
        h = db.as_identity(alice)
        for op in [*ops, ("list", None, "docs"), ("list", "team", "docs")]:
            if op[0] != "list":
                await _apply(db, clock, alice, grants, op)
                continue
            _, space, ns = op
            handle = h if space is None else h.workspace(space)
            fast = await handle.keys(ns)
            slow = await _slow(handle, ns)
            expected = await _oracle(db, alice, space, ns)
            assert fast == slow == expected, (op, fast, slow, expected)


@settings(max_examples=120, suppress_health_check=list(HealthCheck))
@given(st.lists(OPS, min_size=1, max_size=30))
def test_named_keys_answer_what_walking_the_namespace_answers(ops: list[Any]) -> None:
    trio.run(_run_model, ops)


async def test_named_keys_under_time_windows_revocation_ttl_and_a_workspace() -> None:
    """The same comparison, spelled out: one case of each corner."""
    clock = Clock()
    alice = person(1)
    async with koru.open(":memory:", difficulty=D, clock=clock, sync="os") as db:
        await db.register(alice.public)
        team = db.workspace("team")
        for key in ("a", "b", "c", "d"):
            await db.put("docs", key, 1)
            await team.put("docs", key, 1)
        await team.put("docs", "e", 1, ttl=1)
        later = await db.grant(
            alice.public,
            namespace=workspace_namespace("team", "docs"),
            key="a",
            not_before=_second(clock, 1),
        )
        await db.grant(
            alice.public,
            namespace=workspace_namespace("team", "docs"),
            key="e",
            expires=_second(clock, 3),
        )
        ending = await db.grant(
            alice.public, namespace=workspace_namespace("team"), key="b", expires=_second(clock, 2)
        )
        revoked = await db.grant(alice.public, namespace="*", key="c")
        await db.grant(alice.public, namespace="docs", key="d", actions="write")  # no read
        h = db.as_identity(alice).workspace("team")
        seen = []
        for _ in range(4):
            fast = await h.keys("docs")
            assert fast == await _slow(h, "docs") == await _oracle(db, alice, "team", "docs")
            seen.append(fast)
            if len(seen) == 2:
                await db.revoke(revoked)
            clock.now += SECOND
        assert seen == [["b", "c", "e"], ["a", "b", "c"], ["a"], ["a"]]
        assert later.not_before and ending.expires
        # The default space's docs: only "c" was ever readable there, and it is revoked.
        assert await db.as_identity(alice).keys("docs") == []


async def test_named_keys_of_a_reserved_namespace_are_refused_as_a_walk_is() -> None:
    """A namespace no caller may pass (it starts with U+0000: a workspace's stored
    names) is refused with the typed error whichever path keys() takes: the named-key
    path asked each key with contains(), whose refusal of the namespace it took for a
    refusal of the key, and answered [] where a wildcard grant's walk raised."""
    alice = person(1)
    async with koru.open(":memory:", difficulty=D, clock=Clock(), sync="os") as db:
        await db.register(alice.public)
        await db.workspace("team").put("docs", "a", 1)
        stored = workspace_namespace("team", "docs")
        await db.grant(alice.public, namespace="*", key="a")
        h = db.as_identity(alice)
        with pytest.raises(koru.InvalidDataError):
            await _slow(h, stored)
        with pytest.raises(koru.InvalidDataError):
            await h.keys(stored)
        with pytest.raises(koru.InvalidDataError):
            await db.keys(stored)


async def test_named_keys_across_a_remote_client() -> None:
    clock = Clock()
    alice = person(1)
    async with (
        koru.open(":memory:", difficulty=D, clock=clock, sync="os") as db,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(db.serve)
        await db.register(alice.public)
        team = db.workspace("team")
        for key in ("a", "b", "c", "é"):
            await team.put("docs", key, 1)
            await db.put("docs", key, 1, ttl=2 if key == "b" else None)
        await db.grant(alice.public, namespace="docs", key="b")
        await db.grant(alice.public, namespace="docs", key="é")
        await db.grant(alice.public, namespace="*", key="missing")
        soon = await db.grant(
            alice.public,
            namespace=workspace_namespace("team", "docs"),
            key="c",
            expires=_second(clock, 2),
        )
        await db.grant(alice.public, namespace=workspace_namespace("team"), key="a")
        h = db.as_identity(alice)
        async with koru.connect(f"127.0.0.1:{port}", alice) as remote:
            for step in range(3):
                for space in (None, "team"):
                    far = remote if space is None else remote.workspace(space)
                    near = h if space is None else h.workspace(space)
                    got = await far.keys("docs")
                    assert got == await _slow(near, "docs")
                    assert got == await _oracle(db, alice, space, "docs"), (step, space)
                if step == 0:
                    assert await remote.keys("docs") == ["b", "é"]
                    assert await remote.workspace("team").keys("docs") == ["a", "c"]
                    await db.delete("docs", "é")
                clock.now += SECOND
            assert await remote.keys("docs") == []  # "b" expired, "é" deleted
            assert await remote.workspace("team").keys("docs") == ["a"]  # "c" ended
        assert soon.expires
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("space", [None, "team"])
async def test_named_keys_are_listed_from_one_state(space: str | None) -> None:
    """A listing of 200 named keys while a writer deletes them in order is some state
    the namespace was in (all of the keys from some point on), as a walk's is: the
    named-key path asked contains() key by key, yielding every 64th operation, so it
    listed k000 (deleted first) beside gaps left by later deletes."""
    alice = person(1)
    async with koru.open(":memory:", difficulty=D, clock=Clock(), sync="os") as db:
        await db.register(alice.public)
        names = [f"k{i:03}" for i in range(200)]
        target: Any = db if space is None else db.workspace(space)
        stored = "docs" if space is None else workspace_namespace(space, "docs")
        for key in names:
            await target.put("docs", key, 1)
            await db.grant(alice.public, namespace=stored, key=key)
        h: Any = db.as_identity(alice)
        if space is not None:
            h = h.workspace(space)
        for walk in (False, True, False):
            got: list[list[str]] = []

            async def lister(walk: bool = walk, got: list[list[str]] = got) -> None:
                got.append(await (_slow(h, "docs") if walk else h.keys("docs")))

            async def writer() -> None:
                for key in names:
                    await target.delete("docs", key)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(lister)
                nursery.start_soon(writer)
            assert any(got[0] == names[j:] for j in range(len(names) + 1)), (walk, got[0])
            for key in names:
                await target.put("docs", key, 1)


async def test_named_keys_of_a_dropped_workspace_as_a_walk_answers() -> None:
    """Dropped: the workspace handle refuses (WorkspaceDroppedError) on both paths;
    the audit handle still lists, on both paths."""
    alice = person(1)
    async with koru.open(":memory:", difficulty=D, clock=Clock(), sync="os") as db:
        await db.register(alice.public)
        for key in ("a", "b", "c"):
            await db.workspace("team").put("docs", key, 1)
        await db.grant(alice.public, namespace=workspace_namespace("team", "docs"), key="a")
        await db.grant(alice.public, namespace=workspace_namespace("team", "docs"), key="c")
        h = db.as_identity(alice)
        assert await h.workspace("team").keys("docs") == ["a", "c"]
        await db.drop_workspace("team")
        for walk in (False, True):
            with pytest.raises(koru.WorkspaceDroppedError):
                await (_slow if walk else lambda h, ns: h.keys(ns))(h.workspace("team"), "docs")
            audit = h.audit_workspace("team")
            listed = await (_slow(audit, "docs") if walk else audit.keys("docs"))
            assert listed == ["a", "c"], walk
