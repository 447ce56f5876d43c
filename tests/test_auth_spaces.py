"""Auth across workspaces and lineage: an authorized handle's workspace handles check
every name in its stored form (a grant on ``docs`` reaches no workspace's ``docs``),
workspaces are created and dropped only by their administrators, a put's parents
need read, and lineage walks pass only through readable keys."""

from __future__ import annotations

import inspect
import random
from typing import Any

import pytest

import koru
from conftest import StepClock
from koru import SpaceAPI, workspace_namespace
from koru._authority import covers
from koru._authorized_space import AuthorizedSpace

D = 4


def person(seed: int) -> koru.Identity:
    return koru.Identity.mine(D, rng=random.Random(seed))


def db_open() -> Any:
    return koru.open(":memory:", difficulty=D, clock=StepClock(), sync="os")


def test_the_authorized_workspace_handle_follows_the_data_interface() -> None:
    calls = [n for n, m in vars(SpaceAPI).items() if inspect.iscoroutinefunction(m)]
    assert "ancestors" in calls and "put" in calls
    for name in calls:
        ours = getattr(AuthorizedSpace, name)
        assert inspect.iscoroutinefunction(ours), name
        theirs = inspect.signature(getattr(SpaceAPI, name))
        assert list(inspect.signature(ours).parameters) == list(theirs.parameters), name


def test_covers_is_exact_about_prefixes() -> None:
    team = workspace_namespace("team")
    assert covers("*", "") and covers("*", team[:-1])
    assert covers(team, team[:-1])
    assert not covers(team, "")  # the default space is not inside a workspace
    assert not covers(workspace_namespace("team", "docs"), team[:-1])
    assert not covers(team.replace("team", "te?m"), team[:-1])
    assert not covers(workspace_namespace("teams"), team[:-1])


async def test_a_grant_in_the_default_space_reaches_no_workspace() -> None:
    alice = person(1)
    async with db_open() as db:
        await db.register(alice)
        await db.grant(alice, namespace="docs", actions="read,write")
        await db.workspace("team").put("docs", "plan", "secret")
        h = db.as_identity(alice)
        await h.put("docs", "mine", 1)
        ws = h.workspace("team")
        with pytest.raises(koru.PermissionDeniedError):
            await ws.get("docs", "plan")
        with pytest.raises(koru.PermissionDeniedError):
            await ws.put("docs", "plan", "overwritten")
        assert await ws.keys("docs") == []
        assert await ws.namespaces() == []
        assert await db.workspace("team").get("docs", "plan") == "secret"


async def test_a_grant_on_a_workspace_reaches_it_alone() -> None:
    alice = person(1)
    async with db_open() as db:
        await db.register(alice)
        await db.grant(alice, namespace=workspace_namespace("team"), actions="read,write")
        await db.grant(alice, namespace=workspace_namespace("ops", "logs"), actions="read")
        await db.put("docs", "plan", "default")
        await db.workspace("ops").put("logs", "l1", 1)
        await db.workspace("ops").put("keys", "k1", 2)
        h = db.as_identity(alice)
        ws = h.workspace("team")
        await ws.put("docs", "plan", "team", parents=None)
        assert await ws.get("docs", "plan") == "team"
        assert (await ws.get_versioned("docs", "plan")).namespace == "docs"
        assert await ws.query("docs", {}) != []
        assert await ws.namespaces() == ["docs"]
        with pytest.raises(koru.PermissionDeniedError):
            await h.get("docs", "plan")  # the default space
        ops = h.workspace("ops")
        assert await ops.get("logs", "l1") == 1
        with pytest.raises(koru.PermissionDeniedError):
            await ops.get("keys", "k1")
        with pytest.raises(koru.PermissionDeniedError):
            await ops.put("logs", "l2", 2)  # read only
        assert await ops.namespaces() == ["logs"]
        listed = [w.name for w in await h.workspaces()]
        assert listed == ["ops", "team"]
        with pytest.raises(koru.PermissionDeniedError):
            await ops.query("keys", {})
        async with ws.subscribe() as sub:  # the whole workspace: allowed
            await db.workspace("team").put("docs", "next", 2)
            change = await sub.__anext__()
            assert (change.namespace, change.key) == ("docs", "next")
        with pytest.raises(koru.PermissionDeniedError):
            async with ops.subscribe():
                pass


async def test_creating_and_dropping_a_workspace_needs_admin_on_all_of_it() -> None:
    alice, bob = person(1), person(2)
    async with db_open() as db:
        for p in (alice, bob):
            await db.register(p)
        await db.grant(alice, namespace=workspace_namespace("team"), actions="admin")
        await db.grant(bob, namespace=workspace_namespace("team", "docs"), actions="admin")
        a, b = db.as_identity(alice), db.as_identity(bob)
        with pytest.raises(koru.PermissionDeniedError):
            await b.create_workspace("team")
        with pytest.raises(koru.PermissionDeniedError):
            await a.create_workspace("other")
        assert await a.create_workspace("team")
        assert [w.name for w in await db.workspaces()] == ["team"]
        with pytest.raises(koru.PermissionDeniedError):
            await b.drop_workspace("team")
        await a.drop_workspace("team")
        assert await db.workspaces() == []
        with pytest.raises(koru.InvalidDataError):
            await a.create_workspace("")


