"""Hostile input to the query language (h-query2): expressions nested past Python's
recursion limit on the command line, and filters whose patterns together expand to
more automaton states than anything can build in time. Each must be refused with a
typed error, quickly: never a traceback, a hang or an exhausted memory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from koru import F, InvalidQueryError, Query
from koru._cli import main


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
