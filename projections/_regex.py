"""Regular expressions for ``matches`` filters, searched in time linear in the text.

Why not :mod:`re` directly: it backtracks, so a pattern from a remote client can take
exponential time (``(a+)+$``) or, searching, quadratic time on a long field
(``.*x`` on a megabyte of text: minutes). A query must not be able to stall the
database. So a pattern is parsed with Python's own regular-expression parser (its
syntax and error messages), turned into a Thompson automaton, and searched with a lazily
built DFA (subset construction, one cached transition per state and character), the
way RE2 and Rust's ``regex`` work: each character of the text costs one dict lookup
once the automaton is warm, and at most one closure computation (bounded by the
pattern's size) when it is not. The answer is the same as ``re.search(pattern, text)
is not None``: single-character tests are delegated to :mod:`re` itself (case folding,
``\\w``, ``\\d`` and ``.`` exactly as Python defines them), and zero-width assertions
(``^ $ \\A \\Z \\b \\B``) are evaluated from the characters around each position.

Refused (with :class:`~koru.InvalidQueryError`), because no automaton can answer them
or they exist only to steer a backtracking engine: backreferences, lookahead and
lookbehind, conditional groups, atomic groups and possessive quantifiers. Patterns are
limited to 1,000 characters and 20,000 automaton states (``a{1000}{1000}`` is refused),
and so are the patterns of one filter together: each state costs time to build
and memory to hold, so a remote client's filter of many patterns must not stall the
database (100 patterns of 20,000 states each took 7 s, 10,000 would take the memory).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from koru.events import InvalidQueryError

__all__ = ["MAX_PATTERN", "compile_pattern"]

try:  # Python 3.11+: the parser re itself uses
    from re import _constants as _c  # type: ignore[attr-defined]
    from re import _parser as _p  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - older Pythons are not supported
    raise

#: Longest pattern accepted, in characters.
MAX_PATTERN = 1000
#: Most automaton states a pattern, and the patterns of one filter together, may expand
#: to (counted repeats multiply).
MAX_STATES = 20_000
#: Code points of case-insensitive class ranges that count as one automaton state.
FOLDS_PER_STATE = 256
#: Cached DFA states before the cache is dropped and rebuilt (memory stays bounded;
#: each character still costs at most one closure).
MAX_DFA_STATES = 4_000
#: Automaton states held by the cached DFA states together before the cache is dropped:
#: each DFA state holds a set of them, up to 20,000, so a count of DFA states alone let
#: "a{1,9990}b" over 4,000 a's keep 330 MB (for as long as the query or view lives).
MAX_DFA_ENTRIES = 250_000

_CHAR, _SPLIT, _ASSERT, _MATCH = 0, 1, 2, 3

# Context bits of a position's neighbouring characters.
_START, _NL, _WORD_U, _WORD_A = 1, 2, 4, 8

_UNSUPPORTED = {
    _c.GROUPREF: "backreferences",
    _c.GROUPREF_EXISTS: "conditional groups",
    _c.ASSERT: "lookahead and lookbehind",
    _c.ASSERT_NOT: "lookahead and lookbehind",
    _c.ATOMIC_GROUP: "atomic groups",
    _c.POSSESSIVE_REPEAT: "possessive quantifiers",
}
_CATEGORIES = {
    _c.CATEGORY_DIGIT: r"\d",
    _c.CATEGORY_NOT_DIGIT: r"\D",
    _c.CATEGORY_SPACE: r"\s",
    _c.CATEGORY_NOT_SPACE: r"\S",
    _c.CATEGORY_WORD: r"\w",
    _c.CATEGORY_NOT_WORD: r"\W",
}
_ATOM_FLAGS = re.IGNORECASE | re.DOTALL | re.ASCII
_WORD_UNICODE = re.compile(r"\w").fullmatch
_WORD_ASCII = re.compile(r"\w", re.ASCII).fullmatch


def _char(code: int) -> str:
    return f"\\U{code:08x}"


def _atom_source(op: Any, av: Any) -> str:
    """The source of a one-character pattern equivalent to the node ``(op, av)``."""
    if op is _c.LITERAL:
        return _char(av)
    if op is _c.NOT_LITERAL:
        return f"[^{_char(av)}]"
    if op is _c.ANY:
        return "."
    parts, negate = [], ""
    for item_op, item in av:
        if item_op is _c.NEGATE:
            negate = "^"
        elif item_op is _c.LITERAL:
            parts.append(_char(item))
        elif item_op is _c.RANGE:
            parts.append(f"{_char(item[0])}-{_char(item[1])}")
        elif item_op is _c.CATEGORY:
            parts.append(_CATEGORIES[item])
        else:  # pragma: no cover - the parser emits nothing else inside a class
            raise ValueError(f"unexpected class item {item_op}")
    if not parts:  # an empty negated class never appears; keep the shape valid
        return "[^\\s\\S]" if not negate else "[\\s\\S]"
    return f"[{negate}{''.join(parts)}]"


class _Builder:
    """Thompson construction from re's parse tree, continuation style (right to left)."""

    def __init__(self, limit: int = MAX_STATES) -> None:
        self.limit = limit
        #: States charged for the work of compiling case-insensitive ranges.
        self.extra = 0
        self.kind: list[int] = []
        self.arg: list[Any] = []
        self.out: list[list[int]] = []
        self.atoms: list[Callable[[str], Any]] = []
        self._atom_ids: dict[tuple[str, int], int] = {}

    def state(self, kind: int, arg: Any, out: list[int]) -> int:
        if len(self.kind) >= self.limit:
            raise _TooLarge
        self.kind.append(kind)
        self.arg.append(arg)
        self.out.append(out)
        return len(self.kind) - 1

    def atom(self, source: str, flags: int) -> int:
        key = (source, flags & _ATOM_FLAGS)
        found = self._atom_ids.get(key)
        if found is None:
            found = self._atom_ids[key] = len(self.atoms)
            self.atoms.append(re.compile(source, key[1]).fullmatch)
        return found

    def seq(self, items: Any, flags: int, nxt: int) -> int:
        for op, av in reversed(list(items)):
            nxt = self.item(op, av, flags, nxt)
        return nxt

    def item(self, op: Any, av: Any, flags: int, nxt: int) -> int:
        if op in (_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN):
            return self.state(_CHAR, self.atom(_atom_source(op, av), flags), [nxt])
        if op is _c.AT:
            return self.state(_ASSERT, (av, flags), [nxt])
        if op is _c.BRANCH:
            return self.state(_SPLIT, None, [self.seq(alt, flags, nxt) for alt in av[1]])
        if op is _c.SUBPATTERN:
            _, add, remove, body = av
            return self.seq(body, (flags | add) & ~remove, nxt)
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
            low, high, body = av
            if high is _c.MAXREPEAT:
                loop = self.state(_SPLIT, None, [])
                self.out[loop].extend((self.seq(body, flags, loop), nxt))
                entry = loop
            else:
                entry = nxt
                for _ in range(high - low):
                    entry = self.state(_SPLIT, None, [self.seq(body, flags, entry), nxt])
            for _ in range(low):
                before = len(self.kind)
                entry = self.seq(body, flags, entry)
                if len(self.kind) == before:
                    # An empty body adds no state, so the limit never stopped
                    # "(?:){4294967294}" (four billion turns); repeating it is nothing.
                    break
            return entry
        what = _UNSUPPORTED.get(op)
        if what is None:  # pragma: no cover - every opcode the parser emits is handled
            what = f"the construct {op}"
        raise _Unsupported(what)


