"""The deep tier: the genome (a ~1 KB digest that verifies a backup or a replica) and the
periodic processes of a database (the genome process recording it daily, restarts,
crash loops, ``processes=False``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio
import trio.testing

import koru
from koru.events import ESSENCE, GenomeEvent, decode_event


async def fill(db: koru.Database, n: int = 30, ns: str = "users") -> None:
    for i in range(n):
        await db.put(ns if i % 5 else "orders", f"k{i % 11}", {"i": i})
    await db.delete(ns, "k1")


async def test_a_genome_is_small_portable_and_exact_for_the_same_database(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db") as db:
        await fill(db)
        for n in range(40):  # many namespaces: only the largest are named
            await db.put(f"ns{n:02}", "k", n)
        genome = await db.genome()
        data = genome.to_bytes()
        assert len(data) < 2048
        assert koru.Genome.from_bytes(data) == genome
        assert genome.namespaces == 42 and len(genome.largest) == 16
        stats = await db.stats()
        assert genome.largest["users"] == 10 and genome.keys == stats.keys
        assert genome.digest == await db.digest()
        assert genome.agents["storage"][1] == (await db.roots())["storage"]
        check = await koru.verify_genome(db, data)
        assert (check.ok, check.exact, check.problems) == (True, True, ())
    for bad in (b"", b"\x00", data[:-1], data + b"\x00", data.replace(b"users", b"usrs!")):
        with pytest.raises(koru.InvalidDataError):
            koru.Genome.from_bytes(bad)


async def test_a_backup_verifies_and_a_damaged_or_other_one_does_not(tmp_path: Path) -> None:
    original, backup, other = tmp_path / "db", tmp_path / "backup", tmp_path / "other"
    async with koru.open(original) as db:
        await fill(db)
        genome = await db.genome()
    shutil.copytree(original, backup)
    async with koru.open(original) as db:  # it moves on after the backup
        await db.put("users", "later", 1)
    assert (await koru.verify_genome(backup, genome)).exact
    moved_on = await koru.verify_genome(original, genome)
    assert moved_on.ok and not moved_on.exact and "written since" in moved_on.notes[0]
    async with koru.open(other) as db:
        await fill(db)  # the same writes, but another node's events
    foreign = await koru.verify_genome(other, genome)
    assert not foreign.ok and "other events" in foreign.problems[0]
    # A backup that lost its last records (and the checkpoint that proved them).
    (backup / "checkpoint").unlink()
    segment = next((backup / "logs" / "storage").glob("*.seg"))
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) - 30])
    short = await koru.verify_genome(backup, genome)
    assert not short.ok and any("storage log holds" in p for p in short.problems)


async def test_a_replica_that_took_in_every_event_is_exact() -> None:
    async with koru.open(":memory:") as a, koru.open(":memory:") as b:
        await fill(a)
        genome = await a.genome()
        result = await b.ingest(reversed(await a.feed_events(a.node_id)))
        assert result.accepted == 31
        check = await koru.verify_genome(b, genome)
        assert (check.ok, check.exact) == (True, True)
        await b.put("users", "extra", 1)
        assert not (await koru.verify_genome(b, genome)).ok


async def test_the_genome_process_records_a_genome_on_its_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "db"
    clock = koru.TrioClock()
    # sync="os": no fsync in a worker thread, during which the mock clock would jump.
    async with koru.open(path, clock=clock, sync="os", processes={"genome": 3600}) as db:
        await trio.sleep(1800)  # writes on the half hour, genomes on the hour
        for _ in range(5):
            await fill(db)
            await trio.sleep(3600)
        await trio.sleep(3 * 3600 - 1800 + 1)  # three idle hours: nothing new to record
        info = {p.name: p for p in await db.processes()}["genome"]
        assert (info.name, info.state, info.runs, info.failures) == ("genome", "waiting", 8, 0)
        assert info.interval == 3600 and info.last_run == clock.now_ns() - 10**9
        recorded = await db.feed_events(db.node_id, ESSENCE)
        assert len(recorded) == 5
        last = decode_event(recorded[-1])
        assert isinstance(last, GenomeEvent)
        assert koru.Genome.from_bytes(last.genome).digest == await db.digest()
    async with koru.open(path, processes=False) as db:  # replayed, and no processes
        assert (await db.feed_heads())[(db.node_id, ESSENCE)] == 5
        assert await db.processes() == []


async def test_a_failing_process_restarts_and_the_database_keeps_serving(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken_genome(self: koru.Database) -> koru.Genome:
        raise RuntimeError("genome bug")

    monkeypatch.setattr(koru.Database, "genome", broken_genome)
    async with koru.open(
        tmp_path / "db", clock=koru.TrioClock(), sync="os", processes={"genome": 60}
    ) as db:
        await trio.sleep(3600)
        info = {p.name: p for p in await db.processes()}["genome"]
        assert info.state == "crash-loop" and info.failures >= 5
        assert info.last_error == "RuntimeError: genome bug"
        stats = await db.stats()
        assert stats.process_failures == info.failures and stats.crash_loops == ("genome",)
        await db.put("users", "still", "works")
        assert await db.get("users", "still") == "works"
    assert "process 'genome' failed" in caplog.text


@pytest.mark.parametrize(
    ("option", "error"),
    [
        ("yes", "processes must be True, False or a mapping"),
        ({"genomes": 60}, "no process is called 'genomes'"),
        ({"genome": 0}, "interval must be positive"),
        ({"genome": float("nan")}, "interval must be positive"),
    ],
)
async def test_bad_process_options_are_refused(tmp_path: Path, option: object, error: str) -> None:
    with pytest.raises(koru.InvalidArgumentError, match=error):
        async with koru.open(tmp_path / "db", processes=option):  # type: ignore[arg-type]
            pass


async def test_a_readonly_database_runs_no_processes(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db") as db:
        await db.put("a", "b", 1)
        assert [p.name for p in await db.processes()] == [
            "consolidation",
            "distillation",
            "expiry",
            "genome",
            "vectors",
        ]
    async with koru.open(tmp_path / "db", readonly=True) as db:
        assert await db.processes() == []


async def test_the_genomes_state_digest_covers_the_embeddings() -> None:
    """The genome's state digest is the database's: with embeddings, it took the
    key/value state's alone, so a replica whose embeddings differed verified as exact."""
    async with koru.open(koru.MEMORY) as db, koru.open(koru.MEMORY) as other:
        for handle in (db, other):
            await handle.put("n", "k", 1)
        assert (await db.genome()).digest == await db.digest()
        await db.embed("docs", "a", [1.0, 2.0])
        await other.embed("docs", "a", [2.0, 1.0])
        genome = await db.genome()
        assert genome.digest == await db.digest()
        assert genome.digest != (await other.genome()).digest
