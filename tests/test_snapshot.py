"""One-shot reads (koru._snapshot): through the checkpoint's key directory when it can
answer, else a full load; either way exactly what the open database answers, also for
what was written after the checkpoint, and never a value that is not proven."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import koru
from koru._snapshot import Snapshot
from koru.projections import CHECKPOINT_FILE, KEYS_FILE, KeyDirectory, KvState

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
        with Snapshot(path, keys=KEYS) as one:
            assert not one.full
            assert await answers(one.reads, awaited=False) == expected
        for ns in {ns for ns, _ in KEYS}:
            with Snapshot(path, namespace=ns) as listing:
                assert not listing.full
                assert listing.reads.keys(ns) == expected[ns]
        with Snapshot(path) as whole:
            assert whole.full
            assert await answers(whole.reads, awaited=False) == expected
            assert whole.reads.namespaces() == await db.namespaces()


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


@pytest.mark.parametrize(
    "spoil",
    [
        "no directory",
        "damaged directory",
        "directory of another checkpoint",
        "damaged blob",
        "no checkpoint",
    ],
)
async def test_a_directory_that_cannot_answer_falls_back_to_a_full_load(
    tmp_path: Path, spoil: str
) -> None:
    expected = await build(tmp_path)
    directory = KeyDirectory((tmp_path / KEYS_FILE).read_bytes(), KvState.version)
    offset, _, _ = directory.find("users", "u3") or (0, 0, 0)
    if spoil == "no directory":
        (tmp_path / KEYS_FILE).unlink()
    elif spoil == "damaged directory":
        damage(tmp_path, KEYS_FILE, 100)
    elif spoil == "directory of another checkpoint":
        async with koru.open(tmp_path) as db:
            await db.put("users", "u2", "newer")
            expected = await answers(db, awaited=True)
            keys = (tmp_path / KEYS_FILE).read_bytes()
            await db.checkpoint()
        (tmp_path / KEYS_FILE).write_bytes(keys)  # the directory of the older checkpoint
    elif spoil == "damaged blob":
        damage(tmp_path, CHECKPOINT_FILE, offset + 3)
    else:
        (tmp_path / CHECKPOINT_FILE).unlink()
    with Snapshot(tmp_path, keys=KEYS) as one:
        assert one.full
        assert await answers(one.reads, awaited=False) == expected


async def test_a_tampered_value_is_never_served(tmp_path: Path) -> None:
    """The directory leads to the right record, but its value was rewritten: the read
    fails with CorruptLogError, as in an open database."""
    async with koru.open(tmp_path) as db:
        await db.put("users", "alice", {"name": "Alice!"})
        await db.put("users", "bob", {"name": "Bob"})  # the record the cursor names
    segment = next((tmp_path / "logs" / "storage").glob("*.seg"))
    data = segment.read_bytes()
    segment.write_bytes(data.replace(b"Alice!", b"Mallet"))
    with Snapshot(tmp_path, keys=[("users", "alice")]) as one:
        assert not one.full  # the chain is not re-verified before the cursor
        with pytest.raises(koru.CorruptLogError):
            one.reads.versioned("users", "alice")


async def test_a_log_rewritten_under_the_checkpoint_is_reported(tmp_path: Path) -> None:
    """The record ending at the checkpoint's cursor is checked (its root), as an open
    does: a log damaged there is reported, never answered around."""
    await build(tmp_path)
    segment = next((tmp_path / "logs" / "storage").glob("*.seg"))
    data = bytearray(segment.read_bytes())
    cursor = KeyDirectory((tmp_path / KEYS_FILE).read_bytes(), KvState.version).cursor
    data[cursor.offset - 20] ^= 1  # inside the last record the checkpoint proves durable
    segment.write_bytes(bytes(data))
    with pytest.raises(koru.CorruptLogError):
        Snapshot(tmp_path, keys=KEYS)


def test_no_database_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(koru.StorageError):
        Snapshot(tmp_path / "nothing", keys=KEYS)


async def test_a_large_tail_and_many_keys(tmp_path: Path) -> None:
    """Thousands of keys in the directory (binary search over many entries), a tail of
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
    with Snapshot(tmp_path, keys=probe) as one:
        assert not one.full
        assert {p: one.reads.history(*p) for p in probe} == expected
    with Snapshot(tmp_path, namespace="ns2") as listing:
        assert listing.reads.keys("ns2") == keys
