"""The deterministic simulator (``koru.simulations``): determinism, a sweep of seeds
under the full fault mix, the pinned regression seeds, and the invariant checkers
themselves (each must report a violation it is shown).

Replay any run with the command a failing report prints
(``python -m koru.simulations --seed N ...``).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

import koru
from koru.simulations import Config, Op, Report, SimDisk, invariants, simulate
from koru.simulations._cli import PROFILE_NAMES, main
from koru.simulations._duration import parse_duration
from koru.simulations._faults import PROFILES
from koru.simulations._node import PATH

#: Seeds that once found a bug, each run on every test run before its fix landed
#: (see docs/simulations.md): (seed, nodes, virtual seconds, fault profile).
#: (seed, nodes, virtual seconds, faults, operations per second per client)
REGRESSION_SEEDS: list[tuple[int, int, float, str, float]] = [
    # The simulator's own first bugs: a client deleting a key with no value crashed
    # the run; the rebuild check left embeddings out of the digest.
    (1, 3, 30.0, "none", 1.0),
    # The simulated network sent on a connection cut while the sender waited its turn
    # (ClosedResourceError instead of a lost connection); it also showed trio's
    # scheduler ordering tasks by memory address until its deterministic mode was on.
    (212, 4, 120.0, "heavy", 1.0),
    # A node going down still took a connection into its closing nursery.
    (203, 4, 120.0, "heavy", 1.0),
    # A database bug: a seal (identity log) appended after an unsynced storage event
    # survived a power cut that tore that event; the node then wrote another event at
    # that seq, and every peer refused its feed for good ("not the one its origin
    # sealed"): no convergence, its acknowledged writes never reached anyone.
    (297, 4, 120.0, "heavy", 1.0),
    # A remote client's AUTH frame arrived truncated: the server closed with 1008 (any
    # malformed message before the handshake is a policy violation), and koru.connect
    # took that for the server refusing its identity (HandshakeRefusedError) instead
    # of a connection to make again.
    (96, 3, 120.0, "heavy", 1.0),
    # The simulator's rebuild check compared how projections hold their content: past
    # 4,096 events a checkpoint moves a feed's locations to a table, which a replay from
    # genesis holds in memory, and every node was reported (first seen: seed 42 of the
    # issue's one-hour, five-node run; this is it at a rate that gets there sooner).
    (42, 2, 120.0, "default", 40.0),
    # Sync's liveness against proven ingest's bounded room, with tight rooms (a few
    # dozen events; the room a backlog of tens of thousands meets at the defaults):
    # feeds pushed side by side, each short of its sealed point, filled the room for
    # good, as did a long stretch sealed once (seeds 1001 and 1030 found both; 1030
    # also a run ending with its own seal, an identity feed's, larger than the room:
    # its points were unknown until the seal itself could be taken).
    (1001, 3, 20.0, "heavy", 20.0),
    (1030, 3, 20.0, "heavy", 20.0),
    # A node restarted with its log four checkpoint intervals beyond its checkpoint
    # took in nothing again: its first writes were batches of ingest, each waiting for
    # a checkpoint that none marked due (only an appended event did); its sessions
    # timed out, idle, until the run gave up (found by a sweep from seed 30000 on).
    (30048, 4, 180.0, "heavy", 3.0),
]

#: The CI sweep: this many seeds with the full fault mix.
SWEEP = 64


def _run(
    seed: int, nodes: int = 3, duration: float = 30.0, faults: str = "heavy", rate: float = 1.0
) -> Report:
    config = Config(seed=seed, nodes=nodes, duration=duration, faults=faults, rate=rate)
    report = simulate(config)
    assert report.ok, report.text()
    return report


def test_the_same_seed_gives_the_same_trace_and_the_same_bytes() -> None:
    first = _run(11, nodes=3, duration=60)
    second = _run(11, nodes=3, duration=60)
    assert first.trace_digest == second.trace_digest
    assert first.disk_digest == second.disk_digest
    assert first.faults == second.faults and sum(first.faults.values()) > 0
    assert first.operations == second.operations > 50
    other = _run(12, nodes=3, duration=60)
    assert other.trace_digest != first.trace_digest
    assert other.disk_digest != first.disk_digest


def test_a_seed_runs_the_same_on_a_slower_machine() -> None:
    """A seed's run must not depend on how fast the machine runs it: a failing seed
    printed by CI must replay the same on a developer's machine. Found: the checkpoint
    slicer and the group commit's choice of thread timed themselves by the CPU's
    clock, so on a loaded machine checkpoints yielded at other points and the same
    seed gave a different trace and different bytes (seed 12 did here). The slow
    machine is a profile hook that burns real time on every 512th call."""
    calls = [0]

    def slow(frame: Any, event: str, arg: Any) -> None:
        calls[0] += 1
        if calls[0] % 512 == 0:
            until = time.perf_counter() + 0.0005  # clock-ok: burning real time
            while time.perf_counter() < until:  # clock-ok: burning real time
                pass

    # A seed whose run checkpoints every 50 events (checkpoints are sliced).
    config = Config(seed=12, nodes=3, duration=30, faults="heavy")
    fast = simulate(config)
    sys.setprofile(slow)
    try:
        slowed = simulate(config)
    finally:
        sys.setprofile(None)
    assert fast.ok and slowed.ok, (fast.text(), slowed.text())
    assert calls[0] > 10_000  # the hook ran
    assert slowed.trace_digest == fast.trace_digest
    assert slowed.disk_digest == fast.disk_digest


#: Seeds run under two string-hash salts: (seed, nodes, virtual seconds, faults). Seed 2
#: is pinned: its checkpoint's auth section listed feed heads in the order feeds were
#: first folded, which followed the salt (its disk digest differed; the logs did not).
HASH_SEEDS = [(12, 3, 20, "heavy"), (2, 5, 60, "default")]


@pytest.mark.parametrize(("seed", "nodes", "duration", "faults"), HASH_SEEDS)
def test_a_seed_runs_the_same_whatever_the_string_hash_seed(
    tmp_path: Path, seed: int, nodes: int, duration: int, faults: str
) -> None:
    """The docs promise the same digests in any process: string hashing is salted per
    process (``PYTHONHASHSEED``), so a set or dict iterated in hash order anywhere on
    the run's path would make a seed's replay on another process differ."""
    command = [sys.executable, "-m", "koru.simulations", "--seed", str(seed)]
    command += ["--nodes", str(nodes), "--duration", str(duration), "--faults", faults]
    digests = set()
    for salt in ("1", "2"):
        done = subprocess.run(
            command,
            env={**os.environ, "PYTHONHASHSEED": salt},
            cwd=tmp_path,  # not the checkout, whose koru/ folder would shadow the package
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        lines = [line.split()[-1] for line in done.stdout.splitlines() if "digest" in line]
        assert len(lines) == 2, done.stdout  # the trace's and the disk's
        digests.add(tuple(lines))
    assert len(digests) == 1


@pytest.mark.slow
def test_64_seeds_under_the_full_fault_mix() -> None:
    injected: Counter[str] = Counter()
    checks: Counter[str] = Counter()
    grants: Counter[str] = Counter()
    bloom = connections = lost = rooms = 0
    for seed in range(SWEEP):
        report = _run(1000 + seed, nodes=3, duration=20, faults="heavy")
        injected.update(report.faults)
        checks.update(report.checks)
        grants.update(report.grants)
        bloom += report.bloom_nodes
        rooms += report.room_nodes
        connections += report.remote_connections
        lost += report.remote_lost_calls
    # Bloom mode (a filter offered at open, a false positive settled by the Merkle
    # round) ran on some nodes of most seeds, under the same faults.
    assert bloom >= SWEEP // 2
    # So did tight rooms for unproven events.
    assert rooms >= SWEEP // 2
    # The sweep exercised every fault it claims, and checked every invariant.
    for fault in ("crash", "cut", "duplicate", "corrupt", "clock jump"):
        assert injected[fault] >= SWEEP // 4, (fault, injected)
    assert injected["partition"] + injected["one-way partition"] >= SWEEP // 4
    assert injected["one-way partition"] >= 1 and injected["partition"] >= 1
    assert checks["acknowledged writes after restart"] >= SWEEP
    for invariant in (
        "acknowledged writes on every node",
        "per-key histories identical",
        "session guarantees",
        "no fork",
        "convergence",
        "chains valid, projections equal a rebuild",
        "grants and revocations agree",
        "remote writes applied once",
    ):
        assert checks[invariant] >= SWEEP, (invariant, checks)
    # The remote client reconnected through the faults (more connections than seeds),
    # and some calls found no node to talk to (it was down) and went on.
    assert connections > SWEEP and lost >= 1
    # Grants: delegations made and refused (escalations), expiring grants, revocations,
    # and uses both allowed and refused, each judged against the model.
    for what in ("delegated", "expiring", "refused", "revoked", "allowed"):
        assert grants[what] >= 1, grants
    assert checks["grant uses within a valid chain"] == grants["uses"] > grants["allowed"]


@pytest.mark.slow
def test_32_seeds_of_busy_clients_under_tight_rooms() -> None:
    """Twenty operations a second per client (backlogs of hundreds of events after a
    partition or a crash) on nodes whose rooms for unproven events hold a few dozen:
    every seed converges (before the fixes half of them never did)."""
    rooms = 0
    for seed in range(32):
        report = _run(2000 + seed, nodes=3, duration=20, faults="heavy", rate=20.0)
        rooms += report.room_nodes
    assert rooms >= 16


@pytest.mark.parametrize(("seed", "nodes", "duration", "faults", "rate"), REGRESSION_SEEDS)
def test_regression_seeds(seed: int, nodes: int, duration: float, faults: str, rate: float) -> None:
    _run(seed, nodes, duration, faults, rate)


def test_five_nodes_default_faults() -> None:
    report = _run(42, nodes=5, duration=60, faults="default")
    assert report.convergence is not None
    assert all(sent > 0 for sent in report.bytes_sent)


# -- the checkers catch what they are shown -----------------------------------------------


def _op(kind: str, wid: str | None, client: str = "node0/c0", session: int = 1) -> Op:
    return Op(client, 0, session, kind, "kv", "k", wid)


def test_a_lost_acknowledged_write_is_reported() -> None:
    acked = [_op("write", "w1"), _op("write", "w2")]
    assert invariants.lost_writes("node1", acked, {("kv", "k"): ["w1", "w2"]}) == []
    problems = invariants.lost_writes("node1", acked, {("kv", "k"): ["w1"]})
    assert len(problems) == 1 and "w2" in problems[0] and "lost" in problems[0]


def test_a_divergent_history_is_reported() -> None:
    same = {"node0": {("kv", "k"): ["a", "b"]}, "node1": {("kv", "k"): ["a", "b"]}}
    assert invariants.divergent_histories(same) == []
    other = {"node0": {("kv", "k"): ["a", "b"]}, "node1": {("kv", "k"): ["b", "a"]}}
    problems = invariants.divergent_histories(other)
    assert len(problems) == 1 and "first difference at 0" in problems[0]
    missing = {"node0": {("kv", "k"): ["a", "b"]}, "node1": {("kv", "k"): ["a"]}}
    assert "first difference at 1" in invariants.divergent_histories(missing)[0]


def test_session_guarantee_violations_are_reported() -> None:
    final = {("kv", "k"): ["a", "b", "c"]}
    good = [_op("write", "b"), _op("read", "b"), _op("read", "c")]
    assert invariants.session_violations(good, final) == []
    stale = [_op("write", "b"), _op("read", "a")]
    assert "read-your-writes" in invariants.session_violations(stale, final)[0]
    back = [_op("read", "c"), _op("read", "b")]
    assert "monotonic reads" in invariants.session_violations(back, final)[0]
    # A new session (the node restarted) may read older than before; not its own writes.
    restarted = [_op("read", "c"), _op("read", "b", session=2)]
    assert invariants.session_violations(restarted, final) == []
    unknown = [_op("read", "zz")]
    assert "in no history" in invariants.session_violations(unknown, final)[0]


def test_missing_grants_and_disagreeing_checks_are_reported() -> None:
    g1, g2 = b"\x01" * 32, b"\x02" * 32
    good = ({g1, g2}, {g1}, (True,), (True,))
    assert invariants.grant_violations({"a": good, "b": good}, [g1, g2], [g1]) == []
    missing = ({g1}, set(), (True,), (True,))
    problems = invariants.grant_violations({"a": good, "b": missing}, [g1, g2], [g1])
    assert any("grant 0202" in p for p in problems)
    assert any("revocation of 0101" in p for p in problems)
    wrong = ({g1, g2}, {g1}, (False,), (True,))
    problems = invariants.grant_violations({"a": good, "b": wrong}, [g1, g2], [g1])
    assert any("its grants say" in p for p in problems)
    assert any("differently" in p for p in problems)


def test_divergent_digests_and_forks_are_reported() -> None:
    assert invariants.divergent_digests({"a": ("d1", 1), "b": ("d1", 1)}) == []
    assert "digest" in invariants.divergent_digests({"a": ("d1", 1), "b": ("d2", 1)})[0]
    assert "feed heads" in invariants.divergent_digests({"a": ("d1", 1), "b": ("d1", 2)})[0]
    assert invariants.fork_violations({"a": 0, "b": 0}) == []
    assert invariants.fork_violations({"a": 0, "b": 2}) == ["b refused 2 forked event(s)"]


async def test_a_tampered_log_and_a_wrong_digest_are_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    disk = SimDisk()
    async with koru.open(PATH, disk=disk, sync="os", difficulty=4) as db:
        for i in range(20):
            await db.put("kv", f"k{i}", {"i": i})
        digest = await db.digest()
    assert invariants.rebuild_violations("n", disk, PATH, digest) == []
    assert "a replay gives digest" in invariants.rebuild_violations("n", disk, PATH, "0" * 64)[0]
    segment = next(p for p in sorted(disk.files()) if p.endswith(".seg") and "storage" in p)
    data = bytearray(disk.files()[segment])
    data[len(data) // 2] ^= 0xFF
    disk.write(segment, bytes(data))
    problems = invariants.rebuild_violations("n", disk, PATH, digest)
    assert problems and "n:" in problems[0]


async def test_a_checkpointed_feed_past_a_chunk_equals_its_rebuild(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past ``CHUNK`` events a checkpoint moves a feed's locations to a table, which a
    rebuild from genesis still holds in memory (and lineage's links likewise): the same
    content, held differently, is no violation (seed 42 of the issue's one-hour run
    reported it on every node)."""
    from koru.projections import CHUNK

    disk = SimDisk()
    async with koru.open(PATH, disk=disk, sync="os", processes=False) as db:
        for i in range(CHUNK + 10):
            await db.put("kv", f"k{i % 7}", i)
        await db.put("kv", "derived", 1, parents=["k1", "k2"])  # a lineage table too
        await db.checkpoint()
        await db.put("kv", "k0", "after")
        digest = await db.digest()
    assert invariants.rebuild_violations("n", disk, PATH, digest) == []


