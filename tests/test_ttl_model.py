"""Values with a time to live against a dict model (h-ttl): every read path (get,
get_nowait, get_versioned, contains, keys, namespaces, a scan, an index lookup, two
views) agrees with the model at every instant of a clock that goes forwards and back
(to the nanosecond of an expiry), through puts, batches, deletes, the expiry process,
checkpoints (every 5 events: tables), reopens, replays from the log, a peer kept in
sync (same digest, same reads by its own read time) and ``kdelta verify``'s audit; and
time travel to any moment the log has passed answers the same ever after."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import koru
from koru import F, Query
from koru._audit import audit_checkpoint
from koru._processes import steps
from koru.events import FileStore

NS = "n"
KEYS = ["a", "b", "c", "d"]
T0 = 1_700_000_000 * 10**9
TTLS = st.none() | st.sampled_from([1e-9, 0.5, 1, 2, 5])
NONE = st.none()
OPS = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.integers(0, 3), TTLS),
    st.tuples(
        st.just("batch"),
        st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
        st.integers(0, 3),
        TTLS,
    ),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), NONE, NONE),
    st.tuples(
        st.just("tick"),
        st.sampled_from([1, 10**6, 5 * 10**8, 10**9, 2 * 10**9, -(10**9), -3600 * 10**9]),
        NONE,
        NONE,
    ),
    # the clock set to a key's expiry, a nanosecond before or after
    st.tuples(st.just("to_expiry"), st.sampled_from(KEYS), st.sampled_from([-1, 0, 1]), NONE),
    st.tuples(
        st.sampled_from(["expire", "checkpoint", "reopen", "replay", "sync", "audit"]),
        NONE,
        NONE,
        NONE,
    ),
)


class Clock:
    def __init__(self) -> None:
        self.ns = T0

    def now_ns(self) -> int:
        return self.ns


class PeerClock:
    """The peer's clock: the latest reading of the shared one (never behind an event
    it is sent by more than the ticks allow)."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.top = clock, clock.ns

    def now_ns(self) -> int:
        self.top = max(self.top, self.clock.ns)
        return self.top


async def _value(read: Any) -> Any:
    try:
        return await read
    except (koru.KeyNotFoundError, koru.NoValueAtTimeError):
        return "ABSENT"


async def _agree(db: koru.Database, live: dict[str, Any], model: dict[str, Any]) -> None:
    """Every read path of ``db`` shows exactly ``live``."""
    for k in KEYS:
        assert await _value(db.get(NS, k)) == live.get(k, "ABSENT"), k
        try:
            assert db.get_nowait(NS, k) == live[k], k
        except trio.WouldBlock:
            pass
        except koru.KeyNotFoundError:
            assert k not in live, k
        assert await db.contains(NS, k) == (k in live), k
        if k in live:
            versioned = await db.get_versioned(NS, k)
            assert (versioned.value, versioned.expires) == (live[k], model[k][1])
    assert await db.keys(NS) == sorted(live)
    assert (NS in await db.namespaces()) == bool(live)
    assert {r.key: r.value for r in await db.query(NS, Query())} == live
    for v in range(4):  # through the index on v
        rows = await db.query(NS, Query().where(F("v") == v))
        assert [r.key for r in rows] == sorted(k for k, d in live.items() if d["v"] == v)
    assert await db.view("count") == len(live)
    assert {r.key: r.value for r in await db.view("all")} == live


