"""Globs over namespaces and keys: matching, and whether one glob covers another.

A capability names the keys it covers with two globs, one for the namespace and one
for the key. ``*`` matches any run of characters (``/`` included), ``?`` exactly one;
every other character stands for itself, and there is no escape (a literal ``*`` in a
name is covered by a ``*`` in the pattern). ``*`` alone covers everything.

Why not :mod:`fnmatch`: it adds character classes (``[...]``) whose containment is
hard to decide, and its regular expressions backtrack polynomially in the number of
stars, which an adversary chooses. Here a glob is split at its stars into fixed-length
segments: a name matches when it starts with the first, ends with the last, and holds
the others in order in between. Taking each middle segment at its leftmost place is
optimal (a later place only leaves less room for the rest), so matching costs one
search per segment, in C (``str.find``, or a compiled expression of literals and
``.`` for a segment with ``?``): linear in the name times the pattern at worst, with
no backtracking, and a pattern holds at most :data:`MAX_WILDCARDS` wildcards.

:func:`covers` decides whether every name one glob matches is matched by another
(delegation may only narrow a capability). It reads the narrower glob as a string of
symbols, its ``*`` and ``?`` as two sentinel characters no name can hold (lone
surrogates), and matches the wider glob against it with the same segment search,
where a ``?`` of the wider glob matches a character or the narrower one's ``?`` but
never its ``*``. That is sound (a "yes" is always right) and complete for the globs
people write; for a few equivalent pairs (``?*`` against ``*?``) it says no, which
only refuses a delegation.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ._errors import InvalidDataError
from ._names import name_problem

__all__ = ["MAX_WILDCARDS", "Glob", "check_glob", "covers"]

#: Most ``*`` and ``?`` in one glob.
MAX_WILDCARDS = 32

# Lone surrogates cannot appear in a name (names are valid Unicode text), so they
# stand for the narrower glob's wildcards in ``covers``.
_STAR = "\ud800"
_ONE = "\ud801"


def check_glob(pattern: object, what: str) -> str:
    """``pattern`` if it is a usable glob (a name, with at most ``MAX_WILDCARDS``
    wildcards), else InvalidDataError naming ``what``."""
    problem = name_problem(pattern, what)
    if problem is not None:
        raise InvalidDataError(problem)
    assert isinstance(pattern, str)
    wildcards = pattern.count("*") + pattern.count("?")
    if wildcards > MAX_WILDCARDS:
        raise InvalidDataError(
            f"{what} {pattern[:40]!r}... has {wildcards} wildcards, over {MAX_WILDCARDS}"
        )
    return pattern


Finder = Callable[[str, int, int], int]


def _finder(segment: str, one: str) -> Finder:
    """The leftmost place (>= start, ending <= end) where ``segment`` matches, or -1.
    ``one`` is the expression a ``?`` of the segment stands for."""
    if "?" not in segment:
        return lambda text, start, end: text.find(segment, start, end)
    expr = re.compile("".join(one if c == "?" else re.escape(c) for c in segment), re.DOTALL)

    def find(text: str, start: int, end: int) -> int:
        found = expr.search(text, start, end)
        return -1 if found is None else found.start()

    return find


class _Segments:
    """A glob split at its stars, with a finder per segment."""

    __slots__ = ("finders", "head", "lengths", "parts", "tail")

    def __init__(self, pattern: str, one: str) -> None:
        self.parts = pattern.split("*")
        self.lengths = [len(p) for p in self.parts]
        self.finders = [_finder(p, one) for p in self.parts]
        self.head = self.lengths[0]
        self.tail = self.lengths[-1]

    def match(self, text: str) -> bool:
        parts, finders = self.parts, self.finders
        n = len(text)
        if len(parts) == 1:  # no star: the whole text, exactly
            return n == self.head and finders[0](text, 0, n) == 0
        head, tail = self.head, self.tail
        if n < head + tail:
            return False
        if head and finders[0](text, 0, head) != 0:
            return False
        end = n - tail
        if tail and finders[-1](text, end, n) != end:
            return False
        pos = head
        for i in range(1, len(parts) - 1):
            size = self.lengths[i]
            if size:
                found = finders[i](text, pos, end)
                if found < 0:
                    return False
                pos = found + size
        return True


class Glob:
    """A compiled glob: ``Glob("user-*").match("user-42")``.

    The common shapes take a shortcut: ``*`` matches anything, a glob without
    wildcards compares for equality, a literal followed by one final ``*`` is a
    prefix test.
    """

    __slots__ = ("match", "pattern")

    match: Callable[[str], bool]

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        stars, ones = pattern.count("*"), pattern.count("?")
        if pattern == "*":
            self.match = _anything
        elif not stars and not ones:
            self.match = _equal(pattern)
        elif stars == 1 and not ones and pattern.endswith("*"):
            self.match = _prefix(pattern[:-1])
        else:
            self.match = _Segments(pattern, ".").match

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


def _anything(text: str) -> bool:
    return True


def _equal(pattern: str) -> Callable[[str], bool]:
    # Not ``pattern.__eq__``: it answers NotImplemented (true) for a non-str.
    return lambda text: text == pattern


def _prefix(prefix: str) -> Callable[[str], bool]:
    return lambda text: type(text) is str and text.startswith(prefix)


def covers(wide: str, narrow: str) -> bool:
    """True if every name ``narrow`` matches is matched by ``wide`` (sound: never
    True wrongly; see the module doc for the rare equivalent pairs it refuses)."""
    if wide == "*" or wide == narrow:
        return True
    symbols = narrow.replace("*", _STAR).replace("?", _ONE)
    return _Segments(wide, f"[^{_STAR}]").match(symbols)
