"""Values that moved: a projection following ``ValuePlacement`` says where a value lives
now, reads find it there (proven against its content id), and the version record, its
history and its ids stay as they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

import koru
from koru.events import Event, content_id
from koru.projections import ValuePlacement

VALUE = {"blob": "x" * 2000}


class Newest:
    """Places every value in the newest event that carries it (a stand-in for a tier
    move: the value's bytes live on somewhere else than where they were written)."""

    name: ClassVar[str] = "newest"
    version: ClassVar[int] = 1

    def __init__(self) -> None:
        self.where: dict[bytes, int] = {}

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        for w in event.writes:
            if w.value is not None:
                self.where[content_id(w.value)] = location

    def placed(self, cid: bytes) -> int | None:
        return self.where.get(cid)

    def capture(self) -> Any:
        return dict(self.where)

    @classmethod
    def restore(cls, data: Any) -> Newest:
        out = cls()
        out.where = dict(data)
        return out


class Liar(Newest):
    """Places every value in the very first event: wrong for all but one value."""

    name: ClassVar[str] = "liar"
    first: int | None = None

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        if self.first is None:
            self.first = location

    def placed(self, cid: bytes) -> int | None:
        return self.first

    def capture(self) -> Any:
        return self.first

    @classmethod
    def restore(cls, data: Any) -> Liar:
        out = cls()
        out.first = data
        return out


async def written(path: Path, *kinds: type[Newest]) -> tuple[int, str, str]:
    """k1 then k2 get the same value (two copies in the log), then more writes; returns
    where k1's record is (offset, segment file) and its write id. The close checkpoints
    every projection, so that a later open does not replay (and re-verify) the log."""
    async with koru.open(path, projections=kinds) as db:
        v1 = await db.put("n", "k1", VALUE)
        await db.put("n", "other", 1)
        await db.put("n", "k2", VALUE)
        location = db.projection("kv").current("n", "k1").location  # type: ignore[attr-defined]
        _, _, offset, segment = db._store.locate(location)
    return offset, v1.write_id, segment


def damage(segment: str, offset: int) -> None:
    """Flip one byte of the value in the record at ``offset``."""
    data = bytearray(Path(segment).read_bytes())
    at = data.index(b"x" * 100, offset)
    data[at + 50] ^= 0x01
    Path(segment).write_bytes(bytes(data))


def test_the_placement_protocol_is_recognised() -> None:
    assert isinstance(Newest(), ValuePlacement)
    assert not isinstance(object(), ValuePlacement)


async def test_a_moved_value_is_read_where_it_lives_now(tmp_path: Path) -> None:
    path = tmp_path / "db"
    offset, wid, segment = await written(path, Newest)
    damage(segment, offset)
    # Without the placement, k1's value is read from the damaged record: refused.
    async with koru.open(path, readonly=True) as db:
        with pytest.raises(koru.CorruptLogError):
            await db.get("n", "k1")
    # With it, from the newest copy: served, and the version is still k1's own.
    async with koru.open(path, readonly=True, projections=[Newest]) as db:
        assert await db.get("n", "k1") == VALUE
        versioned = await db.get_versioned("n", "k1")
        assert versioned.write_id == wid and versioned.value == VALUE
        [only] = await db.history("n", "k1")
        assert only.write_id == wid and only.value == VALUE
        assert (await db.stats()).corruptions == 0


async def test_a_wrong_placement_is_caught_by_the_content_id(tmp_path: Path) -> None:
    path = tmp_path / "db"
    await written(path, Liar)
    async with koru.open(path, readonly=True, projections=[Liar]) as db:
        # The first event holds k1's value: the lie is true there.
        assert await db.get("n", "k1") == VALUE
        # "other" is not in the first event: never a wrong value, a typed error.
        with pytest.raises(koru.CorruptLogError, match="does not hold the value"):
            await db.get("n", "other")
        assert (await db.stats()).corruptions == 1