class _TooLarge(Exception):
    pass


def _folded(tree: Any, flags: int) -> int:
    """How many code points the case-insensitive class ranges of the parse tree span,
    each occurrence in the text counted (what re's compiler folds one by one)."""
    total = 0
    stack = [(tree, flags)]
    while stack:
        items, fl = stack.pop()
        for op, av in items:
            if op is _c.IN:
                if fl & re.IGNORECASE:
                    total += sum(a[1] - a[0] + 1 for o, a in av if o is _c.RANGE)
            elif op is _c.SUBPATTERN:
                stack.append((av[3], (fl | av[1]) & ~av[2]))
            elif op is _c.BRANCH:
                stack.extend((alt, fl) for alt in av[1])
            elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
                stack.append((av[2], fl))
            elif op in (_c.ASSERT, _c.ASSERT_NOT):
                stack.append((av[1], fl))
            elif op is _c.ATOMIC_GROUP:
                stack.append((av, fl))
            elif op is _c.GROUPREF_EXISTS:
                stack.extend((b, fl) for b in av[1:] if b is not None)
    return total


class _Unsupported(Exception):
    pass


def _context(ch: str | None) -> int:
    if ch is None:
        return _START
    bits = 0
    if ch == "\n":
        bits |= _NL
    if _WORD_UNICODE(ch):
        bits |= _WORD_U
    if _WORD_ASCII(ch):
        bits |= _WORD_A
    return bits


