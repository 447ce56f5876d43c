"""Workspaces: isolated spaces of one database. Two workspaces (and the default space)
never see each other's data, whatever the operations, across reopens, checkpoints and
replays; a name of one space can never be spelled in another; creating and dropping
are events; crafted events from a peer cannot open a way across."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock
from koru import (
    Database,
    InvalidDataError,
    NotFoundError,
    ReadOnlyError,
    SpaceAPI,
    WorkspaceDroppedError,
)
from koru.events import (
    STORAGE,
    WORKSPACE,
    LinkedPutEvent,
    PutEvent,
    ViewEvent,
    WorkspaceEvent,
    encode_event,
    encode_value,
    event_id,
    workspace_prefix,
)

SPACES = [None, "w1", "w2"]
NAMESPACES = ["users", "orders"]
KEYS = ["a", "b", "c"]


def space(db: Database, name: str | None) -> SpaceAPI:
    return db if name is None else db.workspace(name)


# -- the property: no space sees another's data -------------------------------------------

OPS = ["put"] * 5 + ["delete", "batch", "view", "index", "reopen", "checkpoint", "replay"]


@st.composite
def steps(draw: st.DrawFn) -> tuple[str, Any, str, str, int]:
    return (
        draw(st.sampled_from(OPS)),
        draw(st.sampled_from(SPACES)),
        draw(st.sampled_from(NAMESPACES)),
        draw(st.sampled_from(KEYS)),
        draw(st.integers(0, 99)),
    )


async def observed(s: SpaceAPI) -> dict[str, Any]:
    """Everything a space shows of its data."""
    out: dict[str, Any] = {"namespaces": await s.namespaces()}
    for ns in NAMESPACES:
        for key in KEYS:
            out[f"history {ns}/{key}"] = [v.value for v in await s.history(ns, key)]
            out[f"contains {ns}/{key}"] = await s.contains(ns, key)
        out[f"keys {ns}"] = await s.keys(ns)
        out[f"query {ns}"] = [tuple(r) for r in await s.query(ns, {})]
    out["views"] = [(v.name, v.namespace) for v in await s.list_views()]
    out["view rows"] = [[tuple(r) for r in await s.view(v.name)] for v in await s.list_views()]
    out["indexes"] = [(i.namespace, i.field) for i in await s.list_indexes()]
    return out


def expected(model: dict[str, Any]) -> dict[str, Any]:
    data, history = model["data"], model["history"]
    out: dict[str, Any] = {"namespaces": sorted({ns for ns, _ in data})}
    for ns in NAMESPACES:
        for key in KEYS:
            out[f"history {ns}/{key}"] = history.get((ns, key), [])
            out[f"contains {ns}/{key}"] = (ns, key) in data
        out[f"keys {ns}"] = sorted(k for n, k in data if n == ns)
        out[f"query {ns}"] = sorted((k, v) for (n, k), v in data.items() if n == ns)
    out["views"] = sorted(model["views"].items())
    out["view rows"] = [
        sorted((k, v) for (n, k), v in data.items() if n == ns and v["n"] >= 50)
        for _, ns in sorted(model["views"].items())
    ]
    out["indexes"] = sorted(model["indexes"])
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(steps(), min_size=5, max_size=35))
def test_spaces_never_see_each_others_data(ops: list[tuple[str, Any, str, str, int]]) -> None:
    async def main(path: Path) -> None:
        clock = StepClock()
        models: dict[Any, dict[str, Any]] = {
            s: {"data": {}, "history": {}, "views": {}, "indexes": set(), "writes": 0}
            for s in SPACES
        }
        cm = koru.open(path, sync="never", clock=clock)
        db = await cm.__aenter__()
        try:
            for op, name, ns, key, n in ops:
                s, model = space(db, name), models[name]
                data, history = model["data"], model["history"]
                # The same namespace and key names in every space: only the space
                # tells them apart.
                value = {"n": n, "space": name}
                if op == "put":
                    await s.put(ns, key, value)
                    data[(ns, key)] = value
                    history.setdefault((ns, key), []).append(value)
                    model["writes"] += 1
                elif op == "delete" and (ns, key) in data:
                    await s.delete(ns, key)
                    del data[(ns, key)]
                    history[(ns, key)].append(None)
                    model["writes"] += 1
                elif op == "batch":
                    items = [(ns, k, value) for k in KEYS]
                    await s.put_batch(items)
                    for _, k, v in items:
                        data[(ns, k)] = v
                        history.setdefault((ns, k), []).append(v)
                    model["writes"] += len(items)
                elif op == "view":
                    await s.create_view(f"big-{ns}", ns, {"where": ["gte", "n", 50]})
                    model["views"][f"big-{ns}"] = ns
                elif op == "index":
                    await s.create_index(ns, "n")
                    model["indexes"].add((ns, "n"))
                elif op == "checkpoint":
                    await db.checkpoint()
                elif op in ("reopen", "replay"):
                    await cm.__aexit__(None, None, None)
                    if op == "replay":
                        (path / "checkpoint").unlink(missing_ok=True)
                    cm = koru.open(path, sync="never", clock=clock)
                    db = await cm.__aenter__()
            for name in SPACES:
                assert await observed(space(db, name)) == expected(models[name]), name
            # A workspace exists from its first write (data, a view or an index).
            used = {
                n
                for n in SPACES
                if n is not None
                and (models[n]["writes"] or models[n]["views"] or models[n]["indexes"])
            }
            assert {w.name for w in await db.workspaces()} == used
            # Subscriptions from the log's start see their own space's changes only.
            for name in SPACES:
                s = space(db, name)
                await s.put("end", "mark", {"space": name})
                seen = 0
                async with s.subscribe(from_position=0) as changes:
                    async for change in changes:
                        if change.namespace == "end":
                            break
                        assert change.value is None or change.value["space"] == name
                        seen += 1
                assert seen == models[name]["writes"], name
        finally:
            await cm.__aexit__(None, None, None)

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        trio.run(main, Path(d) / "db")


# -- names that cross spaces ---------------------------------------------------------------

RESERVED_NS = workspace_prefix("w1") + "users"


def _calls_with_a_namespace() -> list[str]:
    return sorted(
        name
        for name, member in inspect.getmembers(SpaceAPI)
        if not name.startswith("_")
        and callable(member)
        and "namespace" in inspect.signature(member).parameters
    )


def _arguments(name: str, namespace: str) -> tuple[list[Any], dict[str, Any]]:
    member = getattr(SpaceAPI, name)
    args: list[Any] = []
    for p in list(inspect.signature(member).parameters.values())[1:]:
        optional = p.default is not inspect.Parameter.empty or p.kind is p.KEYWORD_ONLY
        if optional and p.name != "namespace":
            continue
        args.append(
            {
                "namespace": namespace,
                "key": "k",
                "value": 1,
                "field": "n",
                "query": {},
                "at": 10**18,
                "name": "v",
                "parents": ["p"],
            }[p.name]
        )
    return args, {}


@pytest.mark.parametrize("call", _calls_with_a_namespace())
@pytest.mark.parametrize("through", ["database", "workspace"])
async def test_no_call_takes_a_reserved_namespace(call: str, through: str) -> None:
    # A guard on the list: the data calls with a namespace are all covered.
    assert {"put", "get", "keys", "query", "create_view", "most_connected"} <= set(
        _calls_with_a_namespace()
    )
    async with koru.open(koru.MEMORY) as db:
        await db.workspace("w1").put("users", "k", {"secret": 1})
        s = space(db, None if through == "database" else "w2")
        args, kwargs = _arguments(call, RESERVED_NS)
        with pytest.raises(InvalidDataError, match="reserves"):
            if call == "subscribe":
                async with s.subscribe(*args, **kwargs):
                    pass  # pragma: no cover
            else:
                await getattr(s, call)(*args, **kwargs)
        with pytest.raises(InvalidDataError, match="reserves"):
            await s.put_batch([("ok", "k", 1), (RESERVED_NS, "k", 2)])
        assert await db.workspace("w1").get("users", "k") == {"secret": 1}
        assert await db.namespaces() == []


async def test_view_names_are_spaced_too() -> None:
    async with koru.open(koru.MEMORY) as db:
        w1, w2 = db.workspace("w1"), db.workspace("w2")
        for s, n in ((db, 0), (w1, 1), (w2, 2)):
            await s.put("users", "k", {"n": n})
            await s.create_view("v", "users", {})
        assert [tuple(r) for r in await db.view("v")] == [("k", {"n": 0})]
        assert [tuple(r) for r in await w1.view("v")] == [("k", {"n": 1})]
        assert [tuple(r) for r in await w2.view("v")] == [("k", {"n": 2})]
        await w1.delete_view("v")
        with pytest.raises(NotFoundError):
            await w1.view("v")
        assert [v.name for v in await db.list_views()] == ["v"]
        assert [v.name for v in await w2.list_views()] == ["v"]
        with pytest.raises(InvalidDataError, match="reserves"):
            await db.view(workspace_prefix("w2") + "v")


@pytest.mark.parametrize("name", ["", "a\x00b", "\x00w", "x" * 129, b"w", 3, "\ud800"])
async def test_bad_workspace_names(name: Any) -> None:
    async with koru.open(koru.MEMORY) as db:
        with pytest.raises(InvalidDataError):
            db.workspace(name)
        with pytest.raises(InvalidDataError):
            await db.create_workspace(name)


async def test_a_namespace_too_long_for_its_workspace_is_refused() -> None:
    async with koru.open(koru.MEMORY) as db:
        ws = db.workspace("w" * 128)
        room = koru.MAX_NAME_BYTES - len(workspace_prefix("w" * 128).encode())
        await ws.put("n" * room, "k", 1)
        with pytest.raises(InvalidDataError, match="over the"):
            await ws.put("n" * (room + 1), "k", 1)
        assert await ws.namespaces() == ["n" * room]
        [info] = await db.workspaces()
        assert info.name == "w" * 128 and info.dropped is None


# -- creating and dropping ------------------------------------------------------------------


async def test_dropping_is_final_and_the_history_stays_auditable(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db") as db:
        ws = db.workspace("tenant")
        assert await db.workspaces() == []
        await ws.put("users", "alice", {"v": 1})
        await ws.put("users", "alice", {"v": 2})
        assert [w.name for w in await db.workspaces()] == ["tenant"]
        assert await db.create_workspace("tenant") is False
        await db.drop_workspace("tenant")
        for call in (ws.get("users", "alice"), ws.put("users", "bob", 1), ws.namespaces()):
            with pytest.raises(WorkspaceDroppedError):
                await call
        with pytest.raises(WorkspaceDroppedError):
            await db.create_workspace("tenant")
        with pytest.raises(WorkspaceDroppedError):
            await db.drop_workspace("tenant")
        with pytest.raises(NotFoundError):
            await db.drop_workspace("nobody")
        assert await db.workspaces() == []
    for checkpoint in (True, False):
        if not checkpoint:
            (tmp_path / "db" / "checkpoint").unlink()
        async with koru.open(tmp_path / "db") as db:
            [info] = await db.workspaces(dropped=True)
            assert info.name == "tenant" and info.dropped is not None
            assert info.created is not None and info.created < info.dropped
            audit = db.audit_workspace("tenant")
            assert audit.readonly
            history = await audit.history("users", "alice")
            assert [h.value for h in history] == [{"v": 1}, {"v": 2}]
            assert history[0].namespace == "users"
            assert await audit.get("users", "alice") == {"v": 2}
            with pytest.raises(ReadOnlyError):
                await audit.put("users", "alice", 3)
            with pytest.raises(WorkspaceDroppedError):
                await db.workspace("tenant").get("users", "alice")


async def test_creation_is_an_event_of_the_workspace_agent(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db") as db:
        assert await db.create_workspace("a") is True
        assert await db.create_workspace("a") is False
        bad = db.workspace("b")
        with pytest.raises(InvalidDataError):
            await bad.put("users", "k", object())
        assert [w.name for w in await db.workspaces()] == ["a"]  # a refused write creates none
        events = await db.feed_events(db.node_id, WORKSPACE)
        assert len(events) == 1
    async with koru.open(tmp_path / "db", readonly=True) as db:
        assert [w.name for w in await db.workspaces()] == ["a"]
        with pytest.raises(ReadOnlyError):
            await db.workspace("a").put("users", "k", 1)


async def test_a_default_subscriber_never_lags_behind_a_workspace() -> None:
    async with koru.open(koru.MEMORY) as db:
        ws = db.workspace("busy")
        async with db.subscribe(buffer=1) as changes:
            for i in range(20):
                await ws.put("users", f"k{i}", i)  # never queued for the default space
            await db.put("users", "mine", 1)
            change = await changes.__anext__()
            assert (change.namespace, change.key) == ("users", "mine")


async def test_a_workspace_change_names_its_own_namespace() -> None:
    async with koru.open(koru.MEMORY) as db:
        ws = db.workspace("w")
        async with ws.subscribe("users") as changes:
            await db.put("users", "k", 0)
            await ws.put("users", "k", 1)
            await ws.delete("users", "k")
            first, second = await changes.__anext__(), await changes.__anext__()
        assert first.namespace == first.new.namespace == "users" and first.value == 1
        assert second.kind == "delete" and second.old is not None
        assert second.old.namespace == "users"


async def test_results_and_errors_name_the_callers_namespace() -> None:
    async with koru.open(koru.MEMORY) as db:
        ws = db.workspace("w")
        v = await ws.put("users", "k", {"a": 1}, ttl=3600)
        assert v.namespace == "users"
        await ws.put("users", "k", {"a": 2})
        assert (await ws.get_versioned("users", "k")).namespace == "users"
        d = await ws.diff("users", "k")
        assert d.old.namespace == d.new.namespace == "users"
        [batch] = await ws.put_batch([("orders", "o", 1)])
        assert batch.namespace == "orders"
        with pytest.raises(koru.KeyNotFoundError) as found:
            await ws.get("users", "nobody")
        assert found.value.namespace == "users" and "\x00" not in str(found.value)
        with pytest.raises(koru.NoValueAtTimeError) as at:
            await ws.get_at("users", "k", 10**18)
        assert at.value.namespace == "users"
        await ws.create_index("users", "a")
        [index] = await ws.list_indexes("users")
        assert index.namespace == "users" and await db.list_indexes() == []
        await ws.put("temp", "t", 1, ttl=60)
        assert [(e.namespace, e.key) for e in await ws.expiring(120)] == [("temp", "t")]
        assert await db.expiring(120) == []


# -- crafted events from a peer ---------------------------------------------------------------

PEER = b"p" * 16


def feed(agent: str, builders: list[Any], hlc: int = 10**18) -> list[bytes]:
    """A peer's feed for ``agent``: each builder turns a header into an event."""
    out: list[bytes] = []
    prev = None
    for seq, build in enumerate(builders, 1):
        data = encode_event(build((PEER, agent, seq, prev, hlc + seq)))
        out.append(data)
        prev = event_id(data)
    return out


