"""Replaying a recorded log to a point (koru.replay, kdelta replay): the same digest as
the database had then, the same every time, and nothing changed on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import koru
from conftest import StepClock

KDELTA = str(Path(sys.executable).parent / "kdelta")


def tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


async def test_replay_reaches_the_state_the_database_had(tmp_path: Path) -> None:
    path = tmp_path / "db"
    points = []
    async with koru.open(path, sync="os", processes=False) as db:
        for i in range(30):
            v = await db.put("users" if i % 3 else "orders", f"k{i % 7}", {"i": i})
            if i % 10 == 9:
                if await db.contains("users", "k1"):
                    v = await db.delete("users", "k1")
                points.append((v.timestamp, await db.digest(), await db.stats()))
        final = await db.digest()
        storage = (await db.stats()).events
    before = tree(path)
    whole = koru.replay(path)
    assert whole.digest == final and whole.events["storage"] == storage
    for timestamp, digest, stats in points:
        at = koru.replay(path, until=timestamp)
        assert at.digest == digest
        assert (at.keys, at.versions) == (stats.keys, stats.versions)
        assert koru.replay(path, until=timestamp) == at  # the same every time
    first = koru.replay(path, position=1)
    assert first.versions == 1 and first.events["storage"] == 1
    assert koru.replay(path, until=0).digest == koru.replay(path, position=0).digest
    assert tree(path) == before  # a replay changes nothing
    with pytest.raises(koru.InvalidArgumentError):
        koru.replay(path, position=-1)
    with pytest.raises(koru.InvalidDataError):
        koru.replay(path, until="yesterday")


async def test_replay_counts_a_value_whose_ttl_is_over_as_deleted(tmp_path: Path) -> None:
    """A replay counts keys as a read at the replayed moment would (as ``stats()``
    does): a value whose time to live is over by then is no value, its expiry recorded
    or not; one still current counts. It counted every unrecorded expired value."""
    path, clock = tmp_path / "db", StepClock()
    async with koru.open(path, clock=clock, processes=False) as db:
        short = await db.put("users", "short", 1, ttl=1.0)
        await db.put("users", "long", 2, ttl=100.0)
        await db.put("orders", "o", 3, ttl=1.0)
        clock.now += 5 * 10**9
        late = await db.put("users", "plain", 4)  # (no expiry is recorded: no processes)
        stats = await db.stats()
    assert (stats.keys, stats.deleted_keys) == (2, 2)
    assert stats.namespaces == 1  # ("orders" holds only an expired value)
    at_end = koru.replay(path)
    assert (at_end.keys, at_end.deleted_keys) == (2, 2)
    assert at_end.namespaces == {"users": 2}
    before = koru.replay(path, until=short.timestamp + 10**8)
    assert (before.keys, before.deleted_keys) == (3, 0)
    assert before.namespaces == {"users": 2, "orders": 1}
    assert koru.replay(path, until=late.timestamp) == at_end


def test_kdelta_replay(tmp_path: Path) -> None:
    path = tmp_path / "db"

    async def write() -> tuple[koru.Version, str]:
        async with koru.open(path, processes=False) as db:
            first = await db.put("users", "alice", 1)
            digest = await db.digest()
            await db.put("users", "alice", 2)
        return first, digest

    first, digest = trio.run(write)
    done = subprocess.run(
        [KDELTA, "--db", str(path), "--json", "replay", "--until", str(first.timestamp)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["digest"] == digest and doc["versions"] == 1
    human = subprocess.run(
        [KDELTA, "--db", str(path), "replay"], capture_output=True, text=True
    ).stdout
    assert "digest" in human and "2 versions" in human
    # Events per log as words, not a Python dict (h-cli).
    assert "storage 2" in human and "{" not in human, human


def reference_replay(path: Path, until: int | None, position: int | None) -> str:
    """The digest of the plain event-by-event fold (what koru.replay did before it
    folded runs): the run fold must reach the very same state."""
    from koru._loader import BUILTIN_PROJECTIONS
    from koru.events import AGENTS, STORAGE, FileStore, decode_trusted
    from koru.projections import KvState, Projections, VectorState, state_digest

    store = FileStore(path, readonly=True)
    try:
        projections = Projections(kind() for kind in BUILTIN_PROJECTIONS)
        for agent in AGENTS:
            for record in store.records(agent):
                if agent == STORAGE and position is not None and record.position >= position:
                    break
                event = decode_trusted(record.data)
                if until is None or event.hlc <= until:
                    projections.apply(event, record.event_id, record.location)
    finally:
        store.close()
    kv, vectors = projections["kv"], projections["vectors"]
    assert isinstance(kv, KvState) and isinstance(vectors, VectorState)
    return state_digest(kv, vectors)


async def test_replay_folds_runs_to_the_state_of_the_event_by_event_fold(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    stamps = []
    async with koru.open(path, sync="os", processes=False) as db:
        for i in range(60):
            if i % 11 == 10:
                v = await db.delete("users", f"k{i % 5}")
            elif i % 17 == 16:
                v = (await db.put_batch([("orders", f"o{i}", i), ("users", f"k{i % 5}", -i)]))[0]
            else:
                v = await db.put("users" if i % 4 else "orders", f"k{i % 5}", {"i": i})
            stamps.append(v.timestamp)
        storage = (await db.stats()).events
    whole = koru.replay(path)
    assert whole.digest == reference_replay(path, None, None)
    assert whole.events["storage"] == storage
    for position in range(storage + 2):  # every cut, between runs and inside them
        at = koru.replay(path, position=position)
        assert at.digest == reference_replay(path, None, position), position
        assert at.events.get("storage", 0) == min(position, storage)
    for stamp in [0, *stamps[::3], stamps[-1] - 1]:  # limits that end a run part way
        at = koru.replay(path, until=stamp)
        assert at.digest == reference_replay(path, stamp, None), stamp
        assert at.last_timestamp <= stamp


def test_replay_of_a_database_with_embeddings_gives_its_digest(tmp_path: Path) -> None:
    """The digest covers the embeddings too: a replay reported the key/value state's
    alone, a digest no database holding the same events would give (found by the
    public-API fuzz, tests/test_api_fuzz.py). The command line prints the same."""
    path = tmp_path / "db"

    async def write() -> str:
        async with koru.open(path, sync="os", processes=False) as db:
            await db.put("n", "k", 1)
            await db.embed("docs", "a", [1.0, 0.0, 2.0])
            await db.embed("docs", "b", [0.5, 1.5, 0.0])
            await db.delete_embedding("docs", "a")
            return await db.digest()

    digest = trio.run(write)
    assert koru.replay(path).digest == digest
    ran = subprocess.run(
        [KDELTA, "--db", str(path), "--json", "replay"], capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["digest"] == digest