def test_rebuilt_projections_are_compared_by_content_as_kdelta_check_compares_them() -> None:
    """The rebuild invariant compares each projection's capture as ``kdelta check``
    does: the order in which a list was folded does not matter, and the bytes of an
    uncopied buffer do (the simulator's own comparer rendered every memoryview as its
    type name, so a buffer holding other bytes passed)."""

    class Captured:
        def __init__(self, data: object) -> None:
            self.name, self._data = "p", data

        def capture(self) -> object:
            return self._data

    def contents(data: object) -> object:
        return invariants._contents(SimpleNamespace(members=[Captured(data)]))

    a = {"heads": [[1, b"x"], [2, b"y"]], "raw": memoryview(b"abc")}
    assert contents(a) == contents({"heads": [[2, b"y"], [1, b"x"]], "raw": memoryview(b"abc")})
    assert contents(a) != contents({"heads": [[1, b"x"], [2, b"y"]], "raw": memoryview(b"abd")})
    assert contents(a) != contents({"heads": [[1, b"x"]], "raw": memoryview(b"abc")})


def test_a_disk_that_lies_about_fsync_loses_acknowledged_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """End to end: a device that acknowledges syncs it never made loses writes in a
    crash, and the simulator says so (and prints how to replay it)."""

    honest = SimDisk.fsync

    def lying_fsync(self: SimDisk, fd: int) -> None:
        if not self._fds[fd].path.endswith(".seg"):
            return honest(self, fd)
        with self._mutex:  # a log segment: "synced", and nothing reached the platter
            self._enter()
            self.syncs += 1

    monkeypatch.setattr(SimDisk, "fsync", lying_fsync)
    report = simulate(Config(seed=5, nodes=3, duration=60, faults="heavy"))
    assert report.faults.get("crash", 0) >= 1
    assert not report.ok
    # Either a write acknowledged before the crash is gone, or the database refuses to
    # open the log the crash left (its checkpoint proves more than the log holds).
    lost = [v for v in report.violations if "is lost" in v]
    refused = any(e in (report.error or "") for e in ("DataLossError", "CorruptLogError"))
    assert lost or refused, report.text()
    assert "replay with: python -m koru.simulations --seed 5" in report.text()


