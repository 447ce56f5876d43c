"""Validation of namespaces and keys: non-empty Unicode text of bounded size."""

from __future__ import annotations

from ._errors import InvalidDataError

__all__ = ["MAX_NAME_BYTES", "check_name"]

#: Longest namespace or key, in UTF-8 bytes.
MAX_NAME_BYTES = 1024


def check_name(name: object, what: str) -> None:
    """Raise InvalidDataError unless ``name`` is a usable namespace or key."""
    if type(name) is str and name.isascii() and 0 < len(name) <= MAX_NAME_BYTES:
        return  # the common case, decided without encoding
    if type(name) is not str:
        raise InvalidDataError(f"{what} must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidDataError(f"{what} must not be empty")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise InvalidDataError(f"{what} {name!r} is not valid Unicode text") from None
    if size > MAX_NAME_BYTES:
        raise InvalidDataError(f"{what} is {size} bytes, over the {MAX_NAME_BYTES}-byte limit")
