"""The public Database API, run against the memory store and the file store."""

from __future__ import annotations

import datetime as dt
import errno
import itertools
import random
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import koru
from conftest import StepClock, eventually
from koru.events import OsDisk
from koru.simulations import SimDisk

USER = {"name": "Alice", "age": 30}


async def test_put_get_roundtrip_returns_fresh_objects(db: koru.Database) -> None:
    v = await db.put("users", "alice", USER)
    assert v.namespace == "users" and v.key == "alice" and not v.deleted
    assert v.previous is None
    got = await db.get("users", "alice")
    assert got == USER
    got["age"] = 99  # mutating a returned value must not change what is stored
    assert await db.get("users", "alice") == USER


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**64 - 1,
        -(2**64),
        1.5,
        -0.0,
        float("inf"),
        "",
        "ünï",
        b"\x00\xff",
        [],
        {},
        [1, "a", None, [2.5]],
        {"nested": {"list": [{"x": b"y"}]}},
    ],
)
async def test_values_roundtrip_with_their_types(db: koru.Database, value: object) -> None:
    await db.put("v", "k", value)
    got = await db.get("v", "k")
    assert got == value and type(got) is type(value)


async def test_versions_link_causally(db: koru.Database) -> None:
    v1 = await db.put("users", "alice", USER)
    v2 = await db.put("users", "alice", {**USER, "age": 31})
    assert v2.previous == v1.write_id
    assert v2.timestamp > v1.timestamp
    assert v1.write_id != v2.write_id
    assert len(v1.write_id) == 64 and len(v1.origin) == 32 and v1.origin == db.node_id


async def test_equal_values_share_content_id(db: koru.Database) -> None:
    a = await db.put("x", "a", {"same": [1, 2]})
    b = await db.put("y", "b", {"same": [1, 2]})
    c = await db.put("y", "c", {"same": [1, 3]})
    assert a.content_id == b.content_id != c.content_id
    assert a.write_id != b.write_id


async def test_history_is_oldest_first_and_keeps_tombstones(db: koru.Database) -> None:
    for age in range(5):
        await db.put("users", "alice", {"age": age})
    await db.delete("users", "alice")
    await db.put("users", "alice", {"age": 10})
    hist = await db.history("users", "alice")
    assert [h.value for h in hist] == [{"age": a} for a in range(5)] + [None, {"age": 10}]
    assert [h.deleted for h in hist] == [False] * 5 + [True, False]
    assert all(b.previous == a.write_id for a, b in itertools.pairwise(hist))
    assert [h.timestamp for h in hist] == sorted(h.timestamp for h in hist)
    assert await db.history("users", "nobody") == []


async def test_history_filters(db: koru.Database) -> None:
    versions = [await db.put("k", "k", i) for i in range(10)]
    ts = [v.timestamp for v in versions]
    assert [h.value for h in await db.history("k", "k", latest=3)] == [7, 8, 9]
    assert await db.history("k", "k", latest=0) == []
    assert [h.value for h in await db.history("k", "k", since=ts[4])] == [4, 5, 6, 7, 8, 9]
    assert [h.value for h in await db.history("k", "k", until=ts[2])] == [0, 1, 2]
    got = await db.history("k", "k", since=ts[2], until=ts[6], latest=2)
    assert [h.value for h in got] == [5, 6]
    with pytest.raises(koru.InvalidDataError):
        await db.history("k", "k", latest=-1)


class ScriptedClock:
    """A clock that returns the readings it is given, in order."""

    def __init__(self, readings: list[int]) -> None:
        self.readings = list(readings)

    def now_ns(self) -> int:
        return self.readings.pop(0)