# -- the command line ----------------------------------------------------------------------------


def test_the_command_runs_seeds_and_prints_what_it_checked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["--seed", "3", "--seeds", "2", "--nodes", "2", "--duration", "10s"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("trace digest ") == 2 and "seed 3:" in out and "seed 4:" in out
    assert "faults drawn:" in out and "invariants checked:" in out
    assert "2 seeds in" in out and "all passed" in out


def test_kdelta_simulate_is_the_same_command(capsys: pytest.CaptureFixture[str]) -> None:
    from koru._cli import main as kdelta

    code = kdelta(["simulate", "--seed", "3", "--nodes", "2", "--duration", "10s"])
    out = capsys.readouterr().out
    assert code == 0 and "seed 3: 2 nodes" in out
    main(["--seed", "3", "--nodes", "2", "--duration", "10s"])
    assert (
        capsys.readouterr().out.split("trace digest ")[1][:64] == out.split("trace digest ")[1][:64]
    )


def test_durations_and_profiles() -> None:
    assert parse_duration("1h") == 3600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("90") == parse_duration("90s") == 90
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")
    assert sorted(PROFILE_NAMES) == sorted(PROFILES)


async def test_a_ring_that_lost_a_token_is_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    import random
    from types import SimpleNamespace

    from koru.simulations._trace import Trace
    from koru.simulations._workload import SLOTS, TOKENS, Workload

    workload = Workload(random.Random(1), Trace(), nodes=2)
    node: Any = SimpleNamespace(name="node0", index=0, incarnation=1)
    async with koru.open(":memory:", sync="os", difficulty=4) as db:
        await workload.on_open(node, db)  # ring 0: all its tokens in slot 0
        for s in range(SLOTS):
            await db.get("ring", f"n0s{s}")  # in memory, for the synchronous read
        workload.check_rings(node, db, "c0")
        assert workload.record.violations == []
        assert workload.record.token_checks == 2
        await db.put_batch([("ring", "n0s0", TOKENS - 1), ("ring", "n0s1", 0)])  # one lost
        await db.get("ring", "n0s0")
        workload.check_rings(node, db, "c0")
        assert len(workload.record.violations) == 1
        assert f"total {TOKENS}" in workload.record.violations[0]
        await db.put("ring", "n1s0", TOKENS)  # half a ring: a torn batch
        await db.get("ring", "n1s0")
        workload.check_rings(node, db, "c1")
        assert "ring 1" in workload.record.violations[-1]


# -- remote clients and grants: the checkers and the model -------------------------------


def test_remote_writes_applied_other_than_once_are_reported() -> None:
    acked = {"t1": ("rk0", "w1")}
    reached = {"t1": {1}, "t2": {1}, "t3": {1, 2}}
    ok, again = invariants.applied_once(acked, {"t2"}, reached, {"t1": ["w1"]})
    assert ok == [] and again == 0
    # Applied twice by one incarnation (it kept the key): a violation.
    twice, _ = invariants.applied_once(acked, set(), reached, {"t1": ["w1", "w9"]})
    assert "applied 2 times" in twice[0]
    # Acknowledged with one version, stored as another.
    other, _ = invariants.applied_once(acked, set(), reached, {"t1": ["w2"]})
    assert "acknowledged as w1" in other[0]
    # A lost call applied twice, each by one incarnation of a restarted node: the
    # documented limit, counted apart; three times is a violation.
    lost = {"t3"}
    assert invariants.applied_once({}, lost, reached, {"t3": ["a", "b"]}) == ([], 1)
    assert (
        "applied 3 times"
        in invariants.applied_once({}, lost, reached, {"t3": ["a", "b", "c"]})[0][0]
    )
    # A value no client wrote.
    assert "never written" in invariants.applied_once({}, set(), {}, {"tx": ["a"]})[0][0]


def _grants_world() -> tuple[Any, ...]:
    import random

    from koru import Grant, Revocation

    owner, a, b = (koru.Identity.mine(4, rng=random.Random(i)) for i in range(3))
    root = Grant.create(
        owner, a.public_key, namespace="gd", actions=["read", "write"], not_before=100, expires=1000
    )
    child = Grant.create(
        a, b.public_key, namespace="gd", key="g1", actions="read", not_before=100,
        expires=500, parent=root.id,
    )  # fmt: skip
    wider = Grant.create(
        a,
        b.public_key,
        namespace="gd",
        key="g1",
        actions="read",
        not_before=100,
        expires=2000,
        parent=root.id,
    )  # fmt: skip: outlives its parent
    return owner, a, b, root, child, wider, Grant, Revocation


def test_the_grant_model_follows_the_chains() -> None:
    from koru.simulations._grants import READ, WRITE, allowed

    owner, a, b, root, child, wider, _, Revocation = _grants_world()
    roots = frozenset({owner.public_key})
    grants = {root.id: root, child.id: child, wider.id: wider}

    def may(who: Any, action: int, key: str, at: int, revs: Any = None, live: bool = True) -> bool:
        return allowed(grants, revs or {}, roots, who.public_key, action, "gd", key, at, live=live)

    assert may(owner, WRITE, "anything", 1)  # a root
    assert may(a, WRITE, "g2", 100) and may(a, READ, "g2", 999)
    assert not may(a, READ, "g2", 99) and not may(a, READ, "g2", 1000)  # its window
    assert may(b, READ, "g1", 499) and not may(b, READ, "g1", 500)  # the child expires
    assert not may(b, WRITE, "g1", 200) and not may(b, READ, "g2", 200)  # attenuated
    # The grant that outlives its parent never counts: b reads nothing after 500.
    assert not may(b, READ, "g1", 700)
    # Revoking the root grant voids the chain below it: live at once; for an event
    # stamped at a time, from the revocation's own time.
    revoked = {root.id: (Revocation.create(owner, root.id, 300),)}
    assert not may(b, READ, "g1", 200, revoked)
    assert may(b, READ, "g1", 200, revoked, live=False)
    assert not may(b, READ, "g1", 300, revoked, live=False)
    # A revocation by someone with no say over the grant does not count.
    stranger = {root.id: (Revocation.create(b, root.id, 300),)}
    assert may(a, READ, "g1", 400, stranger)


def test_a_use_outside_a_valid_chain_is_reported() -> None:
    from koru.simulations._grants import READ, Use

    owner, a, b, root, child, _, _, _ = _grants_world()
    grants = {root.id: root, child.id: child}
    roots = frozenset({owner.public_key})
    good = Use("node0", 200, b.public_key, READ, "g1", True, grants, {}, roots)
    late = Use("node0", 600, b.public_key, READ, "g1", True, grants, {}, roots)
    refused = Use("node1", 200, a.public_key, READ, "g0", False, grants, {}, roots)
    assert invariants.use_violations([good]) == []
    assert "allowed" in invariants.use_violations([late])[0]
    assert "refused" in invariants.use_violations([refused])[0]


def test_a_server_that_forgets_write_keys_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: a server that answers no retried write from its table applies it
    again, within one incarnation, and the simulator reports it."""
    from koru._serving import ServedCalls

    monkeypatch.setattr(ServedCalls, "kept", lambda self, key: None)
    # A retried write needs a cut between a write's arrival and its answer: rare in
    # any one seed, and which seed has one moves with every change of the write path's
    # timing. So a remote-heavy workload, and the first seeds until one has it (half of
    # them did when this was written).
    reports = []
    for seed in range(1, 13):
        report = simulate(
            Config(
                seed=seed, nodes=3, duration=120, faults="heavy", rate=4, workload=("kv", "remote")
            )
        )
        reports.append(report)
        if any("applied 2 times" in v for v in report.violations):
            break
    else:
        raise AssertionError("\n\n".join(r.text() for r in reports))


async def test_a_damaged_handshake_frame_is_a_connection_to_make_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Seed 96's bug, without the seed: the client's AUTH arrives truncated, the server
    closes with 1008 (a malformed message before the handshake), and ``koru.connect``
    must dial again, not take it for a refusal of its identity. The client's dialer is
    the transport seam the simulator uses."""
    import random
    from contextlib import asynccontextmanager

    from koru._peering import _run as serve_one
    from koru.nursery import Connection, Limits, memory_pair

    owner = koru.Identity.mine(4, rng=random.Random(7))
    client = koru.Identity.mine(4, rng=random.Random(8))
    dialed: list[int] = []

    class Truncating:
        """The first connection's first frame from the client arrives cut short."""

        def __init__(self, conn: Any, damage: bool) -> None:
            self._conn, self._damage = conn, damage
            self.remote = conn.remote

        async def send(self, data: bytes) -> None:
            if self._damage:
                self._damage = False
                data = data[: len(data) // 2]
            await self._conn.send(data)

        async def receive(self) -> bytes:
            return await self._conn.receive()  # type: ignore[no-any-return]

        async def aclose(self, code: int = 1000, reason: str = "") -> None:
            await self._conn.aclose(code, reason)

    async with koru.open(":memory:", sync="os", difficulty=4) as db, trio.open_nursery() as n:
        await db.enroll(owner)
        grant = koru.Grant.create(owner, client.public_key, namespace="rc", actions="write")
        book, sessions = db._peering()

        @asynccontextmanager
        async def dial(url: str, limits: Limits) -> Any:
            ours, theirs = memory_pair("client", "server")
            n.start_soon(
                functools.partial(
                    serve_one, db, book, theirs, server=True, role="peer",
                    limits=db.peer_limits, sessions=sessions,
                )
            )  # fmt: skip
            dialed.append(1)
            conn: Connection = Truncating(ours, damage=len(dialed) == 1)
            try:
                yield conn
            finally:
                await conn.aclose()

        async with koru.connect("ws://server", client, grants=[grant], dial=dial) as remote:
            version = await remote.put("rc", "k", 1)
        assert (await db.get("rc", "k")) == 1 and version.key == "k"
        assert len(dialed) == 2  # the damaged connection, then a good one
        n.cancel_scope.cancel()


def test_the_simulated_disk_forgets_files_nothing_reaches() -> None:
    """A file replaced again and again (a checkpoint's atomic rewrite) is not kept for
    ever: once no name, no cut and no open descriptor can reach its old bytes, they go
    (each kept two copies: a five-node run was killed at 24 GB). What a cut may still
    bring back is kept until the directory is synced."""
    import os
    import random

    disk = SimDisk()
    disk.mkdir("/d")
    disk.fsync_dir("/")

    def rewrite(i: int) -> None:
        fd = disk.open("/d/f.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        disk.pwrite(fd, bytes([i % 256]) * 4096, 0)
        disk.fsync(fd)
        disk.close(fd)
        disk.replace("/d/f.tmp", "/d/f")

    for i in range(200):
        rewrite(i)
        disk.fsync_dir("/d")
    assert len(disk._inodes) <= 4  # "/", "/d", "/d/f", and nothing else
    reader = disk.open("/d/f", os.O_RDONLY)  # an open descriptor keeps its file
    rewrite(200)  # not yet synced: a cut may bring back the old file
    disk.fsync_dir("/d")
    assert disk.pread(reader, 1, 0) == bytes([199])
    disk.close(reader)
    assert len(disk._inodes) <= 4
    rewrite(201)  # renamed, the directory not synced: a cut keeps the old name
    after = disk.after_power_cut(random.Random(1))
    fd = after.open("/d/f", os.O_RDONLY)
    assert after.pread(fd, 1, 0) in (bytes([200]), bytes([201]))
