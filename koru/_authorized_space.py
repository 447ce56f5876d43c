"""The data calls of one space, as one identity may make them.

:class:`AuthorizedSpace` checks an identity's capabilities before each data call of
:class:`koru.SpaceAPI` and passes the call on to its target: the database itself (for
:class:`~koru.AuthorizedDatabase`, which adds the calls about the whole database) or
one workspace handle (``authorized.workspace(name)``). What is checked is always the
*stored* name: in a workspace, namespace ``docs`` is checked as
``koru.workspace_namespace(name, "docs")``, so a grant reaches into a workspace only if
its namespace glob matches that stored form (``*`` does, as does the glob
``koru.workspace_namespace(name)`` for the whole workspace), and a grant on ``docs`` in
the default space reaches nothing in any workspace. See :mod:`koru._authorized` for
what each call needs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from koru.events import (
    ADMIN,
    READ,
    WRITE,
    DatabaseClosedError,
    InvalidDataError,
    KoruError,
    PermissionDeniedError,
    PublicIdentity,
    check_name,
    check_user_name,
)
from koru.projections import NEVER, Query, QueryPlan

from ._authority import describe, public_key_of, whole, whole_space
from ._diff import Diff
from ._identity import Identity
from ._indexing import IndexInfo
from ._lineage import DEFAULT_MAX_DEPTH, Connected
from ._reads import KEYS_LESS, NAMESPACES_LESS, budgeted, listed_bytes, visible_only
from ._sessions import Session
from ._space import DEFAULT, Space
from ._subscriptions import DEFAULT_BUFFER, KeyChange, Subscription
from ._types import EXPIRING_FIELDS, Expiring, Version, Versioned
from ._viewing import VIEW_GUARD, ViewInfo
from ._workspace import Workspace

if TYPE_CHECKING:
    from koru.projections import Effective
    from koru.projections._lineage import Node

    from ._api import SpaceAPI
    from ._database import Database

__all__ = ["AuthorizedSpace"]

T = TypeVar("T")

EVERYTHING = "*"

NAMES = {READ: "read", WRITE: "write", ADMIN: "administer", READ | WRITE | ADMIN: "use"}


#: The most keys named one by one (no wildcard) in an identity's grants on a namespace
#: that its ``keys()`` looks up one by one rather than walking the namespace.
_NAMED_KEYS = 1024


class AuthorizedSpace:
    """One space (the default one or a workspace) as seen by one identity."""

    __slots__ = (
        "__weakref__",
        "_authority",
        "_checks",
        "_clock_ns",
        "_closed",
        "_db",
        "_effective",
        "_fresh",
        "_hlc",
        "_limit",
        "_name",
        "_now",
        "_open",
        "_prefix",
        "_reads",
        "_seen",
        "_session",
        "_sessions",
        "_signer",
        "_since",
        "_space",
        "_state",
        "_target",
        "_until",
        "_who",
        "_writer",
    )

    def __init__(
        self,
        db: Database,
        who: Session | Identity | PublicIdentity | bytes | str,
        target: SpaceAPI | None = None,
        space: Space = DEFAULT,
    ):
        self._db = db
        self._target: SpaceAPI = db if target is None else target
        self._space = space
        #: The stored names' prefix ("" in the default space: names are stored as given).
        self._prefix = space.prefix
        self._who = public_key_of(who)
        self._session = who if isinstance(who, Session) else None
        self._signer = who if isinstance(who, Identity) else None
        self._authority = db._authority
        self._sessions = db._sessions
        # The read time, as check() judges: it never goes back, so a grant that expired
        # stays expired when the wall clock is set back (and a decision's window holds
        # for every later reading).
        self._now = db._writer.read_time
        self._writer = db._writer
        self._clock_ns = db._writer._now_ns
        self._hlc = db._writer.hlc
        self._state = db._authority.state
        self._open = db._sessions._open
        self._effective: Effective | None = None
        self._seen = -1
        self._since, self._until = 1, 0  # an empty window: decided on first use
        #: (action, stored namespace) -> the check of a key: what the decision for a
        #: namespace comes to (usually one glob, or "any key"), compiled once per window.
        self._checks: dict[tuple[int, str], Callable[[str], bool]] = {}
        #: The same for reads, by stored namespace alone (AuthorizedDatabase.get's; see
        #: _read_rule).
        self._reads: dict[str, str | Callable[[str], bool]] = {}
        #: The state's change count while the decision holds, with no clock reading for
        #: it (a handle without a session whose decision lasts for ever), or while only
        #: ``_limit`` needs checking against the clock (a session's); else -1 (and once
        #: closed): the fast path of AuthorizedDatabase.get, which otherwise goes the
        #: whole way (_allow).
        self._fresh = -1
        #: Before this read time, the session has not expired and the decision holds.
        self._limit = 0
        self._closed = False
        self._name = describe(self._who)
        if self._session is not None:
            self._sessions.current(self._session)

    @property
    def identity(self) -> bytes:
        """The public key this handle acts as."""
        return self._who

    @property
    def readonly(self) -> bool:
        return self._target.readonly

    # -- the checks ------------------------------------------------------------------------

    def _scopes(self) -> Effective:
        """What the identity may do now (after checking the handle is open and its
        session current)."""
        if self._closed:
            raise DatabaseClosedError("this authorized handle is closed")
        now = self._now()
        session = self._session
        if session is not None and (
            now >= session.expires or self._open.get(session.id) is not session
        ):
            self._sessions.current(session)  # raises the precise error
        if not self._since <= now < self._until or self._seen != self._state.changes:
            self._refresh(now)
        assert self._effective is not None
        return self._effective

    def _refresh(self, now: int) -> None:
        effective = self._effective = self._authority.effective(self._who, now)
        seen = self._seen = self._state.changes
        self._since, self._until = effective.since, effective.until
        self._checks.clear()
        self._reads.clear()
        session = self._session
        # The read time never goes back, so a window entered (since <= now) stays
        # entered: only its end, and the session's, remain to check.
        if self._closed or not effective.since <= now:
            self._fresh = -1
        elif session is not None:
            self._fresh, self._limit = seen, min(effective.until, session.expires)
        else:
            self._fresh = seen if effective.until == NEVER else -1

    def _close(self) -> None:
        self._closed = True
        self._fresh = -1

    def _stored(self, namespace: Any) -> str:
        """The stored form of a namespace the caller named (checked in a workspace)."""
        if not self._prefix:
            return namespace  # type: ignore[no-any-return]
        return self._space.inward(namespace)

    def _allow(self, action: int, namespace: str, key: str) -> None:
        """Raise PermissionDeniedError unless the identity may ``action`` the key now.

        The hot path of every authorized call: the decision for (action, namespace) is
        compiled into one key check per window of validity (see _compile)."""
        if type(namespace) is not str or type(key) is not str:
            check_name(namespace, "namespace")  # the typed error every call gives
            check_name(key, "key")
        shown = namespace
        if self._prefix:
            namespace = self._space.inward(namespace)
        session = self._session
        if session is not None:
            # A session: one clock reading for its expiry and the decision's window.
            now = self._now()
            if (
                now >= session.expires
                or self._open.get(session.id) is not session
                or self._closed
                or self._seen != self._state.changes
                or not self._since <= now < self._until
            ):
                self._scopes()
        elif self._until != NEVER or self._seen != self._state.changes or self._closed:
            # Else the decision holds for every later time (until the state changes),
            # so the clock need not even be read.
            self._scopes()
        check = self._checks.get((action, namespace))
        if check is None:
            check = self._compile(action, namespace)
        if check is not _ANY_KEY and not check(key):
            raise self._denied(action, shown, key)

    def _denied(self, action: int, namespace: str, key: str) -> PermissionDeniedError:
        return PermissionDeniedError(
            self._name, NAMES[action], namespace, key, self._space.workspace
        )

    def _compile(self, action: int, namespace: str) -> Callable[[str], bool]:
        assert self._effective is not None
        matches = [
            s.key
            for s in self._effective.scopes
            if s.actions & action and s.namespace.match(namespace)
        ]
        check: Callable[[str], bool]
        if any(g.pattern == "*" for g in matches):
            check = _ANY_KEY
        elif not matches:
            check = _NO_KEY
        elif len(matches) == 1:
            check = matches[0].match
        else:
            funcs = tuple(g.match for g in matches)
            check = lambda key: any(f(key) for f in funcs)  # noqa: E731
        if len(self._checks) >= 4096:
            self._checks.clear()  # a cache: many namespaces only cost recompiling
        self._checks[(action, namespace)] = check
        return check

    def _read_rule(self, namespace: str) -> str | Callable[[str], bool]:
        """The read check of a (stored) namespace as AuthorizedDatabase.get keeps it: a
        key prefix when one grant's ``prefix*`` glob decides, else the compiled check."""
        check = self._compile(READ, namespace)
        assert self._effective is not None
        rule: str | Callable[[str], bool] = check
        if check is not _ANY_KEY and check is not _NO_KEY:
            patterns = {
                s.key.pattern
                for s in self._effective.scopes
                if s.actions & READ and s.namespace.match(namespace)
            }
            if len(patterns) == 1:
                (pattern,) = patterns
                head = _head(pattern)
                if pattern == head + "*":  # "prefix*": a prefix decides
                    rule = head
        if len(self._reads) >= 4096:
            self._reads.clear()  # a cache: many namespaces only cost recompiling
        self._reads[namespace] = rule
        return rule

    def _allow_space(self, action: int) -> None:
        """Every key of every namespace of this space (the whole database for the
        default handle's "everything")."""
        if not whole_space(self._scopes(), action, self._prefix):
            raise self._denied(action, EVERYTHING, EVERYTHING)

    def _participant(self, action: int = READ | WRITE | ADMIN) -> None:
        if not any(s.actions & action for s in self._scopes().scopes):
            raise PermissionDeniedError(self._name, NAMES[action], EVERYTHING, EVERYTHING)

    def _allow_namespace(self, action: int, namespace: str) -> None:
        if type(namespace) is not str:
            check_name(namespace, "namespace")
        if not whole(self._scopes(), action, self._stored(namespace)):
            raise self._denied(action, namespace, EVERYTHING)

    def _whole(self, action: int, namespace: str) -> bool:
        try:
            self._allow_namespace(action, namespace)
        except PermissionDeniedError:
            return False
        return True

    def _readable(self) -> Callable[[Node], bool]:
        """Whether the identity may read a node (stored names) now: for walks."""
        scopes = self._scopes()
        return lambda node: scopes.allows(READ, node[0], node[1])

    # -- writes ----------------------------------------------------------------------------

    async def put(
        self,
        namespace: str,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        parents: Iterable[Any] | None = None,
    ) -> Version:
        """Needs write on the key and, with ``parents``, read on every parent (a link
        says the parent exists)."""
        self._allow(WRITE, namespace, key)
        if parents is not None:
            parents = self._parents(namespace, parents)
        return await self._target.put(namespace, key, value, ttl=ttl, parents=parents)

    def _parents(self, namespace: str, parents: Iterable[Any]) -> Any:
        """The parents read once, each checked for read: what is checked is exactly what
        is linked. Anything malformed goes on to the database's typed refusal."""
        if isinstance(parents, str | bytes | bytearray | dict) or not isinstance(parents, Iterable):
            return parents
        fixed: list[Any] = []
        for item in parents:
            if type(item) is str:
                self._allow(READ, namespace, item)
            elif isinstance(item, tuple | list) and len(item) == 2:
                item = (item[0], item[1])
                if type(item[0]) is str and type(item[1]) is str:
                    try:
                        self._stored(item[0])
                    except InvalidDataError:
                        pass  # the database names it in its refusal
                    else:
                        self._allow(READ, item[0], item[1])
            fixed.append(item)
        return fixed

    async def put_with_causal_links(
        self, namespace: str, key: str, value: Any, parents: Iterable[Any]
    ) -> Version:
        return await self.put(namespace, key, value, parents=parents)

    async def put_batch(
        self, items: Iterable[tuple[str, str, Any]], *, ttl: float | None = None
    ) -> list[Version]:
        if isinstance(items, str | bytes | bytearray) or not isinstance(items, Iterable):
            return await self._target.put_batch(items, ttl=ttl)  # its typed refusal
        # Each item is read once, into a plain tuple: what is checked is exactly what is
        # written (an item that answers differently when read again gains nothing).
        fixed: list[Any] = []
        for item in items:
            if isinstance(item, Sequence) and not isinstance(item, str | bytes) and len(item) == 3:
                item = (item[0], item[1], item[2])
                self._allow(WRITE, item[0], item[1])
            fixed.append(item)  # anything else: the database refuses it, typed
        return await self._target.put_batch(fixed, ttl=ttl)

    async def delete(self, namespace: str, key: str) -> Version:
        self._allow(WRITE, namespace, key)
        return await self._target.delete(namespace, key)

    # -- reads -------------------------------------------------------------------------------

    async def get(self, namespace: str, key: str) -> Any:
        self._allow(READ, namespace, key)
        seen = self._state.changes
        try:
            found = await self._target.get(namespace, key)
        except KoruError:
            self._allow(READ, namespace, key)  # again: its yield let other tasks run
            raise
        # Again, unless nothing the decision depends on can have changed: the state
        # as it was, and a decision that holds for ever in it (no session; see _fresh).
        if not seen == self._state.changes == self._fresh:
            self._allow(READ, namespace, key)
        return found

    async def _checked(self, check: Callable[[], None], read: Coroutine[Any, Any, T]) -> T:
        """``read``'s answer, ``check`` passed before it runs and again after it. Why: the
        database's yield lets other tasks run, and a grant revoked or a session ended
        meanwhile must refuse the answer (h-review3: it was given). Its typed errors
        are passed on only once ``check`` passed again, so a client that lost its grant
        is told that, not what the read found."""
        try:
            check()
        except BaseException:
            read.close()  # never started
            raise
        try:
            found = await read
        except KoruError:
            check()
            raise
        check()
        return found

    async def get_versioned(self, namespace: str, key: str) -> Versioned:
        return await self._checked(
            partial(self._allow, READ, namespace, key), self._target.get_versioned(namespace, key)
        )

    async def get_at(self, namespace: str, key: str, at: Any) -> Versioned:
        return await self._checked(
            partial(self._allow, READ, namespace, key), self._target.get_at(namespace, key, at)
        )

    async def history(
        self,
        namespace: str,
        key: str,
        since: Any = None,
        until: Any = None,
        latest: int | None = None,
    ) -> list[Versioned]:
        return await self._checked(
            partial(self._allow, READ, namespace, key),
            self._target.history(namespace, key, since, until, latest),
        )

    async def contains(self, namespace: str, key: str) -> bool:
        return await self._checked(
            partial(self._allow, READ, namespace, key), self._target.contains(namespace, key)
        )

    # A listing is read under the bound of a served answer (see ``budgeted``), by the
    # target: when the identity may read only part of it, the target skips the rest
    # as it reads (``visible_only``), so that names the client is not sent are
    # neither gathered nor counted; and it is filtered here again.

    def _visible(self) -> Callable[[str, str | None], bool]:
        """What the identity may read, by stored names (a key None: any key of the
        namespace)."""
        scopes = self._scopes()
        reading = [s for s in scopes.scopes if s.actions & READ]

        def keep(namespace: str, key: str | None) -> bool:
            if key is None:
                return any(s.namespace.match(namespace) for s in reading)
            return scopes.allows(READ, namespace, key)

        return keep

    async def keys(self, namespace: str) -> list[str]:
        whole = self._whole(READ, namespace)
        stored, scopes = self._stored(namespace), self._scopes()
        if not whole:
            # The typed error every call gives (the database's own keys() refuses a
            # reserved name too; the named-key path below asks contains(), whose
            # refusal it would take for a key's).
            check_user_name(namespace, "namespace")
            while True:
                reading = [
                    s for s in scopes.scopes if s.actions & READ and s.namespace.match(stored)
                ]
                if not reading:
                    return []  # no key of it readable: not read (nor timed by its size)
                named = {s.key.pattern for s in reading}
                globs = [k for k in named if "*" in k or "?" in k]
                heads = [_head(k) for k in globs]
                if len(named) > _NAMED_KEYS or not all(heads):
                    break  # the walk, below
                # Keys named one by one, each looked up, or globs that each start with
                # a literal part (``user-42/*``), only the range of keys starting with
                # it read (and the named keys looked up): the namespace not walked (a
                # walk took 300 ms, 830 ms with globs, for 300,000 keys, for an answer
                # of 100; h-wild). One entry, then every lookup in the same state with
                # no await between them, as a walk reads: a contains() per key could
                # yield (every 64th operation) and let writes land mid-listing,
                # listing a key deleted before another it left out.
                await self._walkable()
                # Decided again after that yield, as get does: a grant revoked or a
                # session ended meanwhile (raised here) must not list keys, nor the
                # keys written after it (h-review3).
                now = self._scopes()
                if now is not scopes:
                    scopes = now
                    continue
                if not globs:
                    found = self._db._reads.present(stored, sorted(named, key=str.encode))
                else:
                    check = self._checks.get((READ, stored)) or self._compile(READ, stored)
                    literal = named.difference(globs)
                    found = self._db._reads.keys_in(stored, literal, heads, check)
                return budgeted("keys", found, listed_bytes, KEYS_LESS)
        with nullcontext() if whole else visible_only(self._visible()):
            keys = await self._target.keys(namespace)
        # What may be read after the read's yield (see above): a key must pass both.
        scopes = self._scopes()
        kept = (k for k in keys if scopes.allows(READ, stored, k))
        return budgeted("keys", kept, listed_bytes, KEYS_LESS)

    async def namespaces(self) -> list[str]:
        with nullcontext() if self._whole_space() else visible_only(self._visible()):
            names = await self._target.namespaces()
        scopes = [s for s in self._scopes().scopes if s.actions & READ]
        prefix = self._prefix
        kept = (n for n in names if any(s.namespace.match(prefix + n) for s in scopes))
        return budgeted("namespaces", kept, listed_bytes, NAMESPACES_LESS)

    def _whole_space(self) -> bool:
        """True if the identity may read every key of the space."""
        return whole_space(self._scopes(), READ, self._prefix)

    async def diff(
        self, namespace: str, key: str, from_version: int | str = -2, to_version: int | str = -1
    ) -> Diff:
        return await self._checked(
            partial(self._allow, READ, namespace, key),
            self._target.diff(namespace, key, from_version, to_version),
        )

    async def expiring(self, within: float = 0.0) -> list[Expiring]:
        with nullcontext() if self._whole_space() else visible_only(self._visible()):
            soon = await self._target.expiring(within)
        scopes, prefix = self._scopes(), self._prefix
        kept = (e for e in soon if scopes.allows(READ, prefix + e.namespace, e.key))
        return budgeted("expiring", kept, _expiring_bytes, "a smaller within")

    # -- queries, indexes, views, subscriptions -------------------------------------------------
    # A query reads (and an aggregate sums up) every document of its namespace, so it
    # needs read on all of it; defining indexes and views needs admin there.

    async def _view_namespace(self, name: str) -> str | None:
        for info in await self._target.list_views():
            if info.name == name:
                return info.namespace
        return None

    async def query(self, namespace: str, query: Query | dict[str, Any], at: Any = None) -> Any:
        return await self._checked(
            partial(self._allow_namespace, READ, namespace),
            self._target.query(namespace, query, at),
        )

    async def explain(
        self, namespace: str, query: Query | dict[str, Any], at: Any = None
    ) -> QueryPlan:
        return await self._checked(
            partial(self._allow_namespace, READ, namespace),
            self._target.explain(namespace, query, at),
        )

    async def create_index(self, namespace: str, field: str) -> bool:
        self._allow_namespace(ADMIN, namespace)
        return await self._target.create_index(namespace, field)

    async def drop_index(self, namespace: str, field: str) -> None:
        self._allow_namespace(ADMIN, namespace)
        await self._target.drop_index(namespace, field)

    async def list_indexes(self, namespace: str | None = None) -> list[IndexInfo]:
        if namespace is not None:
            self._allow_namespace(READ, namespace)
        found = await self._target.list_indexes(namespace)
        return [i for i in found if self._whole(READ, i.namespace)]

    async def create_view(self, name: str, namespace: str, query: Query | dict[str, Any]) -> None:
        self._allow_namespace(ADMIN, namespace)
        held = await self._view_namespace(name)
        if held is not None:  # replacing a view is administering its namespace too
            self._allow_namespace(ADMIN, held)
        with self._guarding_views(ADMIN):
            await self._target.create_view(name, namespace, query)

    @contextmanager
    def _guarding_views(self, action: int) -> Iterator[None]:
        """Within: a view call checks ``action`` on the namespace of the view it reads,
        replaces, drops or recomputes right before it does (see VIEW_GUARD): the view
        may have been replaced while the call yielded, after this handle's own check."""

        def guard(stored: str) -> None:
            if not whole(self._scopes(), action, stored):
                outward = self._space.outward(stored)
                raise self._denied(action, stored if outward is None else outward, EVERYTHING)

        token = VIEW_GUARD.set(guard)
        try:
            yield
        finally:
            VIEW_GUARD.reset(token)

    async def view(self, name: str) -> Any:
        held = await self._view_namespace(name)
        if held is not None:
            self._allow_namespace(READ, held)
        with self._guarding_views(READ):
            return await self._target.view(name)

    async def refresh_view(self, name: str) -> None:
        held = await self._view_namespace(name)
        if held is not None:
            self._allow_namespace(ADMIN, held)
        with self._guarding_views(ADMIN):
            await self._target.refresh_view(name)

    async def list_views(self) -> list[ViewInfo]:
        return [v for v in await self._target.list_views() if self._whole(READ, v.namespace)]

    async def delete_view(self, name: str) -> None:
        held = await self._view_namespace(name)
        if held is not None:
            self._allow_namespace(ADMIN, held)
        with self._guarding_views(ADMIN):
            await self._target.delete_view(name)

    @asynccontextmanager
    async def subscribe(
        self,
        namespace: str | None = None,
        key: str | None = None,
        kinds: Iterable[str] = ("put", "delete"),
        where: Query | dict[str, Any] | None = None,
        from_position: int | None = None,
        buffer: int = DEFAULT_BUFFER,
    ) -> AsyncIterator[Subscription]:
        """Changes the identity may read: one key needs read on it, a namespace read on
        all of it, everything read on everything (of this space); and every change
        delivered is checked again, so a revocation ends the stream
        (PermissionDeniedError) at the next one."""
        if namespace is not None and key is not None:
            self._allow(READ, namespace, key)
        elif namespace is not None:
            self._allow_namespace(READ, namespace)
        else:
            self._allow_space(READ)
        async with self._target.subscribe(
            namespace, key, kinds, where, from_position, buffer
        ) as subscription:
            assert isinstance(subscription, Subscription)  # a local space's
            changes = subscription._changes
            allow = self._allow

            def checked(item: Any) -> list[KeyChange]:
                out = changes(item)
                for change in out:
                    allow(READ, change.namespace, change.key)
                return out

            # The one place every change passes on its way out (an instance attribute:
            # this subscription alone is checked).
            subscription._changes = checked  # type: ignore[method-assign]
            yield subscription

    # -- lineage -------------------------------------------------------------------------------
    # A walk needs read on the keys it starts (and ends) at, and goes only through keys
    # the identity may read: what it shows, and what it passes through, are readable.

    async def _walkable(self) -> None:
        """The target is usable (open, and for a workspace not dropped)."""
        if isinstance(self._target, Workspace):
            await self._target._enter()
        else:
            await self._db._life.enter()

    async def are_connected(
        self, a: tuple[str, str], b: tuple[str, str], *, max_depth: int = DEFAULT_MAX_DEPTH
    ) -> bool:
        return await self.connection_path(a, b, max_depth=max_depth) is not None

    async def connection_path(
        self, a: tuple[str, str], b: tuple[str, str], *, max_depth: int = DEFAULT_MAX_DEPTH
    ) -> list[tuple[str, str]] | None:
        self._allow_node(a)
        self._allow_node(b)
        await self._walkable()
        return self._db._lineage.path(self._space, a, b, max_depth, self._readable())

    async def ancestors(
        self, node: tuple[str, str], depth: int | None = None
    ) -> list[tuple[str, str]]:
        self._allow_node(node)
        await self._walkable()
        return self._db._lineage.ancestors(self._space, node, depth, self._readable())

    async def descendants(
        self, node: tuple[str, str], depth: int | None = None
    ) -> list[tuple[str, str]]:
        self._allow_node(node)
        await self._walkable()
        return self._db._lineage.descendants(self._space, node, depth, self._readable())

    async def most_connected(self, namespace: str, k: int = 10) -> list[Connected]:
        """Needs read on the whole namespace (the counts include links to keys of
        other namespaces, as numbers only)."""
        return await self._checked(
            partial(self._allow_namespace, READ, namespace),
            self._target.most_connected(namespace, k),
        )

    def _allow_node(self, node: Any) -> None:
        if isinstance(node, tuple | list) and len(node) == 2:
            self._allow(READ, node[0], node[1])
        # else: the walk refuses it, typed

    async def aclose(self) -> None:
        """Close this handle (the database, and the session it acts in, stay open)."""
        self._close()


def _head(pattern: str) -> str:
    """The literal part a glob starts with (every name it matches starts with it)."""
    for i, c in enumerate(pattern):
        if c == "*" or c == "?":
            return pattern[:i]
    return pattern


def _ANY_KEY(key: str) -> bool:
    return True


def _NO_KEY(key: str) -> bool:
    return False


def _expiring_bytes(e: Expiring) -> int:
    """Fewer bytes than ``e`` takes in an answer."""
    return EXPIRING_FIELDS + len(e.namespace) + len(e.key)
