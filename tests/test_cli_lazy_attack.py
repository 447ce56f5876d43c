"""Attacks on the command line's start-up shortcuts (h-lazy): the formatter that
measures the terminal without :mod:`shutil`, and the parser built for the named command
only. Whatever the environment and the words, the help is as wide as argparse's own
would make it, and the command argparse runs is the one whose arguments were built."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from koru._cli import _Formatter, main


@pytest.mark.parametrize("columns", ["0", "-3"])
def test_a_columns_of_zero_or_less_measures_the_terminal_as_shutil_does(
    monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    """``COLUMNS=0`` (or negative) is no width: :func:`shutil.get_terminal_size`, which
    argparse asks, then measures the terminal. The formatter that replaced it (so as not
    to import shutil) took it for "no terminal" and wrapped every help at 78 columns in
    a terminal of 150."""
    import shutil

    monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.setattr(os, "get_terminal_size", lambda *_: os.terminal_size((150, 50)))
    expected = shutil.get_terminal_size().columns - 2
    assert expected == 148
    formatter: Any = _Formatter("kdelta")
    assert formatter._width == expected


@pytest.mark.parametrize("option", [["--d", "{db}"], ["--d={db}"], ["--json", "--d", "{db}"]])
def test_the_database_option_abbreviated_as_argparse_allows_still_runs_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    """argparse takes ``--d PATH`` for ``--db PATH`` (an unambiguous abbreviation). The
    parser that builds only the named command's arguments took PATH for the command's
    name, built no command's arguments, and refused ``kdelta --d DB get n/k`` with
    "unrecognized arguments"."""
    db = tmp_path / "db"
    assert main(["--db", str(db), "set", "n/k", "1"]) == 0
    capsys.readouterr()
    words = [w.format(db=db) for w in option]
    assert main([*words, "get", "n/k"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == "1" or out.startswith('{"value": 1,'), out


def test_the_help_option_abbreviated_lists_every_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``kdelta --hel get`` is argparse's top-level help (``--hel`` abbreviates
    ``--help``): it lists every command, not only the one named after it."""
    with pytest.raises(SystemExit):
        main(["--hel", "get"])
    out = capsys.readouterr().out
    assert "namespaces" in out and "verify" in out and "export" in out


def test_a_refused_command_line_lists_every_command_it_could_have_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``kdelta -- get n/k``: argparse refuses ``--`` as the command. Its error lists the
    commands to choose from; the parser built for the word after ``--`` alone listed
    only ``get``, as if it were the one command there is."""
    with pytest.raises(SystemExit):
        main(["--", "get", "n/k"])
    err = capsys.readouterr().err
    assert "invalid choice" in err and "'verify'" in err and "'keys'" in err
