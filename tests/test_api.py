"""The one interface: the local database satisfies :class:`koru.DatabaseAPI`, every
call of which is awaitable (mypy checks the types; this checks the runtime shape), and
a workspace handle satisfies its data part, :class:`koru.SpaceAPI`, with the same
signatures."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import trio

import koru
from koru import Database, DatabaseAPI, SpaceAPI, Workspace


def _members(protocol: type) -> dict[str, Any]:
    """The members a protocol declares, its bases' included."""
    found: dict[str, Any] = {}
    for cls in reversed(protocol.__mro__):
        if cls in (SpaceAPI, DatabaseAPI):
            found.update(vars(cls))
    return found


MEMBERS = _members(DatabaseAPI)
CALLS = sorted(name for name, member in MEMBERS.items() if inspect.iscoroutinefunction(member))
SPACE_CALLS = sorted(
    name for name, member in _members(SpaceAPI).items() if inspect.iscoroutinefunction(member)
)
#: Calls that open something for a block (``async with db.subscribe(...)``): their
#: entering is awaited, which a remote client can serve as well as a local one.
CONTEXTS = ["subscribe"]
#: Calls that only build a handle, with no I/O (its calls are awaited).
HANDLES = ["audit_workspace", "workspace"]
PROPERTIES = sorted(name for name, member in MEMBERS.items() if isinstance(member, property))


def test_the_interface_covers_the_data_api() -> None:
    # A guard on the lists below: a call dropped from the protocol fails here.
    assert set(CALLS) >= {
        "put", "put_batch", "delete", "get", "get_versioned", "get_at", "history",
        "contains", "keys", "namespaces", "diff", "ingest", "feed_heads", "feed_events",
        "stats", "roots", "digest", "checkpoint", "aclose", "create_workspace",
        "drop_workspace", "workspaces", "are_connected", "connection_path", "ancestors",
        "descendants", "most_connected", "put_with_causal_links",
    }  # fmt: skip
    assert PROPERTIES == ["node_id", "readonly"]
    # Every public callable of the protocol is a coroutine function, opens an async
    # context or builds a handle: no plain sync calls that could do I/O.
    public = [n for n, m in MEMBERS.items() if callable(m) and not n.startswith("_")]
    assert sorted(public) == sorted(CALLS + CONTEXTS + HANDLES)


def test_the_space_interface_is_the_data_calls_alone() -> None:
    # Nothing through which one workspace could reach another's data: the whole
    # database's events, feeds and lifecycle are the database's alone.
    assert not set(SPACE_CALLS) & {
        "ingest", "feed_heads", "feed_events", "roots", "digest", "checkpoint", "aclose",
        "stats", "genome", "processes", "create_workspace", "drop_workspace", "workspaces",
    }  # fmt: skip
    assert {"put", "get", "query", "create_view", "ancestors"} <= set(SPACE_CALLS)


@pytest.mark.parametrize("name", [*SPACE_CALLS, *CONTEXTS])
def test_a_workspace_has_each_data_call_with_the_database_signature(name: str) -> None:
    ours, theirs = getattr(Workspace, name), getattr(Database, name)
    assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs)
    assert inspect.signature(ours) == inspect.signature(theirs)


async def test_subscribe_opens_an_async_context_with_the_same_signature() -> None:
    for name in CONTEXTS:
        ours = inspect.signature(getattr(Database, name))
        assert list(ours.parameters) == list(inspect.signature(MEMBERS[name]).parameters)
    async with koru.open(":memory:") as db:
        opened = db.subscribe()
        assert hasattr(opened, "__aenter__") and hasattr(opened, "__aexit__")
        async with opened as changes:
            assert isinstance(changes, koru.Subscription)


@pytest.mark.parametrize("name", CALLS)
def test_each_call_is_a_coroutine_with_the_same_signature(name: str) -> None:
    local = getattr(Database, name)
    assert inspect.iscoroutinefunction(local), f"Database.{name} is not awaitable"
    ours = inspect.signature(local)
    theirs = inspect.signature(MEMBERS[name])
    assert list(ours.parameters) == list(theirs.parameters)
    for p in theirs.parameters.values():
        if p.default is not inspect.Parameter.empty and p.default is not ...:
            assert ours.parameters[p.name].default == p.default, (name, p.name)


async def use(db: DatabaseAPI) -> tuple[object, ...]:
    """Code written against the interface alone."""
    await db.put("n", "k", 1)
    return (await db.get("n", "k"), (await db.stats()).keys, len(await db.digest()))


async def test_a_database_serves_code_written_against_the_interface() -> None:
    async with koru.open(koru.MEMORY) as db:
        assert isinstance(db.node_id, str) and db.readonly is False
        assert await use(db) == (1, 1, 64)


async def test_stats_digest_and_roots_are_cancellation_points() -> None:
    async with koru.open(koru.MEMORY) as db:
        for call in (db.stats, db.digest, db.roots):
            with trio.CancelScope() as scope:
                scope.cancel()
                await call()
                pytest.fail(f"{call.__name__} ran in a cancelled scope")  # pragma: no cover
            assert scope.cancelled_caught


async def test_stats_still_answer_after_close_the_others_refuse() -> None:
    async with koru.open(koru.MEMORY) as db:
        await db.put("n", "k", 1)
    assert (await db.stats()).keys == 1
    for call in (db.digest, db.roots):
        with pytest.raises(koru.DatabaseClosedError):
            await call()