@settings(max_examples=60, suppress_health_check=list(HealthCheck))
@given(st.lists(OPS, min_size=3, max_size=30))
@example([("put", "a", 0, 1), ("tick", 2 * 10**9, None, None), ("delete", "a", None, None)])
def test_every_read_agrees_with_a_model_of_expiring_values(ops: list[Any]) -> None:
    async def main(path: Path) -> None:
        clock = Clock()
        model: dict[str, tuple[Any, int | None]] = {}  # key -> (value, expires)
        past: dict[tuple[str, int], Any] = {}  # (key, moment) -> get_at's answer

        def opening() -> Any:
            return koru.open(path, clock=clock, sync="never", processes=False, checkpoint_every=5)

        def read_time() -> int:  # what Writer.read_time will say
            w = db._writer
            return max(clock.ns, w.hlc.last, w.read_floor)

        peer_clock = PeerClock(clock)
        async with koru.open(":memory:", clock=peer_clock, sync="never", processes=False) as peer:
            cm = opening()
            db = await cm.__aenter__()
            try:
                await db.create_index(NS, "v")
                await db.create_view("count", NS, Query().count())
                await db.create_view("all", NS, Query())
                for kind, a, b, ttl in ops:
                    if kind == "put":
                        floor = db._writer.read_floor
                        v = await db.put(NS, a, {"v": b}, ttl=ttl)
                        versions = [v]
                    elif kind == "batch":
                        floor = db._writer.read_floor
                        versions = await db.put_batch([(NS, k, {"v": b}) for k in a], ttl=ttl)
                    if kind in ("put", "batch"):
                        for v in versions:
                            expires = (
                                None
                                if ttl is None
                                else max(v.timestamp, floor) + max(1, int(ttl * 1e9))
                            )
                            assert v.expires == expires
                            model[v.key] = ({"v": b}, expires)
                    elif kind == "delete":
                        now = read_time()
                        expires = model.get(a, (None, None))[1]
                        if a in model and (expires is None or now < expires):
                            await db.delete(NS, a)
                            del model[a]
                        else:
                            try:
                                await db.delete(NS, a)
                                raise AssertionError("deleted a key with no current value")
                            except koru.KeyNotFoundError:
                                pass
                    elif kind == "tick":
                        clock.ns += a
                    elif kind == "to_expiry":
                        expires = model.get(a, (None, None))[1]
                        if expires is not None:
                            clock.ns = expires + b
                    elif kind == "expire":  # judged by the timestamps its tombstones take
                        now = max(clock.ns, db._writer.hlc.last + 1)
                        await steps(db)["expiry"]()
                        for k, (_, expires) in list(model.items()):
                            if expires is not None and expires <= now:
                                del model[k]
                    elif kind == "checkpoint":
                        await db.checkpoint()
                    elif kind in ("reopen", "replay"):
                        await cm.__aexit__(None, None, None)
                        if kind == "replay":
                            (path / "checkpoint").unlink(missing_ok=True)
                        cm = opening()
                        db = await cm.__aenter__()
                    elif kind == "sync":
                        for agent in ("storage", "perspective"):
                            await peer.ingest(await db.feed_events(db.node_id, agent))
                        assert await peer.digest() == await db.digest()
                        w = peer._writer
                        now = max(peer_clock.now_ns(), w.hlc.last, w.read_floor)
                        for k in KEYS:
                            expires = model.get(k, (None, None))[1]
                            alive = k in model and (expires is None or now < expires)
                            wanted = model[k][0] if alive else "ABSENT"
                            assert await _value(peer.get(NS, k)) == wanted
                    elif kind == "audit":
                        await db.checkpoint()
                        store = FileStore(path, readonly=True)
                        try:
                            assert audit_checkpoint(store)[0] == []
                        finally:
                            store.close()
                        assert koru.replay(path).digest == await db.digest()
                    now = read_time()
                    live = {
                        k: d
                        for k, (d, expires) in model.items()
                        if expires is None or now < expires
                    }
                    await _agree(db, live, model)
                    for (k, t), answer in past.items():
                        found = await _value(db.get_at(NS, k, t))
                        assert getattr(found, "value", found) == answer, (k, t)
                    last = db._writer.hlc.last
                    for k in KEYS:
                        for t in (last, last - 1, last - 5 * 10**8):
                            if len(past) < 200 and (k, t) not in past:
                                found = await _value(db.get_at(NS, k, t))
                                past[(k, t)] = getattr(found, "value", found)
            finally:
                await cm.__aexit__(None, None, None)

    directory = Path(tempfile.mkdtemp())
    try:
        trio.run(main, directory / "db")
    finally:
        shutil.rmtree(directory)