async def test_closing_the_handle_closes_its_workspace_handles() -> None:
    alice = person(1)
    async with db_open() as db:
        await db.register(alice)
        await db.grant(alice, actions="read,write")
        h = db.as_identity(alice)
        ws = h.workspace("team")
        await ws.put("a", "b", 1)
        await h.aclose()
        with pytest.raises(koru.DatabaseClosedError):
            await ws.get("a", "b")
        with pytest.raises(koru.DatabaseClosedError):
            await h.workspace("team").get("a", "b")


async def test_a_put_links_only_parents_the_identity_may_read() -> None:
    alice = person(1)
    async with db_open() as db:
        await db.register(alice)
        await db.grant(alice, namespace="notes", actions="read,write")
        await db.grant(alice, namespace="public", actions="read")
        await db.put("secret", "s", 1)
        await db.put("public", "p", 1)
        await db.put("notes", "n0", 1)
        h = db.as_identity(alice)
        await h.put("notes", "n1", 2, parents=[("public", "p"), "n0"])
        assert await db.ancestors(("notes", "n1")) == [("notes", "n0"), ("public", "p")]
        for parents in ([("secret", "s")], [("secret", "missing")]):
            # refused the same way whether the parent exists or not: no oracle
            with pytest.raises(koru.PermissionDeniedError):
                await h.put("notes", "n2", 3, parents=parents)
        with pytest.raises(koru.PermissionDeniedError):
            await h.put_with_causal_links("notes", "n2", 3, [("secret", "s")])
        assert not await db.contains("notes", "n2")

        class Shifty:
            """Parents that answer differently the second time they are read."""

            reads = 0

            def __iter__(self) -> Any:
                self.reads += 1
                return iter([("public", "p")] if self.reads == 1 else [("secret", "s")])

        await h.put("notes", "n3", 4, parents=Shifty())
        assert await db.ancestors(("notes", "n3")) == [("public", "p")]
        with pytest.raises(koru.InvalidParentError):
            await h.put("notes", "n4", 5, parents=[("public", "nothing")])


async def test_lineage_walks_pass_only_through_readable_keys() -> None:
    alice = person(1)
    async with db_open() as db:
        await db.register(alice)
        await db.grant(alice, namespace="open", actions="read")
        # open/a -> secret/b -> open/c, and open/a -> open/d
        await db.put("open", "a", 1)
        await db.put("secret", "b", 1, parents=[("open", "a")])
        await db.put("open", "c", 1, parents=[("secret", "b")])
        await db.put("open", "d", 1, parents=[("open", "a")])
        h = db.as_identity(alice)
        assert await db.descendants(("open", "a")) == [
            ("open", "d"),
            ("secret", "b"),
            ("open", "c"),
        ]
        assert await h.descendants(("open", "a")) == [("open", "d")]
        assert await h.ancestors(("open", "c")) == []
        assert await db.are_connected(("open", "a"), ("open", "c"))
        assert not await h.are_connected(("open", "a"), ("open", "c"))
        assert await h.connection_path(("open", "a"), ("open", "d")) == [
            ("open", "a"),
            ("open", "d"),
        ]
        with pytest.raises(koru.PermissionDeniedError):
            await h.ancestors(("secret", "b"))
        with pytest.raises(koru.PermissionDeniedError):
            await h.connection_path(("open", "a"), ("secret", "b"))
        with pytest.raises(koru.PermissionDeniedError):
            await h.most_connected("secret")
        ranked = await h.most_connected("open")
        assert ranked[0].key == "a"
        with pytest.raises(koru.InvalidArgumentError):
            await h.ancestors("open/a")  # type: ignore[arg-type]


async def test_a_workspace_walk_keeps_to_the_workspace_and_the_readable() -> None:
    alice = person(1)
    async with db_open() as db:
        await db.register(alice)
        await db.grant(alice, namespace=workspace_namespace("team", "open"), actions="read")
        team = db.workspace("team")
        await team.put("open", "a", 1)
        await team.put("hidden", "b", 1, parents=[("open", "a")])
        await team.put("open", "c", 1, parents=[("open", "a")])
        ws = db.as_identity(alice).workspace("team")
        assert await ws.descendants(("open", "a")) == [("open", "c")]
        assert await team.descendants(("open", "a")) == [("hidden", "b"), ("open", "c")]
        await db.drop_workspace("team")
        with pytest.raises(koru.WorkspaceDroppedError):
            await ws.descendants(("open", "a"))
        audit = db.as_identity(alice).audit_workspace("team")
        assert await audit.get("open", "a") == 1
        with pytest.raises(koru.PermissionDeniedError) as denied:
            await audit.put("open", "z", 1)  # checked first: alice may only read
        assert denied.value.workspace == "team" and denied.value.namespace == "open"
        assert "in workspace 'team'" in str(denied.value)
        await db.grant(alice, namespace=workspace_namespace("team"), actions="write")
        with pytest.raises(koru.ReadOnlyError):
            await audit.put("open", "z", 1)