def put(ns: str, key: str, value: Any) -> Any:
    return lambda h: PutEvent(*h, ns, key, encode_value(value), None)


async def test_crafted_names_from_a_peer_reach_no_space() -> None:
    w1 = workspace_prefix("w1")
    async with koru.open(koru.MEMORY) as db:
        result = await db.ingest(
            feed(
                STORAGE,
                [
                    put(w1 + "users", "k", "w1's"),
                    put("\x00junk", "k", "nobody's"),
                    put(w1 + "\x00ws\x00w2\x00users", "k", "nobody's either"),
                    put("\x00ws\x00\x00users", "k", "empty workspace"),
                ],
            )
        )
        assert result.accepted == 4
        assert await db.namespaces() == []
        assert await db.workspace("w1").namespaces() == ["users"]
        assert await db.workspace("w2").namespaces() == []
        assert await db.workspace("w1").get("users", "k") == "w1's"


async def test_a_crafted_view_over_another_spaces_namespace_is_no_view() -> None:
    w1 = workspace_prefix("w1")
    query = encode_value({})
    async with koru.open(koru.MEMORY) as db:
        await db.workspace("w1").put("users", "k", {"secret": 1})
        await db.put("users", "k", {"public": 1})
        events = feed(
            "perspective",
            [
                lambda h: ViewEvent(*h, "create", "peek", w1 + "users", query),
                lambda h: ViewEvent(*h, "create", w1 + "peek", "users", query),
            ],
        )
        assert (await db.ingest(events)).accepted == 2
        with pytest.raises(NotFoundError):
            await db.view("peek")
        with pytest.raises(NotFoundError):
            await db.workspace("w1").view("peek")
        assert await db.list_views() == []
        assert await db.workspace("w1").list_views() == []


