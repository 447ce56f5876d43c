"""Hostile input to the query language (h-query2): expressions nested past Python's
recursion limit on the command line, and filters whose patterns together expand to
more automaton states than anything can build in time. Each must be refused with a
typed error, quickly: never a traceback, a hang or an exhausted memory."""

from __future__ import annotations

from pathlib import Path

import pytest

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
