"""A hostile reviewer's attacks on the cold tier's files: tables swapped, cut, flipped
or removed while the database is closed. Whatever was done to them, every answer is the
value the log holds or a typed error; and a writable open with the logs intact opens."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from koru.events import OsDisk

ROUNDS = 3
KEYS = 12


async def _build(path: Path) -> dict[str, Any]:
    """A database with one table per round (every key rewritten each round): the newest
    table holds each key's whole history, the older ones what it was then."""
    model: dict[str, Any] = {}
    async with koru.open(path, sync="os", processes=False) as db:
        for round_ in range(ROUNDS):
            for i in range(KEYS):
                model[f"k{i}"] = [round_, i]
                await db.put("n", f"k{i}", model[f"k{i}"])
            await db.checkpoint()
    return model


def _tables_oldest_first(path: Path) -> list[Path]:
    return sorted((path / "tables").glob("*.tab"), key=lambda p: p.stat().st_size)


async def _answers_right_or_refuses(path: Path, model: dict[str, Any], **options: Any) -> None:
    """Every key reads as the model says, or the open or the read raises a KoruError."""
    try:
        async with koru.open(path, processes=False, **options) as db:
            for key, value in model.items():
                try:
                    got = await db.get("n", key)
                except koru.KoruError:
                    continue
                assert got == value, f"{key}: served {got!r}, the log says {value!r}"
    except koru.KoruError:
        pass


async def _opens_right(path: Path, model: dict[str, Any], *, exactly: bool = True) -> None:
    """A writable open with the logs intact opens and answers from them (``exactly``:
    every key; else a damaged entry may refuse its key with a KoruError)."""
    async with koru.open(path, processes=False) as db:
        for key, value in model.items():
            try:
                assert await db.get("n", key) == value
            except koru.KoruError:
                if exactly:
                    raise


@pytest.mark.parametrize("readonly", [True, False])
async def test_tables_swapped_under_each_others_names_never_serve_stale_values(
    tmp_path: Path, readonly: bool
) -> None:
    """The newest table's bytes under the oldest's name and back: both files are sound
    tables (every checksum passes), only their names lie. A lookup that trusted the
    name served the oldest round's values as current ones."""
    path = tmp_path / "db"
    model = await _build(path)
    tables = _tables_oldest_first(path)
    assert len(tables) == ROUNDS
    async with koru.open(path, readonly=True, processes=False) as db:  # untouched: trusted
        stats = await db.stats()
        assert stats.checkpoint_ignored is None and not stats.projections_rebuilt
    old, new = tables[0], tables[-1]
    old_bytes, new_bytes = old.read_bytes(), new.read_bytes()
    old.write_bytes(new_bytes)
    new.write_bytes(old_bytes)
    async with koru.open(path, readonly=True, processes=False) as db:
        assert "not the one the checkpoint names" in (await db.stats()).projections_rebuilt["kv"]
    await _answers_right_or_refuses(path, model, readonly=readonly)
    await _opens_right(path, model)
    async with koru.open(path, processes=False) as db:  # told at open, rebuilt from the log
        assert (await db.stats()).projections_rebuilt == {}  # the writable open rewrote it


async def test_a_table_replaced_by_another_databases_table_is_not_trusted(
    tmp_path: Path,
) -> None:
    """A table file copied in from another database (a restore gone wrong) under the
    name this checkpoint gives its table."""
    path, other = tmp_path / "db", tmp_path / "other"
    model = await _build(path)
    async with koru.open(other, sync="os", processes=False) as db:
        for i in range(KEYS):
            await db.put("n", f"k{i}", "not this database's value")
    [theirs] = (other / "tables").glob("*.tab")
    for mine in _tables_oldest_first(path):
        mine.write_bytes(theirs.read_bytes())
    await _answers_right_or_refuses(path, model, readonly=True)
    await _answers_right_or_refuses(path, model)
    await _opens_right(path, model)


@settings(max_examples=40)
@given(which=st.integers(0, ROUNDS - 1), cut=st.floats(0, 1, exclude_max=True))
def test_a_table_cut_short_anywhere_is_refused_or_rebuilt(
    tmp_path_factory: pytest.TempPathFactory, which: int, cut: float
) -> None:
    path = tmp_path_factory.mktemp("cut") / "db"

    async def attack() -> None:
        model = await _build(path)
        table = _tables_oldest_first(path)[which]
        size = table.stat().st_size
        os.truncate(table, int(size * cut))
        await _answers_right_or_refuses(path, model, readonly=True)
        await _opens_right(path, model)

    trio.run(attack)


