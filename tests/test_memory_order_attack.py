"""KvState._memory_order: the memory layer's key order, kept between listings, against a
model, under puts, deletes, ttl expiry, checkpoints (which freeze the layer), merges of
tables, a peer's ingested events and listings taken mid-way (h-corners).

Every listing path is compared after every step: ``db.keys`` (sorted again at the
end), a served listing (``ANSWER_BYTES`` set: ``live_keys`` under the bound), the raw
``live_keys`` stream (in UTF-8 order, never sorted again, so a wrong or stale memory
order shows) and ``items`` (every key ever written, each once, in order: a merge of
out-of-order sources would repeat or drop keys)."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import koru
from koru._reads import ANSWER_BYTES

SECOND = 10**9
START = 1_767_225_600 * SECOND
NAMESPACES = ["n", "m"]
KEYS = ["a", "a\x00", "b", "é", "\ud7ff", "\ue000", "\U0001f600", "z" * 40, "k1", "k10", "k2"]


class Clock:
    """One clock for both nodes, moved by hand, one microsecond per reading."""

    def __init__(self) -> None:
        self.now = START + SECOND // 2
        self.second = 0

    def now_ns(self) -> int:
        self.now += 1_000
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds * SECOND
        self.second += seconds


OPS = st.one_of(
    st.tuples(
        st.sampled_from(["put", "peer_put"]),
        st.sampled_from(NAMESPACES),
        st.sampled_from(KEYS),
        st.sampled_from([None, None, 1, 2]),
    ),
    st.tuples(
        st.sampled_from(["delete", "peer_delete", "mid_listing"]),
        st.sampled_from(NAMESPACES),
        st.sampled_from(KEYS),
    ),
    st.tuples(st.sampled_from(["checkpoint", "compact", "ingest", "reopen"])),
    st.tuples(st.just("advance"), st.integers(1, 2)),
)


class Model:
    """Each key's versions as (stamp, alive, expiring second or None), received or not."""

    def __init__(self) -> None:
        self.stamp = 0
        self.received: dict[tuple[str, str], list[tuple[int, bool, int | None]]] = {}
        self.pending: list[tuple[tuple[str, str], tuple[int, bool, int | None]]] = []
        self.peer: dict[tuple[str, str], bool] = {}

    def version(self, alive: bool, ttl: int | None, clock: Clock) -> tuple[int, bool, int | None]:
        self.stamp += 1
        return (self.stamp, alive, None if ttl is None else clock.second + ttl)

    def receive(self, slot: tuple[str, str], version: tuple[int, bool, int | None]) -> None:
        self.received.setdefault(slot, []).append(version)

    def live(self, ns: str, second: int) -> list[str]:
        out = []
        for (n, k), versions in self.received.items():
            _, alive, until = max(versions)
            if n == ns and alive and (until is None or second < until):
                out.append(k)
        return sorted(out)

    def written(self, ns: str) -> list[str]:
        return sorted(k for (n, k) in self.received if n == ns)


def _increasing(keys: list[str]) -> bool:
    encoded = [k.encode() for k in keys]
    return all(a < b for a, b in itertools.pairwise(encoded))


async def _check(db: koru.Database, model: Model, clock: Clock) -> None:
    kv = db._reads.kv
    for ns in NAMESPACES:
        expected = model.live(ns, clock.second)
        assert await db.keys(ns) == expected, ns
        token = ANSWER_BYTES.set(1 << 30)
        try:
            assert db._reads.keys(ns) == expected, ns
        finally:
            ANSWER_BYTES.reset(token)
        now = db._writer.read_time()
        assert list(kv.live_keys(ns, now)) == expected, ns
        written = [k for k, _ in kv.items(ns)]
        assert written == model.written(ns), ns
        assert _increasing(written)


async def _run(ops: list[tuple[Any, ...]], path: Path) -> None:
    clock = Clock()
    model = Model()

    def opened() -> Any:
        return koru.open(path, clock=clock, sync="never", processes=False, checkpoint_every=5)

    segments: list[list[tuple[Any, ...]]] = [[]]
    for op in ops:
        if op[0] == "reopen":
            segments.append([])
        else:
            segments[-1].append(op)
    synced = 0
    async with koru.open(":memory:", clock=clock, sync="never", processes=False) as peer:
        for segment in segments:  # each after a reopen of the file
            async with koru.open(
                path, clock=clock, sync="never", processes=False, checkpoint_every=5
            ) as db:
                db._reads.kv.max_tables = 2
                await _check(db, model, clock)
                for op in segment:
                    synced = await _step(db, peer, model, clock, op, synced)
                    await _check(db, model, clock)


