"""One simulated run: a cluster, a workload, faults, then the invariants.

:func:`simulate` runs ``Config.nodes`` real databases in one process under
``trio.testing.MockClock`` (virtual time: an hour passes in seconds), each on its own
:class:`SimDisk`, connected over the simulated :class:`Network` (a ring, plus chords
drawn per seed, so each node dials a few peers). Phases:

1. **start**: every node opens, enrolls under one owner and connects;
2. **faults** for ``duration`` virtual seconds: the workload runs while crashes,
   partitions, clock jumps and the network's frame faults strike at the seed's rates;
3. **heal**: faults stop, partitions heal, crashed nodes come back, the workload stops;
   every node must then reach the same digest and feed heads within ``settle``
   virtual seconds;
4. **check** the invariants on the open nodes, stop them cleanly, and rebuild each from
   its disk.

Every random choice comes from one ``random.Random(seed)`` (trio's scheduler is
seeded from it too, and worker threads run inline: see :mod:`._inline`), so a seed
gives a byte-identical trace, whose blake3 is the run's ``trace_digest``.
"""

from __future__ import annotations

import functools
import random
import time
import traceback
from collections import Counter

import attrs
import blake3
import trio
import trio.testing

import koru

from . import _invariants as inv
from ._clients import NAMESPACE, RKEYS, RemoteClient, Writes
from ._clock import EPOCH_NS
from ._faults import FaultPlan, draw_plan
from ._grants import GKEYS, READ, WRITE, allowed, describe, facts
from ._grants import NAMESPACE as GRANT_NS
from ._inline import inline_threads
from ._network import LinkFaults, Network
from ._node import DIFFICULTY, PATH, SimNode
from ._trace import Trace
from ._workload import SLOTS, TOKENS, Workload

__all__ = ["Config", "Report", "simulate"]


@attrs.define(frozen=True)
class Config:
    """What to simulate (``seed`` decides everything else)."""

    seed: int
    nodes: int = 5
    duration: float = 3600.0  # virtual seconds of faults and workload
    faults: str = "default"  # a profile of koru.simulations.PROFILES
    clients: int = 2  # per node
    rate: float = 1.0  # operations per virtual second per client
    degree: int = 2  # peers each node dials besides its ring neighbour (at most)
    settle: float = 900.0  # virtual seconds the healed cluster has to converge
    workload: tuple[str, ...] = ("kv", "tokens", "vectors", "grants", "remote")
    keep_trace: bool = False

    def command(self) -> str:
        """The command that replays this run."""
        return (
            f"python -m koru.simulations --seed {self.seed} --nodes {self.nodes} "
            f"--duration {self.duration:g}s --faults {self.faults} --clients {self.clients} "
            f"--rate {self.rate:g} --workload {','.join(self.workload)}"
        )


@attrs.define
class Report:
    """What a run did and found."""

    config: Config
    plan: str = ""
    faults: dict[str, int] = attrs.Factory(dict)
    checks: dict[str, int] = attrs.Factory(dict)
    violations: list[str] = attrs.Factory(list)
    trace_digest: str = ""
    #: blake3 of every file on every node's disk at the end (the same seed, the same bytes).
    disk_digest: str = ""
    trace_lines: list[str] = attrs.Factory(list)
    operations: int = 0
    #: Virtual seconds from healing (and a write on every node) to equal digests
    #: (None: never), to the nearest 50 ms.
    convergence: float | None = None
    bytes_sent: list[int] = attrs.Factory(list)
    events: int = 0
    error: str | None = None
    wall: float = 0.0
    #: Nodes whose connections offered a Bloom filter at open (Bloom mode).
    bloom_nodes: int = 0
    #: Nodes with a tight room for unproven events (see SimNode.room).
    room_nodes: int = 0
    #: Remote clients: connections opened, calls that found no node, writes a
    #: restarted node applied again (its key forgotten: the documented limit).
    remote_connections: int = 0
    remote_lost_calls: int = 0
    remote_reapplied: int = 0
    #: What the grants workload did (granted, delegated, expiring, refused, revoked,
    #: uses, allowed).
    grants: dict[str, int] = attrs.Factory(dict)

    @property
    def ok(self) -> bool:
        return not self.violations and self.error is None

    def text(self) -> str:
        c = self.config
        lines = [
            f"seed {c.seed}: {c.nodes} nodes, {c.duration:g}s virtual, faults {c.faults!r}, "
            f"workload {','.join(c.workload)}",
            f"  faults drawn: {self.plan}; Bloom mode on {self.bloom_nodes} node(s), "
            f"tight rooms on {self.room_nodes}",
            "  faults injected: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"),
            "  invariants checked: "
            + ", ".join(f"{k} ({v})" for k, v in sorted(self.checks.items())),
            f"  operations {self.operations}, events {self.events}, "
            + (
                f"converged {self.convergence:.1f}s after healing"
                if self.convergence is not None
                else "did not converge"
            )
            + f", bytes sent per node {sum(self.bytes_sent) // max(1, len(self.bytes_sent)):,}"
            + f", {self.wall:.1f}s wall",
            *(
                [
                    f"  remote clients: {self.remote_connections} connections, "
                    f"{self.remote_lost_calls} calls lost, {self.remote_reapplied} write(s) "
                    "applied again by a restarted node"
                ]
                if "remote" in c.workload
                else []
            ),
            *([f"  grants: {describe(self.grants)}"] if self.grants else []),
            f"  trace digest {self.trace_digest}",
            f"  disk digest {self.disk_digest}",
        ]
        if self.ok:
            lines.append("  OK")
        else:
            lines += [f"  VIOLATION: {v}" for v in self.violations[:20]]
            if self.error:
                lines.append("  ERROR: " + self.error.rstrip().replace("\n", "\n    "))
            lines.append(f"  FAILED; replay with: {c.command()}")
        return "\n".join(lines)