@settings(max_examples=60)
@given(
    which=st.integers(0, ROUNDS - 1), at=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7)
)
def test_a_bit_flipped_anywhere_in_a_table_is_refused_or_rebuilt(
    tmp_path_factory: pytest.TempPathFactory, which: int, at: float, bit: int
) -> None:
    path = tmp_path_factory.mktemp("flip") / "db"

    async def attack() -> None:
        model = await _build(path)
        table = _tables_oldest_first(path)[which]
        data = bytearray(table.read_bytes())
        data[int(len(data) * at)] ^= 1 << bit
        table.write_bytes(bytes(data))
        await _answers_right_or_refuses(path, model, readonly=True)
        await _answers_right_or_refuses(path, model)
        await _opens_right(path, model, exactly=False)

    trio.run(attack)


async def test_a_table_emptied_or_removed_opens_from_the_log(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    model = await _build(path)
    tables = _tables_oldest_first(path)
    tables[0].write_bytes(b"")
    os.unlink(tables[1])
    await _answers_right_or_refuses(path, model, readonly=True)
    await _opens_right(path, model)


class _SwappingDisk(OsDisk):
    """The operating system's disk, except that once armed, the next table put in place
    is overwritten at once with ``swap_in``'s bytes (another sound table): a file
    swapped between a merge writing its table and the checkpoint that names it."""

    def __init__(self) -> None:
        super().__init__()
        self.swap_in: bytes | None = None
        self.swapped = 0

    def replace(self, source: str, target: str) -> None:
        super().replace(source, target)
        if self.swap_in is not None and target.endswith(".tab"):
            with open(target, "r+b") as f:
                f.write(self.swap_in)
                f.truncate()
            self.swap_in = None
            self.swapped += 1


async def test_a_table_swapped_as_a_merge_writes_it_is_never_named(tmp_path: Path) -> None:
    """The merge of the three tables is overwritten with the oldest one as it lands: the
    writer opens what it wrote by its name, so it must tell the bytes are not its own;
    else the checkpoint names the swapped file and every later open serves the oldest
    round's values as current."""
    path = tmp_path / "db"
    model = await _build(path)
    disk = _SwappingDisk()
    disk.swap_in = _tables_oldest_first(path)[0].read_bytes()
    async with koru.open(path, sync="os", processes=False, disk=disk) as db:
        with pytest.raises(koru.KoruError, match="not the one just written"):
            await db._checkpointer.compact()
        assert disk.swapped == 1
        for key, value in model.items():
            assert await db.get("n", key) == value
    await _answers_right_or_refuses(path, model, readonly=True)
    await _opens_right(path, model)


async def test_a_reader_serves_cold_gets_while_the_writer_merges_and_removes_its_tables(
    tmp_path: Path,
) -> None:
    """A read-only handle opened on three tables; the writer then rewrites every key,
    merges and removes those files, and a stranger renames another table over one of
    them. The reader answers from the files it opened: what it saw at open, or an
    error, never a value of another moment."""
    path = tmp_path / "db"
    model = await _build(path)
    async with koru.open(path, readonly=True, processes=False, cache_bytes=0) as reader:
        reader._kv.hot_capacity = 0  # every get searches the tables
        assert {k: await reader.get("n", k) for k in model} == model
        async with koru.open(path, sync="os", processes=False) as writer:
            for i in range(KEYS):
                await writer.put("n", f"k{i}", "later")
            await writer.checkpoint()
            assert await writer._checkpointer.compact() >= 1
        tables = _tables_oldest_first(path)
        other = tmp_path / "other.tab"
        other.write_bytes(tables[0].read_bytes())
        os.replace(other, tables[-1])
        for key, value in model.items():
            assert await reader.get("n", key) == value


async def test_an_entry_rewritten_in_place_under_an_open_handle_never_serves_stale(
    tmp_path: Path,
) -> None:
    """After the open's checks: a key's entry in the newest table rewritten in place, its
    newest version record replaced by its oldest, with a fresh crc32 (every checksum of
    the entry passes, and the value it then names is genuine). The open handle served
    the stale value; it now refuses the block (its digest, in the verified index)."""
    import zlib

    from koru.events import _table
    from koru.projections import RECORD_SIZE

    path = tmp_path / "db"
    model = await _build(path)
    async with koru.open(path, processes=False) as db:
        assert await db.get("n", "k0") == model["k0"]  # the newest table's index is read
        newest = _tables_oldest_first(path)[-1]
        data = bytearray(newest.read_bytes())
        pattern = _table._pattern(b"n", b"k5")
        at = data.index(pattern) - 4
        where = at + 4 + len(pattern)
        length = int.from_bytes(data[where : where + 4], "little")
        records = data[where + 4 : where + 4 + length]
        assert length == ROUNDS * RECORD_SIZE
        records[-RECORD_SIZE:] = records[:RECORD_SIZE]
        data[where + 4 : where + 4 + length] = records
        body = bytes(data[at + 4 : where + 4 + length])
        data[at : at + 4] = zlib.crc32(body).to_bytes(4, "little")
        newest.write_bytes(data)  # the same inode: the handle's reads see it
        try:
            got = await db.get("n", "k5")
        except koru.KoruError:
            pass
        else:
            assert got == model["k5"], f"served {got!r}, the log says {model['k5']!r}"
