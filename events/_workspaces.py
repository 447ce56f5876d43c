"""Workspaces in the log: how a workspace's names are stored, and the events that
create and drop workspaces.

A workspace is an isolated space of namespaces (and views) inside one database: one
per AI agent or per tenant. Its data is ordinary key/value data whose namespace carries
the workspace::

    stored namespace = "\\x00ws\\x00" + workspace + "\\x00" + namespace

Why a name prefix (and not a field in every event, or a log per workspace): every
projection, the checkpoint and its tables, replay, ingest from peers and the one-shot
command line already handle namespaces, so a workspace's data is folded, kept, synced
and read by the code that handles any data, with nothing added on those paths. The
prefix starts with U+0000 (:data:`~koru.events._names.RESERVED`), which no name a
caller passes may start with (:func:`~koru.events._names.check_user_name`), so no
call of the default space, nor of another workspace, can name it. A workspace name
holds no U+0000, so the prefix ends at the first U+0000 after it and the mapping is
one-to-one. A stored name that starts with U+0000 but is not of this form (a crafted
event) belongs to no space: nobody can read it but the log itself.

Events of the ``workspace`` agent record which workspaces exist::

    workspace [action, name]        action: "create" | "drop"

A drop is final (a dropped name is never created again): the history stays in the log
and readable for audit, and is never writable again.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from ._errors import CodecError, InvalidDataError
from ._event import Event
from ._limits import MAX_NAME_BYTES
from ._names import RESERVED, name_problem
from ._registry import Header, register_event_type

__all__ = [
    "MAX_WORKSPACE_BYTES",
    "WORKSPACE",
    "WORKSPACE_ACTIONS",
    "WORKSPACE_PREFIX",
    "WorkspaceEvent",
    "check_workspace",
    "split_workspace",
    "workspace_prefix",
    "workspace_problem",
]

#: The agent whose log holds workspace events.
WORKSPACE = "workspace"
#: What a workspace event does.
WORKSPACE_ACTIONS = ("create", "drop")
#: The start of every stored name of a workspace.
WORKSPACE_PREFIX = RESERVED + "ws" + RESERVED
#: Longest workspace name, in UTF-8 bytes: a namespace inside one may use the rest of
#: the name limit (at least ``MAX_NAME_BYTES - MAX_WORKSPACE_BYTES - 5`` bytes).
MAX_WORKSPACE_BYTES = 128


def workspace_problem(name: object) -> str | None:
    """Why ``name`` is not a usable workspace name, or None."""
    problem = name_problem(name, "workspace")
    if problem is not None:
        return problem
    assert isinstance(name, str)
    if RESERVED in name:
        return f"workspace {name!r} holds U+0000, which the database reserves"
    size = len(name.encode())
    if size > MAX_WORKSPACE_BYTES:
        return f"workspace name is {size} bytes, over the {MAX_WORKSPACE_BYTES}-byte limit"
    return None


def check_workspace(name: object) -> None:
    """Raise InvalidDataError unless ``name`` is a usable workspace name."""
    problem = workspace_problem(name)
    if problem is not None:
        raise InvalidDataError(problem)


def workspace_prefix(name: str) -> str:
    """The start of every stored name of workspace ``name`` (a checked name)."""
    return WORKSPACE_PREFIX + name + RESERVED


def split_workspace(stored: str) -> tuple[str, str] | None:
    """(workspace, name) of a stored name of a workspace, or None for any other name
    (the default space's, or a malformed reserved one)."""
    if not stored.startswith(WORKSPACE_PREFIX):
        return None
    rest = stored[len(WORKSPACE_PREFIX) :]
    end = rest.find(RESERVED)
    if end <= 0:
        return None
    workspace, name = rest[:end], rest[end + 1 :]
    if not name or name[0] == RESERVED or workspace_problem(workspace) is not None:
        return None
    return workspace, name


assert len(WORKSPACE_PREFIX) + MAX_WORKSPACE_BYTES + 1 < MAX_NAME_BYTES


class _Workspace(NamedTuple):
    origin: bytes
    agent: str
    seq: int
    prev: bytes | None
    hlc: int
    action: str
    name: str


class WorkspaceEvent(_Workspace, Event):
    """Create or drop the workspace ``name``."""

    __slots__ = ()
    TAG: ClassVar[str] = "workspace"


def _decode(header: Header, body: Any) -> Event:
    if type(body) is not list or len(body) != 2:
        raise CodecError("workspace body must be [action, name]")
    action, name = body
    if type(action) is not str or action not in WORKSPACE_ACTIONS:
        raise CodecError(f"action must be one of {WORKSPACE_ACTIONS}")
    problem = workspace_problem(name)
    if problem is not None:
        raise CodecError(problem)
    if header[1] != WORKSPACE:
        # Only the workspace agent's log speaks for workspaces (a crafted event in
        # another log is refused, not folded).
        raise CodecError(f"a workspace event belongs to the {WORKSPACE!r} log")
    return WorkspaceEvent(*header, action, name)


register_event_type(WorkspaceEvent, lambda e: [e.action, e.name], _decode)
