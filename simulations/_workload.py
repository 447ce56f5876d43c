"""What the simulated clients do, and the record of it the invariants are checked on.

Each node runs a few clients pinned to it (a client's session is one incarnation of
its node). Each client, at exponentially spaced virtual times, does one of:

* **key-value churn**: puts and deletes over a small key space every node writes
  (concurrent writes to one key from several nodes), and reads of the current
  version (recorded, for the session guarantees);
* **the ring of tokens**: each node owns a ring of slots holding ``TOKENS`` tokens;
  its first client moves one token to the next slot in one ``put_batch`` (the total
  never changes), and every client checks, from one synchronous snapshot of its
  node's memory, that each ring it holds sums to ``TOKENS`` (a batch torn by a crash,
  by ingest or by replication shows as another total);
* **vector embeds**: ``put_similar`` of short texts (the embedding index is a
  projection like any other, rebuilt and compared at the end);
* **grants and revocations** (:mod:`._grants`): grants from the owner, delegation
  chains, expiry on the node's clock, revocations racing with use, and uses through
  an authorized handle, each judged against a reference model.

Only acknowledged writes are recorded as writes: a write in flight when its node
crashed may or may not survive, and no invariant depends on it.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import attrs
import trio

import koru
from koru import KeyNotFoundError

from ._grants import Grants
from ._trace import Trace

if TYPE_CHECKING:
    from koru import Database

    from ._node import SimNode

__all__ = ["KEYS", "TOKENS", "Op", "Record", "Workload"]

#: Keys of the churn, shared by every node; slots per ring; tokens per ring.
KEYS = 12
SLOTS = 5
TOKENS = 10
WORDS = ("river", "stone", "cloud", "ember", "delta", "field", "quartz", "lantern", "moss")


@attrs.define(slots=True, frozen=True)
class Op:
    """One acknowledged write or one read, by a client pinned to a node."""

    client: str
    node: int
    session: int  # the node's incarnation: a crash ends the client's session
    kind: str  # "write" or "read"
    namespace: str
    key: str
    #: The version written, or read (None: the key had no version).
    write_id: str | None


@attrs.define
class Record:
    """Everything the clients did and saw."""

    ops: list[Op] = attrs.Factory(list)
    #: Violations seen during the run (ring totals).
    violations: list[str] = attrs.Factory(list)
    token_checks: int = 0

    def acked(self) -> list[Op]:
        return [op for op in self.ops if op.kind == "write"]


class Workload:
    """The clients of every node (see the module docstring)."""

    def __init__(
        self,
        rng: random.Random,
        trace: Trace,
        *,
        nodes: int,
        clients: int = 2,
        rate: float = 1.0,
        kinds: tuple[str, ...] = ("kv", "tokens", "vectors", "grants"),
        owner: koru.Identity | None = None,
    ) -> None:
        self.rng = rng
        self.trace = trace
        self.nodes = nodes
        self.clients = clients
        self.rate = rate
        self.kinds = kinds
        self.record = Record()
        self.running = True
        #: Set when the workload stops: a client asleep until its next call wakes then
        #: (at a low --rate that sleep outlasted the convergence window).
        self.stopped = trio.Event()
        self.owner = owner
        self.grants = (
            Grants(rng, trace, owner, self.note_write)
            if "grants" in kinds and owner is not None
            else None
        )

    def stop(self) -> None:
        """No client makes another call; those asleep until their next one wake."""
        self.running = False
        self.stopped.set()

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or until the workload stops."""
        with trio.move_on_after(seconds):
            await self.stopped.wait()

    def note(self, op: Op) -> None:
        self.record.ops.append(op)
        wid = "-" if op.write_id is None else op.write_id[:16]
        self.trace.add(op.client, op.session, op.kind, op.namespace, op.key, wid)

    # -- hooks the nodes run -----------------------------------------------------------------

    async def on_open(self, node: SimNode, db: Database) -> None:
        """Give a node its ring the first time (again if the cut took the first try)."""
        if "tokens" not in self.kinds or await db.contains("ring", f"n{node.index}s0"):
            return
        items = [("ring", f"n{node.index}s{s}", TOKENS if s == 0 else 0) for s in range(SLOTS)]
        for version in await db.put_batch(items):
            self.note_write(node, "init", version.namespace, version.key, version.write_id)

    def note_write(self, node: SimNode, client: str, ns: str, key: str, write_id: str) -> None:
        """Record an acknowledged write (the invariants check it is never lost)."""
        self.note(
            Op(f"{node.name}/{client}", node.index, node.incarnation, "write", ns, key, write_id)
        )

    async def client(self, node: SimNode, db: Database, number: int) -> None:
        rng, name = self.rng, f"c{number}"
        while self.running:
            await self.pause(rng.expovariate(self.rate))
            if not self.running:
                return
            roll = rng.random()
            if "tokens" in self.kinds and number == 0 and roll < 0.15:
                await self._move(node, db, name)
            elif "tokens" in self.kinds and roll < 0.25:
                self.check_rings(node, db, name)
            elif self.grants is not None and roll < 0.35:
                await self.grants.step(node, db, name)
            elif "vectors" in self.kinds and roll < 0.38:
                text = " ".join(rng.choice(WORDS) for _ in range(4))
                version = await db.put_similar("docs", f"d{rng.randrange(KEYS)}", text)
                self.note_write(node, name, "docs", version.key, version.write_id)
            elif roll < 0.65:
                key = f"k{rng.randrange(KEYS)}"
                latest = await db.history("kv", key, latest=1)
                read = latest[-1].write_id if latest else None
                self.note(
                    Op(f"{node.name}/{name}", node.index, node.incarnation, "read", "kv", key, read)
                )
            elif roll < 0.72:
                key = f"k{rng.randrange(KEYS)}"
                try:
                    version = await db.delete("kv", key)
                except KeyNotFoundError:  # nothing to delete (here, now)
                    self.trace.add(f"{node.name}/{name}", "delete-nothing", key)
                else:
                    self.note_write(node, name, "kv", key, version.write_id)
            else:
                key = f"k{rng.randrange(KEYS)}"
                value = {"by": f"{node.name}/{name}", "n": rng.randrange(10**6)}
                version = await db.put("kv", key, value)
                self.note_write(node, name, "kv", key, version.write_id)

    async def _move(self, node: SimNode, db: Database, client: str) -> None:
        keys = [f"n{node.index}s{s}" for s in range(SLOTS)]
        slots = []
        for key in keys:
            try:
                slots.append(await db.get("ring", key))
            except KeyNotFoundError:
                return  # the ring is not there yet
        full = [s for s in range(SLOTS) if slots[s] > 0]
        a = self.rng.choice(full)
        b = (a + 1) % SLOTS
        versions = await db.put_batch(
            [("ring", keys[a], slots[a] - 1), ("ring", keys[b], slots[b] + 1)]
        )
        for version in versions:
            self.note_write(node, client, "ring", version.key, version.write_id)

    def check_rings(self, node: SimNode, db: Database, client: str) -> None:
        """Each ring this node holds sums to TOKENS, read without yielding (so no
        ingest can land between two slots)."""
        for ring in range(self.nodes):
            values: list[int | None] = []
            for s in range(SLOTS):
                try:
                    values.append(db.get_nowait("ring", f"n{ring}s{s}"))
                except KeyNotFoundError:
                    values.append(None)
                except trio.WouldBlock:
                    return  # not all in memory: no atomic read to be had now
            present = [v for v in values if v is not None]
            self.record.token_checks += 1
            if not present:
                continue
            if len(present) != SLOTS or sum(present) != TOKENS:
                problem = f"{node.name}/{client}: ring {ring} reads {values} (total {TOKENS})"
                self.record.violations.append(problem)
                self.trace.add("violation", problem)
