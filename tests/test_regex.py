"""The linear-time ``matches`` engine answers exactly as ``re.search`` does, and
refuses what would need backtracking, in time linear in the text."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koru import InvalidQueryError
from koru.projections._regex import compile_pattern

ATOMS = ["a", "b", "A", ".", "[ab]", "[^a]", "[a-c\\d]", r"\w", r"\W", r"\d", r"\s", "\\n", "é"]
ASSERTIONS = ["^", "$", r"\b", r"\B", r"\A", r"\Z"]
QUANTIFIERS = ["", "", "*", "+", "?", "{1,2}", "{2}", "*?", "{0,}"]

patterns = st.recursive(
    st.sampled_from(ATOMS + ASSERTIONS),
    lambda c: st.one_of(
        st.lists(c, min_size=1, max_size=4).map("".join),
        st.tuples(c, c).map(lambda p: f"{p[0]}|{p[1]}"),
        st.tuples(c, st.sampled_from(QUANTIFIERS)).map(
            lambda p: f"(?:{p[0]}){p[1]}" if p[1] else f"({p[0]})"
        ),
    ),
    max_leaves=8,
)
flags = st.sampled_from(["", "(?i)", "(?m)", "(?s)", "(?a)", "(?ims)"])
texts = st.text(alphabet="abAB \n1_é.", max_size=12)


@settings(max_examples=1500)
@given(flags, patterns, texts)
def test_search_agrees_with_re(flag: str, pattern: str, text: str) -> None:
    source = flag + pattern
    try:
        re.compile(source)
    except re.error:
        return
    assert compile_pattern(source, "p").search(text) == (re.search(source, text) is not None)


@pytest.mark.parametrize(
    ("source", "text", "found"),
    [
        (r"\bcat\b", "a cat!", True),
        (r"\bcat\b", "concat", False),
        (r"\B", "", False),
        ("abc$", "abc\n", True),
        ("abc$\n", "abc\n", True),
        ("a$", "a\n\n", False),
        ("(?m)a$", "a\n\n", True),
        ("(?i)k", "\u212a", True),  # the Kelvin sign folds to k, as re has it
        (r"(?a)\w", "é", False),
        ("(?s).x", "\nx", True),
        (".x", "\nx", False),
        ("(?i:a)b", "Ab", True),
        ("(?i:a)b", "AB", False),
        ("", "", True),
    ],
)
def test_examples(source: str, text: str, found: bool) -> None:
    assert compile_pattern(source, "p").search(text) is found
    assert (re.search(source, text) is not None) is found


@pytest.mark.parametrize(
    "source", [r"(a+)+$", r"(a|a)*b", r".*.*.*.*b", r"(x+x+)+y", r"^(\w+\s?)*$!"]
)
def test_catastrophic_patterns_take_linear_time(source: str) -> None:
    pattern = compile_pattern(source, "p")
    short, long = "a" * 20_000 + "!", "a" * 200_000 + "!"
    began = time.perf_counter()
    pattern.search(short)
    small = time.perf_counter() - began
    began = time.perf_counter()
    pattern.search(long)
    large = time.perf_counter() - began
    # 10x the text: about 10x the time (generous bound for a noisy machine), never
    # the seconds or centuries a backtracking engine takes on these.
    assert large < 1.0
    assert large < 40 * small + 0.05


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (r"(a)\1", "backreferences"),
        ("(?=a)", "lookahead"),
        ("(?<!a)b", "lookahead and lookbehind"),
        ("(a)?(?(1)b|c)", "conditional"),
        ("(?>a+)", "atomic"),
        ("a++", "possessive"),
        ("((((a{9}){9}){9}){9}){9}", "automaton states"),
        ("x" * 1001, "at most 1000"),
        ("(" * 499 + ")" * 499, "too complex"),
        ("[", "invalid regular expression"),
    ],
)
def test_refused_patterns(source: str, reason: str) -> None:
    with pytest.raises(InvalidQueryError, match=reason):
        compile_pattern(source, "p")


def test_the_transition_cache_stays_bounded() -> None:
    # Each distinct character seen adds transitions; a text of many distinct
    # characters must not grow memory without bound.
    pattern = compile_pattern("(a|b)*c.{3}d", "p")
    text = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 30_000))
    assert pattern.search(text) is False
    assert len(pattern._cache) <= 4_000