async def test_history_bounds_are_exact_to_the_nanosecond_and_microsecond(tmp_path: Path) -> None:
    # Three versions: two inside one microsecond (its first and last nanosecond), one at
    # the first nanosecond of the next.
    us = 1_767_225_600_000_000
    t = [us * 1000, us * 1000 + 999, (us + 1) * 1000]
    async with koru.open(tmp_path / "db", clock=ScriptedClock(t)) as db:
        for i in range(3):
            await db.put("k", "k", i)

        async def values(**bounds: Any) -> list[Any]:
            return [h.value for h in await db.history("k", "k", **bounds)]

        moment = (await db.history("k", "k"))[0].datetime  # microsecond us, as a datetime
        step = dt.timedelta(microseconds=1)
        # A datetime names its whole microsecond: from its first ns, until its last.
        assert await values(since=moment) == [0, 1, 2]
        assert await values(since=moment + step) == [2]
        assert await values(until=moment) == [0, 1]
        assert await values(until=moment - step) == []
        assert await values(since=moment.isoformat(), until=moment.isoformat()) == [0, 1]
        # Ints are exact nanoseconds, both bounds inclusive.
        assert await values(since=t[1]) == [1, 2]
        assert await values(since=t[1] + 1) == [2]
        assert await values(until=t[1]) == [0, 1]
        assert await values(until=t[1] - 1) == [0]
        assert await values(since=t[2], until=t[2]) == [2]


async def test_get_at_time_travel_in_every_form(db: koru.Database) -> None:
    v1 = await db.put("cfg", "timeout", 30)
    v2 = await db.put("cfg", "timeout", 60)
    assert (await db.get_at("cfg", "timeout", v1.timestamp)).value == 30
    assert (await db.get_at("cfg", "timeout", v2.timestamp - 1)).value == 30
    assert (await db.get_at("cfg", "timeout", v2.timestamp)).value == 60
    # A datetime names a whole microsecond: "as of" includes everything within it.
    assert (await db.get_at("cfg", "timeout", v2.datetime)).write_id == v2.write_id
    # The fixture's clock steps a whole microsecond per write: v1 and v2 fall in
    # different microseconds, so v1's moment names v1 alone.
    assert v1.timestamp // 1000 < v2.timestamp // 1000
    iso = v1.datetime.isoformat()
    assert (await db.get_at("cfg", "timeout", iso)).value == 30
    assert (await db.get_at("cfg", "timeout", iso.replace("+00:00", "Z"))).value == 30
    assert (await db.get_at("cfg", "timeout", v2.datetime.isoformat())).value == 60
    with pytest.raises(koru.NoValueAtTimeError):
        await db.get_at("cfg", "timeout", v1.timestamp - 1)
    with pytest.raises(koru.InvalidDataError, match="UTC offset"):
        await db.get_at("cfg", "timeout", dt.datetime(2030, 1, 1))
    with pytest.raises(koru.InvalidDataError):
        await db.get_at("cfg", "timeout", "yesterday")
    with pytest.raises(koru.InvalidDataError):
        await db.get_at("cfg", "timeout", 1.5)


async def test_get_at_after_delete_has_no_value(db: koru.Database) -> None:
    await db.put("a", "b", 1)
    gone = await db.delete("a", "b")
    assert gone.deleted and gone.content_id is None
    with pytest.raises(koru.NoValueAtTimeError):
        await db.get_at("a", "b", gone.timestamp)
    assert (await db.get_at("a", "b", gone.timestamp - 1)).value == 1


async def test_delete_semantics(db: koru.Database) -> None:
    v = await db.put("users", "bob", {"x": 1})
    assert await db.contains("users", "bob")
    d = await db.delete("users", "bob")
    assert d.previous == v.write_id
    assert not await db.contains("users", "bob")
    with pytest.raises(koru.KeyNotFoundError) as err:
        await db.get("users", "bob")
    assert err.value.namespace == "users" and err.value.key == "bob"
    assert isinstance(err.value, LookupError) and isinstance(err.value, koru.KoruError)
    with pytest.raises(koru.KeyNotFoundError):
        await db.delete("users", "bob")
    with pytest.raises(koru.KeyNotFoundError):
        await db.delete("users", "never")
    assert await db.keys("users") == []


async def test_keys_and_namespaces_list_live_entries_sorted(db: koru.Database) -> None:
    for key in ["b", "a", "c"]:
        await db.put("ns1", key, key)
    await db.put("ns0", "only", 1)
    await db.delete("ns0", "only")
    assert await db.keys("ns1") == ["a", "b", "c"]
    assert await db.keys("missing") == []
    assert await db.namespaces() == ["ns1"]


