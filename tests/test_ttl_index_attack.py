"""Attacks on the index of the keys with a time to live by when they expire
(``projections/_deadlines.py``) and on the checkpoint columns that hold them
(``expiring_at``, ``projections/_kv.py``) (h-ttl3): times at bucket edges, before 1970
(a bucket number below zero) and at 2**64 - 1, restores, refiles of its heap, and
checkpoints whose columns were rewritten (their checksum recomputed)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import blake3
import cbor2
import pytest
from _deadline_model import check, run
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from koru._processes import steps
from koru.nursery import CHECKPOINT_FILE
from koru.projections._deadlines import SHIFT, Deadlines
from koru.projections._layered import _joined

KEYS = [("ns", f"k{i}") for i in range(8)] + [("o", "k")]
EDGES = [
    0,
    1,
    (1 << SHIFT) - 1,
    1 << SHIFT,
    (1 << SHIFT) + 1,
    2**63,
    2**64 - 2,
    2**64 - 1,
    2**64,
    -1,
    -(1 << SHIFT),
    -(1 << SHIFT) - 1,
]
TIMES = st.one_of(
    st.sampled_from(EDGES),
    st.integers(-(3 << SHIFT), 6 << SHIFT),
    st.integers(2**64 - (4 << SHIFT), 2**64 - 1),
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(KEYS), TIMES),
        st.tuples(st.just("pop"), st.sampled_from(KEYS)),
        st.tuples(st.just("ask"), TIMES),
        st.tuples(st.sampled_from(["snapshot", "settle", "restore", "refile", "clear"])),
    ),
    max_size=60,
)


def test_a_time_before_1970_restored_is_found_due() -> None:
    """The attack: a map of expiry times restored (``load_pairs``, as a checkpoint's
    columns are, which hold any int) holding a time below zero. Its heap of bucket
    numbers was refiled from the buckets above -1 only, so the bucket of a negative
    time was never reached: ``at_most`` and ``count_at_most`` missed the key (while
    ``get`` held it due), so ``namespaces`` and ``stats`` counted it live and the
    expiry process never saw it.
    What must hold: the restored map answers as a scan, for every bound."""
    found = Deadlines()
    found.load_pairs(["ns", "ns"], ["old", "new"], [-1, 5])
    model = {("ns", "old"): -1, ("ns", "new"): 5}
    for bound in (-(1 << SHIFT) - 1, -2, -1, 0, 5, 2**64 - 1):
        check(found, model, bound)


@settings(max_examples=600, deadline=None)
@given(OPS)
def test_the_index_answers_as_a_scan_for_any_int_time(ops: list[Any]) -> None:
    """The attack: any ints as times (bucket edges, below zero, 2**64 - 1 and past it),
    set, popped, asked about in any order, through snapshots, settles, restores,
    refiles of the heap and clears.
    What must hold: ``at_most`` and ``count_at_most`` answer as a scan of every entry,
    and the buckets hold exactly the map's entries."""
    run(ops, (-(4 << SHIFT), -1, 0, 3 << SHIFT, 2**64 - 1, 2**90))


def _keep_tags(tag: cbor2.CBORTag, *_: Any) -> Any:
    return tag  # (dumped again as it was)


def rewrite_kv(path: Path, change: Any) -> None:
    """Rewrite the checkpoint's kv section with ``change(section)``, its checksum
    recomputed."""
    data = (path / CHECKPOINT_FILE).read_bytes()
    body = cbor2.loads(data[40:], tag_hook=_keep_tags)
    change(body["sections"]["kv"][1])
    encoded = cbor2.dumps(body)
    (path / CHECKPOINT_FILE).write_bytes(b"KORUCKP1" + blake3.blake3(encoded).digest() + encoded)