async def _step(
    db: koru.Database,
    peer: koru.Database,
    model: Model,
    clock: Clock,
    op: tuple[Any, ...],
    synced: int,
) -> int:
    kind = op[0]
    if kind in ("put", "peer_put"):
        _, ns, key, ttl = op
        await (db if kind == "put" else peer).put(ns, key, 1, ttl=ttl)
        version = model.version(True, ttl, clock)
        if kind == "put":
            model.receive((ns, key), version)
        else:
            model.pending.append(((ns, key), version))
    elif kind == "delete":
        _, ns, key = op
        if await db.contains(ns, key):
            await db.delete(ns, key)
            model.receive((ns, key), model.version(False, None, clock))
    elif kind == "peer_delete":
        _, ns, key = op
        if await peer.contains(ns, key):
            await peer.delete(ns, key)
            model.pending.append(((ns, key), model.version(False, None, clock)))
    elif kind == "ingest":
        events = await peer.feed_events(peer.node_id, after=synced)
        synced += len(events)
        result = await db.ingest(events)
        assert not result.refused and not result.held, result
        for slot, version in model.pending:
            model.receive(slot, version)
        model.pending.clear()
    elif kind == "mid_listing":
        # A listing walked part way, then a write of a new key, then the rest of the
        # walk: still in order, each key once (the order it walks is not changed
        # under it).
        _, ns, key = op
        walk = db._reads.kv.items(ns)
        first = next(walk, None)
        fresh = f"{key}~{model.stamp}"
        await db.put(ns, fresh, 1)
        model.receive((ns, fresh), model.version(True, None, clock))
        rest = [k for k, _ in walk]
        shown = ([] if first is None else [first[0]]) + rest
        assert _increasing(shown), shown
    elif kind == "checkpoint":
        await db.checkpoint()
    elif kind == "compact":
        await db._checkpointer.compact()
    elif kind == "advance":
        clock.advance(op[1])
    return synced


@settings(max_examples=100, suppress_health_check=list(HealthCheck))
@given(st.lists(OPS, min_size=1, max_size=40))
def test_memory_order_against_a_model(ops: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        trio.run(_run, ops, Path(directory) / "db")


WRITER = r"""
import sys, trio, koru

async def main(path, n):
    async with koru.open(path, sync="os", processes=False, checkpoint_every=7) as db:
        db._reads.kv.max_tables = 2
        print("ready", flush=True)
        for i in range(n):
            await db.put("n", f"k{i:05}", i)
            if i >= 10:
                await db.delete("n", f"k{i - 10:05}")
            if i % 13 == 0:
                await db.checkpoint()
            if i % 29 == 0:
                await db._checkpointer.compact()
            await trio.sleep(0.0005)

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def _a_window(keys: list[str]) -> bool:
    """Keys k<i>..k<j> with no gap, at most 11 of them (the writer's states)."""
    numbers = [int(k[1:]) for k in keys]
    return len(numbers) <= 11 and numbers == list(range(numbers[0], numbers[0] + len(numbers)))


async def _read_once(path: Path) -> None:
    """One read-only open's listings and one Snapshot's, each a state of the writer."""
    from koru._snapshot import Snapshot

    async with koru.open(path, readonly=True, processes=False) as reader:
        keys = await reader.keys("n")
        assert not keys or _a_window(keys), keys
        assert _increasing([k for k, _ in reader._reads.kv.items("n")])
    with Snapshot(path) as one:
        keys = one.reads.keys("n")
        assert not keys or _a_window(keys), keys


def test_a_readonly_process_lists_keys_while_the_writer_writes_and_checkpoints(
    tmp_path: Path,
) -> None:
    """A second process opening the directory read-only (and a one-shot Snapshot)
    while the writer puts, deletes, checkpoints and merges tables: every listing is
    one state the writer was in (a window of consecutive keys), in order."""
    import subprocess
    import sys

    path = tmp_path / "db"
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "700"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,  # (not the checkout: `import koru` would find its folder)
    ) as writer:
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == "ready"
            listings = 0
            while writer.poll() is None:
                trio.run(_read_once, path)
                listings += 1
            assert writer.wait(timeout=30) == 0
            assert listings >= 3
        finally:
            if writer.poll() is None:
                writer.kill()

    async def last() -> list[str]:
        async with koru.open(path, readonly=True, processes=False) as reader:
            return await reader.keys("n")

    assert trio.run(last) == [f"k{i:05}" for i in range(690, 700)]
