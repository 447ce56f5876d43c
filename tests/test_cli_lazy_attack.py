"""Attacks on the command line's start-up shortcuts (h-lazy): the formatter that
measures the terminal without :mod:`shutil`, and the parser built for the named command
only. Whatever the environment and the words, the help is as wide as argparse's own
would make it, and the command argparse runs is the one whose arguments were built."""

from __future__ import annotations

import os
from typing import Any

import pytest

from koru._cli import _Formatter


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