async def test_crafted_workspace_and_lineage_events_are_refused() -> None:
    w1, w2 = workspace_prefix("w1"), workspace_prefix("w2")
    value = encode_value(1)

    def linked(ns: str, key: str, parents: tuple[tuple[str, str], ...]) -> Any:
        return lambda h: LinkedPutEvent(*h, ns, key, value, None, None, parents)

    bad: list[Any] = [
        # a workspace event outside the workspace log
        (STORAGE, lambda h: WorkspaceEvent(*h, "drop", "w1")),
        # a bad workspace name
        (WORKSPACE, lambda h: WorkspaceEvent(*h, "create", "a\x00b")),
        # links out of a workspace, into one, or from a malformed reserved name
        (STORAGE, linked(w1 + "users", "k", ((w2 + "users", "s"),))),
        (STORAGE, linked(w1 + "users", "k", (("users", "s"),))),
        (STORAGE, linked("users", "k", ((w1 + "users", "s"),))),
        (STORAGE, linked("\x00junk", "k", (("\x00junk", "s"),))),
        # a self-loop, a parent twice, no parents, too many
        (STORAGE, linked("users", "k", (("users", "k"),))),
        (STORAGE, linked("users", "k", (("users", "a"), ("users", "a")))),
        (STORAGE, linked("users", "k", ())),
        (STORAGE, linked("users", "k", tuple(("users", f"p{i}") for i in range(1001)))),
    ]
    async with koru.open(koru.MEMORY) as db:
        before = await db.digest()
        for agent, build in bad:
            result = await db.ingest(feed(agent, [build]))
            assert result.accepted == 0 and len(result.refused) == 1, build
        assert await db.digest() == before
        assert await db.workspaces(dropped=True) == []


async def test_a_drop_from_a_peer_closes_the_local_handle() -> None:
    async with koru.open(koru.MEMORY) as db:
        ws = db.workspace("shared")
        await ws.put("users", "k", 1)
        events = feed(WORKSPACE, [lambda h: WorkspaceEvent(*h, "drop", "shared")])
        assert (await db.ingest(events)).accepted == 1
        with pytest.raises(WorkspaceDroppedError):
            await ws.put("users", "k", 2)
        assert await db.audit_workspace("shared").get("users", "k") == 1
