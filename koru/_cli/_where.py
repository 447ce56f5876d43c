"""``--where``: a small filter language for the command line, read into the query's
data form (the one ``db.query`` takes, see docs/query.md).

Grammar (keywords in any case)::

    filter     := term ("or" term)*
    term       := factor ("and" factor)*
    factor     := "not" factor | "(" filter ")" | comparison
    comparison := PATH OP VALUE                 OP: = == != > >= < <=
                | PATH "in" LIST                LIST: [VALUE, ...] or (VALUE, ...)
                | PATH "contains" VALUE
                | PATH "~" PATTERN              a regular expression (matches): up
                                                to the next space or unbalanced ")",
                                                or a quoted string
                | PATH "exists" | PATH "missing"

A VALUE is JSON (``30``, ``1.5``, ``"Lyon"``, ``true``, ``false``, ``null``, ``[...]``,
``{...}``) or a bare word, read as text (``city=Lyon``); quote a word that would read
as something else (``zip="01234"``, ``name="null"``). A PATH is a dotted field path
(``address.city``, ``tags.0``); quote one with spaces or operator characters
(``"full name"=Ann``). ``age>=30 and city=Lyon`` is ``["and", ["gte", "age", 30],
["eq", "city", "Lyon"]]``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._base import unique_keys

__all__ = ["WhereError", "parse_where"]

_OPS = {"=": "eq", "==": "eq", "!=": "ne", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}
_KEYWORDS = {"and", "or", "not", "in", "contains", "exists", "missing"}
#: The most levels of ``not``, parentheses and lists an expression nests (a filter
#: nests at most 64, a value 64).
MAX_NESTING = 64
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<op>==|!=|>=|<=|=|>|<|~)
      | (?P<punct>[()\[\],])
      | (?P<json>[{](?:[^{}"]|"(?:[^"\\]|\\.)*"|[{][^{}]*[}])*[}])
      | (?P<word>[^\s()\[\],=!<>~"]+)
    )""",
    re.VERBOSE,
)


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


class WhereError(ValueError):
    """The expression does not parse (the message says where)."""


