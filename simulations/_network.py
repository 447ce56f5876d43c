"""The simulated network: connections between nodes that fail as real ones do.

The sync protocol runs over a websocket: a reliable, ordered stream. Inside one open
connection no network loses, duplicates or reorders a frame by itself (TCP
retransmits and orders; the frame layer checks lengths), so this network does not
model silent in-stream loss. Its faults are those a protocol over a websocket meets:

* **delay**: each frame arrives after a latency drawn per link (a base plus an
  exponential jitter), never before an earlier frame of the same direction;
  reordering happens where it can in reality: between connections (events reach a
  node from several peers in ever new orders) and across reconnections;
* **loss** as a connection cut: the connection breaks (frames in flight are lost, both
  ends see close code 1006) and the dialer reconnects, resuming from the heads;
* **duplication and corruption** as a faulty frame: a frame delivered twice, or
  truncated (a middlebox or a broken peer): the protocol must refuse it (close and
  reconnect) or take it harmlessly, and the invariants must hold either way;
* **partitions**, symmetric or one-way: frames towards a blocked node wait (TCP
  retransmitting) until the partition heals or the idle timeout closes the
  connection, and a new connection needs both directions open.

Every draw comes from the run's one ``random.Random``, in the order the (seeded)
scheduler runs the tasks.
"""

from __future__ import annotations

import collections
import math
import random
from typing import Any

import attrs
import trio

from koru.nursery import ConnectionClosed

from ._trace import Trace

__all__ = ["CLOSE_ABNORMAL", "LinkFaults", "Network", "Refused", "SimConnection"]

#: RFC 6455: the connection was lost without a close frame.
CLOSE_ABNORMAL = 1006


class Refused(Exception):
    """A connection could not be made (the node is down or unreachable)."""


@attrs.define(frozen=True)
class LinkFaults:
    """Per-frame fault rates and latency of the network (drawn per seed)."""

    latency: float = 0.005  # seconds, base one-way delay
    jitter: float = 0.005  # mean of the exponential jitter on top
    cut: float = 0.0  # probability that sending a frame breaks the connection
    duplicate: float = 0.0  # probability that a frame arrives twice
    corrupt: float = 0.0  # probability that a frame arrives truncated


class _Link:
    """One connection between two nodes: two directions, broken together."""

    def __init__(self, net: Network, a: int, b: int, number: int) -> None:
        self.net = net
        self.ends = (a, b)
        self.number = number
        self.broken = False
        self.last_at = [0.0, 0.0]  # per direction: when its newest frame arrives
        self.senders: list[trio.MemorySendChannel[Any]] = []

    def break_(self, why: str) -> None:
        if not self.broken:
            self.broken = True
            self.net.counts["cut" if why == "lost" else "crash-cut"] += 1
            for sender in self.senders:  # wakes a receiver waiting for a frame
                sender.close()
            self.net.trace.add("net", "cut", f"link{self.number}", *self.ends, why)
            self.net._changed()


