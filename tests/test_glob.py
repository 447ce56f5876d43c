"""Globs of capabilities (``koru.events._glob``): matching equals a naive model, and
``covers`` is sound (whatever the narrower glob matches, the wider one matches)."""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from koru.events import MAX_NAME_BYTES, MAX_WILDCARDS, Glob, InvalidDataError, check_glob, covers

ALPHABET = "ab/*?é"
patterns = st.text(ALPHABET, min_size=1, max_size=10)
names = st.text("ab/*?é", min_size=1, max_size=12)


def naive(pattern: str, name: str) -> bool:
    """The definition: ``*`` any run, ``?`` one character, the rest itself."""

    @functools.cache
    def m(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(name)
        c = pattern[i]
        if c == "*":
            return m(i + 1, j) or (j < len(name) and m(i, j + 1))
        return j < len(name) and (c == "?" or c == name[j]) and m(i + 1, j + 1)

    return m(0, 0)


@given(patterns, names)
def test_matching_equals_the_naive_model(pattern: str, name: str) -> None:
    assert Glob(pattern).match(name) == naive(pattern, name)


def instance(pattern: str, rng: random.Random) -> str:
    """A name the pattern matches (its wildcards filled in at random)."""
    out = []
    for c in pattern:
        if c == "*":
            out.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 3))))
        elif c == "?":
            out.append(rng.choice(ALPHABET))
        else:
            out.append(c)
    return "".join(out) or "a"


def narrower(wide: str, rng: random.Random) -> str:
    """A glob within ``wide``: each ``*`` replaced by any glob, each ``?`` by one
    character or ``?``."""
    out = []
    for c in wide:
        if c == "*":
            out.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 3))))
        elif c == "?":
            out.append(rng.choice(ALPHABET.replace("*", "")))
        else:
            out.append(c)
    return "".join(out) or wide


@given(patterns, st.integers(0, 2**32))
def test_covers_is_sound_and_sees_every_substitution(wide: str, seed: int) -> None:
    """Whatever the narrower glob matches, the wider one matches (delegation never
    widens a capability), and a glob made by narrowing another's wildcards is seen as
    covered by it."""
    rng = random.Random(seed)
    narrow = narrower(wide, rng)
    assert covers(wide, narrow), (wide, narrow)
    for _ in range(20):
        name = instance(narrow, rng)
        assert naive(narrow, name)
        assert naive(wide, name), (wide, narrow, name)


@given(patterns, patterns, st.integers(0, 2**32))
def test_covers_never_says_yes_wrongly(wide: str, narrow: str, seed: int) -> None:
    if not covers(wide, narrow):
        return
    rng = random.Random(seed)
    for _ in range(20):
        name = instance(narrow, rng)
        assert naive(wide, name), (wide, narrow, name)


@given(patterns)
def test_every_glob_covers_itself_and_star_covers_all(pattern: str) -> None:
    assert covers(pattern, pattern)
    assert covers("*", pattern)


@pytest.mark.parametrize(
    ("wide", "narrow", "expected"),
    [
        ("users/*", "users/a*", True),
        ("users/*", "users/alice", True),
        ("*a*", "a*", True),
        ("a?", "ab", True),
        ("a?c", "a?c", True),
        ("a*", "*", False),  # wider than its parent
        ("ab", "a?", False),  # ? may be any character
        ("u?", "u*", False),  # * may be empty or long
        ("users/*", "orders/*", False),
        ("a*b", "a*", False),
        ("*", "anything*at?all", True),
    ],
)
def test_covers_table(wide: str, narrow: str, expected: bool) -> None:
    assert covers(wide, narrow) is expected


def test_glob_shortcuts_behave_like_the_general_case() -> None:
    for pattern in ("*", "users", "user-*", "a*b?c", "?"):
        for name in ("users", "user-1", "axbyc", "a", "user-", "*"):
            assert Glob(pattern).match(name) == naive(pattern, name), (pattern, name)
    # A literal glob never matches a non-str (no NotImplemented slipping through as true).
    assert Glob("k").match(5) is False  # type: ignore[arg-type]


def test_check_glob_refuses_bad_patterns() -> None:
    assert check_glob("users/*", "key glob") == "users/*"
    for bad in ("", 5, "x" * (MAX_NAME_BYTES + 1), "\ud800", "*" * (MAX_WILDCARDS + 1)):
        with pytest.raises(InvalidDataError):
            check_glob(bad, "key glob")


def test_a_hostile_glob_costs_one_search_per_segment() -> None:
    """The worst case for a backtracking matcher (many stars, a name that almost
    matches) costs here one segment search per star: counted, never retried."""
    pattern = "*a" * (MAX_WILDCARDS // 2 - 1) + "*b"
    name = "a" * MAX_NAME_BYTES
    glob = Glob(pattern)
    segments = glob.match.__self__  # type: ignore[attr-defined]
    calls = [0]

    def counting(find: Any) -> Any:
        def wrapped(text: str, start: int, end: int) -> int:
            calls[0] += 1
            return int(find(text, start, end))

        return wrapped

    segments.finders = [counting(f) for f in segments.finders]
    assert not glob.match(name)
    assert calls[0] <= len(segments.parts)
    assert not covers(pattern, "?" * 500 + "*")
