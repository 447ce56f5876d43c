"""Which workspaces exist: a pure fold of the workspace agent's events.

A workspace is created by its first ``create`` event and dropped, for good, by its
first ``drop`` (a two-phase set: a drop wins over every create, before or after it).
Why "first" and "for good": the state must be the same whatever order peers deliver
events in, and a workspace's data outlives its drop (the history stays readable for
audit), so a name created again would bring a dropped tenant's data back. Each moment
kept is the least ``(hlc, origin, event id)`` of its kind, so any arrival order, and
applying an event twice, give the same state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple

from koru.events import NODE_ID_SIZE, Event, WorkspaceEvent, workspace_problem

from ._layered import LazyList

__all__ = ["WorkspaceEntry", "WorkspaceState"]

Stamp = tuple[int, bytes, bytes]  # hlc, origin, event id: a total order of events


class WorkspaceEntry(NamedTuple):
    """One workspace name's events: the first create and the first drop (None if
    none)."""

    created: Stamp | None
    dropped: Stamp | None


class WorkspaceState:
    """workspace name -> its first create and first drop."""

    __slots__ = ("entries", "gone")

    name: ClassVar[str] = "workspaces"
    version: ClassVar[int] = 1
    #: The only events it folds (the seam calls it for no other).
    kinds: ClassVar[frozenset[type[Event]]] = frozenset({WorkspaceEvent})

    def __init__(self) -> None:
        self.entries: dict[str, WorkspaceEntry] = {}
        #: The names of dropped workspaces (asked by every call of a handle).
        self.gone: set[str] = set()

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        if type(event) is not WorkspaceEvent:
            return
        stamp = (event.hlc, event.origin, event_id)
        entry = self.entries.get(event.name, WorkspaceEntry(None, None))
        if event.action == "create":
            if entry.created is None or stamp < entry.created:
                entry = entry._replace(created=stamp)
        elif entry.dropped is None or stamp < entry.dropped:
            entry = entry._replace(dropped=stamp)
            self.gone.add(event.name)
        self.entries[event.name] = entry

    def dropped(self, name: str) -> bool:
        """True if the workspace was dropped."""
        return name in self.gone

    def created(self, name: str) -> bool:
        """True if a create of the workspace was folded (dropped since or not)."""
        entry = self.entries.get(name)
        return entry is not None and entry.created is not None

    def capture(self) -> Any:
        """Rows by name, listed later by the checkpoint's encoder in slices from a
        copy of the entries (immutable tuples). Why: listing them here, on the event
        loop, stalled every writer for the whole capture (200,000 workspaces: 0.5 s;
        h-ws); a copy of the dict is about a twentieth of that."""
        return LazyList(dict(self.entries), _rows)

    @classmethod
    def restore(cls, data: Any) -> WorkspaceState:
        state = cls()
        if type(data) is not list:
            raise ValueError("workspaces must be a list")
        for row in data:
            if type(row) is not list or len(row) != 7 or workspace_problem(row[0]) is not None:
                raise ValueError("malformed workspace entry")
            entry = state.entries[row[0]] = WorkspaceEntry(_stamp(row[1:4]), _stamp(row[4:7]))
            if entry.dropped is not None:
                state.gone.add(row[0])
        return state


def _rows(entries: dict[str, WorkspaceEntry]) -> Iterator[list[Any]]:
    for name in sorted(entries):
        entry = entries[name]
        yield [name, *_plain(entry.created), *_plain(entry.dropped)]


def _plain(stamp: Stamp | None) -> list[Any]:
    return [None, None, None] if stamp is None else list(stamp)


def _stamp(fields: list[Any]) -> Stamp | None:
    hlc, origin, eid = fields
    if hlc is None and origin is None and eid is None:
        return None
    if (
        type(hlc) is not int
        or hlc < 0
        or type(origin) is not bytes
        or len(origin) != NODE_ID_SIZE
        or type(eid) is not bytes
        or len(eid) != 32
    ):
        raise ValueError("malformed workspace stamp")
    return hlc, origin, eid
