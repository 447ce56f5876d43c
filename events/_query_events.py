"""Event types of the query capability: index and view definitions.

Both go to the ``perspective`` agent's feed (how this node sees its data) and replicate
like any event. Wire bodies::

    index [action, namespace, path]                  action: "create" | "drop"
    view  [action, name, namespace, query | null]    query: the query's data form as
                                                     canonical CBOR bytes (null to drop)

The decoders check shapes and names only: whether a path or a query makes sense is the
projection's business (a crafted event with a nonsense query must not stop a log from
replaying; the projection records it as unusable instead).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from ._errors import CodecError
from ._event import Event
from ._fields import name, text
from ._registry import Header, register_event_type
from ._values import decode_value_strict

__all__ = ["INDEX_ACTIONS", "IndexEvent", "ViewEvent"]

#: What an index or view event does.
INDEX_ACTIONS = ("create", "drop")


def _action(item: Any) -> str:
    if item not in INDEX_ACTIONS or type(item) is not str:
        raise CodecError(f"action must be one of {INDEX_ACTIONS}")
    return item


class _Index(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    action: str
    namespace: str
    path: str


class IndexEvent(_Index, Event):
    """Create or drop the secondary index of ``namespace`` on field ``path``."""

    __slots__ = ()
    TAG: ClassVar[str] = "index"


def _decode_index(header: Header, body: Any) -> Event:
    if type(body) is not list or len(body) != 3:
        raise CodecError("index body must be [action, namespace, path]")
    return IndexEvent(*header, _action(body[0]), name(body[1], "namespace"), text(body[2], "path"))


class _View(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    action: str
    name: str
    namespace: str
    query: bytes | None


class ViewEvent(_View, Event):
    """Create (or replace) the materialized view ``name`` of a query over
    ``namespace``, or drop it (``query`` None)."""

    __slots__ = ()
    TAG: ClassVar[str] = "view"


def _decode_view(header: Header, body: Any) -> Event:
    if type(body) is not list or len(body) != 4:
        raise CodecError("view body must be [action, name, namespace, query]")
    action, query = _action(body[0]), body[3]
    if action == "create":
        if type(query) is not bytes:
            raise CodecError("a view's query must be canonical CBOR bytes")
        decode_value_strict(query)
    elif query is not None:
        raise CodecError("dropping a view carries no query")
    return ViewEvent(*header, action, name(body[1], "view"), name(body[2], "namespace"), query)


register_event_type(IndexEvent, lambda e: [e.action, e.namespace, e.path], _decode_index)
register_event_type(ViewEvent, lambda e: [e.action, e.name, e.namespace, e.query], _decode_view)