class _Tokens:
    def __init__(self, text: str) -> None:
        self.items: list[tuple[str, str, int]] = []
        at = 0
        text = text.rstrip()
        while at < len(text):
            m = _TOKEN.match(text, at)
            if m is None or m.end() == at:
                raise WhereError(f"cannot read {text[at : at + 20]!r} (at character {at})")
            kind = m.lastgroup
            assert kind is not None
            self.items.append((kind, m.group(kind), m.start(kind)))
            at = m.end()
            if kind == "op" and m.group(kind) == "~":
                at = self._pattern(text, at)
        self.i = 0
        self.depth = 0

    def deeper(self) -> None:
        """One level more of ``not``, parentheses or lists; refused past
        ``MAX_NESTING``. Why a count, not RecursionError: how deep the parser may
        recurse depends on the interpreter's recursion limit, which a host program
        (or a test runner) may have raised: "((((a=1))))" five thousand deep then
        parsed, and the query ran."""
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise WhereError(f"the expression nests deeper than {MAX_NESTING} levels")

    def _pattern(self, text: str, at: int) -> int:
        """Read the pattern after ``~``: a quoted string, or raw text up to the next
        space or the ``)`` that closes a parenthesis opened before it (its own are
        balanced: ``name~^(A|B)``); a backslash escapes the next character."""
        while at < len(text) and text[at].isspace():
            at += 1
        if text.startswith('"', at):
            quoted = _QUOTED.match(text, at)
            if quoted is None:
                raise WhereError(f"a quoted pattern is not closed (at character {at})")
            self.items.append(("string", quoted.group(), at))
            return quoted.end()
        start, depth = at, 0
        while at < len(text) and not text[at].isspace():
            char = text[at]
            if char == "\\":
                at += 1
            elif char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    break
                depth -= 1
            at += 1
        at = min(at, len(text))
        self.items.append(("pattern", text[start:at], start))
        return at

    def peek(self) -> tuple[str, str, int] | None:
        return self.items[self.i] if self.i < len(self.items) else None

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise WhereError("the expression ends too soon")
        self.i += 1
        return token

    def keyword(self, *words: str) -> str | None:
        token = self.peek()
        if token is not None and token[0] == "word" and token[1].lower() in words:
            self.i += 1
            return token[1].lower()
        return None

    def punct(self, char: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "punct" and token[1] == char:
            self.i += 1
            return True
        return False


def parse_where(text: str) -> Any:
    """The data form of a ``--where`` expression.

    Raises:
        WhereError: it does not parse.
    """
    tokens = _Tokens(text)
    if tokens.peek() is None:
        raise WhereError("the expression is empty")
    found = _filter(tokens)
    extra = tokens.peek()
    if extra is not None:
        raise WhereError(f"unexpected {extra[1]!r} at character {extra[2]}")
    return found


def _filter(tokens: _Tokens) -> Any:
    parts = [_term(tokens)]
    while tokens.keyword("or"):
        parts.append(_term(tokens))
    return parts[0] if len(parts) == 1 else ["or", *parts]


def _term(tokens: _Tokens) -> Any:
    parts = [_factor(tokens)]
    while tokens.keyword("and"):
        parts.append(_factor(tokens))
    return parts[0] if len(parts) == 1 else ["and", *parts]


def _factor(tokens: _Tokens) -> Any:
    if tokens.keyword("not"):
        tokens.deeper()
        inner = ["not", _factor(tokens)]
        tokens.depth -= 1
        return inner
    if tokens.punct("("):
        tokens.deeper()
        inner = _filter(tokens)
        if not tokens.punct(")"):
            raise WhereError("a '(' is not closed")
        tokens.depth -= 1
        return inner
    return _comparison(tokens)


def _comparison(tokens: _Tokens) -> Any:
    kind, text, at = tokens.take()
    if kind == "string":
        path = json.loads(text)
    elif kind == "word" and text.lower() not in _KEYWORDS:
        path = text
    else:
        raise WhereError(f"expected a field path at character {at}, not {text!r}")
    word = tokens.keyword("in", "contains", "exists", "missing")
    if word == "exists":
        return ["exists", path, True]
    if word == "missing":
        return ["exists", path, False]
    if word == "in":
        return ["in", path, _list(tokens)]
    if word == "contains":
        return ["contains", path, _value(tokens)]
    kind, text, at = tokens.take()
    if kind != "op":
        raise WhereError(f"expected an operator after {path!r} at character {at}, not {text!r}")
    if text == "~":
        kind, text, at = tokens.take()
        if kind == "pattern" and text:
            return ["matches", path, text]
        if kind != "string":
            raise WhereError(f"expected a pattern at character {at}")
        return ["matches", path, json.loads(text)]
    return [_OPS[text], path, _value(tokens)]


def _list(tokens: _Tokens) -> list[Any]:
    close = "]" if tokens.punct("[") else ")" if tokens.punct("(") else None
    if close is None:
        raise WhereError("'in' takes a list: [a, b] or (a, b)")
    tokens.deeper()
    values: list[Any] = []
    if tokens.punct(close):
        tokens.depth -= 1
        return values
    while True:
        values.append(_value(tokens))
        if tokens.punct(close):
            tokens.depth -= 1
            return values
        if not tokens.punct(","):
            raise WhereError(f"expected ',' or {close!r} in a list")


def _value(tokens: _Tokens) -> Any:
    kind, text, at = tokens.take()
    if kind == "punct" and text == "[":
        tokens.i -= 1
        return _list(tokens)
    if kind in ("string", "json"):
        try:
            return json.loads(text, object_pairs_hook=unique_keys)
        except ValueError as exc:
            raise WhereError(f"bad JSON at character {at}: {exc}") from None
    if kind != "word":
        raise WhereError(f"expected a value at character {at}, not {text!r}")
    try:
        value = json.loads(text, parse_constant=_no_constant)  # a number, true, false, null
    except ValueError:
        return text  # a bare word is text
    if isinstance(value, (dict, list, str)):  # pragma: no cover - a word is neither
        return text
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are words, not numbers
