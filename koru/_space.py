"""Spaces: which stored names a handle may reach, and how its names are stored.

The database's own handle works in the default space; each workspace handle in its
own (see :mod:`koru.events._workspaces` for the stored form). A :class:`Space` is the
one place a handle's names cross into stored names (:meth:`Space.inward`, which applies
the rule for names a caller passes) and back (:meth:`Space.outward`, None for a stored
name of another space). Every listing a handle gives (namespaces, indexes, views,
subscriptions, expiring keys, lineage) goes through :meth:`Space.outward`, so nothing of
another space is ever shown, and every name it takes through :meth:`Space.inward`, so
nothing of another space is ever reached.
"""

from __future__ import annotations

from typing import Any

from koru.events import (
    MAX_NAME_BYTES,
    RESERVED,
    InvalidDataError,
    check_user_name,
    check_workspace,
    split_workspace,
    workspace_prefix,
)

__all__ = ["DEFAULT", "Space", "workspace_namespace"]

_ROOM = MAX_NAME_BYTES // 4  # a name of at most this many characters fits, encoded


class Space:
    """The default space (``workspace`` None) or one workspace's."""

    __slots__ = ("prefix", "workspace")

    def __init__(self, workspace: str | None) -> None:
        if workspace is not None:
            check_workspace(workspace)
        self.workspace = workspace
        self.prefix = "" if workspace is None else workspace_prefix(workspace)

    def inward(self, name: Any, what: str = "namespace") -> str:
        """The stored form of a namespace (or view name) a caller passed.

        Raises:
            InvalidDataError: not a name a caller may pass, or too long once stored.
        """
        check_user_name(name, what)
        if not self.prefix:
            return name  # type: ignore[no-any-return]
        stored: str = self.prefix + name
        if len(stored) <= _ROOM and stored.isascii():
            return stored  # the common case, without encoding
        size = len(stored.encode())
        if size > MAX_NAME_BYTES:
            room = MAX_NAME_BYTES - len(self.prefix.encode())
            raise InvalidDataError(
                f"{what} is {size - len(self.prefix.encode())} bytes, over the {room} bytes "
                f"a name may have in workspace {self.workspace!r}"
            )
        return stored

    def outward(self, stored: str) -> str | None:
        """The name a caller of this space knows ``stored`` by, or None if it belongs
        to another space (or to none)."""
        if not self.prefix:
            return None if stored[:1] == RESERVED else stored
        found = split_workspace(stored)
        if found is None or found[0] != self.workspace:
            return None
        return found[1]

    def owns(self, stored: str) -> bool:
        """True if ``stored`` is a name of this space."""
        if not self.prefix:
            return stored[:1] != RESERVED
        return self.outward(stored) is not None

    def __repr__(self) -> str:
        return "Space(default)" if self.workspace is None else f"Space({self.workspace!r})"


#: The database's own space.
DEFAULT = Space(None)


def workspace_namespace(workspace: str, namespace: str = "*") -> str:
    """How namespace ``namespace`` of workspace ``workspace`` is stored, which is the
    name capabilities are checked on: grant ``workspace_namespace("team", "docs")`` to
    give a capability on namespace ``docs`` of workspace ``team``, and
    ``workspace_namespace("team")`` (a glob) for every namespace of it.

    Raises:
        InvalidDataError: not a usable workspace name or namespace (glob), or a
            workspace name holding ``*`` or ``?``: globs have no escape, so its glob
            would also cover other workspaces (``t*`` covers ``team``).
    """
    check_workspace(workspace)
    if "*" in workspace or "?" in workspace:
        raise InvalidDataError(
            f"workspace {workspace!r} holds a wildcard (* or ?): no glob names it alone"
        )
    if namespace == "*":
        return Space(workspace).prefix + "*"
    return Space(workspace).inward(namespace)