def _holds(at: Any, flags: int, prev: int, nxt: int, final_nl: bool) -> bool:
    """Whether a zero-width assertion holds between ``prev`` and ``nxt`` (context bits;
    ``_START`` stands for the edge of the text on either side)."""
    if at is _c.AT_BEGINNING_STRING:
        return bool(prev & _START)
    if at is _c.AT_BEGINNING:
        return bool(prev & _START or (flags & re.MULTILINE and prev & _NL))
    if at is _c.AT_END_STRING:
        return bool(nxt & _START)
    if at is _c.AT_END:
        return bool(nxt & _START or final_nl or (flags & re.MULTILINE and nxt & _NL))
    word = _WORD_A if flags & re.ASCII else _WORD_U
    if at is _c.AT_BOUNDARY:
        return bool(prev & word) != bool(nxt & word)
    if at is _c.AT_NON_BOUNDARY:
        if prev & _START and nxt & _START:
            return False  # as re: \B does not match in an empty text
        return bool(prev & word) == bool(nxt & word)
    raise _Unsupported(f"the assertion {at}")  # pragma: no cover


class _State:
    """A DFA state: the automaton states reached (before their closure) and the
    context of the character before; transitions are filled in lazily."""

    __slots__ = ("done", "next", "prev", "states")

    def __init__(self, states: frozenset[int], prev: int) -> None:
        self.states = states
        self.prev = prev
        self.next: dict[str, _State] = {}
        #: Whether the text may end here with a match (None until computed).
        self.done: bool | None = None


class Pattern:
    """A compiled, linear-time ``matches`` pattern: ``pattern.search(text)`` is
    ``re.search(source, text) is not None``."""

    __slots__ = (
        "_accept",
        "_b",
        "_cache",
        "_entries",
        "_start",
        "_start_state",
        "size",
        "source",
    )

    def __init__(self, source: str, builder: _Builder, start: int) -> None:
        self.source = source
        #: How many automaton states the pattern expanded to.
        self.size = len(builder.kind) + builder.extra
        self._b = builder
        self._start = start
        self._accept = _State(frozenset(), 0)  # absorbing: a match was found
        self._cache: dict[tuple[frozenset[int], int], _State] = {}
        self._entries = 0  # automaton states held by the cached DFA states
        self._start_state = self._intern(frozenset((start,)), _START)

    def _intern(self, states: frozenset[int], prev: int) -> _State:
        key = (states, prev)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= MAX_DFA_STATES or self._entries >= MAX_DFA_ENTRIES:
                # Drop the transitions too, so the old states can be freed.
                for old in self._cache.values():
                    old.next.clear()
                self._cache.clear()
                self._entries = 0
            found = self._cache[key] = _State(states, prev)
            self._entries += len(states)
        return found

    def _closure(self, states: frozenset[int], prev: int, nxt: int, final_nl: bool) -> list[int]:
        """The character-consuming states reachable without input, or [-1] on a match."""
        kind, arg, out = self._b.kind, self._b.arg, self._b.out
        seen: set[int] = set()
        stack = list(states)
        chars: list[int] = []
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            k = kind[s]
            if k == _CHAR:
                chars.append(s)
            elif k == _SPLIT:
                stack.extend(out[s])
            elif k == _MATCH:
                return [-1]
            else:
                at, flags = arg[s]
                if _holds(at, flags, prev, nxt, final_nl):
                    stack.extend(out[s])
        return chars

    def _step(self, state: _State, ch: str, final_nl: bool) -> _State:
        nxt = _context(ch)
        chars = self._closure(state.states, state.prev, nxt, final_nl)
        if chars == [-1]:
            return self._accept
        atoms, arg, out = self._b.atoms, self._b.arg, self._b.out
        reached = {self._start}  # search: a match may start at every position
        for s in chars:
            if atoms[arg[s]](ch):
                reached.add(out[s][0])
        return self._intern(frozenset(reached), nxt & ~_START)

    def search(self, text: str) -> bool:
        """True if the pattern matches somewhere in ``text``."""
        final_nl = text.endswith("\n")
        state = self._start_state
        accept = self._accept
        # The hot loop: one dict lookup per character once the automaton is warm.
        for ch in text[:-1] if final_nl else text:
            following = state.next.get(ch)
            if following is None:
                following = state.next[ch] = self._step(state, ch, False)
            state = following
            if state is accept:
                return True
        if final_nl:
            # The one place "$" may match before a character: the final newline.
            state = self._step(state, "\n", True)
            if state is accept:
                return True
        if state.done is None:
            state.done = self._closure(state.states, state.prev, _START, False) == [-1]
        return state.done


