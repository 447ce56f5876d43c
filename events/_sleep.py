"""Events of the sleep agent: what the consolidation process did, so that the log says
when the database compacted its cold tier and how."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from ._errors import CodecError
from ._event import Event
from ._fields import uint
from ._registry import Header, register_event_type

__all__ = ["SLEEP", "ConsolidationEvent"]

#: The agent whose log holds consolidations.
SLEEP = "sleep"


class _Consolidation(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    merges: int
    tables: int
    table_bytes: int


class ConsolidationEvent(_Consolidation, Event):
    """A consolidation merged tables: how many merges, and the cold tier after it
    (tables and their bytes)."""

    __slots__ = ()
    TAG: ClassVar[str] = "consolidation"


def _decode(header: Header, body: Any) -> Event:
    if type(body) is not list or len(body) != 3:
        raise CodecError("consolidation body must be [merges, tables, table bytes]")
    return ConsolidationEvent(
        *header, uint(body[0], "merges"), uint(body[1], "tables"), uint(body[2], "table bytes")
    )


register_event_type(ConsolidationEvent, lambda e: [e.merges, e.tables, e.table_bytes], _decode)
