"""Bad input raises a typed ``koru.KoruError`` naming the argument or the path, and
changes nothing; a write the reader would refuse is refused before it is acknowledged.

Each case here was once a raw ``TypeError``, ``UnicodeEncodeError``, ``ValueError`` or
``OSError``, or a write that was acknowledged and then made the database unopenable.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import koru
from conftest import StepClock
from koru.events import MAX_EVENT_SIZE, MAX_VALUE_SIZE, OsDisk

MiB = 1024 * 1024


class Sub(str):
    """A str subclass: its ``==`` and ``hash`` could disagree with the stored name."""


# -- values and names ----------------------------------------------------------------------

BAD_WRITES: dict[str, Callable[[koru.Database], Awaitable[Any]]] = {
    "lone surrogate in a value": lambda db: db.put("ns", "k", "\ud800"),
    "lone surrogate deep in a value": lambda db: db.put("ns", "k", {"a": ["ok", "\udfff"]}),
    "lone surrogate in a dict key": lambda db: db.put("ns", "k", {"\ud800": 1}),
    "lone surrogate in a non-ASCII dict key": lambda db: db.put("ns", "k", {"é\ud800": 1}),
    "lone surrogate in a namespace": lambda db: db.put("\ud800", "k", 1),
    "lone surrogate in a key": lambda db: db.put("ns", "é\udc00", 1),
    "str subclass namespace": lambda db: db.put(Sub("ns"), "k", 1),
    "str subclass key": lambda db: db.put("ns", Sub("k"), 1),
    "str subclass in a batch": lambda db: db.put_batch([("ns", Sub("k"), 1)]),
    "str subclass delete": lambda db: db.delete("ns", Sub("k")),
    "put_batch(None)": lambda db: db.put_batch(None),  # type: ignore[arg-type]
    "put_batch(5)": lambda db: db.put_batch(5),  # type: ignore[arg-type]
    "put_batch(str)": lambda db: db.put_batch("abc"),  # type: ignore[arg-type]
    "put_batch(bytes)": lambda db: db.put_batch(b"abc"),  # type: ignore[arg-type]
    "batch item of two": lambda db: db.put_batch([("ns", "k")]),  # type: ignore[list-item]
    "batch item None": lambda db: db.put_batch([None]),  # type: ignore[list-item]
}


@pytest.mark.parametrize("case", sorted(BAD_WRITES))
async def test_bad_writes_raise_invalid_data_and_change_nothing(
    db: koru.Database, case: str
) -> None:
    await db.put("ns", "k", "before")
    digest, events = (await db.digest()), (await db.stats()).events
    with pytest.raises(koru.InvalidDataError):
        await BAD_WRITES[case](db)
    assert ((await db.digest()), (await db.stats()).events) == (digest, events)
    assert await db.get("ns", "k") == "before"
    await db.put("ns", "k", "after")  # the database is fine


READS: dict[str, Callable[[koru.Database, Any, Any], Awaitable[Any]]] = {
    "get": lambda db, ns, k: db.get(ns, k),
    "get_versioned": lambda db, ns, k: db.get_versioned(ns, k),
    "get_at": lambda db, ns, k: db.get_at(ns, k, 2**62),
    "history": lambda db, ns, k: db.history(ns, k),
    "contains": lambda db, ns, k: db.contains(ns, k),
    "diff": lambda db, ns, k: db.diff(ns, k, 0, 0),
    "keys": lambda db, ns, k: db.keys(ns),
}


@pytest.mark.parametrize("call", sorted(READS))
async def test_one_name_rule_for_every_read(db: koru.Database, call: str) -> None:
    """A str subclass that hashes like a stored name is refused by every call alike
    (``get`` once served it from its fast path)."""
    await db.put("ns", "k", 1)
    for ns, key in ((Sub("ns"), "k"), ("ns", Sub("k")), ("\ud800", "k"), (5, "k")):
        if call == "keys" and type(ns) is str:
            continue
        with pytest.raises(koru.InvalidDataError):
            await READS[call](db, ns, key)
    await READS[call](db, "ns", "k")  # and the plain names work


async def test_bad_arguments_of_reads(db: koru.Database) -> None:
    await db.put("ns", "k", 1)
    with pytest.raises(koru.InvalidArgumentError, match="history index"):
        await db.diff("ns", "k", 1.5)  # type: ignore[arg-type]
    with pytest.raises(koru.InvalidDataError, match="latest"):
        await db.history("ns", "k", latest=True)
    with pytest.raises(koru.InvalidDataError):
        await db.get_at("ns", "k", None)


# -- limits: one source of truth for writer and reader ---------------------------------------


async def test_a_batch_over_the_event_limit_is_refused_before_it_is_written(
    tmp_path: Path,
) -> None:
    """Five 15 MiB values (each under the value limit) make one event over the event
    limit: refused with InvalidDataError, not acknowledged and then unreadable."""
    path = tmp_path / "db"
    big = [("ns", f"k{i}", b"v" * (15 * MiB)) for i in range(5)]
    assert 5 * 15 * MiB > MAX_EVENT_SIZE and 15 * MiB < MAX_VALUE_SIZE
    async with koru.open(path) as db:
        with pytest.raises(koru.InvalidDataError, match="limit"):
            await db.put_batch(big)
        assert (await db.stats()).events == 0
        # Four of them fit: acknowledged, and readable after an open without checkpoint.
        await db.put_batch(big[:4])
    (path / "checkpoint").unlink()
    async with koru.open(path) as db:
        assert (await db.stats()).replayed_events == 1
        assert await db.get("ns", "k3") == b"v" * (15 * MiB)


async def test_value_limits(tmp_path: Path) -> None:
    with pytest.raises(koru.InvalidArgumentError, match="max_value_size"):
        async with koru.open(tmp_path / "db", max_value_size=MAX_VALUE_SIZE + 1):
            pass
    async with koru.open(tmp_path / "db", max_value_size=100) as db:
        with pytest.raises(koru.InvalidDataError, match="100-byte limit"):
            await db.put("ns", "k", "x" * 200)


async def test_a_clock_that_misbehaves_is_refused_without_poisoning_the_hlc(
    tmp_path: Path,
) -> None:
    class Bad(StepClock):
        def __init__(self) -> None:
            super().__init__()
            self.bad: list[Any] = [1.5, -1, 2**64, "now"]

        def now_ns(self) -> Any:
            return self.bad.pop(0) if self.bad else super().now_ns()

    async with koru.open(tmp_path / "db", clock=Bad()) as db:
        for _ in range(4):
            with pytest.raises(koru.InvalidArgumentError, match="now_ns"):
                await db.put("ns", "k", 1)
        v = await db.put("ns", "k", 2)
        assert 1_767_225_600 * 10**9 < v.timestamp < 1_767_225_601 * 10**9
        assert (await db.stats()).events == 1


# -- options of koru.open --------------------------------------------------------------------

BAD_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"sync": "never", "flush_interval": -1}, "flush_interval"),
    ({"flush_interval": 0}, "flush_interval"),
    ({"flush_interval": float("nan")}, "flush_interval"),
    ({"flush_interval": "1"}, "flush_interval"),
    ({"cache_bytes": "x"}, "cache_bytes"),
    ({"cache_bytes": -1}, "cache_bytes"),
    ({"cache_bytes": 1.5}, "cache_bytes"),
    ({"max_value_size": 0}, "max_value_size"),
    ({"max_value_size": True}, "max_value_size"),
    ({"checkpoint_every": 0}, "checkpoint_every"),
    ({"checkpoint_every": None}, "checkpoint_every"),
    ({"segment_size": 10}, "segment_size"),
    ({"segment_size": 2**33}, "segment_size"),
    ({"sync": "sometimes"}, "sync"),
    ({"sync": None}, "sync"),
    ({"readonly": "yes"}, "readonly"),
    ({"seed": "x"}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"clock": object()}, "clock"),
]


@pytest.mark.parametrize(("options", "name"), BAD_OPTIONS, ids=[n for _, n in BAD_OPTIONS])
async def test_bad_options_are_refused_by_name(
    tmp_path: Path, options: dict[str, Any], name: str
) -> None:
    with pytest.raises(koru.InvalidArgumentError, match=name):
        async with koru.open(tmp_path / "db", **options):
            pass
    assert not (tmp_path / "db").exists()  # refused before touching the disk


@pytest.mark.parametrize("path", ["", 5, b"bytes/path"], ids=["empty", "int", "bytes"])
async def test_bad_paths_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, path: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(koru.InvalidArgumentError, match="path"):
        async with koru.open(path):
            pass
    assert os.listdir(tmp_path) == []  # nothing created in the current directory


# -- paths that cannot be used ---------------------------------------------------------------


async def make(path: Path) -> None:
    async with koru.open(path, segment_size=512) as db:
        for i in range(20):
            await db.put("ns", f"k{i}", "x" * 40)


def seg(path: Path, n: int = 1) -> Path:
    return path / "logs" / "storage" / f"{n:08d}.seg"


async def test_a_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "db").write_text("not a database")
    for readonly in (False, True):
        with pytest.raises(koru.StorageError, match="db") as info:
            async with koru.open(tmp_path / "db", readonly=readonly):
                pass
        assert str(tmp_path / "db") in str(info.value)


@pytest.mark.parametrize("name", ["checkpoint", "segment", "agent directory"])
async def test_a_file_that_is_a_directory(tmp_path: Path, name: str) -> None:
    path = tmp_path / "db"
    await make(path)
    if name == "checkpoint":
        target = path / "checkpoint"
        target.unlink()
        target.mkdir()
    elif name == "segment":
        target = seg(path, 2)
        target.unlink()
        target.mkdir()
    else:
        target = path / "logs" / "storage"
        os.rename(target, tmp_path / "aside")
        target.write_bytes(b"")
    for readonly in (False, True):
        with pytest.raises(koru.StorageError) as info:
            async with koru.open(path, readonly=readonly, segment_size=512):
                pass
        assert str(target) in str(info.value), info.value


class ReadOnlyDisk(OsDisk):
    """The real filesystem, as a user without write permission sees it."""

    def _refuse(self, path: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    def mkdir(self, path: str) -> None:
        self._refuse(path)

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            self._refuse(path)
        return super().open(path, flags, mode)

    def unlink(self, path: str) -> None:
        self._refuse(path)


async def test_a_directory_without_write_permission(tmp_path: Path) -> None:
    path = tmp_path / "db"
    disk = ReadOnlyDisk()
    with pytest.raises(koru.StorageError, match="Permission denied") as info:
        async with koru.open(path, disk=disk):
            pass
    assert str(path) in str(info.value)
    await make(path)
    (path / "checkpoint").unlink()  # the open must write a new one at close
    async with koru.open(path, readonly=True, disk=disk) as db:  # reading is fine
        assert await db.get("ns", "k3") == "x" * 40
    with pytest.raises(koru.StorageError, match="Permission denied") as info:
        async with koru.open(path, disk=disk, segment_size=512) as db:
            await db.put("ns", "new", 1)
    assert str(path) in str(info.value)


async def test_only_koru_errors_escape_a_closed_or_broken_handle(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db") as db:
        await db.put("ns", "k", 1)
    for attempt in (db.put("ns", "k", 2), db.get("ns", "k"), db.history("ns", "k")):
        with pytest.raises(koru.DatabaseClosedError):
            await attempt
    with trio.fail_after(5):
        await db.aclose()  # idempotent


@pytest.mark.parametrize("call", sorted(READS))
async def test_one_name_rule_for_every_read_of_keys_in_tables(tmp_path: Path, call: str) -> None:
    """The same rule once the keys live in a checkpoint's tables (after a reopen), where
    a lookup encodes the name: ``get`` raised UnicodeEncodeError for a lone surrogate."""
    async with koru.open(tmp_path) as db:
        await db.put("ns", "k", 1)
    async with koru.open(tmp_path) as db:
        for ns, key in (("ns", "\udcff"), ("\ud800", "k")):
            if call == "keys" and ns == "ns":
                continue
            with pytest.raises(koru.InvalidDataError):
                await READS[call](db, ns, key)
        await READS[call](db, "ns", "k")


def test_every_error_survives_a_trip_through_another_process() -> None:
    """An error raised in a worker process (``multiprocessing``) is pickled back to the
    caller: every ``KoruError`` must unpickle as itself, with its message and its parts.
    ``KeyNotFoundError("n", "k")`` pickled but did not unpickle (its ``__init__`` was
    called with the message alone), and a pool whose worker raised it hung (h-lazy)."""
    import inspect
    import pickle

    import koru.events as ev

    made = [
        ev.KeyNotFoundError("n", "k"),
        ev.NoValueAtTimeError("n", "k", 5),
        ev.WorkspaceDroppedError("w"),
        ev.EmbeddingNotFoundError("n", "k"),
        ev.InvalidParentError(("n", "k"), "why"),
        ev.InvalidQueryError("field", "why"),
        ev.CorruptLogError("storage", 1, 2, "bad", "path"),
        ev.LaggedError(7),
        ev.PermissionDeniedError("someone", "read", "n", "k"),
        ev.RemoteError("message", 3, "reason"),
        ev.DurabilityError("disk"),
    ]
    classes = {
        cls
        for cls in (getattr(ev, name) for name in ev.__all__)
        if inspect.isclass(cls) and issubclass(cls, ev.KoruError)
    }
    made += [cls("plain") for cls in classes if cls.__init__ is ev.KoruError.__init__]
    made.append(ev.DataLossError("storage", 1, 2, "lost", "path"))
    for error in made:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error)
        assert str(back) == str(error) and back.args == error.args
        assert vars(back) == vars(error)