async def _reads_agree(db: koru.Database) -> None:
    """Every read of the keys agrees with ``get``: a key is listed by ``keys`` and its
    namespace by ``namespaces``, and counted by ``stats``, exactly when ``get`` finds a
    value; ``expiring()`` lists every key ``get`` finds expired."""
    live = set()
    for key in "abcd":
        with contextlib.suppress(koru.KeyNotFoundError):
            live.add((key, await db.get("ns", key))[0])
    assert set(await db.keys("ns")) == live
    assert ("ns" in await db.namespaces()) == bool(live)
    assert (await db.stats()).keys == len(live)
    due = {e.key for e in await db.expiring()}
    assert due == {"a", "b", "c"} - live  # ("d" is never due)


async def test_a_checkpoint_whose_times_were_set_before_1970_reads_consistently(
    tmp_path: Path,
) -> None:
    """The attack: a checkpoint whose ``expiring_at`` times were rewritten (checksum
    recomputed) to -1 and 0: ints, as its check asks. Opened, ``get`` found the key
    with -1 expired but ``keys``/``namespaces``/``stats``/``expiring()`` (asking the
    index) took it for live.
    What must hold: the section is refused, or every read agrees with ``get``."""
    path = tmp_path / "db"
    async with koru.open(path, processes=False, sync="never") as db:
        for key in ("a", "b", "c"):
            await db.put("ns", key, 1, ttl=3600)
        await db.checkpoint()

    def change(section: dict[str, Any]) -> None:
        columns = section["expiring_at"]
        times = dict(zip(columns["keys"], columns["times"], strict=True))
        times[_joined(("ns", "a"))] = -1
        times[_joined(("ns", "b"))] = 0
        columns["keys"], columns["times"] = list(times), list(times.values())

    rewrite_kv(path, change)
    async with koru.open(path, processes=False, sync="never") as db:
        await _reads_agree(db)


def _tag_of(section: dict[str, Any]) -> cbor2.CBORTag:
    (tag,) = [t for t in [section["new"], *section["tables"]] if isinstance(t, cbor2.CBORTag)]
    section["new"], section["tables"] = None, [tag]
    return tag


@pytest.mark.parametrize(
    "hide",
    [
        lambda s, t: s.update(expiring=[["ns", "a", 1], ["ns", "b", t]]),
        lambda s, t: s.update(expiring=[["ns", "a", 1], [{"x": t}]]),
        lambda s, t: s.update(expiring=[["ns", "a", 1], [[t]]]),
        lambda s, t: (
            s.pop("expiring_at"),
            s.update(expiring=[["ns", "a", 1], [t, "b", 1]], tables=[]),
        ),
        lambda s, t: s["expiring_at"].update(keys=[*s["expiring_at"]["keys"], t]),
        lambda s, t: s["expiring_at"].update(times=[[t]] * len(s["expiring_at"]["times"])),
        lambda s, t: s.update(tables=[[1, t]]),
    ],
    ids=["row", "dict-in-row", "list-in-row", "row-only", "key", "times", "tables-row"],
)
async def test_a_table_hidden_in_rows_is_never_removed_nor_misread(
    tmp_path: Path, hide: Any
) -> None:
    """The attack: a checkpoint (checksum recomputed) whose kv section names its table
    inside a list of rows, where the walk for tables skips lists of plain rows: beside
    scalars in a row, in a dict or a list in a row, as a key of ``expiring_at``, its
    times, or a row of ``tables``; in one case named there alone.
    What must hold: the table's file is never removed at open (the checkpoint names
    it), and every value reads as written (the section restored or rebuilt)."""
    path = tmp_path / "db"
    async with koru.open(path, processes=False, sync="never") as db:
        for key in ("a", "b", "c"):
            await db.put("ns", key, key, ttl=3600)
        await db.checkpoint()
    files = sorted((path / "tables").iterdir())
    assert files

    def change(section: dict[str, Any]) -> None:
        hide(section, _tag_of(section))

    rewrite_kv(path, change)
    async with koru.open(path, processes=False, sync="never") as db:
        assert sorted((path / "tables").iterdir()) == files
        assert [await db.get("ns", k) for k in ("a", "b", "c")] == ["a", "b", "c"]
        await _reads_agree(db)
        await db.put("ns", "d", "d")
        await db.checkpoint()
    async with koru.open(path, processes=False, sync="never") as db:
        assert [await db.get("ns", k) for k in "abcd"] == list("abcd")