async def test_put_batch_is_atomic_and_validated_first(db: koru.Database) -> None:
    await db.put("u", "a", 0)
    versions = await db.put_batch([("u", "a", 1), ("u", "b", 2), ("v", "c", [3])])
    assert [v.key for v in versions] == ["a", "b", "c"]
    assert len({v.write_id for v in versions}) == 3
    assert len({v.timestamp for v in versions}) == 1
    assert versions[0].previous is not None and versions[1].previous is None
    assert [await db.get("u", "a"), await db.get("u", "b"), await db.get("v", "c")] == [1, 2, [3]]
    before = await db.stats()
    bad_batches: list[list[object]] = [
        [("u", "x", 1), ("u", "y", {1, 2})],
        [("u", "x", 1), ("u", "x", 2)],
        [("u", "x", 1), ("", "y", 2)],
        [("u", "x")],
        ["nope"],
    ]
    for bad in bad_batches:
        with pytest.raises(koru.InvalidDataError):
            await db.put_batch(bad)  # type: ignore[arg-type]
    after = await db.stats()
    assert (after.events, after.versions) == (before.events, before.versions)
    assert not await db.contains("u", "x")
    assert await db.put_batch([]) == []


@pytest.mark.parametrize(
    ("namespace", "key", "value"),
    [
        ("", "k", 1),
        ("ns", "", 1),
        (1, "k", 1),
        ("ns", None, 1),
        ("ns", "\ud800", 1),
        ("n" * 1025, "k", 1),
        ("ns", "k", float("nan")),
        ("ns", "k", {"a": [float("nan")]}),
        ("ns", "k", {1: "int key"}),
        ("ns", "k", (1, 2)),
        ("ns", "k", {1, 2}),
        ("ns", "k", 2**64),
        ("ns", "k", dt.datetime.now(dt.UTC)),
        ("ns", "k", object()),
    ],
)
async def test_bad_input_raises_before_writing(
    db: koru.Database, namespace: object, key: object, value: object
) -> None:
    before = await db.stats()
    with pytest.raises(koru.InvalidDataError):
        await db.put(namespace, key, value)  # type: ignore[arg-type]
    after = await db.stats()
    assert (after.events, after.versions, after.log_bytes) == (
        before.events,
        before.versions,
        before.log_bytes,
    )


