"""The query commands of ``kdelta`` (query, view, workspace, lineage, and
``--workspace``/``--parent`` on the data commands), run as subprocesses against real
databases: answers equal ``db.query``'s, the ``--where`` language reads into the data
form exactly, errors are one line with the documented exit codes, and one-shot queries
work beside a process that holds the database open."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from test_cli import failed, kdelta

import koru
from koru._cli._where import WhereError, parse_where

PEOPLE = {
    "alice": {"name": "Alice", "age": 31, "city": "Lyon", "tags": ["x", "y"]},
    "bob": {"name": "Bob", "age": 25, "city": "Paris"},
    "carol": {"name": "Carol", "age": 40, "city": "Lyon", "tags": ["x"], "address": {"zip": "01"}},
    "dan": {"name": "Dan", "age": None, "city": "Nice"},
    "eve": {"name": "Eve", "age": 31.5, "city": "Paris", "tags": []},
}


async def populate(path: Path) -> dict[str, Any]:
    async with koru.open(path) as db:
        for key, doc in PEOPLE.items():
            await db.put("users", key, {**doc, "age": 1} if key == "bob" else doc)
        before = (await db.get_versioned("users", "bob")).timestamp
        await trio.sleep(0.002)
        await db.put("users", "bob", PEOPLE["bob"])
        await db.checkpoint()
        await db.put("users", "frank", {"name": "Frank", "age": 52, "city": "Lyon"})
        await db.workspace("agent").put("users", "zed", {"name": "Zed", "age": 99})
        return {"before": before}


@pytest.fixture
def made(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "db"
    return path, trio.run(populate, path)


async def python_answer(path: Path, data: dict[str, Any], at: Any = None) -> Any:
    async with koru.open(path, readonly=True) as db:
        return await db.query("users", data, at)


def rows(result: Any) -> Any:
    if isinstance(result, list) and result and isinstance(result[0], koru.Row):
        return [{"key": r.key, "value": r.value} for r in result]
    if isinstance(result, list) and result and isinstance(result[0], koru.Group):
        return [{"group": g.group, "value": g.value} for g in result]
    return result


CASES: list[tuple[list[str], dict[str, Any]]] = [
    (
        ["--where", "age>=30 and city=Lyon"],
        {"where": ["and", ["gte", "age", 30], ["eq", "city", "Lyon"]]},
    ),
    (
        ["--where", "age>30", "--sort", "-age"],
        {"where": ["gt", "age", 30], "order_by": [["age", "desc"]]},
    ),
    (
        ["--sort", "city,-age", "--limit", "3", "--offset", "1"],
        {"order_by": [["city", "asc"], ["age", "desc"]], "limit": 3, "offset": 1},
    ),
    (["--select", "name,address.zip"], {"select": ["name", "address.zip"]}),
    (
        ["--where", "tags contains x or age<26"],
        {"where": ["or", ["contains", "tags", "x"], ["lt", "age", 26]]},
    ),
    (["--where", "name~^[AB]"], {"where": ["matches", "name", "^[AB]"]}),
    (
        ["--where", "not (city = Lyon) and tags exists"],
        {"where": ["and", ["not", ["eq", "city", "Lyon"]], ["exists", "tags", True]]},
    ),
    (["--where", "city in [Lyon, Nice]"], {"where": ["in", "city", ["Lyon", "Nice"]]}),
    (
        ["--where", "age missing or age = null"],
        {"where": ["or", ["exists", "age", False], ["eq", "age", None]]},
    ),
    (["--where-json", '["ne", "city", "Paris"]'], {"where": ["ne", "city", "Paris"]}),
    (["--count"], {"aggregate": ["count"]}),
    (["--count", "tags"], {"aggregate": ["count", "tags"]}),
    (["--sum", "age"], {"aggregate": ["sum", "age"]}),
    (
        ["--avg", "age", "--where", "city=Lyon"],
        {"aggregate": ["avg", "age"], "where": ["eq", "city", "Lyon"]},
    ),
    (["--min", "age"], {"aggregate": ["min", "age"]}),
    (["--max", "name"], {"aggregate": ["max", "name"]}),
    (["--distinct", "city"], {"aggregate": ["distinct", "city"]}),
    (["--count", "--group-by", "city"], {"aggregate": ["count"], "group_by": "city"}),
    (
        ["--avg", "age", "--group-by", "city", "--limit", "2"],
        {"aggregate": ["avg", "age"], "group_by": "city", "limit": 2},
    ),
]


@pytest.mark.parametrize(("argv", "data"), CASES)
def test_query_answers_as_the_database_does(
    made: tuple[Path, dict[str, Any]], argv: list[str], data: dict[str, Any]
) -> None:
    db, _ = made
    ran = kdelta(db, "--json", "query", "users", *argv)
    assert ran.code == 0, ran.err
    assert ran.json() == rows(trio.run(python_answer, db, data))


def test_query_at_a_past_time_and_in_a_workspace(made: tuple[Path, dict[str, Any]]) -> None:
    db, facts = made
    past = kdelta(
        db, "--json", "query", "users", "--where", "name=Bob", "--at", str(facts["before"])
    )
    assert past.json() == [{"key": "bob", "value": {**PEOPLE["bob"], "age": 1}}]
    now = kdelta(db, "--json", "query", "users", "--where", "name=Bob")
    assert now.json() == [{"key": "bob", "value": PEOPLE["bob"]}]
    mine = kdelta(db, "--json", "query", "users", "--workspace", "agent")
    assert mine.json() == [{"key": "zed", "value": {"name": "Zed", "age": 99}}]
    assert "zed" not in kdelta(db, "--json", "query", "users").out
    assert kdelta(db, "--json", "query", "users", "--workspace", "other").json() == []
    human = kdelta(db, "query", "users", "--where", "age>=40", "--sort", "-age")
    assert [line.split()[0] for line in human.out.splitlines()] == ["key", "frank", "carol"]
    assert kdelta(db, "query", "nobody").out.strip() == "(nothing matches)"
    assert kdelta(db, "query", "users", "--count", "--group-by", "city").out.startswith("group")


@pytest.mark.parametrize(
    ("argv", "code", "words"),
    [
        (["--where", "age>>3"], 2, ["--where", "expected a value"]),
        (["--where", "age>=30 and"], 2, ["ends too soon"]),
        (["--where", "(age>3"], 2, ["not closed"]),
        (["--where", "role in admin"], 2, ["takes a list"]),
        (["--where-json", "[1,"], 2, ["not valid JSON"]),
        (["--where-json", '["frob", "a", 1]'], 2, ["bad query", "frob"]),
        (["--sum", "name"], 2, ["non-number", "alice"]),
        (["--where", "name~(a"], 2, ["invalid regular expression"]),
        (["--sort", "a,,b"], 2, ["--sort"]),
        (["--at", "yesterday-ish"], 2, []),
        (["--workspace", "a\\x"], 0, []),
        (["--count", "--sum", "age"], 2, []),
    ],
)
def test_bad_queries_exit_2_with_one_line(
    made: tuple[Path, dict[str, Any]], argv: list[str], code: int, words: list[str]
) -> None:
    db, _ = made
    ran = kdelta(db, "query", "users", *argv)
    if code == 0:
        assert ran.code == 0
    elif argv[0] == "--count":
        assert ran.code == 2 and "not allowed with" in ran.err  # argparse's own usage
    else:
        failed(ran, code, *words)


async def test_a_query_reads_beside_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, sync="os") as db:
        await db.put("users", "a", {"n": 1})
        await db.checkpoint()
        await db.put("users", "b", {"n": 2})  # in the log, after the checkpoint
        ran = await trio.to_thread.run_sync(kdelta, path, "--json", "query", "users", "--sum", "n")
        assert ran.code == 0 and ran.json() == 3
        created = await trio.to_thread.run_sync(kdelta, path, "view", "create", "v", "users")
        failed(created, 3, "open for writing in another process")


def test_views_from_the_command_line(made: tuple[Path, dict[str, Any]]) -> None:
    db, _ = made
    created = kdelta(
        db, "view", "create", "lyon", "users", "--where", "city=Lyon", "--sort", "-age"
    )
    assert created.code == 0 and "created" in created.out
    assert (
        kdelta(db, "view", "create", "old", "users", "--avg", "age", "--group-by", "city").code == 0
    )
    listed = kdelta(db, "--json", "view", "list").json()
    assert [(v["name"], v["namespace"], v["error"]) for v in listed] == [
        ("lyon", "users", None),
        ("old", "users", None),
    ]
    assert listed[0]["query"] == {"where": ["eq", "city", "Lyon"], "order_by": [["age", "desc"]]}
    shown = kdelta(db, "--json", "view", "show", "lyon").json()
    assert [r["key"] for r in shown] == ["frank", "carol", "alice"]
    assert kdelta(db, "set", "users/gus", '{"city": "Lyon", "age": 60}').code == 0
    assert kdelta(db, "--json", "view", "show", "lyon").json()[0]["key"] == "gus"
    refreshed = kdelta(db, "--json", "view", "refresh", "old").json()
    assert {g["group"]: g["value"] for g in refreshed}["Nice"] is None
    assert kdelta(db, "view", "delete", "lyon").code == 0
    failed(kdelta(db, "view", "show", "lyon"), 1, "no view called 'lyon'")
    failed(kdelta(db, "view", "delete", "lyon"), 1, "no view")
    failed(kdelta(db, "view", "create", "bad", "users", "--where-json", '["x"]'), 2, "bad query")
    # A workspace's views are its own.
    assert kdelta(db, "view", "create", "lyon", "users", "--workspace", "agent").code == 0
    assert [
        r["key"]
        for r in kdelta(db, "--json", "view", "show", "lyon", "--workspace", "agent").json()
    ] == ["zed"]
    failed(kdelta(db, "view", "show", "lyon"), 1, "no view")
    assert kdelta(db, "view").code == 2


def test_workspaces_from_the_command_line(made: tuple[Path, dict[str, Any]]) -> None:
    db, _ = made
    assert [w["name"] for w in kdelta(db, "--json", "workspace", "list").json()] == ["agent"]
    assert kdelta(db, "workspace", "create", "tenant").out.strip() == "workspace tenant created"
    assert kdelta(db, "workspace", "create", "tenant").out.strip() == "workspace tenant exists"
    w = ["--workspace", "tenant"]
    assert kdelta(db, "set", "users/alice", '{"mine": 1}', *w).code == 0
    assert kdelta(db, "set", "users/alice", '{"mine": 2}', *w).code == 0
    got = kdelta(db, "--json", "get", "users/alice", *w).json()
    assert got["value"] == {"mine": 2} and got["namespace"] == "users"
    assert kdelta(db, "--json", "get", "users/alice").json()["value"] == PEOPLE["alice"]
    assert [r["value"] for r in kdelta(db, "--json", "log", "users/alice", *w).json()] == [
        {"mine": 2},
        {"mine": 1},
    ]
    assert kdelta(db, "--json", "diff", "users/alice", *w).json()["old"]["namespace"] == "users"
    assert kdelta(db, "--json", "keys", "users", *w).json() == ["alice"]
    assert kdelta(db, "--json", "namespaces", *w).json() == {"users": 1}
    assert "users" in kdelta(db, "--json", "namespaces").json()
    failed(kdelta(db, "get", "users/bob", *w), 1, "'users'/'bob'")
    assert kdelta(db, "delete", "users/alice", *w).code == 0
    assert kdelta(db, "--json", "keys", "users", *w).json() == []
    assert kdelta(db, "workspace", "drop", "tenant").code == 0
    failed(kdelta(db, "set", "users/x", "1", *w), 1, "was dropped")
    # The command line reads a dropped workspace's history (it is the audit tool).
    assert len(kdelta(db, "--json", "log", "users/alice", *w).json()) == 3
    listed = kdelta(db, "--json", "workspace", "list", "--dropped").json()
    assert [(x["name"], x["dropped"] is not None) for x in listed] == [
        ("agent", False),
        ("tenant", True),
    ]
    assert [x["name"] for x in kdelta(db, "--json", "workspace", "list").json()] == ["agent"]
    failed(kdelta(db, "workspace", "drop", "tenant"), 1, "was dropped")
    failed(kdelta(db, "workspace", "create", "tenant"), 1, "was dropped")
    failed(kdelta(db, "workspace", "drop", "nobody"), 1, "no workspace")
    failed(kdelta(db, "workspace", "create", "a" * 200), 2, "128-byte limit")
    failed(kdelta(db, "get", "users/alice", "--workspace", ""), 2, "empty")


def test_lineage_from_the_command_line(made: tuple[Path, dict[str, Any]]) -> None:
    db, _ = made
    ok = kdelta(
        db, "set", "reports/r1", '{"n": 2}', "--parent", "users/alice", "--parent", "users/bob"
    )
    assert ok.code == 0
    assert kdelta(db, "set", "reports/r2", "1", "--parent", "reports/r1").code == 0
    assert kdelta(db, "--json", "lineage", "ancestors", "reports/r2").json() == [
        {"namespace": "reports", "key": "r1"},
        {"namespace": "users", "key": "alice"},
        {"namespace": "users", "key": "bob"},
    ]
    assert kdelta(db, "lineage", "ancestors", "reports/r2", "--depth", "1").out == "reports/r1\n"
    assert kdelta(db, "lineage", "descendants", "users/bob").out == "reports/r1\nreports/r2\n"
    path = kdelta(db, "--json", "lineage", "path", "users/alice", "reports/r2").json()
    assert [p["key"] for p in path] == ["alice", "r1", "r2"]
    failed(kdelta(db, "lineage", "path", "users/alice", "users/bob"), 1, "no chain")
    top = kdelta(db, "--json", "lineage", "top", "reports", "-k", "1").json()
    assert top == [{"namespace": "reports", "key": "r1", "parents": 2, "children": 1, "links": 3}]
    failed(kdelta(db, "set", "reports/r3", "1", "--parent", "users/nobody"), 2, "no current value")
    failed(kdelta(db, "set", "reports/r3", "1", "--parent", "nonsense"), 2, "NAMESPACE/KEY")
    assert (
        kdelta(db, "set", "users/w", "1", "--workspace", "agent", "--parent", "users/zed").code == 0
    )
    assert (
        kdelta(db, "lineage", "ancestors", "users/w", "--workspace", "agent").out == "users/zed\n"
    )
    assert kdelta(db, "lineage", "ancestors", "users/w").out == ""


# -- the --where language -------------------------------------------------------------------

PATHS = st.from_regex(r"[a-z][a-z0-9_]{0,6}(\.[a-z0-9_]{1,4}){0,2}", fullmatch=True).filter(
    lambda p: p not in {"and", "or", "not", "in", "contains", "exists", "missing"}
)
VALUES = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
)
PATTERNS = st.from_regex(r"[\^a-z\[\]().*+?|$]{1,8}", fullmatch=True)
LEAVES = st.one_of(
    st.tuples(st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]), PATHS, VALUES).map(list),
    st.tuples(st.just("in"), PATHS, st.lists(VALUES, max_size=3)).map(list),
    st.tuples(st.just("contains"), PATHS, VALUES).map(list),
    st.tuples(st.just("exists"), PATHS, st.booleans()).map(list),
    st.tuples(st.just("matches"), PATHS, PATTERNS).map(list),
)
FILTERS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.tuples(st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=3)).map(
            lambda t: [t[0], *t[1]]
        ),
        inner.map(lambda f: ["not", f]),
    ),
    max_leaves=6,
)
_SYMBOLS = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:@/-]*")


def balanced(pattern: str) -> bool:
    """True if a raw pattern reads back whole: its parentheses balanced, no space."""
    depth = 0
    for char in pattern:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0 and "\\" not in pattern and " " not in pattern


def render(f: list[Any], bare: bool) -> str:
    """A filter in the --where language (values as JSON, or as bare words when they
    read back as the same text)."""

    def value(v: Any) -> str:
        if (
            bare
            and isinstance(v, str)
            and _BARE.fullmatch(v)
            and v.lower() not in {"and", "or", "not", "in", "contains", "exists", "missing"}
            and v not in {"true", "false", "null", "NaN", "Infinity"}
        ):
            return v
        return json.dumps(v)

    op = f[0]
    if op in ("and", "or"):
        return "(" + f" {op} ".join(render(p, bare) for p in f[1:]) + ")"
    if op == "not":
        return f"not {render(f[1], bare)}"
    if op == "in":
        return f"{f[1]} in [{', '.join(value(v) for v in f[2])}]"
    if op == "contains":
        return f"{f[1]} contains {value(f[2])}"
    if op == "exists":
        return f"{f[1]} {'exists' if f[2] else 'missing'}"
    if op == "matches":
        return f"{f[1]}~{f[2] if bare and balanced(f[2]) else json.dumps(f[2])}"
    return f"{f[1]}{_SYMBOLS[op]}{value(f[2])}"


@given(FILTERS, st.booleans())
def test_the_where_language_reads_into_the_data_form(f: list[Any], bare: bool) -> None:
    assert parse_where(render(f, bare)) == f


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ("age>=30 and city=Lyon", ["and", ["gte", "age", 30], ["eq", "city", "Lyon"]]),
        ("a=1 or b=2 and c=3", ["or", ["eq", "a", 1], ["and", ["eq", "b", 2], ["eq", "c", 3]]]),
        ("NOT a = 1", ["not", ["eq", "a", 1]]),
        ('zip="01234"', ["eq", "zip", "01234"]),
        ("zip=01234", ["eq", "zip", "01234"]),  # not JSON: a word
        ("x=NaN", ["eq", "x", "NaN"]),
        ('"full name"=Ann', ["eq", "full name", "Ann"]),
        ('meta={"a": [1, 2]}', ["eq", "meta", {"a": [1, 2]}]),
        ("tags=[1, x]", ["eq", "tags", [1, "x"]]),
        ("role in (admin, root)", ["in", "role", ["admin", "root"]]),
        ("role in []", ["in", "role", []]),
        ('name~"^A b"', ["matches", "name", "^A b"]),
        ("(name~^(A|B) and x=1)", ["and", ["matches", "name", "^(A|B)"], ["eq", "x", 1]]),
        ("(a~b\\))", ["matches", "a", "b\\)"]),
        ("d=2026-01-01T00:00:00Z", ["eq", "d", "2026-01-01T00:00:00Z"]),
    ],
)
def test_where_examples(text: str, data: Any) -> None:
    assert parse_where(text) == data


@pytest.mark.parametrize(
    "text", ["", "and", "a", "a=", "a=1 b=2", "(a=1", "a=1)", "a in x", "a in [1", "a=[1", "=1"]
)
def test_where_refuses_what_does_not_parse(text: str) -> None:
    with pytest.raises(WhereError):
        parse_where(text)
