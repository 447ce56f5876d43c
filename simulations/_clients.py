"""Remote clients in the simulation: ``koru.connect`` over the simulated network.

Each remote client is a real :class:`koru.RemoteDatabase` pinned to one node, whose
connections are dialed on the simulated :class:`Network` (the client's dialer, see
``koru.connect(dial=...)``): its frames are delayed, cut, duplicated and truncated like
any other, and its node crashes and restarts under it. The client lives outside its
node's incarnations: a lost connection is restored on the next call, a call in flight
is sent again (a write with the key it was first sent with), and a call that finds no
node to talk to raises ``ConnectionLostError``, after which the client goes on.

Every value a client writes carries a token naming that write (``{"op": token}``), so
the final histories tell how many times each write was applied. The client records:

* each acknowledged write (an :class:`Op`, as local clients do) and each read, with
  the incarnation of the node that answered it (its *session*);
* each write whose call raised ``ConnectionLostError`` (may or may not be applied);
* for each write, the node incarnations its attempts reached: the server keeps a
  write's answer by its key in memory, so a retry that reaches the same incarnation
  is answered from there, and one that reaches a restarted node applies it again
  (the documented limit of ``koru.connect``).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

import koru
from koru import ConnectionLostError, KoruError, RemoteFailureError
from koru.nursery import Connection, Limits

from ._network import Refused
from ._trace import Trace
from ._workload import Op, Workload

if TYPE_CHECKING:
    from ._node import SimNode

__all__ = ["NAMESPACE", "RKEYS", "RemoteClient", "Writes"]

#: Where remote clients write, and how many keys (shared by all remote clients).
NAMESPACE = "rc"
RKEYS = 6


@attrs.define
class Writes:
    """What the remote clients wrote, by token."""

    #: Acknowledged: token -> (key, write id).
    acked: dict[str, tuple[str, str]] = attrs.Factory(dict)
    #: Calls that raised ConnectionLostError: applied at most once each, or not at all.
    uncertain: set[str] = attrs.Factory(set)
    #: Per token: the node incarnations its attempts reached.
    reached: dict[str, set[int]] = attrs.Factory(dict)
    #: Connections the remote clients opened, and calls that found no node.
    connections: int = 0
    lost_calls: int = 0
    #: Calls refused, by error type; calls the server failed on (a defect).
    refused: Counter[str] = attrs.Factory(Counter)
    failures: list[str] = attrs.Factory(list)


class RemoteClient:
    """One remote client (see the module docstring)."""

    def __init__(
        self,
        number: int,
        address: int,
        node: SimNode,
        *,
        rng: random.Random,
        trace: Trace,
        workload: Workload,
        writes: Writes,
        identity: koru.Identity,
        grant: koru.Grant,
        rate: float,
    ) -> None:
        self.number = number
        self.address = address  # its index on the network (after the nodes)
        self.node = node
        self.rng = rng
        self.trace = trace
        self.workload = workload
        self.writes = writes
        self.identity = identity
        self.grant = grant
        self.rate = rate
        #: The incarnation of the node its newest connection reached (the session
        #: its answers come from: it calls one at a time, on its newest connection).
        self.session = 0
        #: Incarnations its frames went to during the current call.
        self._reached: set[int] = set()
        self._ops = 0

    @property
    def name(self) -> str:
        return f"r{self.number}@{self.node.name}"

    @asynccontextmanager
    async def dial(self, url: str, limits: Limits) -> AsyncIterator[Connection]:
        """The client's dialer: a connection to its node on the simulated network."""
        node = self.node
        try:
            ours, theirs = node.network.connect(self.address, node.index)
            node.accept(theirs)
        except Refused as exc:
            raise ConnectionRefusedError(str(exc)) from None
        self.session = node.incarnation
        self.writes.connections += 1
        conn = _Noted(ours, self, node.incarnation)
        try:
            yield conn
        finally:
            await conn.aclose()

    async def run(self) -> None:
        """Connect (again, whenever a connection cannot be had) and work until the
        workload stops."""
        while self.workload.running:
            try:
                async with koru.connect(
                    f"ws://{self.node.name}",
                    self.identity,
                    grants=[self.grant],
                    clock=self.node.clock,
                    dial=self.dial,
                ) as db:
                    await self._work(db)
                    return
            except ConnectionLostError as exc:
                self.writes.lost_calls += 1
                self.trace.add(self.name, "no-connection", str(exc)[:40])
            await trio.sleep(self.rng.uniform(0.5, 2))

    async def _work(self, db: koru.RemoteDatabase) -> None:
        rng = self.rng
        while self.workload.running:
            await self.workload.pause(rng.expovariate(self.rate))
            if not self.workload.running:
                return
            roll = rng.random()
            try:
                if roll < 0.45:
                    await self._read(db)
                elif roll < 0.9:
                    await self._put(db)
                else:
                    await self._batch(db)
            except ConnectionLostError as exc:  # the next call reconnects
                self.writes.lost_calls += 1
                self.trace.add(self.name, "call-lost", str(exc)[:40])
            except RemoteFailureError as exc:  # a defect on the server
                self.writes.failures.append(f"{self.name}: the server failed: {exc}")
                self.trace.add(self.name, "call-failed", str(exc)[:60])
            except KoruError as exc:  # refused (noted: no invariant expects one)
                self.writes.refused[type(exc).__name__] += 1
                self.trace.add(self.name, "call-refused", type(exc).__name__, str(exc)[:60])

    def _token(self) -> str:
        self._ops += 1
        return f"{self.name}#{self._ops}"

    def _key(self) -> str:
        return f"rk{self.rng.randrange(RKEYS)}"

    async def _call(self, tokens: list[str], call: Any) -> Any:
        """Run a write, noting the incarnations it reached; if it raises
        ConnectionLostError, its tokens are uncertain."""
        self._reached = set()
        try:
            return await call
        except KoruError:  # lost, or refused: its tokens may still have been applied
            self.writes.uncertain.update(tokens)
            raise
        finally:
            for token in tokens:
                self.writes.reached[token] = set(self._reached)

    async def _put(self, db: koru.RemoteDatabase) -> None:
        token, key = self._token(), self._key()
        version = await self._call([token], db.put(NAMESPACE, key, {"op": token}))
        self._acked(token, key, version.write_id)

    async def _batch(self, db: koru.RemoteDatabase) -> None:
        keys = self.rng.sample([f"rk{i}" for i in range(RKEYS)], 2)
        tokens = [self._token() for _ in keys]
        items = [(NAMESPACE, k, {"op": t}) for k, t in zip(keys, tokens, strict=True)]
        versions = await self._call(tokens, db.put_batch(items))
        for token, version in zip(tokens, versions, strict=True):
            self._acked(token, version.key, version.write_id)

    def _acked(self, token: str, key: str, write_id: str) -> None:
        self.writes.acked[token] = (key, write_id)
        self.workload.note(
            Op(self.name, self.node.index, self.session, "write", NAMESPACE, key, write_id)
        )

    async def _read(self, db: koru.RemoteDatabase) -> None:
        key = self._key()
        latest = await db.history(NAMESPACE, key, latest=1)
        read = latest[-1].write_id if latest else None
        self.workload.note(
            Op(self.name, self.node.index, self.session, "read", NAMESPACE, key, read)
        )


class _Noted:
    """A client's connection that notes which node incarnation its frames go to."""

    def __init__(self, conn: Connection, client: RemoteClient, incarnation: int) -> None:
        self._conn = conn
        self._client = client
        self._incarnation = incarnation

    @property
    def remote(self) -> str:
        return self._conn.remote

    async def send(self, data: bytes) -> None:
        self._client._reached.add(self._incarnation)
        await self._conn.send(data)

    async def receive(self) -> bytes:
        return await self._conn.receive()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self._conn.aclose(code, reason)