def _set(columns: dict[str, Any], **fields: Any) -> None:
    columns.update(fields)


A, B = _joined(("ns", "a")), _joined(("ns", "b"))


@pytest.mark.parametrize(
    "change",
    [
        lambda s: _set(s["expiring_at"], keys=[1, 2, 3]),
        lambda s: _set(s["expiring_at"], times=[1.0, 2.0, 3.0]),
        lambda s: _set(s["expiring_at"], times=[True] * 3),
        lambda s: _set(s["expiring_at"], times=[b"x"] * 3),
        lambda s: _set(s["expiring_at"], times=[1]),
        lambda s: _set(s["expiring_at"], keys=[[A], [B], [A]]),
        lambda s: _set(s["expiring_at"], keys={A: 1}),
        lambda s: _set(s["expiring_at"], keys=["ab", "cd", "ef"]),
        lambda s: _set(s["expiring_at"], keys=["\U0010ffffx"] * 3),
        lambda s: _set(s["expiring_at"], keys=[A, A, B], times=[2**64 - 1, 1, 2**64 - 1]),
        lambda s: _set(s["expiring_at"], times=[2**64, 2**200, -(2**200)]),
        lambda s: _set(s["expiring_at"], keys=[], times=[]),
        lambda s: s.update(expiring_at=None),
        lambda s: s.update(expiring_at=[[A], [1]]),
        lambda s: s.update(expiring=[["ns", "a", 1]]),
        lambda s: s.update(expiring="junk"),
        lambda s: (s.pop("expiring_at"), s.update(expiring=[["ns", "a", 1], ["ns", "c", -5]])),
        lambda s: (s.pop("expiring_at"), s.update(expiring=[["ns", "a", 1], ["ns", "b"]])),
        lambda s: s.pop("expiring_at"),
    ],
)
async def test_tampered_ttl_columns_are_refused_or_read_consistently(
    tmp_path: Path, change: Any
) -> None:
    """The attack: a checkpoint (checksum recomputed) whose ``expiring_at`` columns are
    of the wrong types or lengths, keys that are no pairs of names or listed twice,
    times past 64 bits or below zero, ``expiring`` rows beside them or instead.
    What must hold: the database opens, every read agrees with ``get``, and the expiry
    process, a put, a checkpoint and a reopen run."""
    path = tmp_path / "db"
    async with koru.open(path, processes=False, sync="never") as db:
        for key in ("a", "b", "c"):
            await db.put("ns", key, 1, ttl=3600)
        await db.checkpoint()
    rewrite_kv(path, change)
    async with koru.open(path, processes=False, sync="never") as db:
        await _reads_agree(db)
        await steps(db)["expiry"]()
        await _reads_agree(db)
        await db.put("ns", "d", 2, ttl=3600)
        await db.checkpoint()
    async with koru.open(path, processes=False, sync="never") as db:
        await _reads_agree(db)
        assert "d" in await db.keys("ns")


async def test_a_section_refused_after_its_tables_opened_lets_them_go(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """A checkpoint's kv section refused by its restore after its tables were opened
    (here a count no state can hold): the projection is rebuilt from the log, and the
    tables opened for it are released, not left holding their maps and descriptors
    until the process ends (h-ttl3's note)."""
    from koru.events import Table

    path = tmp_path / "db"
    async with koru.open(path) as db:
        for i in range(50):
            await db.put("ns", f"k{i}", i)
        await db.checkpoint()
        await db.put("ns", "later", 1)
    rewrite_kv(path, lambda section: section.update(live=-1))
    released: list[str] = []
    original = Table.release

    def counted(self: Table) -> None:
        released.append(self.name)
        original(self)

    monkeypatch.setattr(Table, "release", counted)
    async with koru.open(path) as db:
        stats = await db.stats()
        assert "kv" in stats.projections_rebuilt
        assert await db.get("ns", "k49") == 49
        assert released  # the kv tables opened for the refused section
