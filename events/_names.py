"""Validation of namespaces and keys: non-empty Unicode text of bounded size.

One rule for every call and for the reader: a name is an exact ``str`` (a subclass is
refused everywhere, since its ``__eq__`` and ``__hash__`` could disagree with the
stored name) of 1 to ``MAX_NAME_BYTES`` UTF-8 bytes, with no lone surrogates.
"""

from __future__ import annotations

from ._errors import InvalidDataError
from ._limits import MAX_NAME_BYTES

__all__ = ["MAX_NAME_BYTES", "check_name", "name_problem"]


def name_problem(name: object, what: str) -> str | None:
    """Why ``name`` is not a usable namespace or key, or None if it is."""
    if type(name) is str and name.isascii() and 0 < len(name) <= MAX_NAME_BYTES:
        return None  # the common case, decided without encoding
    if type(name) is not str:
        return f"{what} must be a str, not {type(name).__name__}"
    if not name:
        return f"{what} must not be empty"
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        return f"{what} {name!r} is not valid Unicode text (lone surrogate)"
    if size > MAX_NAME_BYTES:
        return f"{what} is {size} bytes, over the {MAX_NAME_BYTES}-byte limit"
    return None


def check_name(name: object, what: str) -> None:
    """Raise InvalidDataError unless ``name`` is a usable namespace or key."""
    if type(name) is str and name.isascii() and 0 < len(name) <= MAX_NAME_BYTES:
        return
    problem = name_problem(name, what)
    if problem is not None:
        raise InvalidDataError(problem)