class SimConnection:
    """One end of a simulated connection (nursery's ``Connection``)."""

    def __init__(
        self,
        link: _Link,
        side: int,
        send: trio.MemorySendChannel[Any],
        receive: trio.MemoryReceiveChannel[Any],
    ) -> None:
        self._link = link
        self._side = side
        self._send = send
        self._receive = receive
        self._pending: tuple[float, bytes | None, tuple[int, str] | None] | None = None
        self.closed: tuple[int, str] | None = None

    @property
    def remote(self) -> str:
        return f"sim://{self._link.net.names[self._link.ends[1 - self._side]]}"

    @property
    def _src(self) -> int:
        return self._link.ends[self._side]

    @property
    def _dst(self) -> int:
        return self._link.ends[1 - self._side]

    def _lost(self) -> ConnectionClosed:
        return ConnectionClosed(CLOSE_ABNORMAL, "connection lost")

    def _arrival(self) -> float:
        net = self._link.net
        faults = net.faults
        at = trio.current_time() + faults.latency + net.rng.expovariate(1 / faults.jitter)
        at = max(at, self._link.last_at[self._side])
        self._link.last_at[self._side] = at
        return at

    async def send(self, data: bytes) -> None:
        link, net = self._link, self._link.net
        if self.closed is not None:
            raise ConnectionClosed(*self.closed)
        if link.broken:
            raise self._lost()
        await trio.lowlevel.checkpoint()
        if link.broken:  # cut while this task waited for its turn
            raise self._lost()
        net.bytes_sent[self._src] += len(data)
        net.frames += 1
        faults, rng = net.faults, net.rng
        if faults.cut and rng.random() < faults.cut:
            link.break_("lost")
            raise self._lost()
        frames = [data]
        if faults.corrupt and rng.random() < faults.corrupt:
            frames = [data[: rng.randrange(len(data))]]
            net.counts["corrupt"] += 1
            net.trace.add("net", "corrupt", f"link{link.number}", self._src, len(data))
        if faults.duplicate and rng.random() < faults.duplicate:
            frames.append(frames[0])
            net.counts["duplicate"] += 1
            net.trace.add("net", "duplicate", f"link{link.number}", self._src, len(data))
        for frame in frames:
            try:
                self._send.send_nowait((self._arrival(), frame, None))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise self._lost() from None

    async def receive(self) -> bytes:
        net = self._link.net
        while True:
            if self.closed is not None:
                raise ConnectionClosed(*self.closed)
            if self._link.broken:
                raise self._lost()
            if self._pending is None:
                try:
                    self._pending = await self._receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    raise self._lost() from None
                continue
            at, data, close = self._pending
            if net.blocked(self._dst, self._src):  # held back, as TCP would retransmit
                await net.wait_changed()
                continue
            now = trio.current_time()
            if now < at:
                with trio.move_on_after(at - now):
                    await net.wait_changed()
                continue
            self._pending = None
            if close is not None:
                self.closed = close
                raise ConnectionClosed(*close)
            assert data is not None
            return data

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        if self.closed is not None:
            return
        self.closed = (code, reason)
        if not self._link.broken:
            self._send.send_nowait((self._arrival(), None, (code, reason[:120])))
        self._send.close()


class Network:
    """Every connection of a run, the partitions, and what each node sent."""

    def __init__(
        self,
        nodes: int,
        rng: random.Random,
        trace: Trace,
        faults: LinkFaults,
        *,
        clients: int = 0,
    ) -> None:
        self.rng = rng
        #: Every end's name: the nodes, then the remote clients (never partitioned
        #: from their node: a client and its server are on one side).
        self.names = [f"node{i}" for i in range(nodes)] + [f"client{i}" for i in range(clients)]
        self.trace = trace
        self.faults = faults
        #: Directed (from, to) pairs whose frames do not get through.
        self._blocked: set[tuple[int, int]] = set()
        self._links: list[_Link] = []
        self._event = trio.Event()
        self._count = 0
        self.bytes_sent = [0] * (nodes + clients)
        #: Faults that happened, by kind (frames cut, duplicated, corrupted, ...).
        self.counts: collections.Counter[str] = collections.Counter()
        self.frames = 0

    def _changed(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_changed(self) -> None:
        await self._event.wait()

    def blocked(self, src: int, dst: int) -> bool:
        return (src, dst) in self._blocked

    def reachable(self, a: int, b: int) -> bool:
        return not self.blocked(a, b) and not self.blocked(b, a)

    def connect(self, a: int, b: int) -> tuple[SimConnection, SimConnection]:
        """A new connection from ``a`` (its first end) to ``b``."""
        if not self.reachable(a, b):
            raise Refused(f"node{b} is unreachable from node{a}")
        self._count += 1
        link = _Link(self, a, b, self._count)
        self._links = [x for x in self._links if not x.broken]
        self._links.append(link)
        ab_send, ab_receive = trio.open_memory_channel[Any](math.inf)
        ba_send, ba_receive = trio.open_memory_channel[Any](math.inf)
        link.senders = [ab_send, ba_send]
        self.trace.add("net", "connect", f"link{link.number}", a, b)
        return SimConnection(link, 0, ab_send, ba_receive), SimConnection(
            link, 1, ba_send, ab_receive
        )

    def partition(self, pairs: set[tuple[int, int]]) -> None:
        """Block these directed pairs (on top of any blocked already)."""
        self._blocked |= pairs
        self.trace.add("net", "partition", sorted(pairs))
        self._changed()

    def heal(self) -> None:
        self._blocked.clear()
        self.trace.add("net", "heal")
        self._changed()

    def crash(self, node: int) -> None:
        """Break every connection of ``node`` (its machine went away)."""
        for link in self._links:
            if node in link.ends:
                link.break_(f"node{node} crashed")
