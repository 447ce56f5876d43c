"""The invariants a simulated run must keep, each a function returning its violations.

Each checker returns a list of problems (empty: the invariant held), so a run reports
every violation it found and the tests can feed a checker a doctored record (a lost
write, a divergent node) and assert that it reports it.

* :func:`lost_writes`: every write a node acknowledged is in that node's history
  (checked after every restart, and on every node once the cluster converged);
* :func:`divergent_histories`: every key's history (its versions' write ids, in order)
  is identical on every node;
* :func:`session_violations`: read-your-writes (a client's read of a key returns its own
  latest acknowledged write of it or a later version, across restarts: acknowledged
  means durable) and monotonic reads (a client's reads of a key never go back to an
  earlier version within one session, i.e. one incarnation of its node; after a crash
  a node may have lost an ingested event it had shown, before it was synced);
* :func:`divergent_digests`: the nodes' state digests and feed heads are equal;
* :func:`fork_violations`: no node refused a fork (a node whose own feed forked, e.g.
  by reusing a seq after a crash, or a fork accepted anywhere, shows here);
* :func:`grant_violations`: every acknowledged grant and revocation is held by every
  node, and every node answers alike, at the same fixed times (around every grant's
  start and expiry and every revocation's time), whether each grantee may read or
  write each key (live, and for an event stamped then), and as the reference model
  (:func:`koru.simulations._grants.allowed`) says from that node's grants;
* :func:`use_violations`: every use of a grant a node allowed or refused, the model
  allows or refuses alike, from the grants and revocations the node held then and at
  the handle's time: nothing is authorized outside a valid chain at its time;
* :func:`applied_once`: every write of a remote client is applied once: an
  acknowledged one exactly once (the version it was acknowledged with), one whose call
  was lost at most once; a write whose attempts reached two incarnations of its node
  (the node restarted between them, forgetting the write's key) may be applied once
  per incarnation, and those are counted apart (the documented limit);
* :func:`rebuild_violations`: from each node's disk, a replay from genesis (every
  checksum and chain link of every agent's log verified) gives the same projections
  as the checkpoint and the same digest the open database reported.

Versions are ordered by their place in the final history of their key (the same on
every node, by :func:`divergent_histories`); a read of nothing is before everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from koru._audit import content_of
from koru.projections import state_digest as _state_digest

from ._grants import Use, allowed
from ._workload import Op

if TYPE_CHECKING:
    from koru import Database

    from ._disk import SimDisk

__all__ = [
    "Histories",
    "applied_once",
    "divergent_digests",
    "divergent_histories",
    "fork_violations",
    "grant_violations",
    "histories",
    "lost_writes",
    "rebuild_violations",
    "use_violations",
    "session_violations",
    "state_digest",
]

#: (namespace, key) -> the write ids of its versions, oldest first.
Histories = dict[tuple[str, str], list[str]]


async def histories(db: Database, keys: Iterable[tuple[str, str]]) -> Histories:
    """The history of each key on ``db``."""
    out: Histories = {}
    for ns, key in sorted(set(keys)):
        out[ns, key] = [v.write_id for v in await db.history(ns, key)]
    return out


def lost_writes(name: str, acked: Iterable[Op], held: Histories) -> list[str]:
    """Acknowledged writes missing from ``held`` (one node's histories)."""
    problems = []
    for op in acked:
        have = held.get((op.namespace, op.key), ())
        if op.write_id not in have:
            problems.append(
                f"{name}: acknowledged write {op.write_id} of {op.namespace}/{op.key} "
                f"by {op.client} (session {op.session}) is lost"
            )
    return problems


def divergent_histories(per_node: Mapping[str, Histories]) -> list[str]:
    """Keys whose history differs between nodes."""
    problems: list[str] = []
    names = sorted(per_node)
    if not names:
        return problems
    first = per_node[names[0]]
    keys = sorted({k for h in per_node.values() for k in h})
    for key in keys:
        expected = first.get(key, [])
        for name in names[1:]:
            got = per_node[name].get(key, [])
            if got != expected:
                problems.append(
                    f"history of {key[0]}/{key[1]} differs: {names[0]} has {len(expected)} "
                    f"versions, {name} has {len(got)} (first difference at "
                    f"{_first_difference(expected, got)})"
                )
    return problems


def _first_difference(a: Sequence[str], b: Sequence[str]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def session_violations(ops: Iterable[Op], final: Histories) -> list[str]:
    """Read-your-writes and monotonic reads, per client, from the recorded operations."""
    position = {(key, wid): i for key, versions in final.items() for i, wid in enumerate(versions)}

    def place(op: Op) -> int:
        if op.write_id is None:
            return -1
        return position.get(((op.namespace, op.key), op.write_id), -2)

    problems = []
    written: dict[tuple[str, tuple[str, str]], tuple[int, Op]] = {}
    last_read: dict[tuple[str, int, tuple[str, str]], tuple[int, Op]] = {}
    for op in ops:
        key = (op.namespace, op.key)
        here = place(op)
        if here == -2:
            problems.append(f"{op.client}: {op.kind} of {key} names {op.write_id}, in no history")
            continue
        if op.kind == "write":
            written[op.client, key] = (here, op)
            continue
        mine = written.get((op.client, key))
        if mine is not None and here < mine[0]:
            problems.append(
                f"read-your-writes: {op.client} read {key} at version {here} after writing "
                f"version {mine[0]} ({mine[1].write_id})"
            )
        before = last_read.get((op.client, op.session, key))
        if before is not None and here < before[0]:
            problems.append(
                f"monotonic reads: {op.client} (session {op.session}) read {key} at version "
                f"{here} after version {before[0]}"
            )
        last_read[op.client, op.session, key] = (here, op)
    return problems


def applied_once(
    acked: Mapping[str, tuple[str, str]],
    uncertain: Iterable[str],
    reached: Mapping[str, set[int]],
    applied: Mapping[str, list[str]],
) -> tuple[list[str], int]:
    """Remote writes applied other than once (see the module docstring), and how many
    were applied again by a restarted node. ``applied``: token -> the write ids of the
    versions carrying it, in the final histories."""
    problems = []
    again = 0
    tokens = sorted(set(acked) | set(uncertain) | set(applied))
    for token in tokens:
        got = applied.get(token, [])
        allowed = max(1, len(reached.get(token, ())))
        if token in acked:
            key, wid = acked[token]
            if wid not in got:
                problems.append(f"{token}: acknowledged as {wid} of {key}, applied as {got}")
                continue
        elif token not in uncertain:
            problems.append(f"{token}: applied as {got}, but never written")
            continue
        if len(got) > allowed:
            problems.append(
                f"{token}: applied {len(got)} times, its attempts reached "
                f"{allowed} incarnation(s) of its node"
            )
        elif len(got) > 1:
            again += 1
    return problems, again


def divergent_digests(states: Mapping[str, tuple[str, Any]]) -> list[str]:
    """Nodes whose (digest, feed heads) differ from the first node's."""
    names = sorted(states)
    if not names:
        return []
    first = states[names[0]]
    return [
        f"{name} has digest {states[name][0][:16]}, {names[0]} has {first[0][:16]}"
        + ("" if states[name][1] == first[1] else " (and other feed heads)")
        for name in names[1:]
        if states[name] != first
    ]


def fork_violations(forks: Mapping[str, int]) -> list[str]:
    return [f"{name} refused {n} forked event(s)" for name, n in sorted(forks.items()) if n]


#: Per node: grant ids held, revoked grant ids held, ``check`` answers per grantee, and
#: the answers its grants and revocations imply.
GrantState = tuple[set[bytes], set[bytes], tuple[bool, ...], tuple[bool, ...]]


def grant_violations(
    states: Mapping[str, GrantState], grants: Iterable[bytes], revoked: Iterable[bytes]
) -> list[str]:
    """Acknowledged grants or revocations missing somewhere, or ``check`` answers that
    differ between nodes or from what a node's grants imply."""
    problems = []
    grants, revoked = sorted(grants), sorted(revoked)
    answers = {name: state[2] for name, state in states.items()}
    for name, (held, held_revoked, checks, implied) in sorted(states.items()):
        problems += [
            f"{name}: acknowledged grant {g.hex()[:16]} is missing" for g in grants if g not in held
        ]
        problems += [
            f"{name}: acknowledged revocation of {g.hex()[:16]} is missing"
            for g in revoked
            if g not in held_revoked
        ]
        if checks != implied:
            problems.append(f"{name}: check answers {checks}, its grants say {implied}")
    if len(set(answers.values())) > 1:
        problems.append(f"nodes answer check differently: {dict(sorted(answers.items()))}")
    return problems


def use_violations(uses: Iterable[Use]) -> list[str]:
    """Uses a node decided otherwise than the reference model, from what it held."""
    problems = []
    for use in uses:
        model = allowed(
            use.grants, use.revocations, use.roots, use.who, use.action, "gd", use.key, use.at
        )
        if model != use.allowed:
            problems.append(
                f"{use.node}: {use.who.hex()[:8]} was "
                + ("allowed" if use.allowed else "refused")
                + f" action {use.action} on gd/{use.key} at {use.at}, the chains say "
                + ("yes" if model else "no")
            )
    return problems


def rebuild_violations(name: str, disk: SimDisk, path: str, digest: str) -> list[str]:
    """Replay ``disk``'s logs from genesis and compare with its checkpoint and ``digest``."""
    from koru._loader import load
    from koru.events import FileStore, KoruError

    problems = []
    try:
        store = FileStore(path, readonly=True, disk=disk)
    except KoruError as exc:
        return [f"{name}: the database does not open read-only: {exc}"]
    try:
        full = load(store, use_checkpoint=False)  # every checksum and chain link
        from_checkpoint = load(store)
    except KoruError as exc:
        return [f"{name}: replay failed: {exc}"]
    finally:
        store.close()
    rebuilt = state_digest(full.projections)
    if rebuilt != digest:
        problems.append(f"{name}: a replay gives digest {rebuilt[:16]}, the database {digest[:16]}")
    if state_digest(from_checkpoint.projections) != rebuilt:
        problems.append(f"{name}: the state loaded from the checkpoint differs from a replay")
    replayed, loaded = _contents(full.projections), _contents(from_checkpoint.projections)
    for section in sorted(set(replayed) | set(loaded)):
        if replayed.get(section) != loaded.get(section):
            problems.append(f"{name}: projection {section!r} differs from a rebuild from its log")
    return problems


def _contents(projections: Any) -> dict[str, Any]:
    """Each projection's content but the key/value state's and the vectors' (compared
    by the digest), comparable between a replay and a checkpoint's restore, as
    ``kdelta check`` compares them (:func:`koru._audit.content_of`)."""
    return {p.name: content_of(p) for p in projections.members if p.name not in ("kv", "vectors")}


def state_digest(projections: Any) -> str:
    """``Database.digest()`` of projections rebuilt outside a database."""
    return _state_digest(projections["kv"], projections["vectors"])
