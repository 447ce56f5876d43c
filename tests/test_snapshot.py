"""One-shot reads (koru._snapshot): through the checkpoint's key directory when it can
answer, else a full load; either way exactly what the open database answers, also for
what was written after the checkpoint, and never a value that is not proven."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_projections import rewrite_checkpoint

import koru
from koru._snapshot import Snapshot
from koru.projections import CHECKPOINT_FILE, decode_checkpoint

KEYS = [("users", f"u{i}") for i in range(6)] + [("orders", "o1"), ("caf\u00e9", "cl\u00e9/2")]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(KEYS), st.integers(0, 99)),
        st.tuples(st.just("delete"), st.sampled_from(KEYS), st.just(0)),
        st.tuples(st.just("checkpoint"), st.just(KEYS[0]), st.just(0)),
    ),
    max_size=40,
)


async def apply(db: koru.Database, steps: list[tuple[str, tuple[str, str], int]]) -> None:
    for op, (ns, key), n in steps:
        if op == "put":
            await db.put(ns, key, {"n": n, "key": key})
        elif op == "delete" and await db.contains(ns, key):
            await db.delete(ns, key)
        elif op == "checkpoint":
            await db.checkpoint()


async def answers(reads: Any, *, awaited: bool) -> dict[str, Any]:
    """Every read the command line makes, for every key: from a Database (awaited) or
    from a snapshot's KeyReads."""

    async def call(name: str, *args: Any) -> Any:
        try:
            result = getattr(reads, name)(*args)
            return await result if awaited else result
        except koru.NotFoundError as exc:
            return type(exc).__name__

    out: dict[str, Any] = {}
    for ns, key in KEYS:
        out[f"{ns}/{key}"] = (
            await call("get_versioned" if awaited else "versioned", ns, key),
            await call("history", ns, key),
            await call("get_at" if awaited else "at", ns, key, 10**18),
        )
    for ns in {ns for ns, _ in KEYS}:
        out[ns] = await call("keys", ns)
    return out


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(before=ops, after=ops)
async def test_snapshot_reads_equal_the_database(
    tmp_path_factory: pytest.TempPathFactory,
    before: list[tuple[str, tuple[str, str], int]],
    after: list[tuple[str, tuple[str, str], int]],
) -> None:
    path = tmp_path_factory.mktemp("db")
    async with koru.open(path, sync="os") as db:
        await apply(db, before)
        await db.checkpoint()
        await apply(db, after)  # folded from the log tail, the writer still open
        expected = await answers(db, awaited=True)
        with Snapshot(path) as one:
            assert not one.full
            assert await answers(one.reads, awaited=False) == expected
            assert one.reads.namespaces() == await db.namespaces()


async def build(path: Path) -> dict[str, Any]:
    async with koru.open(path, sync="os") as db:
        for i in range(30):
            await db.put("users", f"u{i % 6}", {"i": i})
        await db.checkpoint()
        await db.put("users", "u1", "after")
        return await answers(db, awaited=True)


def damage(path: Path, name: str, at: int) -> None:
    data = bytearray((path / name).read_bytes())
    data[at] ^= 0x40
    (path / name).write_bytes(bytes(data))


def tables(path: Path) -> list[Path]:
    return sorted((path / "tables").glob("*.tab"))


@pytest.mark.parametrize(
    "spoil", ["no checkpoint", "damaged table", "missing table", "an older section version"]
)
async def test_a_checkpoint_that_cannot_answer_falls_back_to_a_full_load(
    tmp_path: Path, spoil: str
) -> None:
    expected = await build(tmp_path)
    if spoil == "no checkpoint":
        (tmp_path / CHECKPOINT_FILE).unlink()
    elif spoil == "damaged table":
        table = tables(tmp_path)[0]
        data = bytearray(table.read_bytes())
        data[60] ^= 0x40  # in its offsets
        table.write_bytes(bytes(data))
    elif spoil == "missing table":
        tables(tmp_path)[0].unlink()
    else:

        def older(body: dict[str, Any]) -> None:
            body["sections"]["kv"][0] = 2

        rewrite_checkpoint(tmp_path, older)
    with Snapshot(tmp_path) as one:
        assert one.full
        assert await answers(one.reads, awaited=False) == expected


def test_the_checkpoint_names_its_tables(tmp_path: Path) -> None:
    trio.run(build, tmp_path)
    checkpoint = decode_checkpoint((tmp_path / CHECKPOINT_FILE).read_bytes())
    kv = checkpoint.sections["kv"][1]
    named = {ref.name for ref in [*kv["tables"], kv["new"]] if ref is not None}
    # One table per checkpoint that had changes (here two), and no other file.
    assert {t.stem for t in tables(tmp_path)} == named and len(named) == 2


