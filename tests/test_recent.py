"""The recent map (``KvState.recent``): ``get`` and ``get_nowait`` of a key read lately
find its content id without searching the layers. What it answers must always be what
a search would: any write (put, batch, delete, a time to live, an event from another
node) drops the key at once, an expired value reads absent, names of the wrong type
are refused however recently their equal was read, and every read still counts once
toward its key's fitness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock
from koru.events import PutRun, content_id
from koru.projections import KvState

KEYS = 4
SECOND = 10**9


def value_of(i: int, v: int) -> Any:
    """Flat values (served from templates) and nested ones (decoded every time)."""
    return {"i": i, "v": v, "ok": True} if v % 2 else {"i": i, "tags": [v, {"v": v}]}


async def all_events(db: koru.Database) -> list[bytes]:
    out: list[bytes] = []
    for origin, agent in await db.feed_heads():
        out += await db.feed_events(origin, agent)
    return out


def _mutate(value: Any) -> None:
    """Change a returned value in place, nested containers too."""
    if isinstance(value, dict):
        for item in value.values():
            _mutate(item)
        value["i"] = "changed"
        value["extra"] = [1]
    elif isinstance(value, list):
        for item in value:
            _mutate(item)
        value.append("changed")


ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "ttl", "delete", "batch", "peer", "advance", "checkpoint"]),
        st.integers(0, KEYS - 1),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(ops=ops, capacity=st.sampled_from([1, 3, 1000]))
def test_reads_agree_with_a_model_whatever_the_writes(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]], capacity: int
) -> None:
    where = tmp_path_factory.mktemp("recent")
    clock = StepClock()  # shared: the peer's writes are newer than the ones before

    async def main() -> None:
        model: dict[str, Any] = {}
        expiring: set[str] = set()
        async with (
            koru.open(where / "db", clock=clock, sync="never", processes=False) as db,
            koru.open(":memory:", clock=clock, processes=False) as peer,
        ):
            db._kv.recent_capacity = capacity  # 1 and 3: emptied again and again
            for n, (op, i) in enumerate(ops):
                key = f"k{i}"
                if op in ("put", "ttl"):
                    await db.put("s", key, value_of(i, n), ttl=1.0 if op == "ttl" else None)
                    model[key] = value_of(i, n)
                    (expiring.add if op == "ttl" else expiring.discard)(key)
                elif op == "delete" and key in model:
                    await db.delete("s", key)
                    del model[key]
                elif op == "batch":
                    other = f"k{(i + 1) % KEYS}"
                    await db.put_batch([("s", key, value_of(i, n)), ("s", other, n)])
                    model[key], model[other] = value_of(i, n), n
                    expiring -= {key, other}
                elif op == "peer":
                    await peer.put("s", key, value_of(i, -n))
                    await db.ingest(await all_events(peer))
                    model[key] = value_of(i, -n)
                    expiring.discard(key)
                elif op == "advance":
                    clock.now += 2 * SECOND  # every time to live is over
                    for gone in expiring:
                        model.pop(gone, None)
                    expiring.clear()
                elif op == "checkpoint":
                    await db.checkpoint()
                for _ in range(3):  # a search, then the recent map
                    for j in range(KEYS):
                        k = f"k{j}"
                        if k not in model:
                            with pytest.raises(koru.KeyNotFoundError):
                                await db.get("s", k)
                            with pytest.raises((koru.KeyNotFoundError, trio.WouldBlock)):
                                db.get_nowait("s", k)
                            continue
                        got = await db.get("s", k)
                        assert got == model[k]
                        _mutate(got)  # never shared: the next read is unchanged
                        try:
                            nowait = db.get_nowait("s", k)
                        except trio.WouldBlock:
                            continue
                        assert nowait == model[k]
                        _mutate(nowait)
            if model and not db._kv.expiring:  # the recent map answered some reads
                assert db._kv.recent_hits > 0

    trio.run(main)


async def test_a_recent_key_is_dropped_by_every_write(tmp_path: Path) -> None:
    clock = StepClock()
    async with koru.open(tmp_path / "db", clock=clock, sync="os", processes=False) as db:
        for v in range(3):  # read until the recent map answers
            await db.put("s", "k", {"v": v})
            for _ in range(3):
                assert await db.get("s", "k") == {"v": v}
                assert db.get_nowait("s", "k") == {"v": v}
        assert db._kv.recent["s"]["k"] and db._kv.recent_hits >= 4
        await db.delete("s", "k")  # a tombstone
        assert "k" not in db._kv.recent["s"]
        with pytest.raises(koru.KeyNotFoundError):
            await db.get("s", "k")
        with pytest.raises(koru.KeyNotFoundError):
            db.get_nowait("s", "k")
        await db.put("s", "k", "back")
        for _ in range(3):
            assert await db.get("s", "k") == "back"
        await db.put("s", "k", "short-lived", ttl=1.0)  # a time to live: kept out
        for _ in range(3):
            assert await db.get("s", "k") == "short-lived"
            assert db.get_nowait("s", "k") == "short-lived"
        assert "k" not in db._kv.recent["s"]
        clock.now += 2 * 10**9  # expired on the database's clock: absent at once
        with pytest.raises(koru.KeyNotFoundError):
            await db.get("s", "k")
        with pytest.raises(koru.KeyNotFoundError):
            db.get_nowait("s", "k")
        assert (await db.stats()).tiers.recent_hits == db._kv.recent_hits


async def test_names_of_the_wrong_type_are_refused_however_recent_their_equal(
    tmp_path: Path,
) -> None:
    class Name(str):
        """Hashes and compares like the str it was made from."""

    async with koru.open(tmp_path / "db", sync="os", processes=False) as db:
        await db.put("users", "alice", {"age": 30})
        for _ in range(3):
            assert await db.get("users", "alice") == {"age": 30}
        assert db._kv.recent["users"]["alice"]
        for ns, key in (
            ("users", Name("alice")),
            (Name("users"), "alice"),
            ("users", b"alice"),
            (b"users", "alice"),
            ("users", ["alice"]),
            ("users", None),
        ):
            with pytest.raises(koru.InvalidDataError):
                await db.get(ns, key)  # type: ignore[arg-type]
            with pytest.raises(koru.InvalidDataError):
                db.get_nowait(ns, key)  # type: ignore[arg-type]
        assert await db.get("users", "alice") == {"age": 30}


async def test_a_get_racing_puts_of_the_same_key_sees_each_acknowledged_value() -> None:
    async with koru.open(":memory:", processes=False) as db:
        await db.put("s", "k", {"v": 0})
        seen: list[int] = []
        done = False

        async def writer() -> None:
            nonlocal done
            for v in range(1, 200):
                await db.put("s", "k", {"v": v})
                # Acknowledged: every later read has it, never an older value.
                assert db.get_nowait("s", "k") == {"v": v}
                assert await db.get("s", "k") == {"v": v}
                await trio.lowlevel.checkpoint()
            done = True

        async def reader() -> None:
            while not done:
                got = await db.get("s", "k")
                seen.append(got["v"])
                got["v"] = -1  # a fresh object: changes nothing for the writer's reads

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            nursery.start_soon(reader)
        assert seen == sorted(seen) and len(set(seen)) > 10  # never went back
        assert db._kv.recent_hits > 0


async def test_reads_of_a_hot_key_count_once_each_whoever_answers(tmp_path: Path) -> None:
    path = tmp_path / "db"
    async with koru.open(path, sync="os", processes=False) as db:
        for i in range(20):
            await db.put("users", f"u{i}", {"i": i})
    async with koru.open(path, sync="os", processes=False) as db:
        kv = db._kv
        assert await db.get("users", "u3") == {"i": 3}  # cold: from a table, promoted
        assert await db.get("users", "u3") == {"i": 3}  # the hot tier; now recent
        assert "u3" in kv.recent["users"] and kv.recent_hits == 0
        for _ in range(5):
            assert await db.get("users", "u3") == {"i": 3}  # the recent map
        for _ in range(3):
            assert db.get_nowait("users", "u3") == {"i": 3}
        assert kv.recent_hits == 8
        assert kv.fitness() == {("users", "u3"): 10}
        db._cache.__init__(1 << 20)  # type: ignore[misc]  # the values cached: none
        with pytest.raises(trio.WouldBlock):
            db.get_nowait("users", "u3")
        assert await db.get("users", "u3") == {"i": 3}  # from the log, where its blob says
        assert db.get_nowait("users", "u3") == {"i": 3}  # cached again
        assert kv.recent_hits == 11
        assert kv.fitness() == {("users", "u3"): 13}


def test_every_fold_of_a_write_drops_the_key_from_the_recent_map() -> None:
    """``KvState.apply_run`` (replay's runs of puts), ``apply`` (one event) and
    ``apply_put`` (a plain put with its content id) alike, for a new key and for one
    held in memory (the run's own append, apply_put's inlined cases)."""
    origin = bytes(range(16))

    def run_of(seq: int, keys: list[str]) -> PutRun:
        run = PutRun(origin, "a", seq, None, 0)
        for i, key in enumerate(keys, seq):
            run.rows.append((10 + i, ["s", key, cbor2.dumps(i), None], bytes([i]) * 32, i))
        return run

    for fold in ("run", "one", "put"):
        kv = KvState()
        for run in (run_of(1, ["k"]), run_of(2, ["k", "other"])):
            kv.remember("s", "k", b"an old id")
            kv.remember("s", "kept", b"its id")
            if fold == "run":
                kv.apply_run(run)
            elif fold == "one":
                for event, eid, location in run.events():
                    kv.apply(event, eid, location)
            else:  # a plain put whose content id the writer has (its inlined cases)
                for event, eid, location in run.events():
                    kv.apply_put(event, eid, location, content_id(event.value))
            assert kv.recent == {"s": {"kept": b"its id"}}, fold
        assert kv.live_content_id("s", "k") == content_id(cbor2.dumps(2))
        kv.recent_capacity = 4
        kv.remember("t", "a", b"1")  # the fifth entry: emptied first, then kept
        assert kv.recent == {"t": {"a": b"1"}} and kv.recent_count == 1