def compile_pattern(source: Any, field: str, budget: int = MAX_STATES) -> Pattern:
    """Check and compile a ``matches`` pattern, of at most ``budget`` automaton states
    (what the filter's other patterns left of ``MAX_STATES``).

    Raises:
        InvalidQueryError: not a str, too long, not a valid Python regular expression,
            one of the refused constructs (named), or over the budget.
    """
    if type(source) is not str:
        raise InvalidQueryError(field, f"a pattern must be a str, not {type(source).__name__}")
    if len(source) > MAX_PATTERN:
        raise InvalidQueryError(field, f"a pattern must be at most {MAX_PATTERN} characters")
    if not source.isascii():
        try:
            source.encode("utf-8")
        except UnicodeEncodeError:  # a view or a remote client could not carry it
            raise InvalidQueryError(
                field, "a pattern must be valid Unicode text (a lone surrogate is not)"
            ) from None
    try:
        tree = _p.parse(source, 0)
        # Case-insensitive ranges are folded code point by code point when compiled
        # (about 7 ms per 65,536 of them, twice: the pattern, then its atoms), so
        # they count against the budget before anything is compiled.
        charge = _folded(tree, tree.state.flags) // FOLDS_PER_STATE
        if charge >= budget:
            raise _TooLarge
        re.compile(source)
    except _TooLarge:
        raise InvalidQueryError(
            field,
            f"the pattern's case-insensitive ranges count as over {budget} automaton states"
            + (" (what the filter's other patterns left)" if budget < MAX_STATES else ""),
        ) from None
    except re.error as exc:
        raise InvalidQueryError(field, f"invalid regular expression: {exc}") from None
    except (RecursionError, OverflowError, ValueError) as exc:
        raise InvalidQueryError(field, f"regular expression too complex: {exc}") from None
    flags = tree.state.flags
    if flags & re.LOCALE:  # pragma: no cover - re refuses LOCALE for str patterns
        raise InvalidQueryError(field, "the LOCALE flag is not supported")
    builder = _Builder(min(budget, MAX_STATES) - charge)
    builder.extra = charge
    try:
        match = builder.state(_MATCH, None, [])
        start = builder.seq(tree, flags, match)
    except _Unsupported as exc:
        raise InvalidQueryError(
            field, f"{exc} are not supported (they need a backtracking engine)"
        ) from None
    except _TooLarge:
        if budget < MAX_STATES:
            raise InvalidQueryError(
                field,
                f"the filter's patterns expand to over {MAX_STATES} automaton states in all",
            ) from None
        raise InvalidQueryError(
            field, f"the pattern expands to over {MAX_STATES} automaton states"
        ) from None
    except RecursionError:
        raise InvalidQueryError(field, "regular expression nests too deeply") from None
    return Pattern(source, builder, start)