async def test_a_tampered_value_is_never_served(tmp_path: Path) -> None:
    """The directory leads to the right record, but its value was rewritten: the read
    fails with CorruptLogError, as in an open database."""
    async with koru.open(tmp_path) as db:
        await db.put("users", "alice", {"name": "Alice!"})
        await db.put("users", "bob", {"name": "Bob"})  # the record the cursor names
    segment = next((tmp_path / "logs" / "storage").glob("*.seg"))
    data = segment.read_bytes()
    segment.write_bytes(data.replace(b"Alice!", b"Mallet"))
    with Snapshot(tmp_path) as one:
        assert not one.full  # the chain is not re-verified before the cursor
        with pytest.raises(koru.CorruptLogError):
            one.reads.versioned("users", "alice")


async def test_a_log_rewritten_under_the_checkpoint_is_reported(tmp_path: Path) -> None:
    """The record ending at the checkpoint's cursor is checked (its root), as an open
    does: a log damaged there is reported, never answered around."""
    await build(tmp_path)
    segment = next((tmp_path / "logs" / "storage").glob("*.seg"))
    data = bytearray(segment.read_bytes())
    cursor = decode_checkpoint((tmp_path / CHECKPOINT_FILE).read_bytes()).cursors["storage"]
    data[cursor.offset - 20] ^= 1  # inside the last record the checkpoint proves durable
    segment.write_bytes(bytes(data))
    with pytest.raises(koru.CorruptLogError):
        Snapshot(tmp_path)


def test_no_database_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(koru.StorageError):
        Snapshot(tmp_path / "nothing")


async def test_a_large_tail_and_many_keys(tmp_path: Path) -> None:
    """Thousands of keys in a table (binary search over many entries), a tail of
    hundreds of events across segments, keys that sort around each other."""
    rng = random.Random(7)
    names = [f"k{n}" for n in rng.sample(range(10**6), 3000)]
    async with koru.open(tmp_path, sync="never", segment_size=64 * 1024) as db:
        await db.put_batch([("ns", name, i) for i, name in enumerate(names)])
        await db.put_batch([("ns2", name, -i) for i, name in enumerate(names[:500])])
        await db.checkpoint()
        for i, name in enumerate(names[:400]):
            await db.put("ns", name, {"later": i})
    probe = [("ns", n) for n in names[::97]] + [("ns2", names[3]), ("ns", "zzz"), ("n", "k1")]
    async with koru.open(tmp_path, readonly=True) as db:
        expected = {p: (await db.history(*p)) for p in probe}
        keys = await db.keys("ns2")
    with Snapshot(tmp_path) as one:
        assert not one.full
        assert {p: one.reads.history(*p) for p in probe} == expected
        assert one.reads.keys("ns2") == keys


# -- the one-shot path against a read-only open, with another node's writes ingested

NAMES = ["u", "a/b/c", "caf\u00e9", "\u202eevil", "\U0001f600", "\u0000"]
NAMES += ["n" * 1024, "\u00e9" * 512]  # 1 KiB of UTF-8, the longest names
ODD = [(ns, key) for ns in NAMES[:4] for key in NAMES]

steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["put", "peer put"]), st.sampled_from(ODD), st.integers(0, 9)),
        st.tuples(st.sampled_from(["delete", "peer delete"]), st.sampled_from(ODD), st.just(0)),
        st.tuples(st.just("batch"), st.sampled_from(ODD), st.integers(0, 9)),
        st.tuples(st.sampled_from(["sync", "checkpoint"]), st.just(ODD[0]), st.just(0)),
    ),
    max_size=30,
)


