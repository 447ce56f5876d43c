"""One simulated node: a real :class:`koru.Database` on its own :class:`SimDisk`.

A node lives through incarnations. Each opens the database on the node's disk (with
the node's skewed clock and a seed drawn from the run), enrolls it the first time,
then runs, in one nursery: the server side of connections other nodes dial to it,
its own dialers (one per peer it dials, reconnecting with backoff) and its workload
clients. A crash cuts the disk's power (whatever was not fsynced may be dropped or
torn), breaks the node's connections and cancels the incarnation; after a downtime the
node reboots on the disk the cut left. Stopping closes the database cleanly.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

import koru
from koru._peering import _run

from ._clock import SimClock
from ._disk import PowerCut, SimDisk
from ._inline import DEVICE_LATENCY
from ._network import Network, Refused, SimConnection
from ._trace import Trace

if TYPE_CHECKING:
    from koru import Database

__all__ = ["PATH", "SimNode", "is_power_cut"]

#: Where each node keeps its database, on its own disk.
PATH = "/db"
#: Proof-of-work bits of the simulated identities (cheap, still checked).
DIFFICULTY = 4


def is_power_cut(exc: BaseException) -> bool:
    """The cut itself, or what it left: cancelled tasks, and errors whose chain of
    causes ends in the cut."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_power_cut(e) for e in exc.exceptions)
    if isinstance(exc, PowerCut | trio.Cancelled):
        return True
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, PowerCut):
        cause = cause.__cause__ or cause.__context__
    return cause is not None


class SimNode:
    """A node of the simulated cluster (see the module docstring)."""

    def __init__(
        self,
        index: int,
        *,
        network: Network,
        rng: random.Random,
        trace: Trace,
        owner: koru.Identity,
        skew: float,
        latency: float,
        options: dict[str, Any],
    ) -> None:
        self.index = index
        self.network = network
        self.rng = rng
        self.trace = trace
        self.owner = owner
        self.clock = SimClock(skew)
        self.latency = latency
        self.options = options
        #: Bloom mode's window for this node's connections (0: off), drawn per seed.
        self.bloom = 0
        #: A tight room for unproven events: (events one sender may leave waiting,
        #: events a run it takes holds), or None for the defaults; and at most how many
        #: events its own seals leave between two points (None: the default).
        self.room: tuple[int, int] | None = None
        self.seal_run: int | None = None
        self.disk = SimDisk()
        self.db: Database | None = None
        self.incarnation = 0
        self.crashes = 0
        self.enrolled = False
        self._nursery: trio.Nursery | None = None
        self._scope: trio.CancelScope | None = None
        self._stopping = False
        self._crashing = False
        self.changed = trio.Event()
        #: Peers this node dials, and what runs in each incarnation (the workload).
        self.dials: list[int] = []
        self.tasks: list[Callable[[SimNode, Database], Awaitable[None]]] = []
        self.on_open: list[Callable[[SimNode, Database], Awaitable[None]]] = []
        self.sessions_ended = 0

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def up(self) -> bool:
        return self._nursery is not None

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def life(self, nodes: list[SimNode]) -> None:
        """Run incarnations until stopped."""
        DEVICE_LATENCY.set(self.latency)  # this node's "threads" wait for its device
        while not self._stopping:
            self.incarnation += 1
            self._crashing = False
            try:
                with trio.CancelScope() as self._scope:
                    await self._incarnation(nodes)
            except BaseException as exc:
                if not (self._crashing and is_power_cut(exc)):
                    raise
            finally:
                self.db = None
                self._nursery = None
                self._changed()
            if self._stopping:
                return
            downtime = self.rng.uniform(0.5, 20)
            self.disk = self.disk.after_power_cut(self.rng)
            self.trace.add(self.name, "down", f"{downtime:.3f}")
            await trio.sleep(downtime)

    async def _incarnation(self, nodes: list[SimNode]) -> None:
        async with koru.open(
            PATH,
            disk=self.disk,
            clock=self.clock,
            seed=self.rng.randrange(2**63),
            difficulty=DIFFICULTY,
            sync="always",
            **self.options,
        ) as db:
            # A slow device syncs in a "thread" (inline after its virtual latency); a fast
            # one inline, always, whatever real time the sync took.
            db._committer.inline_sync_max = -1.0 if self.latency else float("inf")
            if self.bloom:
                db.peer_limits = db.peer_limits._replace(bloom_window=self.bloom)
            if self.room is not None:
                # What a backlog of thousands does to the default room, in a few dozen
                # events: runs must still complete, whatever else waits.
                held = self.room[0]
                db._proven.max_sender_events, db._proven.max_events = held, 4 * held
            if self.seal_run is not None:
                db._seal_run = (self.seal_run, 1 << 20)
            if not self.enrolled:
                await db.enroll(self.owner)
                self.enrolled = True
            await db.mine_identity()
            self.trace.add(self.name, "up", self.incarnation, await db.digest())
            for hook in self.on_open:
                await hook(self, db)
            async with trio.open_nursery() as nursery:
                self.db = db
                self._nursery = nursery
                self._changed()
                for peer in self.dials:
                    nursery.start_soon(self._dial, nodes[peer], db)
                for task in self.tasks:
                    nursery.start_soon(task, self, db)
                await trio.sleep_forever()

    # -- faults and stopping -------------------------------------------------------------

    def crash(self) -> None:
        """Cut the power now: the disk keeps only what a reboot would find."""
        if not self.up or self._scope is None:
            return
        self.crashes += 1
        self._crashing = True
        self.trace.add(self.name, "crash")
        self.disk.cut()
        self.network.crash(self.index)
        self._scope.cancel()

    def stop(self) -> None:
        """Close the database cleanly (flushed, synced, checkpointed) and stay down."""
        self._stopping = True
        if self._scope is not None:
            self._scope.cancel()

    # -- connections ---------------------------------------------------------------------

    def accept(self, conn: SimConnection) -> None:
        """Serve a connection another node dialed to this one."""
        if self._nursery is None or self.db is None or self._crashing or self._stopping:
            raise Refused(f"{self.name} is down")
        try:
            self._nursery.start_soon(self._session, self.db, conn, True, None)
        except RuntimeError:  # the incarnation is ending: its nursery takes no new task
            raise Refused(f"{self.name} is going down") from None

    async def _session(self, db: Database, conn: SimConnection, server: bool, peer: Any) -> bool:
        """Run one connection; whether it opened (the handshake passed)."""
        DEVICE_LATENCY.set(self.latency)  # a served connection is spawned by the dialer
        book, sessions = db._peering()
        opened: list[Any] = []
        end = await _run(
            db,
            book,
            conn,
            server=server,
            role="peer",
            limits=db.peer_limits,
            sessions=sessions,
            address=None if peer is None else f"ws://node{peer}",
            on_open=opened.append,
        )
        self.sessions_ended += 1
        self.trace.add(self.name, "session-end", conn.remote, end.code, end.reason[:60])
        return bool(opened)

    async def _dial(self, other: SimNode, db: Database) -> None:
        """Keep a connection to ``other``: reconnect with backoff (0.5 s doubling to 8 s,
        jittered) whenever it ends or cannot be made."""
        delay = 0.5
        while True:
            try:
                ours, theirs = self.network.connect(self.index, other.index)
                other.accept(theirs)
            except Refused as exc:
                self.trace.add(self.name, "dial-refused", other.name, str(exc)[:40])
            else:
                if await self._session(db, ours, False, other.index):
                    delay = 0.5
            await trio.sleep(delay * (1 + self.rng.random() / 4))
            delay = min(delay * 2, 8.0)
