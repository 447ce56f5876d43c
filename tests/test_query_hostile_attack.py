"""Hostile input to the query language (h-query2): expressions nested past Python's
recursion limit on the command line, and filters whose patterns together expand to
more automaton states than anything can build in time. Each must be refused with a
typed error, quickly: never a traceback, a hang or an exhausted memory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

import koru
from koru import F, InvalidQueryError, Query
from koru._cli import main
from koru.projections._filters import Compare, Contains, In


@pytest.mark.parametrize(
    ("option", "text"),
    [
        ("--where", "not " * 5000 + "a=1"),
        ("--where", "(" * 5000 + "a=1" + ")" * 5000),
        ("--where", "a in " + "[" * 5000 + "1" + "]" * 5000),
        ("--where", "a = " + "[" * 5000 + "1" + "]" * 5000),
        ("--where-json", "[" * 100_000 + "]" * 100_000),
    ],
    ids=["not", "parentheses", "in-list", "value-list", "json"],
)
def test_a_where_nested_past_the_recursion_limit_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, text: str
) -> None:
    """Attack: ``kdelta query NS --where`` (or ``--where-json``) with an expression
    nested thousands deep. The parser and json.loads recurse, and RecursionError
    escaped main() as a traceback. Must hold: a one-line usage error, exit 2, for
    ``query`` and ``view create`` alike (before the database is opened)."""
    for command in (["query", "users"], ["view", "create", "v", "users"]):
        code = main(["--db", str(tmp_path / "db"), *command, option, text])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("kdelta: ") and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_a_filter_of_many_large_patterns_is_refused_quickly() -> None:
    """Attack: a query's data form (what a remote client sends, what a peer's view
    definition carries, folded again at every replay) with 10,000 ``matches``
    conditions, each a different pattern just under the per-pattern limit of 20,000
    automaton states. Each was compiled in turn: 100 of them took 7 s, 10,000 would
    take 10 minutes and gigabytes. Must hold: the patterns of one filter share the
    budget, so the query is refused (InvalidQueryError naming the condition) within a
    fraction of a second, from the data form and from Python alike; a filter of many
    small patterns still compiles."""
    big = [["matches", "a", f"(?:a{{100}}){{{199 - i % 50}}}b"] for i in range(10_000)]
    began = time.perf_counter()
    with pytest.raises(InvalidQueryError, match="in all") as caught:
        Query.from_data({"where": ["or", *big]})
    assert time.perf_counter() - began < 1.0
    assert caught.value.field == "where[2][2]"
    one = F("a").matches("(?:a{100}){199}b")
    with pytest.raises(InvalidQueryError, match="in all"):
        Query().where(one | F("a").matches("(?:a{100}){198}b"))
    small = Query.from_data({"where": ["or", *[["matches", "a", f"^x{i}$"] for i in range(2000)]]})
    assert small.to_data()["where"][1] == ["matches", "a", "^x0$"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (Query(filter=None, skip=-5), "offset"),
        (Query(take=-1), "limit"),
        (Query(skip=True), "offset"),
        (Query(filter="nonsense"), "where"),  # type: ignore[arg-type]
        (Query(fields=("a..b",)), "select[0]"),
        (Query(fields=["a"]), "select"),  # type: ignore[arg-type]
        (Query(order=(("a", 3),)), "order_by[0]"),  # type: ignore[arg-type]
        (Query(order=(("", False),)), "order_by[0]"),
        (Query(aggregate=("bogus", None)), "aggregate"),
        (Query(aggregate=(["sum"], "a")), "aggregate"),  # type: ignore[arg-type]
        (Query(aggregate=("sum", None)), "aggregate"),
        (Query(group=""), "group_by"),
    ],
)
async def test_a_query_built_by_its_constructor_is_checked_like_one_built_by_methods(
    query: Query, field: str
) -> None:
    """Attack: ``Query(...)`` called directly with the parts its building methods
    refuse (its attributes are public). ``Query(skip=-5)`` answered the last five
    rows, ``Query(take=-1)`` all rows but the last, a bogus aggregation raised
    AssertionError, a filter that is no filter AttributeError. Must hold: the
    database refuses it with InvalidQueryError naming the part, for a query, a view
    and an explanation alike, and writes nothing."""
    import koru

    async with koru.open(":memory:") as db:
        for i in range(8):
            await db.put("u", f"k{i}", {"a": i})
        for call in (
            lambda: db.query("u", query),
            lambda: db.create_view("v", "u", query),
            lambda: db.explain("u", query),
        ):
            with pytest.raises(InvalidQueryError) as caught:
                await call()
            assert caught.value.field == field
        assert await db.list_views() == []


async def test_a_filter_nested_100000_deep_in_the_constructor_is_refused() -> None:
    """Attack: ``Query(filter=f)`` with ``f`` built by applying ``~`` 100,000 times
    (``where`` refuses it, the constructor did not check). The predicate compiler
    recursed: RecursionError from db.query and create_view. Must hold:
    InvalidQueryError, quickly."""
    import koru

    f = F("a") == 1
    for _ in range(100_000):
        f = ~f
    async with koru.open(":memory:") as db:
        await db.put("u", "k", {"a": 1})
        with pytest.raises(InvalidQueryError, match="deeper"):
            await db.query("u", Query(filter=f))
        with pytest.raises(InvalidQueryError, match="deeper"):
            await db.create_view("v", "u", Query(filter=f))


def test_an_aggregation_named_by_a_list_in_the_data_form_is_refused() -> None:
    """Attack: the data form ``{"aggregate": [["sum"], "a"]}`` (what a remote client
    or a peer's view definition may carry): the check ``op in AGGREGATES`` hashed a
    list and raised TypeError. Must hold: InvalidQueryError naming ``aggregate``."""
    for op in (["sum"], {"op": "sum"}):
        with pytest.raises(InvalidQueryError) as caught:
            Query.from_data({"aggregate": [op, "a"]})
        assert caught.value.field == "aggregate"


async def test_a_grouped_sum_over_non_numbers_names_the_same_key_in_a_view_and_a_scan() -> None:
    """Attack: a ``group_by`` sum where two groups hold non-numbers, the group met
    first (by key) holding only a later bad key. The scan raised naming the first
    group's bad key, a view the bad key of the group that arrived first in its
    history: the same query, two different errors, depending on write order. Must
    hold: both name the least bad key of all (as an ungrouped sum does)."""
    import koru

    q = Query().group_by("g").sum("a")
    async with koru.open(":memory:") as db:
        await db.create_view("v", "u", q)
        await db.put("u", "k9", {"g": "late", "a": "nine"})
        await db.put("u", "k0", {"g": "early", "a": 1})
        await db.put("u", "k5", {"g": "early", "a": "five"})
        await db.put("u", "k1", {"g": "late", "a": 1})
        await db.put("u", "k3", {"g": "late", "a": [3]})
        for read in (lambda: db.query("u", q), lambda: db.view("v")):
            with pytest.raises(InvalidQueryError, match="key 'k3' holds list"):
                await read()


@pytest.mark.parametrize(
    "build",
    [
        lambda: Query().where(F("a.\ud800") == 1),
        lambda: Query().where(F("a").matches("x\udc00")),
        lambda: Query().order_by("\ud800"),
        lambda: Query().group_by("\ud800").count(),
        lambda: Query().select("b", "\udfff"),
        lambda: Query.from_data({"where": ["exists", "\ud800", True]}),
    ],
)
async def test_a_path_or_pattern_with_a_lone_surrogate_is_refused_as_a_bad_query(
    build: object,
) -> None:
    """Attack: a path or a ``matches`` pattern holding a lone surrogate (what
    ``json.loads('"\\\\ud800"')`` gives). Paths were checked with ``surrogatepass``:
    db.query accepted them, create_view then failed with InvalidDataError when
    encoding the definition, and create_index with a raw UnicodeEncodeError. Must
    hold: InvalidQueryError where the query is built; create_index refuses such a
    path with InvalidQueryError too, and nothing is written."""
    import koru

    with pytest.raises(InvalidQueryError, match="surrogate"):
        build()  # type: ignore[operator]
    async with koru.open(":memory:") as db:
        with pytest.raises(InvalidQueryError, match="surrogate"):
            await db.create_index("u", "a.\ud800")
        assert await db.list_indexes() == []


@pytest.mark.parametrize(
    "build",
    [
        lambda: Query().offset(2**64),
        lambda: Query().limit(2**70),
        lambda: Query().group_by("a").limit(10**30),
        lambda: Query.from_data({"offset": 2**64}),
    ],
)
async def test_an_offset_or_limit_past_64_bits_is_refused_as_a_bad_query(build: object) -> None:
    """Attack: ``limit(2**70)`` (or ``--limit 1000000000000000000000000`` on the
    command line). db.query took it, create_view then failed with InvalidDataError
    (a CBOR int stops at 64 bits), so a query and a view of it disagreed about what is
    a valid query. Must hold: InvalidQueryError naming offset or limit where it is
    built; 2**64 - 1 itself is taken and pages as no limit would."""
    import koru

    with pytest.raises(InvalidQueryError, match="64 bits") as caught:
        build()  # type: ignore[operator]
    assert caught.value.field in ("offset", "limit")
    async with koru.open(":memory:") as db:
        await db.put("u", "a", {"a": 1})
        q = Query().limit(2**64 - 1)
        await db.create_view("v", "u", q)
        assert await db.view("v") == await db.query("u", q) == [koru.Row("a", {"a": 1})]


async def test_a_valid_query_too_deep_to_store_is_refused_as_a_view_with_a_query_error() -> None:
    """Attack: create_view of queries db.query answers, whose data form nests deeper
    than a stored value may (64 levels): a filter 63 levels deep, or an operand 63
    levels deep. create_view raised InvalidDataError ("value nests deeper than 64
    levels"), an error about a value the caller never wrote. Must hold:
    InvalidQueryError naming the query and saying why, and no view."""
    import koru

    deep: object = 1
    for _ in range(63):
        deep = [deep]
    f = F("a") == 1
    for _ in range(63):
        f = ~f
    async with koru.open(":memory:") as db:
        await db.put("u", "k", {"a": deep})
        for q in (Query().where(F("a") == deep), Query().where(f)):
            assert len(await db.query("u", q)) == 1
            with pytest.raises(InvalidQueryError, match="view definition") as caught:
                await db.create_view("v", "u", q)
            assert caught.value.field == "query"
        assert await db.list_views() == []


@pytest.mark.parametrize(
    ("source", "text", "found"),
    [
        ("(?:){4294967294}", "", True),
        ("x(?:){4294967294}y", "axyb", True),
        ("x(?:(?:){0}){4294967294}y", "x y", False),
        ("(?:(?:){65535}){65535}z", "z", True),
    ],
)
def test_a_huge_count_of_an_empty_group_compiles_at_once(
    source: str, text: str, found: bool
) -> None:
    """Attack: ``(?:){4294967294}``, 17 characters: a counted repeat of a body that
    adds no automaton state, so the 20,000-state limit never stopped the four
    billion turns of the construction loop (a million took 0.5 s: this one, over
    half an hour on the event loop). Must hold: compiled at once, and the answer
    is that of the pattern without the empty repeat (re.search itself spins on
    these, so it is not asked)."""
    from koru.projections._regex import compile_pattern

    began = time.perf_counter()
    pattern = compile_pattern(source, "p")
    assert time.perf_counter() - began < 0.5
    assert pattern.search(text) is found


def test_case_insensitive_wide_ranges_count_against_the_budget() -> None:
    """Attack: patterns made of case-insensitive classes over wide ranges, each
    different (``(?i)[\\u0101-\\uffff][\\u0102-\\uffff]...``): one automaton state
    each, but re folds every code point of every range when compiling (the pattern,
    then each atom), about 14 ms a class. 20 such patterns of 60 classes took 17 s,
    and the state budget let 300 of them through (over 4 minutes, for a remote query
    or a peer's view definition at every replay). Must hold: the folded code points
    count against the filter's budget (256 to a state), so such a filter is refused
    within about a second; a single (?i) class over all of Unicode still compiles."""
    from koru.projections._regex import compile_pattern

    start = 0x100

    def pattern() -> str:
        nonlocal start
        start += 60
        return "(?i)" + "".join(f"[\\u{start + i:04x}-\\uffff]" for i in range(60))

    began = time.perf_counter()
    with pytest.raises(InvalidQueryError, match="case-insensitive"):
        Query.from_data({"where": ["or", *[["matches", "a", pattern()] for _ in range(20)]]})
    assert time.perf_counter() - began < 2.0
    assert compile_pattern("(?i)[\\x00-\\U0010ffff]", "p").search("K")


def test_the_transition_cache_holds_a_bounded_number_of_automaton_states() -> None:
    """Attack: ``a{1,9990}b`` (10 characters) over 4,000 a's: every character makes
    a new DFA state holding one more automaton state, and the cache bounded only the
    count of DFA states (4,000), not their sizes: 330 MB kept for as long as the
    pattern lives (a view's, or one of the 256 compiled queries the engine keeps).
    Must hold: the cached DFA states hold at most 250,000 automaton states together,
    and the answer is unchanged."""
    from koru.projections._regex import compile_pattern

    pattern = compile_pattern("a{1,2000}b", "p")
    assert pattern.search("a" * 1500) is False
    held = sum(len(state.states) for state in pattern._cache.values())
    assert held <= 250_000 + 2001
    assert pattern.search("a" * 1500 + "b") is True


@pytest.mark.parametrize(
    "leaf",
    [
        Compare("bogus", "a", 1),
        Compare("eq", 5, 1),  # type: ignore[arg-type]
        In("a", 5),  # type: ignore[arg-type]
        Compare("eq", "a", object()),
        Contains("a", {1, 2}),
    ],
)
async def test_a_condition_built_by_hand_is_checked_like_one_built_by_f(leaf: Any) -> None:
    """A condition built by calling its class (the classes are public): an unknown
    operator, a path that is not text, an operand that is no value. They raised
    KeyError, AttributeError and TypeError from the engine. Must hold: the query is
    refused with InvalidQueryError before any work, and a well-formed condition built
    by hand still answers as F's does."""
    async with koru.open(koru.MEMORY) as db:
        await db.put("n", "a", {"a": 1})
        with pytest.raises(koru.InvalidQueryError):
            await db.query("n", Query(filter=leaf))
        built = await db.query("n", Query(filter=Compare("eq", "a", 1)))
        assert built == await db.query("n", Query().where(F("a") == 1))


def test_in_lists_of_a_filter_are_bounded_all_together() -> None:
    """Attack: an ``in`` listing millions of values (a view definition from a peer may
    be 16 MiB: some 3,500,000 of them, each checked and converted on the event loop,
    about 5 s). What must hold: the in conditions of one filter list at most
    MAX_IN_VALUES values all together, in the data form and built by hand alike;
    refused with InvalidQueryError before any is converted; up to it, accepted."""
    from koru.projections._filters import MAX_IN_VALUES

    half = list(range(MAX_IN_VALUES // 2 + 1))
    over = {"where": ["or", ["in", "a", half], ["in", "b", half]]}
    with pytest.raises(InvalidQueryError, match="at most"):
        Query.from_data(over)
    with pytest.raises(InvalidQueryError, match="at most"):
        Query.from_data({"where": ["in", "a", list(range(MAX_IN_VALUES + 1))]})
    with pytest.raises(InvalidQueryError, match="at most"):
        Query().where(F("a").is_in(half) | F("b").is_in(half)).validate()
    fits = list(range(MAX_IN_VALUES // 2))
    ok = Query.from_data({"where": ["or", ["in", "a", fits], ["in", "b", fits]]})
    assert ok.validate() == ok


async def test_in_values_held_in_a_tuple_subclass_are_counted_too() -> None:
    """Attack: conditions built by hand whose values are a tuple subclass (each leaf
    within the bound alone, all together over it). check_filter counted only values
    held in a plain tuple, so such a filter passed with any number of values, and
    create_view stored a definition that the database itself (reopened) and its peers
    refuse when they read it (Query.from_data). What must hold: refused with
    InvalidQueryError, by Query.validate and by create_view, as the plain tuple is."""
    from koru.projections._filters import MAX_IN_VALUES

    class Values(tuple):  # type: ignore[type-arg]
        pass

    half = Values(range(MAX_IN_VALUES // 2 + 1))
    built = Query(filter=In("a", half) | In("b", half))
    with pytest.raises(InvalidQueryError, match="at most"):
        built.validate()
    async with koru.open(":memory:") as db:
        with pytest.raises(InvalidQueryError, match="at most"):
            await db.create_view("big", "docs", built)
        assert await db.list_views() == []


async def test_a_view_over_the_in_bound_is_refused_and_the_database_goes_on() -> None:
    """A view whose definition lists more ``in`` values than the bound is refused with
    the typed error (a peer's definition event is read by the same ``Query.from_data``,
    and a view whose definition it refuses reports that error when read), and the
    database keeps working."""
    from koru.projections._filters import MAX_IN_VALUES

    async with koru.open(":memory:") as db:
        await db.put("docs", "k", {"a": 1})
        with pytest.raises(InvalidQueryError, match="at most"):
            await db.create_view(
                "big", "docs", {"where": ["in", "a", list(range(MAX_IN_VALUES + 1))]}
            )
        await db.create_view("fine", "docs", {"where": ["in", "a", [1, 2]]})
        assert [r.key for r in await db.view("fine")] == ["k"]


@pytest.mark.parametrize(
    "text",
    ["not " * 100 + "a=1", "(" * 100 + "a=1" + ")" * 100, "a in " + "[" * 100 + "1" + "]" * 100],
    ids=["not", "parentheses", "in-list"],
)
def test_a_where_nested_deep_is_refused_whatever_the_recursion_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    """The parser refused deep nesting only by RecursionError, whose depth is the
    interpreter's recursion limit: with it raised (a host program may; a test runner
    did, so "((((a=1))))" 5,000 deep parsed and the command went on to open the
    database, exit 1, once in a long run). What must hold: past 64 levels, a usage
    error (exit 2) whatever the limit; 64 levels parse."""
    import sys

    from koru._cli._where import MAX_NESTING, parse_where

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        code = main(["--db", str(tmp_path / "db"), "query", "users", "--where", text])
    finally:
        sys.setrecursionlimit(limit)
    err = capsys.readouterr().err
    assert code == 2 and "nests deeper than 64" in err, err
    assert parse_where("(" * MAX_NESTING + "a=1" + ")" * MAX_NESTING) == ["eq", "a", 1]
