"""Attacks on the background processes and the memory tiers (h-proc): processes meeting
a database closed under them, tampered checkpoint sections of the tier decisions,
hostile genome bytes, and the determinism and memory bounds of the processes under a
mock clock."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import blake3
import cbor2
import pytest
import trio
import trio.testing

import koru
from koru.projections._checkpoint import _tag_hook


async def test_processes_stop_quietly_once_the_database_is_closed_in_the_block(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack: the caller closes the database (``await db.aclose()``) inside its
    ``async with`` block and carries on in the block for hours, while a value with a
    time to live comes due. The expiry process then found the database closed at every
    step: each was counted as a failure, logged as an error with its traceback, retried
    with backoff and reported as a crash loop, although nothing had failed.
    What must hold: a process that finds its database closed stops, without a failure
    counted or an error logged."""
    caplog.set_level(logging.ERROR, logger="koru")
    async with koru.open(
        ":memory:",
        seed=1,
        clock=koru.TrioClock(),
        processes={"expiry": 5, "genome": 10, "distillation": 7},
    ) as db:
        await db.put("ns", "k", 1, ttl=100)
        await trio.sleep(30)
        await db.aclose()
        await trio.sleep(5 * 3600)
        infos = {p.name: p for p in await db.processes()}
    assert {n: (p.failures, p.last_error) for n, p in infos.items()} == {
        n: (0, None) for n in infos
    }
    assert infos["expiry"].state == "stopped"
    assert "failed" not in caplog.text


def _retier(path: Path, node: bytes, keys: Any) -> None:
    """Rewrite the checkpoint's section of the tier decisions (its checksum recomputed)."""
    data = (path / "checkpoint").read_bytes()
    body = cbor2.loads(data[40:], tag_hook=_tag_hook)
    body["sections"]["tiers"] = [1, [[node, keys]]]
    encoded = cbor2.dumps(body, canonical=True)
    (path / "checkpoint").write_bytes(b"KORUCKP1" + blake3.blake3(encoded).digest() + encoded)


@pytest.mark.parametrize(
    "keys",
    [[[1, "x"], ["a", "b"]], ["ab", "cd"], [[b"x", "y"]], [["a", "b", "c"]], [None]],
    ids=["int-namespace", "strings-as-pairs", "bytes-namespace", "triple", "null"],
)
async def test_a_tier_section_naming_keys_that_are_not_names_is_rebuilt(
    tmp_path: Path, keys: Any
) -> None:
    """The attack: a checkpoint whose section of the tier decisions (the keys this node
    keeps hot) was rewritten with its checksum recomputed, naming "keys" that are not
    (namespace, key) pairs of names: an int namespace, two-letter strings, bytes.
    ``TierState.restore`` took them: a string unpacked into two one-letter names, and an
    int beside a str made every later checkpoint raise TypeError (sorting them), from
    ``db.checkpoint()`` and from every close, reopen after reopen.
    What must hold: the section is refused (rebuilt from the log, as any bad section),
    the hot set holds only what the log decided, and checkpoints and closes succeed."""
    path = tmp_path / "db"
    async with koru.open(path, processes=False, sync="os") as db:
        await db.put("a", "b", 1)
        await db.checkpoint()
        node = bytes.fromhex(db.node_id)
    _retier(path, node, keys)
    for _ in range(2):
        async with koru.open(path, processes=False, sync="os") as db:
            assert db._kv.pinned == set()
            await db.put("a", "c", 2)
            await db.checkpoint()
    async with koru.open(path, processes=False, sync="os") as db:
        assert await db.get("a", "c") == 2


def _sealed(body: list[Any]) -> bytes:
    """A genome's bytes around ``body`` (format and fields), its seal recomputed."""
    seal = blake3.blake3(cbor2.dumps(body, canonical=True)).digest()
    return bytes(cbor2.dumps([*body, seal], canonical=True))


async def test_genome_bytes_of_the_wrong_shape_are_refused_as_not_a_genome() -> None:
    """The attack: bytes handed to ``Genome.from_bytes`` / ``verify_genome`` that are
    CBOR but not a genome: an empty array, and a genome (its seal recomputed) whose
    agents are an array or a string. They raised IndexError and AttributeError, not
    the documented InvalidDataError (a caller that catches KoruError for "not a
    genome" crashed instead).
    What must hold: InvalidDataError, for each."""
    async with koru.open(":memory:", processes=False) as db:
        await db.put("a", "b", 1)
        fields = cbor2.loads((await db.genome()).to_bytes())[:-1]
        where = 1 + koru.Genome._fields.index("agents")
        bad = [cbor2.dumps([])]
        for agents in ([], "storage"):
            body = list(fields)
            body[where] = agents
            bad.append(_sealed(body))
        for data in bad:
            with pytest.raises(koru.InvalidDataError, match="not a koru genome"):
                koru.Genome.from_bytes(data)
            with pytest.raises(koru.InvalidDataError, match="not a koru genome"):
                await koru.verify_genome(db, data)


