"""The projection seam: a projection registered from outside is folded live, on
replay, checkpointed in its own section and restored, and a section that is missing,
stale or damaged rebuilds that projection alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import blake3
import cbor2
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import digest_of, full_replay
from koru._loader import CHECKPOINT_FILE
from koru.events import Event
from koru.projections import Projection, decode_checkpoint


class Tally:
    """Writes per namespace, counting each event once (idempotent)."""

    name: ClassVar[str] = "tally"
    version: ClassVar[int] = 1

    def __init__(self) -> None:
        self.per_ns: dict[str, int] = {}
        self.seen: set[bytes] = set()
        self.locations: list[int] = []

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        if event_id in self.seen:
            return
        self.seen.add(event_id)
        self.locations.append(location)
        for w in event.writes:
            self.per_ns[w.namespace] = self.per_ns.get(w.namespace, 0) + 1

    def capture(self) -> Any:
        return {"per_ns": dict(self.per_ns), "seen": sorted(self.seen), "at": self.locations}

    @classmethod
    def restore(cls, data: Any) -> Tally:
        tally = cls()
        if type(data) is not dict or type(data["per_ns"]) is not dict:
            raise ValueError("not a tally")
        tally.per_ns = dict(data["per_ns"])
        tally.seen = set(data["seen"])
        tally.locations = list(data["at"])
        return tally


class TallyV2(Tally):
    version: ClassVar[int] = 2


def tally(db: koru.Database) -> Tally:
    projection = db.projection("tally")
    assert isinstance(projection, Tally)
    return projection


async def write(db: koru.Database) -> None:
    for i in range(30):
        await db.put("users" if i % 3 else "orders", f"k{i % 7}", {"i": i})
    await db.put_batch([("users", "b1", 1), ("config", "b2", 2)])
    await db.delete("users", "k1")


EXPECTED = {"users": 22, "orders": 10, "config": 1}


def rewrite_checkpoint(path: Path, edit: Any) -> None:
    """Re-encode the checkpoint with ``edit`` applied to its decoded body."""
    raw = (path / CHECKPOINT_FILE).read_bytes()
    body = cbor2.loads(raw[40:])
    edit(body)
    data = cbor2.dumps(body)
    (path / CHECKPOINT_FILE).write_bytes(b"KORUCKP1" + blake3.blake3(data).digest() + data)


def test_the_builtin_projections_follow_the_protocol() -> None:
    from koru.projections import FeedState, KvState

    for kind in (KvState, FeedState, Tally):
        assert isinstance(kind(), Projection)


async def test_an_extra_projection_is_folded_live_replayed_checkpointed_and_restored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    async with koru.open(path, projections=[Tally]) as db:
        await write(db)
        live = tally(db)
        assert live.per_ns == EXPECTED  # folded live
        assert len(live.seen) == (await db.stats()).events == 32
        locations = list(live.locations)
        digest = await db.digest()
    # Restored from its own section: nothing replayed, nothing rebuilt.
    async with koru.open(path, projections=[Tally]) as db:
        stats = await db.stats()
        assert (stats.checkpoint_events, stats.replayed_events) == (32, 0)
        assert stats.projections_rebuilt == {}
        assert tally(db).per_ns == EXPECTED and tally(db).locations == locations
        await db.put("orders", "late", 1)  # and it keeps folding
        assert tally(db).per_ns["orders"] == 11
    # Replayed from the log, without any checkpoint: the same state.
    (path / CHECKPOINT_FILE).unlink()
    async with koru.open(path, projections=[Tally]) as db:
        assert (await db.stats()).replayed_events == 33
        assert tally(db).per_ns == {**EXPECTED, "orders": 11}
        assert tally(db).locations[:32] == locations
        assert (await db.digest()) != digest


async def test_a_projection_added_later_is_rebuilt_alone(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path) as db:
        await write(db)
    async with koru.open(path, projections=[Tally]) as db:
        stats = await db.stats()
        assert stats.checkpoint_events == 32  # kv and feeds came from the checkpoint
        assert stats.replayed_events == 0
        assert stats.projections_rebuilt == {"tally": "no section in the checkpoint"}
        assert tally(db).per_ns == EXPECTED
    # Its close wrote the checkpoint again, now with its section.
    assert "tally" in decode_checkpoint((path / CHECKPOINT_FILE).read_bytes()).sections
    async with koru.open(path, projections=[Tally]) as db:
        assert (await db.stats()).projections_rebuilt == {}
    # Opened without it: the others load; its section is dropped at the next save.
    async with koru.open(path) as db:
        assert (await db.stats()).projections_rebuilt == {}
        await db.put("x", "y", 1)
    assert "tally" not in decode_checkpoint((path / CHECKPOINT_FILE).read_bytes()).sections


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda body: body["sections"]["tally"].__setitem__(1, [1, 2]), "unusable section"),
        (lambda body: body["sections"]["tally"].__setitem__(0, 7), "section version 7, not 1"),
        (lambda body: body["sections"].pop("tally"), "no section in the checkpoint"),
    ],
    ids=["damaged", "other-version", "missing"],
)
async def test_an_unusable_section_rebuilds_only_its_projection(
    tmp_path: Path, edit: Any, why: str
) -> None:
    path = tmp_path / "db"
    async with koru.open(path, projections=[Tally]) as db:
        await write(db)
    rewrite_checkpoint(path, edit)
    async with koru.open(path, projections=[Tally]) as db:
        stats = await db.stats()
        assert stats.checkpoint_events == 32 and stats.replayed_events == 0
        assert list(stats.projections_rebuilt) == ["tally"]
        assert stats.projections_rebuilt["tally"].startswith(why)
        assert tally(db).per_ns == EXPECTED
        assert await db.get("users", "b1") == 1


class TallyForgetful(Tally):
    """A buggy restore that hands back nothing (or something else) instead of a state."""

    @classmethod
    def restore(cls, data: Any) -> Tally:
        return None  # type: ignore[return-value]


class TallyConfused(Tally):
    @classmethod
    def restore(cls, data: Any) -> Tally:
        return data  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", [TallyForgetful, TallyConfused])
async def test_a_restore_that_returns_no_state_rebuilds_its_projection(
    tmp_path: Path, kind: type[Tally]
) -> None:
    """What restore returns must be a state of its projection; anything else (None was
    taken for "start empty") left the projection without every event before the
    checkpoint, silently, instead of rebuilding it."""
    path = tmp_path / "db"
    async with koru.open(path, projections=[Tally]) as db:
        await write(db)
    async with koru.open(path, projections=[kind]) as db:
        rebuilt = (await db.stats()).projections_rebuilt
        assert list(rebuilt) == ["tally"] and rebuilt["tally"].startswith("unusable section")
        assert isinstance(db.projection("tally"), kind) and tally(db).per_ns == EXPECTED


class Fragile(Tally):
    """A projection with a bug: it cannot fold a write to the key "boom"."""

    name: ClassVar[str] = "fragile"

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        if any(w.key == "boom" for w in event.writes):
            raise ZeroDivisionError("a bug in a projection")
        super().apply(event, event_id, location)


async def test_a_projection_that_fails_to_fold_an_event_stops_the_database(
    tmp_path: Path,
) -> None:
    """The event is in the log when the folds run: a projection that raises there no
    longer matches the log. The handle kept serving, and its next checkpoint saved the
    projection without that event past a cursor after it: a divergence made permanent,
    silently. The handle now stops, as for a failed write: no checkpoint of that state
    is written, and every later call raises DatabaseClosedError naming the cause."""
    path = tmp_path / "db"
    async with koru.open(path, projections=[Fragile]) as db:
        await db.put("n", "fine", 1)
        await db.checkpoint()
        with pytest.raises(ZeroDivisionError):
            await db.put("n", "boom", 2)
        with pytest.raises(koru.DatabaseClosedError) as info:
            await db.put("n", "after", 3)
        assert isinstance(info.value.__cause__, ZeroDivisionError)
    saved = decode_checkpoint((path / CHECKPOINT_FILE).read_bytes())
    assert saved.cursors["storage"].count == 1  # none was written past the failed fold
    async with koru.open(path) as db:  # the log itself is sound
        assert await db.get("n", "boom") == 2


async def test_a_new_section_version_is_rebuilt_from_the_log(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, projections=[Tally]) as db:
        await write(db)
    async with koru.open(path, projections=[TallyV2]) as db:
        assert (await db.stats()).projections_rebuilt == {"tally": "section version 1, not 2"}
        assert tally(db).per_ns == EXPECTED


async def test_a_damaged_kv_section_rebuilds_kv_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, projections=[Tally]) as db:
        await write(db)
        digest = await db.digest()
        keys = {ns: await db.keys(ns) for ns in EXPECTED}
    rewrite_checkpoint(path, lambda body: body["sections"]["kv"].__setitem__(1, {"ns": []}))
    async with koru.open(path, projections=[Tally]) as db:
        assert list((await db.stats()).projections_rebuilt) == ["kv"]
        assert (await db.stats()).checkpoint_events == 32
        assert (await db.digest()) == digest
        assert tally(db).per_ns == EXPECTED
        assert {ns: await db.keys(ns) for ns in EXPECTED} == keys
        assert await db.keys("config") == ["b2"]


async def test_a_format_2_checkpoint_is_read(tmp_path: Path) -> None:
    """Written by an earlier version: kv and feeds as two fixed fields, read as version-1
    sections. Both projections are newer now (kv records carry expiries, feeds keep
    locations), so nothing in it is usable: the log is replayed, to the same state."""
    path = tmp_path / "db"
    async with koru.open(path) as db:
        await write(db)
        digest = await db.digest()

    def downgrade(body: dict[str, Any]) -> None:
        sections = body.pop("sections")
        body["format"] = 2
        body["kv"] = sections["kv"][1]
        body["feeds"] = [head[:4] for head in sections["feeds"][1]]

    rewrite_checkpoint(path, downgrade)
    async with koru.open(path) as db:
        stats = await db.stats()
        assert stats.checkpoint_events == 0 and stats.replayed_events == 32
        assert stats.checkpoint_ignored is None and stats.projections_rebuilt == {}
        assert (await db.digest()) == digest
        await db.put("after", "upgrade", 1)
        digest = await db.digest()
    kv, _ = full_replay(path)
    async with koru.open(path) as db:
        assert (await db.stats()).projections_rebuilt == {}
        assert (await db.digest()) == digest_of(kv) == digest
        assert await db.get("after", "upgrade") == 1


class NoRestore:
    name: ClassVar[str] = "broken"
    version: ClassVar[int] = 1

    def apply(self, event: Event, event_id: bytes, location: int) -> None:
        pass


@pytest.mark.parametrize(
    "bad",
    [
        "tally",
        [Tally()],
        [NoRestore],
        [Tally, Tally],
        [type("Kv", (Tally,), {"name": "kv"})],
        [type("Nameless", (Tally,), {"name": ""})],
        [type("Unversioned", (Tally,), {"version": "1"})],
    ],
    ids=["str", "instance", "no-restore", "twice", "builtin-name", "no-name", "bad-version"],
)
async def test_bad_projections_are_refused(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(koru.InvalidArgumentError):
        async with koru.open(tmp_path / "db", projections=bad):
            pass
    assert not (tmp_path / "db").exists()


async def test_unknown_projection_name(tmp_path: Path) -> None:
    async with koru.open(koru.MEMORY) as db:
        assert db.projection("kv") is not None
        with pytest.raises(koru.InvalidArgumentError, match="no projection"):
            db.projection("nope")


_LISTING_KEYS = ["a", "b", "ab", "B", "é", "中", "z1", "z10", "z2", "\U0001f600", "a\x7f"]


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.sampled_from(_LISTING_KEYS)),
            st.tuples(st.just("delete"), st.sampled_from(_LISTING_KEYS)),
            st.tuples(st.just("list"), st.just("")),
            st.tuples(st.just("checkpoint"), st.just("")),
        ),
        max_size=40,
    )
)
def test_keys_listed_between_writes_and_checkpoints_match_a_model(ops: list[Any]) -> None:
    """The key/value state keeps the memory layer's key order between listings and
    reads a namespace only one layer or table holds without a merge: whatever the
    interleaving of puts, deletes, listings and checkpoints (which swap the memory
    layer), ``keys`` is the live keys in UTF-8 byte order, as a model says."""

    async def run() -> None:
        async with koru.open(":memory:", checkpoint_every=10**9, processes=False) as db:
            live: set[str] = set()
            for op, key in ops:
                if op == "put":
                    await db.put("ns", key, 1)
                    live.add(key)
                elif op == "delete" and key in live:
                    await db.delete("ns", key)
                    live.discard(key)
                elif op == "checkpoint":
                    await db.checkpoint()
                assert await db.keys("ns") == sorted(live, key=str.encode)
            await db.put("other", "k", 1)  # a second namespace in the same layers
            assert await db.keys("ns") == sorted(live, key=str.encode)

    trio.run(run)
