"""CBOR tags that bytes from outside may not carry.

cbor2 decodes some tags itself, before any ``tag_hook`` sees them: dates, big numbers,
decimals, regular expressions, sets, and the shared references of tags 28 and 29. The
last are a weapon: a few hundred bytes of references decode to a structure that
shares its parts, and whoever walks it (a canonical re-encode, a validation) visits
2**depth nodes, so one 261-byte value kept a node busy for ever. Nothing koru-delta
reads from outside (values, events, sync messages, credentials, remote calls) uses
any of these tags, so every strict decoder refuses them all, here in one list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["BUILTIN_TAGS", "TagRefused", "refuse_tags"]

#: The tags cbor2 (6.x) decodes itself (tests/test_codec.py checks the list is whole).
BUILTIN_TAGS = (
    0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004, 55799,
)  # fmt: skip


class TagRefused(ValueError):
    """A built-in CBOR tag met where none is allowed (cbor2 wraps it in its decode
    error; the caller's message says what was being decoded)."""


def _refuse(tag: int) -> Any:
    def refuse(decoder: Any, *value: Any) -> Any:
        raise TagRefused(f"CBOR tag {tag} is not allowed here")

    return refuse


def refuse_tags(own: Mapping[int, Any] | None = None) -> dict[int, Any]:
    """cbor2 ``semantic_decoders`` refusing every built-in tag, except those ``own``
    decodes (a caller refusing some with its own message)."""
    decoders = {tag: _refuse(tag) for tag in BUILTIN_TAGS}
    decoders.update(own or {})
    return decoders