async def _answers(reads: Any, keys: list[tuple[str, str]], *, awaited: bool) -> Any:
    async def call(name: str, *args: Any) -> Any:
        try:
            result = getattr(reads, name)(*args)
            return await result if awaited else result
        except koru.NotFoundError as exc:
            return type(exc).__name__

    return [
        (
            await call("get_versioned" if awaited else "versioned", ns, key),
            await call("history", ns, key),
            await call("get_at" if awaited else "at", ns, key, 1_700_000_000 * 10**9),
            await call("diff", ns, key),
        )
        for ns, key in keys
    ]


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=steps)
async def test_one_shot_reads_equal_a_read_only_open(
    tmp_path_factory: pytest.TempPathFactory, script: list[tuple[str, tuple[str, str], int]]
) -> None:
    """Keys and namespaces of odd Unicode (bidi overrides, NUL, astral, 1 KiB names,
    '/' inside), versions from another node ingested (concurrent writes to one key),
    batches, deletes, checkpoints at any point: for every key, a one-shot read gives
    exactly what ``koru.open(readonly=True)`` of the same directory gives."""
    path = tmp_path_factory.mktemp("db")
    clock = [1_699_999_000 * 10**9]

    def now() -> int:
        clock[0] += 10**6
        return clock[0]

    class Clock:
        def now_ns(self) -> int:
            return now()

    async with (
        koru.open(path, sync="os", clock=Clock()) as db,
        koru.open(":memory:", clock=Clock()) as peer,
    ):
        for op, (ns, key), n in script:
            target = peer if op.startswith("peer") else db
            if op.endswith("put"):
                await target.put(ns, key, {"n": n})
            elif op.endswith("delete") and await target.contains(ns, key):
                await target.delete(ns, key)
            elif op == "batch":
                await db.put_batch([(ns, key, n), ("u", "+", [n])])
            elif op == "sync":
                result = await db.ingest(await peer.feed_events(peer.node_id))
                assert not result.refused
            elif op == "checkpoint":
                await db.checkpoint()
        keys = [*ODD, ("u", "+")]
        async with koru.open(path, readonly=True) as reader:
            expected = await _answers(reader, keys, awaited=True)
            listings = {ns: await reader.keys(ns) for ns in NAMES[:4]}
            namespaces = await reader.namespaces()
        with Snapshot(path) as one:
            assert await _answers(one.reads, keys, awaited=False) == expected
            assert {ns: one.reads.keys(ns) for ns in listings} == listings
            assert one.reads.namespaces() == namespaces


@pytest.mark.parametrize("name", ["\udcff", "", "n" * 1025])
async def test_names_are_checked_as_the_database_checks_them(tmp_path: Path, name: str) -> None:
    """A name that is not one (a byte that is not UTF-8 on the command line arrives as
    a lone surrogate) is InvalidDataError from every read, as from the database: it
    was a UnicodeEncodeError inside a table's search, or a plain "not found"."""
    await build(tmp_path)
    with Snapshot(tmp_path) as one:
        reads = one.reads
        for call in (
            lambda ns, k: reads.versioned(ns, k),
            lambda ns, k: reads.at(ns, k, 10**18),
            lambda ns, k: reads.history(ns, k),
            lambda ns, k: reads.diff(ns, k),
            lambda ns, k: reads.contains(ns, k),
        ):
            for ns, key in (("users", name), (name, "u1")):
                with pytest.raises(koru.InvalidDataError):
                    call(ns, key)
        with pytest.raises(koru.InvalidDataError):
            reads.keys(name)


class _Ahead:
    """A peer's clock half an hour ahead (ingest takes timestamps up to an hour ahead)."""

    def now_ns(self) -> int:
        return time.time_ns() + 30 * 60 * 10**9  # clock-ok: beside the system clock


@pytest.mark.parametrize("when", ["before the checkpoint", "after the checkpoint"])
async def test_a_time_to_live_is_judged_by_the_databases_newest_timestamp(
    tmp_path: Path, when: str
) -> None:
    """The database judges expiry by the later of its clock and its newest timestamp,
    of any log (so an expired value never comes back). A one-shot read took the newest
    timestamp of key/value writes only: with a peer's event of another log half an
    hour ahead, a value ten minutes from expiry was absent for the database and
    present for kdelta get and kdelta keys."""
    from koru.events import ESSENCE, GenomeEvent

    async with koru.open(tmp_path) as db, koru.open(":memory:", clock=_Ahead()) as peer:
        await db.put("s", "a", "short-lived", ttl=600)
        await db.put("s", "b", "long-lived", ttl=86_400)
        peer._writer.emit(ESSENCE, lambda header: GenomeEvent(*header, b"genome"))
        if when == "after the checkpoint":
            await db.checkpoint()
        ahead = await peer.feed_events(peer.node_id, ESSENCE)
        assert (await db.ingest(ahead)).accepted == 1
        if when == "before the checkpoint":
            await db.checkpoint()
        saved = (tmp_path / CHECKPOINT_FILE).read_bytes()
    (tmp_path / CHECKPOINT_FILE).write_bytes(saved)  # as if the close had been cut short
    async with koru.open(tmp_path, readonly=True) as db:
        assert await db.keys("s") == ["b"]
        expected = [await db.contains("s", k) for k in "ab"]
    with Snapshot(tmp_path) as one:
        assert not one.full
        assert [one.reads.contains("s", k) for k in "ab"] == expected
        assert one.reads.keys("s") == ["b"]
