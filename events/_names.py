"""Validation of namespaces and keys: non-empty Unicode text of bounded size.

One rule for every call and for the reader: a name is an exact ``str`` (a subclass is
refused everywhere, since its ``__eq__`` and ``__hash__`` could disagree with the
stored name) of 1 to ``MAX_NAME_BYTES`` UTF-8 bytes, with no lone surrogates.

One more rule for the names a caller passes (namespaces and view names, never keys):
they must not start with :data:`RESERVED` (U+0000). The database stores a workspace's
namespaces and views under names that start with it (see :mod:`._workspaces`), so no
name a caller can write reaches them, and a workspace's names never collide with the
default space's. The reader accepts reserved names (they are in the log); only the
calls refuse them, at :func:`check_user_name`.
"""

from __future__ import annotations

from ._errors import InvalidDataError
from ._limits import MAX_NAME_BYTES

__all__ = [
    "MAX_NAME_BYTES",
    "RESERVED",
    "check_name",
    "check_user_name",
    "name_problem",
    "user_name_problem",
]

#: The first character of every name the database reserves for itself.
RESERVED = "\x00"


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


def user_name_problem(name: object, what: str) -> str | None:
    """Why ``name`` is not a namespace (or view name) a caller may pass, or None."""
    problem = name_problem(name, what)
    if problem is None and name[0] == RESERVED:  # type: ignore[index]
        return f"{what} {name!r} starts with U+0000, which the database reserves"
    return problem


def check_user_name(name: object, what: str) -> None:
    """Raise InvalidDataError unless ``name`` is a namespace (or view name) a caller may
    pass: a usable name that does not start with :data:`RESERVED`."""
    if (
        type(name) is str
        and name.isascii()
        and 0 < len(name) <= MAX_NAME_BYTES
        and name[0] != RESERVED
    ):
        return
    problem = user_name_problem(name, what)
    if problem is not None:
        raise InvalidDataError(problem)
