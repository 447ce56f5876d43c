"""Field checks for decoding event bodies: one rule per kind of field, shared by every
event type, each raising :class:`CodecError` that names the field.

Why shared: every event type (key/value writes here, index definitions, embeddings,
identities and grants in later modules) decodes untrusted bytes from peers, and one
lax check is enough to fold a crafted event wrongly.
"""

from __future__ import annotations

from typing import Any

from ._errors import CodecError
from ._names import name_problem

__all__ = ["ID_SIZE", "UINT64_MAX", "id_or_none", "name", "raw_bytes", "text", "uint"]

#: Bytes in an event id, a write id or a content id (blake3).
ID_SIZE = 32
UINT64_MAX = 2**64 - 1


def text(item: Any, what: str) -> str:
    """A non-empty text string."""
    if type(item) is not str or not item:
        raise CodecError(f"{what} must be a non-empty text string")
    return item


def name(item: Any, what: str) -> str:
    """A namespace, key or other name, under the rule every write call applies."""
    problem = name_problem(item, what)
    if problem is not None:
        raise CodecError(problem)
    return item  # type: ignore[no-any-return]


def id_or_none(item: Any, what: str = "previous") -> bytes | None:
    """Null, or a 32-byte id."""
    if item is None or (type(item) is bytes and len(item) == ID_SIZE):
        return item
    raise CodecError(f"{what} must be null or a {ID_SIZE}-byte id")


def raw_bytes(item: Any, what: str, size: int | None = None) -> bytes:
    """A byte string (of exactly ``size`` bytes if given)."""
    if type(item) is not bytes or (size is not None and len(item) != size):
        exact = "" if size is None else f" of {size} bytes"
        raise CodecError(f"{what} must be a byte string{exact}")
    return item


def uint(item: Any, what: str, low: int = 0, high: int = UINT64_MAX) -> int:
    """An int from ``low`` to ``high`` (never a bool: True == 1 in Python)."""
    if type(item) is not int or not low <= item <= high:
        raise CodecError(f"{what} must be an integer from {low} to {high}")
    return item
