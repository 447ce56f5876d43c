"""Field paths: how a query names a field inside a document.

A path is a non-empty string of dot-separated segments (``"address.city"``). Each
segment looks up a key of a map; a segment of ASCII decimal digits without leading
zeros also indexes a list (``"tags.0"``). A path that leads nowhere (a missing key, an
index past the end, a scalar in the way) gives :data:`~koru.projections.MISSING`, never
an error. Keys that contain a dot cannot be named by a path.
"""

from __future__ import annotations

from typing import Any

from koru.events import MAX_NAME_BYTES, InvalidQueryError

from ._order import MISSING

__all__ = ["check_path", "get_path", "split_path"]

#: How many segments a path may have (values nest at most 64 levels anyway).
MAX_SEGMENTS = 64


def check_path(path: Any, field: str) -> str:
    """``path`` if it is a valid path, else :class:`InvalidQueryError` naming ``field``."""
    if type(path) is not str:
        raise InvalidQueryError(field, f"a path must be a str, not {type(path).__name__}")
    if not path:
        raise InvalidQueryError(field, "a path must not be empty")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:  # no stored key holds one, and no event can carry it
        raise InvalidQueryError(
            field, f"path {path!r} is not valid Unicode text (lone surrogate)"
        ) from None
    if size > MAX_NAME_BYTES:
        raise InvalidQueryError(field, f"a path must be at most {MAX_NAME_BYTES} bytes")
    segments = path.split(".")
    if "" in segments:
        raise InvalidQueryError(field, f"path {path!r} has an empty segment")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidQueryError(field, f"path {path!r} has over {MAX_SEGMENTS} segments")
    return path


def split_path(path: str) -> tuple[str, ...]:
    """The segments of a (checked) path."""
    return tuple(path.split("."))


def get_path(doc: Any, segments: tuple[str, ...]) -> Any:
    """The value at ``segments`` inside ``doc``, or MISSING."""
    for s in segments:
        t = type(doc)
        if t is dict:
            doc = doc.get(s, MISSING)
            if doc is MISSING:
                return MISSING
        elif t is list and s.isascii() and s.isdecimal() and (s[0] != "0" or s == "0"):
            i = int(s)
            if i >= len(doc):
                return MISSING
            doc = doc[i]
        else:
            return MISSING
    return doc