async def test_value_size_limit(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db", max_value_size=100, sync="os") as db:
        await db.put("a", "small", "x" * 50)
        with pytest.raises(koru.InvalidDataError, match="limit"):
            await db.put("a", "big", "x" * 200)
        with pytest.raises(koru.InvalidDataError):
            await db.put("a", "deep", _nest(100))
        assert await db.keys("a") == ["small"]


def _nest(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_reads_validate_names(db: koru.Database) -> None:
    with pytest.raises(koru.InvalidDataError):
        await db.get("", "k")
    with pytest.raises(koru.InvalidDataError):
        await db.get(["unhashable"], "k")  # type: ignore[arg-type]
    with pytest.raises(koru.InvalidDataError):
        await db.history("ns", 5)  # type: ignore[arg-type]


async def test_get_versioned_metadata(db: koru.Database) -> None:
    v = await db.put("u", "k", {"a": 1})
    got = await db.get_versioned("u", "k")
    assert got.value == {"a": 1}
    assert got.version == v
    assert got.datetime.tzinfo is dt.UTC
    with pytest.raises(koru.KeyNotFoundError):
        await db.get_versioned("u", "missing")


async def test_diff_structural(db: koru.Database) -> None:
    v1 = await db.put("d", "k", {"a": 1, "list": [1, 2, 3], "gone": True, "same": {"x": 1}})
    await db.put("d", "k", {"a": 2, "list": [1, 9, 2, 3], "new": "n", "same": {"x": 1}})
    diff = await db.diff("d", "k")
    ops = {(c.op, c.path) for c in diff.changes}
    assert ops == {
        ("change", ("a",)),
        ("add", ("list", 1)),
        ("remove", ("gone",)),
        ("add", ("new",)),
    }
    assert diff and diff.old.write_id == v1.write_id
    text = str(diff)
    assert "- a: 1" in text and "+ a: 2" in text and '+ new: "n"' in text
    by_id = await db.diff("d", "k", v1.write_id[:8], -1)
    assert by_id.changes == diff.changes
    assert not (await db.diff("d", "k", 0, 0)).changes
    with pytest.raises(koru.VersionNotFoundError):
        await db.diff("d", "k", 0, 5)
    with pytest.raises(koru.VersionNotFoundError):
        await db.diff("d", "k", "ffffffff", -1)


async def test_diff_types_and_deletion(db: koru.Database) -> None:
    await db.put("d", "t", {"n": 1})
    await db.put("d", "t", {"n": True})
    assert [c.op for c in (await db.diff("d", "t")).changes] == ["change"]
    await db.delete("d", "t")
    changes = (await db.diff("d", "t")).changes
    assert changes == [koru.Change("change", (), {"n": True}, None)]


async def test_stats_roots_digest(db: koru.Database) -> None:
    s0 = await db.stats()
    assert s0.keys == 0 and s0.versions == 0 and s0.sync == "os"
    roots0 = await db.roots()
    assert len(roots0) == 20 and "storage" in roots0 and "vector" in roots0
    d0 = await db.digest()
    await db.put("a", "b", 1)
    await db.put("a", "c", 2)
    await db.delete("a", "c")
    s = await db.stats()
    assert (s.keys, s.deleted_keys, s.versions, s.events, s.namespaces) == (1, 1, 3, 3, 1)
    assert s.log_bytes > 0
    roots = await db.roots()
    assert roots["storage"] != roots0["storage"]
    assert all(roots[a] == roots0[a] for a in roots if a != "storage")
    assert (await db.digest()) != d0 and len(await db.digest()) == 64


async def test_closed_database_refuses_operations(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db") as db:
        await db.put("a", "b", 1)
    with pytest.raises(koru.DatabaseClosedError):
        await db.get("a", "b")
    with pytest.raises(koru.DatabaseClosedError):
        await db.put("a", "b", 2)


async def test_state_survives_reopen_identically(tmp_path: Path, clock: StepClock) -> None:
    path = tmp_path / "db"
    async with koru.open(path, clock=clock) as db:
        for i in range(50):
            await db.put("n", f"k{i % 7}", {"i": i})
        await db.delete("n", "k3")
        await db.put_batch([("m", "x", 1), ("n", "k0", "last")])
        digest, roots, node = (await db.digest()), (await db.roots()), db.node_id
        hist = await db.history("n", "k0")
    async with koru.open(path, clock=clock) as db:
        assert (await db.digest()) == digest and (await db.roots()) == roots and db.node_id == node
        assert await db.history("n", "k0") == hist
        assert not await db.contains("n", "k3")
        assert (await db.stats()).checkpoint_events == 52 and (
            await db.stats()
        ).replayed_events == 0
        v = await db.put("n", "k0", "after")
        assert v.previous == hist[-1].write_id
        assert v.timestamp > hist[-1].timestamp


async def test_readonly_open_reads_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path) as db:
        await db.put("a", "b", 1)
        async with koru.open(path, readonly=True) as ro:
            assert await ro.get("a", "b") == 1
            assert ro.readonly
            with pytest.raises(koru.ReadOnlyError):
                await ro.put("a", "c", 2)
            with pytest.raises(koru.ReadOnlyError):
                await ro.delete("a", "b")
    with pytest.raises(koru.StorageError):
        async with koru.open(tmp_path / "nothing", readonly=True):
            pass


async def test_second_writer_is_refused_at_once(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db"):
        with pytest.raises(koru.DatabaseLockedError):
            async with koru.open(tmp_path / "db"):
                pass
    async with koru.open(tmp_path / "db") as again:  # released on close
        assert (await again.stats()).keys == 0


async def test_default_path_and_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KORU_HOME", str(tmp_path / "home"))
    assert koru.default_path() == tmp_path / "home"
    async with koru.open() as db:
        await db.put("a", "b", 1)
        assert db.path == str(tmp_path / "home")
    assert (tmp_path / "home" / "logs" / "storage").is_dir()
    monkeypatch.delenv("KORU_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert koru.default_path() == tmp_path / "xdg" / "koru-delta" / "default"
    async with koru.open(":memory:") as mem:
        await mem.put("a", "b", 1)
        assert mem.path is None and (await mem.stats()).log_bytes > 0
    async with koru.open(":memory:") as mem:
        assert not await mem.contains("a", "b")


async def test_invalid_open_arguments(tmp_path: Path) -> None:
    with pytest.raises(koru.InvalidDataError):
        async with koru.open(tmp_path / "db", sync="sometimes"):  # type: ignore[arg-type]
            pass
    with pytest.raises(koru.InvalidDataError):
        async with koru.open(tmp_path / "db", checkpoint_every=0):
            pass


async def test_body_exception_is_not_wrapped(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        async with koru.open(tmp_path / "db") as db:
            await db.put("a", "b", 1)
            raise KeyError("mine")
    async with koru.open(tmp_path / "db") as db:
        assert await db.get("a", "b") == 1


@pytest.mark.parametrize("sync", ["always", "os", "never"])
async def test_cancellation_closes_cleanly(sync: str) -> None:
    """Leaving the block by cancellation still closes completely (shielded): the log is
    flushed and synced, and a checkpoint covering every write is written. Checked by
    cutting the power right after the close, on a simulated disk."""
    disk = SimDisk()
    acked = -1

    async def cancel_after(scope: trio.CancelScope, turns: int) -> None:
        # Counted in the writer's yields, not in seconds: a slow open on a loaded
        # machine once used up a 50 ms deadline before the first put.
        for _ in range(turns):
            await trio.lowlevel.checkpoint()
        scope.cancel()

    with trio.CancelScope() as scope:
        async with koru.open("/db", sync=sync, disk=disk) as db, trio.open_nursery() as nursery:
            nursery.start_soon(cancel_after, scope, 40)
            for i in range(10**9):
                await db.put("a", f"k{i}", i)
                acked = i
    assert scope.cancelled_caught
    assert acked > 10
    disk.cut()
    image = disk.after_power_cut(random.Random(acked))
    async with koru.open("/db", disk=image) as db:
        n = (await db.stats()).keys
        assert n >= acked + 1  # every acknowledged write (and maybe the one in flight)
        assert await db.keys("a") == sorted(f"k{i}" for i in range(n))
        stats = await db.stats()
        assert (stats.checkpoint_events, stats.replayed_events) == (n, 0)


async def failures_above(db: koru.Database, n: int) -> bool:
    return (await db.stats()).checkpoint_failures > n


async def checkpoints_above(db: koru.Database, n: int) -> bool:
    return (await db.stats()).checkpoints > n


async def test_a_failed_background_checkpoint_is_not_fatal(tmp_path: Path) -> None:
    """A checkpoint is a shortcut (the log is the truth): when writing one fails (here
    the disk is full for checkpoint files), the database keeps serving, counts the
    failure, and checkpoints again once it can."""
    disk = FullForCheckpoints()
    async with koru.open(tmp_path / "db", sync="os", checkpoint_every=5, disk=disk) as db:
        for i in range(30):
            await db.put("a", f"k{i}", i)
        # The background checkpointer tries, and fails.
        await eventually(lambda: failures_above(db, 0))
        assert (await db.stats()).checkpoints == 0
        assert await db.get("a", "k0") == 0
        disk.full = False
        for i in range(30, 40):
            await db.put("a", f"k{i}", i)
        await eventually(lambda: checkpoints_above(db, 0))
    async with koru.open(tmp_path / "db", readonly=True) as db:
        assert (await db.stats()).keys == 40
    # Failing at close too: the log is synced, so the close does not raise.
    disk.full = True
    async with koru.open(tmp_path / "db", sync="os", disk=disk) as db:
        await db.put("a", "k40", 40)
    async with koru.open(tmp_path / "db", readonly=True) as db:
        stats = await db.stats()
        assert (stats.keys, stats.replayed_events) == (41, 1)


class FullForCheckpoints(OsDisk):
    """The real filesystem, except that creating a checkpoint's temporary file fails
    with ENOSPC while ``full``."""

    full = True

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if self.full and ".checkpoint." in path:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return super().open(path, flags, mode)


async def test_sync_never_pushes_full_buffers_to_the_os(tmp_path: Path) -> None:
    """With ``sync="never"`` records wait in a buffer, but never more than 1 MiB of them:
    a reader (another process would see the same) finds them long before the flush
    interval or the close."""
    path = tmp_path / "db"
    async with koru.open(path, sync="never", flush_interval=10_000) as db:
        for i in range(300):
            await db.put("bulk", f"k{i}", "x" * 10_000)  # about 3 MiB in all
        async with koru.open(path, readonly=True) as reader:
            seen = (await reader.stats()).events
        assert 150 <= seen < 300  # all but the last (at most 1 MiB) reached the OS


async def test_concurrent_writers_with_group_commit(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db", sync="always") as db:

        async def writer(w: int) -> None:
            for i in range(40):
                await db.put("w", f"{w}-{i}", i)

        async with trio.open_nursery() as nursery:
            for w in range(16):
                nursery.start_soon(writer, w)
        stats = await db.stats()
        assert stats.keys == 640
        # Writers share fsyncs: far fewer syncs than writes.
        assert stats.syncs < 640
    async with koru.open(tmp_path / "db") as db:
        assert (await db.stats()).keys == 640


async def test_background_checkpoint_under_mock_clock(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with koru.open(
        tmp_path / "db", sync="never", checkpoint_every=100, flush_interval=5
    ) as db:
        for i in range(250):
            await db.put("a", f"k{i}", i)
        await trio.sleep(60)  # MockClock autojump: the flusher and checkpointer run
        # The file is written in a worker thread, which the mock clock does not wait
        # for: poll, bounded by real time.
        deadline = time.monotonic() + 30
        for _ in range(10**7):
            if (await db.stats()).checkpoints or time.monotonic() > deadline:
                break
            await trio.sleep(1)
        assert (await db.stats()).checkpoints >= 1
        assert (tmp_path / "db" / "checkpoint").exists()
        assert (tmp_path / "db" / "logs" / "storage" / "00000001.seg").stat().st_size > 250 * 50
    async with koru.open(tmp_path / "db") as db:
        assert (await db.stats()).keys == 250


async def test_sync_never_flushes_on_close(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db", sync="never") as db:
        for i in range(100):
            await db.put("bulk", f"k{i}", i)
    async with koru.open(tmp_path / "db") as db:
        assert len(await db.keys("bulk")) == 100


async def test_value_cache_misses_read_the_log(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db", cache_bytes=1_000, sync="os") as db:
        for i in range(200):
            await db.put("c", f"k{i}", {"i": i, "pad": "x" * 40})
        assert all([await db.get("c", f"k{i}") == {"i": i, "pad": "x" * 40} for i in range(200)])
        stats = await db.stats()
        assert stats.cache_misses > 0 and stats.cache_bytes <= 1_000
        assert [h.value["i"] for h in await db.history("c", "k5")] == [5]


async def test_segments_rotate_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, segment_size=4_096, sync="os") as db:
        for i in range(300):
            await db.put("r", f"k{i % 50}", {"i": i})
        digest = await db.digest()
    segments = sorted((path / "logs" / "storage").glob("*.seg"))
    assert len(segments) > 3
    (path / "checkpoint").unlink()
    async with koru.open(path, segment_size=4_096) as db:
        assert (await db.digest()) == digest
        assert (await db.stats()).replayed_events == 300
        assert (await db.get("r", "k49"))["i"] == 299


async def test_deterministic_node_id_from_seed(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "a", seed=42) as a, koru.open(tmp_path / "b", seed=42) as b:
        assert a.node_id == b.node_id
    async with koru.open(tmp_path / "c", seed=43) as c:
        assert c.node_id != a.node_id


def test_trio_clock_is_deterministic_under_mock_clock() -> None:
    async def run() -> tuple[str, list[int]]:
        async with koru.open(":memory:", clock=koru.TrioClock(), seed=1) as db:
            stamps = []
            for i in range(5):
                await trio.sleep(3600)  # an hour per step, instant under the mock clock
                stamps.append((await db.put("t", "k", i)).timestamp)
            return (await db.digest()), stamps

    clock = trio.testing.MockClock(autojump_threshold=0)
    first = trio.run(run, clock=clock)
    second = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    assert first[1][1] - first[1][0] == 3600 * 10**9
    assert first == second
