"""The projection seam: what every projection is, and the set of them folded together.

A projection is a pure fold from events to state. The database registers several (the
key/value state and the feed heads first; queries, tiers and vector indexes later) and
every event reaches all of them through :meth:`Projections.apply`: the live write path,
replay at open and the ingest of other nodes' events. No path folds one projection
alone, so a projection cannot miss events that arrived some other way.

Each projection owns one section of the checkpoint, with its own format version. A
section that is missing, of another version or that fails to restore is rebuilt from the
log for that projection alone; the others load from theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from koru.events import AGENTS, STORAGE, Event, PutEvent, PutRun, Table

from ._newtable import NewTable

__all__ = [
    "Projection",
    "Projections",
    "PutFold",
    "RunFold",
    "ValuePlacement",
    "folds",
    "folds_kind",
]

P = TypeVar("P", bound="Projection")


@runtime_checkable
class Projection(Protocol):
    """A pure fold from events to state (no I/O, no clock, no trio).

    ``name`` keys its checkpoint section and finds it in the database; ``version`` is
    the format of that section (bump it when :meth:`capture` changes shape: an old
    section is then rebuilt from the log, never misread). ``cls()`` is the empty state.
    """

    name: ClassVar[str]
    version: ClassVar[int]

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        """Fold one event, stored at ``location`` in this node's log. The same set of
        events must give the same state in any order a peer may deliver them (per feed,
        events arrive in sequence order), and applying an event twice changes nothing."""
        ...

    def capture(self) -> Any:
        """The state as plain CBOR data (maps, lists, bytes, str, int), immutable from
        here on: it is encoded in a worker thread while the state moves on. A
        ``memoryview`` (of bytes) is written as a byte string without a copy: for a large
        buffer the projection never writes again (restore receives ``bytes``)."""
        ...

    @classmethod
    def restore(cls: type[P], data: Any) -> P:
        """The state :meth:`capture` returned (same ``version``). Raises ValueError,
        TypeError or KeyError for data of the wrong shape: that section is then rebuilt."""
        ...


@runtime_checkable
class ValuePlacement(Protocol):
    """A projection that knows where values live now, when not in the event that wrote
    them (the Tiers capability moves values between files).

    Why an indirection: a version record names the event that wrote it, and the log is
    never rewritten; so a value that moves is found through a placement that a later
    event changed, and the record, its history and its id stay as they were. Whatever
    location is given, the value read there is proven against its content id before it
    is served.
    """

    def placed(self, content_id: bytes) -> int | None:
        """Where the value with ``content_id`` now lives (a log location), or None if
        it is still in the event that wrote it."""
        ...


@runtime_checkable
class RunFold(Protocol):
    """A projection that folds a run of puts (:class:`~koru.events.PutRun`) in one
    call, with exactly the effect of applying its events one by one, in order. Replay
    hands most of a log over this way; a projection without it gets the run's events
    one at a time."""

    def apply_run(self, run: PutRun) -> None: ...


@runtime_checkable
class PutFold(Protocol):
    """A projection that folds a plain put together with its value's content id, which
    the writer computed already (it returns it to the caller and keys the value cache
    by it): exactly the effect of :meth:`Projection.apply`, without hashing the value a
    second time. The local write path hands every plain put (and batch) over this way."""

    def apply_put(
        self, event: PutEvent, event_id: bytes, location: int, content_id: bytes
    ) -> None: ...

    def apply_writes(
        self,
        event: Event,
        event_id: bytes,
        location: int,
        content_ids: Sequence[bytes],
        write_ids: Sequence[bytes] | None = None,
    ) -> None:
        """:meth:`Projection.apply` of an event with several writes (a batch), with the
        content ids of their values in order (anything for a tombstone), and their
        write ids (``write_id(event_id, i)``) if the writer has them."""
        ...


def folds(projection: Projection, agent: str) -> bool:
    """True if ``projection`` folds events of ``agent``'s log. A projection may name the
    agents it folds in an ``agents`` class attribute (a set of names); without one it
    folds every event. Why: a projection of one agent's events (the vector indexes)
    then costs nothing on every other write."""
    agents = getattr(projection, "agents", None)
    return agents is None or agent in agents


def folds_kind(projection: Projection, kind: type[Event]) -> bool:
    """True if ``projection`` folds events of type ``kind``. A projection may name the
    exact event classes it folds in a ``kinds`` class attribute; without one it folds
    every type. Why: most projections fold a few rare types, and the seam then never
    calls them for a put."""
    kinds = getattr(projection, "kinds", None)
    return kinds is None or kind in kinds


def put_namespaces(projection: Projection) -> Mapping[str, Any] | None:
    """The namespaces whose plain puts ``projection`` acts on, if it names them: a
    projection may keep, in a ``put_namespaces`` attribute, a mapping (it keeps current
    and never rebinds) outside whose keys its fold of a plain put does nothing. Why:
    index and view folds have nothing to do for most puts, and the seam then tests the
    namespace instead of calling them."""
    return getattr(projection, "put_namespaces", None)


class Projections:
    """The registered projections, folded together: the one seam every event takes."""

    __slots__ = (
        "_by_name",
        "_put_route",
        "_put_split",
        "_routes",
        "_runs",
        "_writes_routes",
        "members",
        "placements",
    )

    def __init__(self, members: Iterable[Projection]) -> None:
        self.members: tuple[Projection, ...] = tuple(members)
        self._by_name = {p.name: p for p in self.members}
        if len(self._by_name) != len(self.members):
            raise ValueError("two projections share a name")
        # (agent, event class) -> the folds of the projections that take such events:
        # decided once per pair, so an event costs only the projections it concerns.
        self._routes: dict[tuple[str, type[Event]], tuple[_Apply, ...]] = {}
        self._runs = {agent: self._run_folds(agent) for agent in AGENTS}
        # The folds of a storage put, in registration order, each with whether it takes
        # the value's content id (:class:`PutFold`).
        self._put_route: tuple[tuple[Callable[..., None], bool], ...] = tuple(
            (p.apply_put, True) if isinstance(p, PutFold) else (p.apply, False)
            for p in self.members
            if folds(p, STORAGE) and folds_kind(p, PutEvent)
        )
        # (agent, event class) -> the folds of apply_writes, each with whether it takes
        # the values' content ids (:class:`PutFold`).
        self._writes_routes: dict[
            tuple[str, type[Event]], tuple[tuple[Callable[..., None], bool], ...]
        ] = {}
        # The same, split for apply_put when the folds that take the id come first (the
        # key/value state is registered first): plain loops, no test per fold; the
        # folds that name their namespaces (put_namespaces) last, each called only for
        # a put in one of them.
        takers = [apply for apply, takes in self._put_route if takes]
        rest = [
            p
            for p in self.members
            if folds(p, STORAGE) and folds_kind(p, PutEvent) and not isinstance(p, PutFold)
        ]
        self._put_split: (
            tuple[
                tuple[Callable[..., None], ...],
                tuple[_Apply, ...],
                tuple[tuple[_Apply, Mapping[str, Any]], ...],
            ]
            | None
        ) = (
            (
                tuple(takers),
                tuple(p.apply for p in rest if put_namespaces(p) is None),
                tuple((p.apply, only) for p in rest if (only := put_namespaces(p)) is not None),
            )
            if all(takes for _, takes in self._put_route[: len(takers)])
            and [apply for apply, _ in self._put_route[len(takers) :]] == [p.apply for p in rest]
            else None
        )
        #: Where moved values are found, asked in registration order.
        self.placements = tuple(p.placed for p in self.members if isinstance(p, ValuePlacement))

    def _route(self, agent: str, kind: type[Event]) -> tuple[_Apply, ...]:
        if agent not in self._runs:
            raise KeyError(agent)
        route = tuple(p.apply for p in self.members if folds(p, agent) and folds_kind(p, kind))
        self._routes[(agent, kind)] = route
        return route

    def _run_folds(self, agent: str) -> tuple[Callable[[PutRun], None], ...]:
        return tuple(
            p.apply_run if isinstance(p, RunFold) else _one_by_one(p)
            for p in self.members
            if folds(p, agent) and folds_kind(p, PutEvent)
        )

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        """Fold one event into every projection that folds its agent's events of its
        type."""
        route = self._routes.get((event.agent, type(event)))
        if route is None:
            route = self._route(event.agent, type(event))
        for apply in route:
            apply(event, event_id, location)

    def apply_put(self, event: PutEvent, event_id: bytes, location: int, content_id: bytes) -> None:
        """:meth:`apply` of a plain put of this node's storage log whose value's
        content id (blake3 of ``event.value``) the caller computed already: the
        projections that take it (:class:`PutFold`) need not hash the value again."""
        split = self._put_split
        if split is not None:
            takers, others, filtered = split
            for take in takers:
                take(event, event_id, location, content_id)
            for apply in others:
                apply(event, event_id, location)
            if filtered:
                namespace = event.namespace
                for apply, only in filtered:
                    if namespace in only:
                        apply(event, event_id, location)
            return
        for apply, takes_id in self._put_route:
            if takes_id:
                apply(event, event_id, location, content_id)
            else:
                apply(event, event_id, location)

    def apply_writes(
        self,
        event: Event,
        event_id: bytes,
        location: int,
        content_ids: Sequence[bytes],
        write_ids: Sequence[bytes] | None = None,
    ) -> None:
        """:meth:`apply` of an event with several writes (a batch of this node) whose
        values' content ids (in order, anything for a tombstone) and maybe write ids the
        caller computed already: the projections that take them (:class:`PutFold`)
        need not hash again."""
        agent, kind = event.agent, type(event)
        route = self._writes_routes.get((agent, kind))
        if route is None:
            if agent not in self._runs:
                raise KeyError(agent)
            route = self._writes_routes[(agent, kind)] = tuple(
                (p.apply_writes, True) if isinstance(p, PutFold) else (p.apply, False)
                for p in self.members
                if folds(p, agent) and folds_kind(p, kind)
            )
        for apply, takes_ids in route:
            if takes_ids:
                apply(event, event_id, location, content_ids, write_ids)
            else:
                apply(event, event_id, location)

    def apply_run(self, run: PutRun) -> None:
        """Fold a run of puts into every projection that folds its agent's puts: the
        same as :meth:`apply` of each of its events in order."""
        for fold in self._runs[run.agent]:
            fold(run)

    def __getitem__(self, name: str) -> Projection:
        return self._by_name[name]

    def __iter__(self) -> Iterator[Projection]:
        return iter(self.members)

    def capture(self) -> dict[str, list[Any]]:
        """Every projection's checkpoint section: ``{name: [version, data]}``."""
        return {p.name: [p.version, p.capture()] for p in self.members}

    def compactions(self) -> list[tuple[Any, list[Table], NewTable]]:
        """(projection, tables to merge, the merged table to write) for every
        projection that has a ``compaction`` method and something to merge now."""
        plans = []
        for p in self.members:
            plan = getattr(p, "compaction", None)
            found = plan() if plan is not None else None
            if found is not None:
                plans.append((p, *found))
        return plans

    def retired(self) -> list[Any]:
        """Large containers the projections let go of (their ``retired`` lists,
        emptied here), for the shell to take apart a slice at a time."""
        gone: list[Any] = []
        for p in self.members:
            held = getattr(p, "retired", None)
            if held:
                gone.extend(held)
                held.clear()
        return gone

    def checkpointed(self, written: dict[NewTable, Table]) -> None:
        """A checkpoint is durable: tell the projections that have a ``checkpointed``
        method which table each of the new tables they captured became."""
        for p in self.members:
            done = getattr(p, "checkpointed", None)
            if done is not None:
                done(written)


_Apply = Callable[[Event, bytes, int], None]


def _one_by_one(projection: Projection) -> Callable[[PutRun], None]:
    """A run fold for a projection that has none: its events, one by one."""
    apply = projection.apply

    def fold(run: PutRun) -> None:
        for event, event_id, location in run.events():
            apply(event, event_id, location)

    return fold