async def test_a_genome_listing_an_agent_with_no_records_or_odd_namespaces_is_refused() -> None:
    """The attack: a genome (its seal recomputed, as anyone can) that lists an agent
    with 0 or -1 records (a genome lists only agents with records), or whose largest
    namespaces are not a map of names to counts. ``from_bytes`` took them;
    ``verify_genome`` then raised KeyError (an agent listed with 0 records that this
    database has none of) or "start must be a record position" (an argument error of
    its own log reader) instead of an answer.
    What must hold: ``from_bytes`` refuses each as not a genome (InvalidDataError)."""
    async with koru.open(":memory:", processes=False) as db:
        await db.put("a", "b", 1)
        fields = cbor2.loads((await db.genome()).to_bytes())[:-1]
        agents = 1 + koru.Genome._fields.index("agents")
        largest = 1 + koru.Genome._fields.index("largest")
        root = fields[agents]["storage"][1]
        bad: list[tuple[int, Any]] = [
            (agents, {**fields[agents], "sleep": [0, root]}),
            (agents, {"storage": [-1, root]}),
            (agents, {"storage": [0, root]}),
            (largest, [1, 2]),
            (largest, {"a": -5}),
            (largest, {1: 1}),
            (largest, {f"n{i:02}": 1 for i in range(17)}),
        ]
        for where, value in bad:
            body = list(fields)
            body[where] = value
            with pytest.raises(koru.InvalidDataError, match="not a koru genome"):
                koru.Genome.from_bytes(_sealed(body))
            with pytest.raises(koru.InvalidDataError, match="not a koru genome"):
                await koru.verify_genome(db, _sealed(body))


async def test_distillation_demotes_a_hot_set_larger_than_one_decision_can_name() -> None:
    """The attack: this node's hot set grows past what one tiering event may name
    (``MAX_TIER_KEYS``, 100,000): events of its own origin taken back by ``ingest``
    (which believes an event that continues this node's feed, a documented limit), or
    a checkpoint's tier section rewritten with its checksum recomputed. The
    distillation process then demoted every key at once: its event would not read
    back ("demoted must be a list of at most 100000 keys"), so every later step failed,
    a crash loop for good, and the hot set never shrank.
    What must hold: each step demotes at most what one event may name, and the hot set
    empties over the steps that follow."""
    from koru._processes import steps
    from koru.events import LIFECYCLE, MAX_TIER_KEYS, TieringEvent, encode_event, event_id

    async with koru.open(":memory:", processes=False) as db:
        node = bytes.fromhex(db.node_id)
        prev, events, half = None, [], MAX_TIER_KEYS // 2 + 1
        for seq in (1, 2):
            keys = tuple(("ns", f"{seq}-{i}") for i in range(half))
            data = encode_event(TieringEvent(node, LIFECYCLE, seq, prev, 1, keys, ()))
            prev = event_id(data)
            events.append(data)
        assert (await db.ingest(events)).accepted == 2
        assert len(db._kv.pinned) == 2 * half > MAX_TIER_KEYS
        distillation = steps(db)["distillation"]
        await distillation()
        assert len(db._kv.pinned) == 2 * half - MAX_TIER_KEYS
        await distillation()
        assert db._kv.pinned == set()