def simulate(config: Config) -> Report:
    """Run one seed (synchronously: it runs its own trio loop under a mock clock)."""
    report = Report(config)
    began = time.perf_counter()  # clock-ok: the wall time a run took, for the report
    sim = _Simulation(config, report)
    try:
        with inline_threads(config.seed):
            trio.run(sim.main, clock=trio.testing.MockClock(autojump_threshold=0))
    except BaseException as exc:  # a run's crash is its finding
        if isinstance(exc, KeyboardInterrupt):
            raise
        report.error = "".join(traceback.format_exception(exc))[-4000:]
    report.trace_digest = sim.trace.digest()
    report.trace_lines = sim.trace.lines
    report.wall = time.perf_counter() - began  # clock-ok: see above
    return report


class _Simulation:
    def __init__(self, config: Config, report: Report) -> None:
        self.config = config
        self.report = report
        self.rng = random.Random(config.seed)
        self.trace = Trace(keep=config.keep_trace)
        self.checks: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()

    def _violate(self, problems: list[str]) -> None:
        for problem in problems:
            self.trace.add("violation", problem)
        self.report.violations += problems

    async def main(self) -> None:
        c, rng = self.config, self.rng
        plan = draw_plan(c.faults, c.nodes, rng)
        self.report.plan = plan.describe()
        self.trace.add("plan", c.seed, c.nodes, c.duration, c.faults, plan.describe())
        owner = koru.Identity.mine(DIFFICULTY, rng=random.Random(rng.getrandbits(64)))
        quiet = LinkFaults(latency=plan.link.latency, jitter=plan.link.jitter)
        remotes = max(1, c.nodes // 2) if "remote" in c.workload else 0
        net = self.net = Network(c.nodes, rng, self.trace, quiet, clients=remotes)
        workload = self.workload = Workload(
            rng,
            self.trace,
            nodes=c.nodes,
            clients=c.clients,
            rate=c.rate,
            kinds=c.workload,
            owner=owner,
        )
        options = {
            "segment_size": rng.choice((4096, 65536, 1 << 20)),
            "checkpoint_every": rng.choice((50, 500, 100_000)),
        }
        nodes = self.nodes = [
            SimNode(
                i,
                network=net,
                rng=rng,
                trace=self.trace,
                owner=owner,
                skew=plan.skews[i],
                latency=plan.latencies[i],
                options=options,
            )
            for i in range(c.nodes)
        ]
        for a, b in _topology(c.nodes, c.degree, rng):
            nodes[a].dials.append(b)
        # Bloom mode on some nodes (its own generator, seeded from the seed, so that the
        # other draws of a seed stay as they were when seeds were pinned).
        blooms = random.Random(c.seed * 7919 + 17)
        for node in nodes:
            node.bloom = blooms.choice((0, 0, 8, 64))
            self.trace.add(node.name, "bloom", node.bloom)
        self.report.bloom_nodes = sum(1 for node in nodes if node.bloom)
        # Tight rooms for unproven events on some nodes (their own generator too).
        # Every node's seals then make runs that fit the smallest room (as the default
        # runs, 1,024 events, fit the default room, 25,000 a sender).
        rooms = random.Random(c.seed * 104729 + 29)
        for node in nodes:
            node.room = rooms.choice((None, None, (24, 8), (64, 16)))
            self.trace.add(node.name, "room", node.room)
        tight = [node.room[1] for node in nodes if node.room is not None]
        for node in nodes:
            node.seal_run = min(tight, default=None)
        self.report.room_nodes = len(tight)
        self.writes = Writes()
        clients = self._remote_clients(remotes, owner)
        for node in nodes:
            node.on_open = [self._after_restart, workload.on_open]
            node.tasks = [
                functools.partial(_client, workload=workload, number=k) for k in range(c.clients)
            ]
        try:
            async with trio.open_nursery() as nursery:
                for node in nodes:
                    nursery.start_soon(node.life, nodes)
                await self._all_up(600)
                done = trio.Event()
                if clients:  # (no task otherwise: the scheduler's order stays as it was)
                    nursery.start_soon(self._run_clients, clients, done)
                net.faults = plan.link
                self.trace.add("phase", "faults")
                async with trio.open_nursery() as faults:
                    faults.start_soon(self._inject, plan, faults)
                    await trio.sleep(c.duration)
                    faults.cancel_scope.cancel()
                net.faults = quiet
                net.heal()
                workload.stop()
                self.trace.add("phase", "heal")
                healed = trio.current_time()
                if clients:
                    await done.wait()  # no remote call lands after the convergence
                await self._all_up(120)
                await self._burst()
                await self._converge(healed)
                digests = await self._final_checks()
                for node in nodes:
                    node.stop()
            self._rebuild_checks(digests)
            self.report.disk_digest = self._disk_digest()
            self.trace.add("disks", self.report.disk_digest)
        finally:  # what happened, also when the run failed
            self.report.faults = dict(self.injected + net.counts)
            self.report.checks = dict(self.checks)
            self.report.operations = len(workload.record.ops)
            self.report.bytes_sent = list(net.bytes_sent[: c.nodes])
            self.report.remote_connections = self.writes.connections
            self.report.remote_lost_calls = self.writes.lost_calls

    def _remote_clients(self, count: int, owner: koru.Identity) -> list[RemoteClient]:
        """A remote client per two nodes (pinned to nodes 0, 1, ...; at least one, if
        the workload has them; at half a local client's rate: a remote call costs the
        simulator a round trip, a handshake per reconnection, and its events' sync,
        and the CI sweep keeps its time), each with its own
        identity, granted read and write on its namespace by the owner (presented at
        every connect: a node that lost or never received the grant takes it then).
        Their identities and draws come from a generator of the seed's own, so that
        the other draws of a seed stay as they were when seeds were pinned."""
        rng = random.Random(self.config.seed * 7919 + 29)
        clients = []
        for k in range(count):
            identity = koru.Identity.mine(DIFFICULTY, rng=random.Random(rng.getrandbits(64)))
            grant = koru.Grant.create(
                owner, identity.public_key, namespace=NAMESPACE, actions=["read", "write"]
            )
            clients.append(
                RemoteClient(
                    k,
                    len(self.nodes) + k,
                    self.nodes[k % len(self.nodes)],
                    rng=rng,
                    trace=self.trace,
                    workload=self.workload,
                    writes=self.writes,
                    identity=identity,
                    grant=grant,
                    rate=self.config.rate / 2,
                )
            )
        return clients

    async def _run_clients(self, clients: list[RemoteClient], done: trio.Event) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(client.run)
        finally:
            done.set()

    async def _all_up(self, limit: float) -> None:
        with trio.fail_after(limit):
            while not all(node.up for node in self.nodes):
                down = next(node for node in self.nodes if not node.up)
                await down.changed.wait()

    # -- faults --------------------------------------------------------------------------

    async def _inject(self, plan: FaultPlan, nursery: trio.Nursery) -> None:
        rng, nodes = self.rng, self.nodes
        rates = (plan.crashes_per_minute, plan.partitions_per_minute, plan.jumps_per_minute)
        total = sum(rates)
        if not total:
            return
        partitioned = False

        async def heal_after(seconds: float) -> None:
            nonlocal partitioned
            await trio.sleep(seconds)
            self.net.heal()
            partitioned = False

        while True:
            await trio.sleep(rng.expovariate(total / 60))
            roll = rng.random() * total
            if roll < rates[0]:
                up = [node for node in nodes if node.up]
                if up:
                    rng.choice(up).crash()
                    self.injected["crash"] += 1
            elif roll < rates[0] + rates[1]:
                if partitioned or len(nodes) < 2:
                    continue
                side = set(rng.sample(range(len(nodes)), rng.randint(1, len(nodes) - 1)))
                one_way = rng.random() < plan.one_way
                pairs = {(a, b) for a in side for b in range(len(nodes)) if b not in side}
                if not one_way:
                    pairs |= {(b, a) for a, b in pairs}
                self.net.partition(pairs)
                partitioned = True
                self.injected["one-way partition" if one_way else "partition"] += 1
                nursery.start_soon(heal_after, rng.uniform(2, 60))
            else:
                node = rng.choice(nodes)
                seconds = rng.uniform(-90, 90)
                if abs(node.clock.offset_ns / 1e9 + seconds) > 600:
                    seconds = -seconds
                node.clock.jump(seconds)
                self.injected["clock jump"] += 1
                self.trace.add(node.name, "clock-jump", f"{seconds:.3f}")

    async def _after_restart(self, node: SimNode, db: koru.Database) -> None:
        """After a crash: every write the node acknowledged is still there."""
        if node.incarnation == 1:
            return
        acked = [op for op in self.workload.record.acked() if op.node == node.index]
        held = await inv.histories(db, {(op.namespace, op.key) for op in acked})
        self.checks["acknowledged writes after restart"] += 1
        self._violate(inv.lost_writes(f"{node.name} after restart", acked, held))

    # -- convergence and the final checks ------------------------------------------------------

    async def _burst(self) -> None:
        """Once every node is back: one write on each, at once. Convergence then also
        measures how long a write takes to reach every node (``--scale``)."""
        for node in self.nodes:
            db = node.db
            assert db is not None
            version = await db.put("burst", node.name, {"at": trio.current_time()})
            self.workload.note_write(node, "burst", "burst", node.name, version.write_id)

    async def _states(self) -> dict[str, tuple[str, object]]:
        states: dict[str, tuple[str, object]] = {}
        for node in self.nodes:
            db = node.db
            if db is None:
                continue
            states[node.name] = (await db.digest(), sorted((await db.feed_heads()).items()))
        return states

    async def _converge(self, healed: float) -> None:
        deadline = healed + self.config.settle
        while True:
            states = await self._states()
            if len(states) == len(self.nodes) and not inv.divergent_digests(states):
                self.report.convergence = trio.current_time() - healed
                self.trace.add("phase", "converged", f"{self.report.convergence:.3f}")
                return
            if trio.current_time() >= deadline:
                self.checks["convergence"] += 1
                self._violate(
                    [
                        f"no convergence within {self.config.settle:g}s of healing",
                        *inv.divergent_digests(states),
                    ]
                )
                return
            await trio.sleep(0.05)

    async def _final_checks(self) -> dict[str, str]:
        record = self.workload.record
        self.checks["convergence"] += 1
        keys = {(op.namespace, op.key) for op in record.ops}
        keys |= {("ring", f"n{i}s{s}") for i in range(len(self.nodes)) for s in range(SLOTS)}
        per_node: dict[str, inv.Histories] = {}
        digests: dict[str, str] = {}
        forks: dict[str, int] = {}
        grants: dict[str, inv.GrantState] = {}
        for node in self.nodes:
            db = node.db
            assert db is not None
            per_node[node.name] = await inv.histories(db, keys)
            digests[node.name] = await db.digest()
            stats = await db.stats()
            forks[node.name] = stats.forks
            self.report.events = max(self.report.events, sum((await db.feed_heads()).values()))
            if "tokens" in self.config.workload:
                self.workload.check_rings(node, db, "final")
            if self.workload.grants is not None:
                grants[node.name] = self._grant_state(db)
        self.checks["per-key histories identical"] += 1
        self._violate(inv.divergent_histories(per_node))
        for name, held in per_node.items():
            self.checks["acknowledged writes on every node"] += 1
            self._violate(inv.lost_writes(name, record.acked(), held))
        self.checks["session guarantees"] += 1
        self._violate(inv.session_violations(record.ops, per_node[self.nodes[0].name]))
        self.checks["no fork"] += 1
        self._violate(inv.fork_violations(forks))
        if "remote" in self.config.workload:
            await self._remote_checks()
        if grants and self.workload.grants is not None:
            granted = self.workload.grants.record
            self.report.grants = granted.counts()
            self.trace.add("grants", describe(self.report.grants))
            self.checks["grants and revocations agree"] += 1
            self._violate(inv.grant_violations(grants, granted.grants, granted.revoked))
            self.checks["grant uses within a valid chain"] += len(granted.uses)
            self._violate(inv.use_violations(granted.uses))
        self.checks[f"ring totals ({TOKENS} tokens)"] += record.token_checks
        self._violate(record.violations)
        for name in sorted(digests):
            self.trace.add("final", name, digests[name])
        return digests

    async def _remote_checks(self) -> None:
        """Every remote write applied once (histories are identical on every node by
        now: the first node's tell how often each token was applied)."""
        db = self.nodes[0].db
        assert db is not None
        applied: dict[str, list[str]] = {}
        for k in range(RKEYS):
            for version in await db.history(NAMESPACE, f"rk{k}"):
                value = version.value
                if isinstance(value, dict) and isinstance(value.get("op"), str):
                    applied.setdefault(value["op"], []).append(version.write_id)
        w = self.writes
        problems, again = inv.applied_once(w.acked, w.uncertain, w.reached, applied)
        self.checks["remote writes applied once"] += 1
        self._violate(problems + w.failures)
        self.report.remote_reapplied = again
        self.trace.add("remote", len(w.acked), len(w.uncertain), again, sorted(w.refused.items()))

    def _grant_state(self, db: koru.Database) -> inv.GrantState:
        """What ``db`` holds and answers, at fixed times (the same for every node)."""
        assert self.workload.grants is not None
        grants, revocations = facts(db)
        authority = db._authority
        answers, model = [], []
        for at in self._grant_times():
            for grantee in self.workload.grants.grantees:
                who = grantee.public_key
                for action in (READ, WRITE):
                    for k in range(GKEYS):
                        key = f"g{k}"
                        for live in (True, False):
                            if live:
                                got = authority.allows(who, action, GRANT_NS, key, at)
                            else:
                                got = authority.allowed_at(who, action, GRANT_NS, key, at)
                            answers.append(got)
                            model.append(
                                allowed(
                                    grants,
                                    revocations,
                                    authority.roots,
                                    who,
                                    action,
                                    GRANT_NS,
                                    key,
                                    at,
                                    live=live,
                                )
                            )
        return set(grants), set(revocations), tuple(answers), tuple(model)

    def _grant_times(self) -> list[int]:
        """Times around every acknowledged grant's window and revocation (at most 24,
        evenly spread), and now on an unskewed clock."""
        assert self.workload.grants is not None
        record = self.workload.grants.record
        times = {EPOCH_NS + round(trio.current_time() * 1e9)}
        for grant in record.grants.values():
            times |= {grant.not_before, grant.not_before - 1}
            if grant.expires is not None:
                times |= {grant.expires - 1, grant.expires}
        for at in record.revoked_at:
            times |= {at - 1, at}
        ordered = sorted(t for t in times if t >= 0)
        step = max(1, len(ordered) // 24)
        return ordered[::step]

    def _disk_digest(self) -> str:
        """blake3 of every file on every node's disk (logs, checkpoints, meta)."""
        h = blake3.blake3(b"koru-delta/simulation-disks/v1")
        for node in self.nodes:
            for path, data in sorted(node.disk.files().items()):
                h.update(f"{node.name}:{path}:{len(data)}:".encode())
                h.update(data)
        return h.hexdigest()

    def _rebuild_checks(self, digests: dict[str, str]) -> None:
        for node in self.nodes:
            self.checks["chains valid, projections equal a rebuild"] += 1
            self._violate(inv.rebuild_violations(node.name, node.disk, PATH, digests[node.name]))


async def _client(node: SimNode, db: koru.Database, *, workload: Workload, number: int) -> None:
    await workload.client(node, db, number)


def _topology(n: int, degree: int, rng: random.Random) -> list[tuple[int, int]]:
    """Who dials whom: a ring (each node its successor), plus up to ``degree`` chords
    per node drawn from the seed; one connection per pair."""
    pairs: set[frozenset[int]] = set()
    edges = []
    for a in range(n):
        for b in [(a + 1) % n] + [rng.randrange(n) for _ in range(degree)]:
            pair = frozenset((a, b))
            if a != b and pair not in pairs:
                pairs.add(pair)
                edges.append((a, b))
    return edges