async def test_an_idle_database_reopened_records_no_genome_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The attack: an idle database opened again and again (a service restarted daily,
    a script opening it for a while). The genome process skipped a genome only when
    nothing but genomes was written since the last one it recorded in this process:
    each open recorded one more, so the essence log of an idle database grew by one
    genome per open, against "an idle database's log does not grow".
    What must hold: a reopened database records no genome until something else is
    written, and then records one."""
    path = tmp_path / "db"

    async def session(write: bool) -> dict[str, int]:
        async with koru.open(
            path, clock=koru.TrioClock(), sync="os", processes={"genome": 60}
        ) as db:
            if write:
                await db.put("a", "b", 1)
            await trio.sleep(600)
            return {agent: n for (_, agent), n in (await db.feed_heads()).items()}

    assert await session(True) == {"storage": 1, "essence": 1}
    for _ in range(3):
        assert await session(False) == {"storage": 1, "essence": 1}
    assert await session(True) == {"storage": 2, "essence": 2}


async def test_short_sessions_never_leave_more_tables_than_the_bound(tmp_path: Path) -> None:
    """The attack: a database opened for short sessions (a script, a command, a
    service restarted often), each writing a little and closing before the
    consolidation process first runs (5 minutes) and before ``checkpoint_every`` events
    made a background checkpoint (merges only followed those). Each close wrote a
    checkpoint and so a table, and nothing ever merged them: after 20 sessions, 20
    tables (each open holding two descriptors per table, each cold lookup searching
    them all), growing without bound; ``processes=False`` never merged either.
    What must hold: the cold tier stays within ``max_tables`` (12) tables, plus the one
    the last close wrote, and every value is still read."""
    from koru.projections._merging import MAX_TABLES

    path = tmp_path / "db"
    for session in range(20):
        async with koru.open(path, sync="os", processes=session % 2 == 0) as db:
            await db.put("ns", f"k{session}", session)
    async with koru.open(path, processes=False, sync="os") as db:
        assert len(db._kv.tables) <= MAX_TABLES + 1
        assert len(db._feeds.tables) <= MAX_TABLES + 1
        assert len(list((path / "tables").iterdir())) <= 2 * (MAX_TABLES + 1)
        for session in range(20):
            assert await db.get("ns", f"k{session}") == session


async def test_nothing_is_written_into_the_directory_once_aclose_returned(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: ``await db.aclose()`` inside the block while the consolidation
    process is due, with tables worth merging. The close waits for a merge or a
    checkpoint in progress (``settle``), but one that began after that wait (the
    process's step fired while the close synced the log) went on: it merged and
    wrote a checkpoint after the store was closed and ``aclose`` had returned, so
    after the directory's lock was released (another handle may have opened it, and
    a late checkpoint and its clean-up replace that handle's).
    What must hold: no table, checkpoint or removal reaches the directory once the
    store is closed."""
    from koru.events import FileStore

    path = tmp_path / "db"
    async with koru.open(path, processes=False, sync="os") as db:
        for b in range(2):
            await db.put_batch([("ns", f"k{b}-{i}", "x" * 30) for i in range(500)])
            await db.checkpoint()
    late: list[str] = []
    closed: list[bool] = []
    for name in ("write_table", "write_file", "remove_tables"):
        original = getattr(FileStore, name)

        def spy(
            self: Any, *args: Any, _original: Any = original, _name: str = name, **kw: Any
        ) -> Any:
            if closed:
                late.append(_name)
            return _original(self, *args, **kw)

        monkeypatch.setattr(FileStore, name, spy)
    close = FileStore.close

    def closing(self: Any) -> None:
        closed.append(True)
        close(self)

    monkeypatch.setattr(FileStore, "close", closing)
    for _ in range(2):
        closed.clear()
        async with koru.open(
            path, clock=koru.TrioClock(), sync="os", processes={"consolidation": 0.001}
        ) as db:
            await db.put("ns", "new", 1)
            await db.aclose()
            await trio.sleep(0.1)
        assert late == []
    async with koru.open(path, processes=False, sync="os") as db:
        assert await db.get("ns", "k1-5") == "x" * 30


async def _churn(path: Path, seed: int) -> tuple[Any, ...]:
    """Writes with and without a time to live, deletes and reads of a few keys over
    virtual minutes, while every process runs on a short interval and the tiers are
    tiny (so keys move between memory, warm, hot and cold all the time); each read is
    checked against a model. Returns what the run wrote and decided."""
    import random

    rng = random.Random(seed)
    clock = koru.TrioClock()
    model: dict[str, tuple[Any, int | None]] = {}
    wrong = []
    async with koru.open(
        path,
        seed=seed,
        clock=clock,
        sync="os",
        checkpoint_every=25,
        cache_bytes=4096,
        processes={"expiry": 2, "genome": 50, "distillation": 3, "consolidation": 2},
    ) as db:
        kv = db._kv
        kv.hot_capacity, kv.warm_capacity, kv.max_tables = 3000, 4000, 3
        for step in range(600):
            key = f"k{rng.randrange(40)}"
            op = rng.random()
            if op < 0.35:
                value = {"s": step, "pad": "x" * rng.randrange(200)}
                version = await db.put("ns", key, value, ttl=rng.choice([None, None, 1.0, 5.0]))
                model[key] = (value, version.expires)
            elif op < 0.42:
                with contextlib.suppress(koru.KeyNotFoundError):
                    await db.delete("ns", key)
                model.pop(key, None)
            else:
                now = db._writer.read_time()
                want = model.get(key)
                if want is not None and want[1] is not None and want[1] <= now:
                    want = None
                try:
                    got = await db.get("ns", key)
                except koru.KeyNotFoundError:
                    got = None
                if (None if want is None else want[0]) != got:
                    wrong.append((step, key, want, got))
            if rng.random() < 0.05:
                await trio.sleep(rng.choice([0.5, 1, 3]))
        assert wrong == []
        tiers = (await db.stats()).tiers
        assert tiers.hot_hits and tiers.cold_reads and tiers.compactions
        runs = [(p.name, p.runs, p.failures) for p in await db.processes()]
        return await db.roots(), await db.digest(), runs, sorted(kv.pinned)


def test_reads_match_a_model_and_processes_decide_alike_for_one_seed(tmp_path: Path) -> None:
    """Holds (h-proc): the attack is every process running on a short interval while
    keys are written, expire, are deleted and read, with tiers so small that keys move
    between memory, warm, hot and cold all the time. What must hold: every read
    agrees with a model of puts, deletes and times to live; and the same seed and mock
    clock give the same logs (every agent's root, the expiry tombstones, genomes, tier
    decisions and consolidations included) in two runs (worker threads inline, as the
    simulator runs them: under a mock clock a real thread lets virtual time jump by
    however long it took)."""
    from koru.simulations._inline import inline_threads

    runs = []
    for n in range(2):
        with inline_threads(5):
            runs.append(
                trio.run(
                    _churn,
                    tmp_path / f"db{n}",
                    5,
                    clock=trio.testing.MockClock(autojump_threshold=0),
                )
            )
    assert runs[0] == runs[1]
    assert all(failures == 0 for _, _, failures in runs[0][2])


async def test_a_keyboard_interrupt_in_a_step_comes_out_and_the_close_is_clean(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holds (h-proc): KeyboardInterrupt delivered inside a process's step (the genome
    process here). What must hold: it comes out of the ``async with`` unwrapped (not
    retried as a failed step, not in an exception group), and the close still runs in
    full: the write is there at the next open, from its checkpoint."""

    async def interrupted(self: koru.Database) -> koru.Genome:
        raise KeyboardInterrupt

    path = tmp_path / "db"
    with pytest.raises(KeyboardInterrupt):
        async with koru.open(
            path, clock=koru.TrioClock(), sync="os", processes={"genome": 5}
        ) as db:
            await db.put("a", "b", 1)
            monkeypatch.setattr(koru.Database, "genome", interrupted)
            await trio.sleep(3600)
    monkeypatch.undo()
    async with koru.open(path, processes=False) as db:
        assert await db.get("a", "b") == 1
        assert (await db.stats()).replayed_events == 0


class _CutAfter(trio.abc.Instrument):
    """Cancels ``scope`` once the task called ``name`` has taken ``steps`` steps."""

    def __init__(self, name: str, steps: int, scope: trio.CancelScope) -> None:
        self.name, self.left, self.scope = name, steps, scope

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name == self.name and self.left > 0:
            self.left -= 1
            if self.left == 0:
                self.scope.cancel()


@pytest.mark.parametrize("process", ["consolidation", "expiry", "genome", "distillation"])
def test_leaving_the_block_at_any_step_of_a_process_keeps_the_state_whole(
    tmp_path: Path, process: str
) -> None:
    """Holds (h-proc): the caller's block ends (cancelled) while a process is at any of
    its first steps (a merge in slices, a batch of expiries, a genome or a tier
    decision being recorded): the process is cancelled wherever it is, and the close
    runs. What must hold: nothing comes out of the block, and the next open has the
    state a full replay of the log gives."""
    from conftest import digest_of, full_replay
    from koru.simulations._inline import inline_threads

    async def run(path: Path, steps: int) -> bool:
        async with koru.open(
            path,
            seed=3,
            clock=koru.TrioClock(),
            sync="os",
            checkpoint_every=40,
            processes={"expiry": 1, "genome": 2, "distillation": 3, "consolidation": 1},
        ) as db:
            db._kv.hot_capacity = db._kv.warm_capacity = 2000
            with trio.CancelScope() as scope:
                for i in range(300):
                    await db.put("ns", f"k{i % 90}", i, ttl=2 if i % 5 == 0 else None)
                    if i % 10 == 0:
                        await trio.sleep(0.25)
                for i in range(60):
                    with contextlib.suppress(koru.KeyNotFoundError):
                        await db.get("ns", f"k{i % 7}")
                cut = _CutAfter(f"koru:{process}", steps, scope)
                trio.lowlevel.add_instrument(cut)
                await trio.sleep(100)
        return cut.left == 0

    async def reopened(path: Path) -> str:
        async with koru.open(path, processes=False, sync="os") as db:
            return await db.digest()

    cuts = 0
    for steps in (1, 4, 9, 17):
        path = tmp_path / f"db{steps}"
        with inline_threads(steps):
            clock = trio.testing.MockClock(autojump_threshold=0)
            cuts += trio.run(run, path, steps, clock=clock)
        kv, _ = full_replay(path)
        assert trio.run(reopened, path) == digest_of(kv)
    assert cuts >= 2  # (a process's later steps may come after the block's 100 s)


async def test_lying_tier_and_consolidation_events_of_a_peer_change_nothing_here() -> None:
    """Holds (h-proc): a peer's lifecycle and sleep events that lie: a tier decision
    pinning keys that were never written (and demoting this node's), a consolidation
    claiming absurd merges and sizes. What must hold: this node's hot set, its values
    and its own distillation are untouched (each node follows only its own decisions;
    nothing folds a consolidation)."""
    from koru._processes import steps
    from koru.events import (
        LIFECYCLE,
        SLEEP,
        ConsolidationEvent,
        TieringEvent,
        encode_event,
    )

    async with koru.open(":memory:", processes=False) as db:
        await db.put("ns", "real", 1)
        db._kv.pinned.add(("ns", "real"))
        peer = b"\x07" * 16
        lies = [
            TieringEvent(peer, LIFECYCLE, 1, None, 1, (("ns", "ghost"),), (("ns", "real"),)),
            ConsolidationEvent(peer, SLEEP, 1, None, 1, 2**63, 2**63, 2**64 - 1),
        ]
        result = await db.ingest([encode_event(e) for e in lies])
        assert result.accepted == 2
        assert db._kv.pinned == {("ns", "real")}
        assert await db.get("ns", "real") == 1
        await steps(db)["distillation"]()
        assert db._kv.pinned == set()  # (its own decision: "real" was read too little)
        assert db.projection("tiers").hot[peer] == {("ns", "ghost")}  # type: ignore[attr-defined]


async def test_the_genome_counts_keys_without_reading_every_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: the genome of a large database (the genome process takes one daily,
    and ``db.genome()`` on demand). Its namespace summary counted each namespace's
    live keys by listing them (``len(kv.keys(ns))``): every key's records from every
    layer and table, merged and sorted, on the event loop. A million keys held every
    task for 2.7 s (ten million, about half a minute), although the state keeps each
    namespace's live count (``ns_live``).
    What must hold: the genome reads no key (``KvState.items`` is not called) and
    counts the same as listing them would."""
    from koru.projections import KvState

    async with koru.open(tmp_path / "db", processes=False, sync="os") as db:
        for n in range(3):
            await db.put_batch([(f"ns{n}", f"k{i}", i) for i in range(50 * (n + 1))])
            await db.checkpoint()
        await db.delete("ns1", "k3")
        await db.put("ns1", "k3", "back")
        await db.delete("ns2", "k4")
        kv = db._kv
        listed = {ns: len(kv.keys(ns)) for ns in kv.live_namespaces()}

        def listing(self: KvState, namespace: str) -> Any:
            raise AssertionError("the genome listed the keys of " + namespace)

        monkeypatch.setattr(KvState, "items", listing)
        genome = await db.genome()
    assert genome.largest == listed == {"ns0": 50, "ns1": 100, "ns2": 149}


async def test_explicit_checkpoints_are_merged_as_background_ones_are(tmp_path: Path) -> None:
    """The attack: a long session without processes (``processes=False``) that calls
    ``db.checkpoint()`` after each small unit of work, never reaching
    ``checkpoint_every`` events between two. Merges followed background checkpoints
    only: each explicit one added a table that nothing merged until the session
    ended (60 checkpoints: 60 tables, two descriptors each, each cold lookup
    searching them all).
    What must hold: merges follow explicit checkpoints too, so the cold tier stays
    within ``max_tables`` (12) tables plus the newest."""
    from conftest import eventually
    from koru.projections._merging import MAX_TABLES

    async with koru.open(tmp_path / "db", processes=False, sync="os") as db:
        for n in range(60):
            await db.put("ns", f"k{n}", n)
            await db.checkpoint()
        with trio.move_on_after(0.5):
            await eventually(lambda: len(db._kv.tables) <= MAX_TABLES + 1)
        assert len(db._kv.tables) <= MAX_TABLES + 1
        assert [await db.get("ns", f"k{n}") for n in range(60)] == list(range(60))
