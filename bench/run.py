#!/usr/bin/env python
"""koru-delta benchmark: koru against a reference (mostly sqlite3) on the same machine.

Usage::

    python bench/run.py                 # full run (a few minutes)
    python bench/run.py --quick         # smoke run with small sizes (< 60 s)
    python bench/run.py --only put_os,get --json bench/results.json

Every koru measurement is paired with its reference measured in the same run,
interleaved round by round (koru, reference, koru, reference, ...); each side's figure
is the median of its rounds. See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from operator import sub
from pathlib import Path
from typing import Any

import cbor2
import trio

import koru

GROUPS = (
    "put_always",
    "put_os",
    "put_never",
    "concurrent",
    "get",
    "history",
    "get_at",
    "open",
    "cli",
    "memory",
    "tiers",
    "capture",
    "ttl",
    "query_scan",
    "query_index",
    "views",
    "subscriptions",
    "spaces",
    "auth_verify",
    "auth_chain",
    "auth_get",
    "auth_mine",
    "vectors",
)
NS = "users"
CONCURRENT_TARGET = 40_000.0
OPEN_TARGET_S = 1.0
REPLAY_TARGET = 200_000.0
#: Speed (#14): a history of 1,000 versions in at most 1 ms; get_at in at most half
#: sqlite3's time.
HISTORY_TARGET_MS = 1.0
GET_AT_TARGET = 0.5
MEMORY_TARGET = 1024.0

perf = time.perf_counter


def value(i: int) -> dict[str, Any]:
    return {"name": f"user{i}", "age": i % 90, "active": True}


# -- configuration and results ---------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    rounds: int  # interleaved rounds per throughput measurement
    round_s: float  # seconds per side per round
    get_keys: int
    versions: int  # versions of the history / get_at key
    open_keys: int
    open_versions: int
    open_reps: int  # opens with a checkpoint (median)
    replay_reps: int  # opens without a checkpoint (median)
    memory_keys: int
    cli_runs: int  # kdelta get processes (and as many sqlite3 ones)
    big_keys: int  # keys of 1 KB for the tiers group (and ten times as many events)
    latency_events: int  # puts whose every wait is measured
    query_docs: int  # documents in the query benchmarks
    vectors: int = 100_000  # embeddings of 384 dimensions
    vector_queries: int = 1_000
    bulk_batches: int = 3_000  # batches of 1,000 writes in the tiers group's bulk load


FULL = Sizes(5, 0.4, 100_000, 1_000, 100_000, 10, 3, 2, 200_000, 100, 1_000_000, 1_000_000, 100_000)
QUICK = Sizes(
    2, 0.12, 10_000, 1_000, 10_000, 10, 2, 1, 20_000, 10, 20_000, 20_000, 10_000, 10_000, 200, 100
)


@dataclass
class Row:
    workload: str
    koru: float
    reference: float
    unit: str
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        return self.koru / self.reference if self.reference else float("nan")


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.workload}: koru {fmt(row.koru)} / ref {fmt(row.reference)} {row.unit}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}")

    def target(
        self, what: str, measured: float, target: float, unit: str, *, at_least: bool
    ) -> None:
        ok = measured >= target if at_least else measured <= target
        sign = ">=" if at_least else "<="
        verdict = "MET" if ok else "MISSED"
        self.note(f"target {what} {sign} {fmt(target)} {unit}: {fmt(measured)} -> {verdict}")


def fmt(x: float) -> str:
    if x != x:  # NaN
        return "-"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def render(rows: list[Row]) -> str:
    header = ("workload", "koru", "reference", "ratio koru/reference", "unit")
    cells = [header]
    for r in rows:
        cells.append((r.workload, fmt(r.koru), fmt(r.reference), f"{r.ratio:.2f}", r.unit))
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for n, c in enumerate(cells):
        parts = [c[0].ljust(widths[0])]
        parts += [c[i].rjust(widths[i]) for i in (1, 2, 3)]
        parts.append(c[4].ljust(widths[4]))
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- timing helpers --------------------------------------------------------------------

CHUNK = 64


async def _rate_async(
    batch: Callable[[int], Awaitable[None]], seconds: float, chunk: int = CHUNK
) -> float:
    ops, began = 0, perf()
    while True:
        await batch(chunk)
        ops += chunk
        elapsed = perf() - began
        if elapsed >= seconds:
            return ops / elapsed


def _rate_sync(batch: Callable[[int], None], seconds: float, chunk: int = CHUNK) -> float:
    ops, began = 0, perf()
    while True:
        batch(chunk)
        ops += chunk
        elapsed = perf() - began
        if elapsed >= seconds:
            return ops / elapsed


def _awaitable(batch: Callable[[int], None]) -> Callable[[int], Awaitable[None]]:
    async def run(n: int) -> None:
        batch(n)

    return run


async def interleave(
    sizes: Sizes,
    koru_batch: Callable[[int], Awaitable[None]],
    *refs: Callable[[int], None],
    chunk: int = CHUNK,
) -> list[float]:
    """Median ops/s of koru and of each reference, measured in alternating rounds.

    Each callable runs ``chunk`` operations per call; the clock is read between calls.
    """
    rates: list[list[float]] = [[] for _ in range(1 + len(refs))]
    for _ in range(sizes.rounds):
        rates[0].append(await _rate_async(koru_batch, sizes.round_s, chunk))
        for i, ref in enumerate(refs, 1):
            rates[i].append(_rate_sync(ref, sizes.round_s, chunk))
    return [statistics.median(r) for r in rates]


# -- references ------------------------------------------------------------------------


def sqlite_kv(path: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS kv (ns TEXT, key TEXT, value BLOB, PRIMARY KEY (ns, key))"
    )
    conn.commit()
    return conn


def sqlite_versions(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS versions (ns TEXT, key TEXT, seq INTEGER, ts INTEGER, "
        "value BLOB, PRIMARY KEY (ns, key, seq))"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS versions_ts ON versions (ns, key, ts)")
    conn.commit()
    return conn


def sqlite_put_batch(conn: sqlite3.Connection, counter: list[int]) -> Callable[[int], None]:
    def batch(n: int) -> None:
        i = counter[0]
        for j in range(i, i + n):
            conn.execute(
                "INSERT OR REPLACE INTO kv VALUES (?, ?, ?)",
                (NS, f"u{j}", json.dumps(value(j)).encode()),
            )
            conn.commit()
        counter[0] = i + n

    return batch


def lmdb_env(path: Path) -> Any:
    """An lmdb environment (the native store the Speed issue measures against), or
    None when lmdb is not installed (``pip install -e ".[bench]"``). Writes are not
    synced, like ``sync="os"``: the operating system has them, not the disk."""
    try:
        import lmdb
    except ImportError:
        return None
    return lmdb.open(str(path), map_size=1 << 32, sync=False, metasync=False, lock=True)


def lmdb_put_batch(env: Any, counter: list[int]) -> Callable[[int], None]:
    """One transaction per put, values in cbor2 (as the Speed issue measures it)."""

    def batch(n: int) -> None:
        i = counter[0]
        for j in range(i, i + n):
            with env.begin(write=True) as txn:
                txn.put(f"{NS}/u{j}".encode(), cbor2.dumps(value(j)))
        counter[0] = i + n

    return batch


def fsync_batch(fd: int) -> Callable[[int], None]:
    record = b"r" * 92 + b"\n" * 8  # ~100 bytes, like one small koru record

    def batch(n: int) -> None:
        for _ in range(n):
            os.write(fd, record)
            os.fdatasync(fd)

    return batch


# -- workloads -------------------------------------------------------------------------


def koru_put_batch(db: koru.Database, counter: list[int]) -> Callable[[int], Awaitable[None]]:
    async def batch(n: int) -> None:
        i = counter[0]
        for j in range(i, i + n):
            await db.put(NS, f"u{j}", value(j))
        counter[0] = i + n

    return batch


async def bench_put(mode: str, sizes: Sizes, tmp: Path, report: Report) -> None:
    kdir = tmp / f"put_{mode}"
    synchronous = "FULL" if mode == "always" else "NORMAL"
    conn = sqlite_kv(str(tmp / f"put_{mode}.sqlite"), synchronous)
    refs = [sqlite_put_batch(conn, [0])]
    env = lmdb_env(tmp / f"put_{mode}.lmdb") if mode == "os" else None
    if env is not None:
        refs.append(lmdb_put_batch(env, [0]))
    fd = -1
    if mode == "always":
        fd = os.open(tmp / "fsync.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        refs.append(fsync_batch(fd))
    try:
        async with koru.open(kdir, sync=mode) as db:  # type: ignore[arg-type]
            rates = await interleave(sizes, koru_put_batch(db, [0]), *refs)
            syncs, events = (await db.stats()).syncs, (await db.stats()).events
    finally:
        conn.close()
        if fd >= 0:
            os.close(fd)
        if env is not None:
            env.close()
    report.add(Row(f"put sync={mode} vs sqlite {synchronous}", rates[0], rates[1], "puts/s"))
    if mode == "os":
        if env is None:
            report.note("lmdb not installed: no lmdb rows (pip install -e '.[bench]')")
        else:
            report.add(Row("put sync=os vs lmdb, one txn per put", rates[0], rates[2], "puts/s"))
            report.target("put sync=os vs lmdb", rates[0] / rates[2], 0.5, "x", at_least=True)
            report.target("put sync=os vs sqlite", rates[0] / rates[1], 2.0, "x", at_least=True)
    if mode == "always":
        report.add(Row("put sync=always vs raw write+fdatasync", rates[0], rates[2], "puts/s"))
        report.note(
            f"put sync=always: {events:,} puts used {syncs:,} fsyncs "
            f"({events / max(syncs, 1):.2f} puts per fsync)"
        )


async def bench_concurrent(sizes: Sizes, tmp: Path, report: Report) -> None:
    writers = 16
    fd = os.open(tmp / "fsync16.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    ref = fsync_batch(fd)
    koru_rates: list[float] = []
    ref_rates: list[float] = []
    puts = 0
    try:
        async with koru.open(tmp / "concurrent", sync="always") as db:
            for r in range(sizes.rounds):
                done = [0] * writers
                deadline = perf() + sizes.round_s

                async def writer(
                    w: int, r: int = r, done: list[int] = done, deadline: float = deadline
                ) -> None:
                    i = 0
                    while perf() < deadline:
                        await db.put(NS, f"r{r}w{w}k{i}", value(i))
                        i += 1
                    done[w] = i

                began = perf()
                async with trio.open_nursery() as nursery:
                    for w in range(writers):
                        nursery.start_soon(writer, w)
                koru_rates.append(sum(done) / (perf() - began))
                puts += sum(done)
                ref_rates.append(_rate_sync(ref, sizes.round_s))
            stats = await db.stats()
    finally:
        os.close(fd)
    k, ref_rate = statistics.median(koru_rates), statistics.median(ref_rates)
    report.add(Row("put 16 writers sync=always vs raw fdatasync", k, ref_rate, "puts/s"))
    report.note(
        f"16 writers: {puts:,} puts in {stats.events:,} events, {stats.syncs:,} fsyncs "
        f"({puts / max(stats.syncs, 1):.1f} puts per fsync)"
    )
    report.target("16-writer sync=always throughput", k, CONCURRENT_TARGET, "puts/s", at_least=True)


async def bench_get(sizes: Sizes, tmp: Path, report: Report) -> None:
    n = sizes.get_keys
    conn = sqlite_kv(str(tmp / "get.sqlite"), "NORMAL")
    conn.executemany(
        "INSERT INTO kv VALUES (?, ?, ?)",
        ((NS, f"u{i}", json.dumps(value(i)).encode()) for i in range(n)),
    )
    conn.commit()
    order = [f"u{i}" for i in range(n)]
    random.Random(42).shuffle(order)
    try:
        async with koru.open(tmp / "get", sync="never") as db:
            for i in range(n):
                await db.put(NS, f"u{i}", value(i))
            before = await db.stats()
            kpos = [0]
            spos = [0]

            async def kbatch(m: int) -> None:
                p = kpos[0]
                for j in range(p, p + m):
                    await db.get(NS, order[j % n])
                kpos[0] = p + m

            def sbatch(m: int) -> None:
                p = spos[0]
                for j in range(p, p + m):
                    row = conn.execute(
                        "SELECT value FROM kv WHERE ns = ? AND key = ?", (NS, order[j % n])
                    ).fetchone()
                    json.loads(row[0])
                spos[0] = p + m

            def nbatch(m: int) -> None:
                p = kpos[0]
                get_nowait = db.get_nowait
                for j in range(p, p + m):
                    get_nowait(NS, order[j % n])
                kpos[0] = p + m

            env = lmdb_env(tmp / "get.lmdb")
            refs = [sbatch]
            if env is not None:
                with env.begin(write=True) as txn:
                    for i in range(n):
                        txn.put(f"{NS}/u{i}".encode(), cbor2.dumps(value(i)))

                def lbatch(m: int) -> None:
                    # A read transaction per get: each call an independent read, as a
                    # koru get is (one transaction over many reads runs about 3x faster).
                    p = spos[0]
                    begin = env.begin
                    for j in range(p, p + m):
                        with begin() as txn:
                            cbor2.loads(txn.get(f"{NS}/{order[j % n]}".encode()))
                    spos[0] = p + m

                refs.append(lbatch)
            k, s, *lm = await interleave(sizes, kbatch, *refs)
            after = await db.stats()
            nowait = (await interleave(sizes, _awaitable(nbatch)))[0]
    finally:
        conn.close()
    report.add(Row(f"get ({n:,} keys, random) vs sqlite", k, s, "gets/s"))
    if env is not None:
        env.close()
        report.add(Row("get vs lmdb (cbor2 values)", k, lm[0], "gets/s"))
        report.add(Row("get_nowait vs lmdb (cbor2 values)", nowait, lm[0], "gets/s"))
        report.target("hot get_nowait vs lmdb", nowait / lm[0], 1.0, "x", at_least=True)
    hits = after.cache_hits - before.cache_hits
    misses = after.cache_misses - before.cache_misses
    report.note(f"get: value cache hits {hits:,}, misses {misses:,} during the measurement")


async def bench_history_get_at(sizes: Sizes, tmp: Path, report: Report, which: set[str]) -> None:
    nv = sizes.versions
    name = "_".join(sorted(which))
    conn = sqlite_versions(str(tmp / f"{name}.sqlite"))
    try:
        async with koru.open(tmp / name, sync="never") as db:
            for i in range(nv):
                await db.put(NS, "hot", value(i))
            stamps = [v.timestamp for v in await db.history(NS, "hot")]
            assert len(stamps) == nv, len(stamps)
            conn.executemany(
                "INSERT INTO versions VALUES (?, ?, ?, ?, ?)",
                ((NS, "hot", i, stamps[i], json.dumps(value(i)).encode()) for i in range(nv)),
            )
            conn.commit()

            if "history" in which:

                async def kh(m: int) -> None:
                    for _ in range(m):
                        await db.history(NS, "hot")

                def sh(m: int) -> None:
                    for _ in range(m):
                        rows = conn.execute(
                            "SELECT seq, ts, value FROM versions WHERE ns = ? AND key = ? "
                            "ORDER BY seq",
                            (NS, "hot"),
                        ).fetchall()
                        [(seq, ts, json.loads(v)) for seq, ts, v in rows]

                k, s = await interleave(sizes, kh, sh, chunk=1)
                report.add(
                    Row(
                        f"history ({nv:,} versions) vs sqlite",
                        1e3 / k,
                        1e3 / s,
                        "ms/call",
                        higher_is_better=False,
                    )
                )
                report.target(
                    f"history of {nv:,} versions", 1e3 / k, HISTORY_TARGET_MS, "ms", at_least=False
                )

                # The same, of 16 keys in turn: more than the prepared histories kept
                # (8), so every call builds its history (a first read, or one after a
                # write to the key).
                turns = [f"turn{j}" for j in range(16)]
                for i in range(nv):
                    for t in turns:
                        await db.put(NS, t, value(i))
                conn.executemany(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?)",
                    (
                        (NS, t, i, i, json.dumps(value(i)).encode())
                        for i in range(nv)
                        for t in turns
                    ),
                )
                conn.commit()
                kturn, sturn = [0], [0]

                async def kt(m: int) -> None:
                    p = kturn[0]
                    for j in range(p, p + m):
                        await db.history(NS, turns[j & 15])
                    kturn[0] = p + m

                def st(m: int) -> None:
                    p = sturn[0]
                    for j in range(p, p + m):
                        rows = conn.execute(
                            "SELECT seq, ts, value FROM versions WHERE ns = ? AND key = ? "
                            "ORDER BY seq",
                            (NS, turns[j & 15]),
                        ).fetchall()
                        [(seq, ts, json.loads(v)) for seq, ts, v in rows]
                    sturn[0] = p + m

                k, s = await interleave(sizes, kt, st, chunk=1)
                report.add(
                    Row(
                        f"history ({nv:,} versions, 16 keys in turn) vs sqlite",
                        1e3 / k,
                        1e3 / s,
                        "ms/call",
                        higher_is_better=False,
                    )
                )
                report.target(
                    f"history of {nv:,} versions, a first read",
                    1e3 / k,
                    HISTORY_TARGET_MS,
                    "ms",
                    at_least=False,
                )

            if "get_at" in which:
                rng = random.Random(7)
                lo, hi = stamps[0], stamps[-1]
                times = [rng.randint(lo, hi) for _ in range(4096)]
                kpos, spos = [0], [0]

                async def ka(m: int) -> None:
                    p = kpos[0]
                    for j in range(p, p + m):
                        await db.get_at(NS, "hot", times[j & 4095])
                    kpos[0] = p + m

                def sa(m: int) -> None:
                    p = spos[0]
                    for j in range(p, p + m):
                        row = conn.execute(
                            "SELECT value FROM versions WHERE ns = ? AND key = ? AND ts <= ? "
                            "ORDER BY ts DESC LIMIT 1",
                            (NS, "hot", times[j & 4095]),
                        ).fetchone()
                        json.loads(row[0])
                    spos[0] = p + m

                # Same answers from both (spot check).
                for t in times[:50]:
                    got = (await db.get_at(NS, "hot", t)).value
                    row = conn.execute(
                        "SELECT value FROM versions WHERE ns = ? AND key = ? AND ts <= ? "
                        "ORDER BY ts DESC LIMIT 1",
                        (NS, "hot", t),
                    ).fetchone()
                    if got != json.loads(row[0]):
                        report.note(f"get_at MISMATCH at {t}: koru {got} vs sqlite {row[0]!r}")
                        break
                k, s = await interleave(sizes, ka, sa)
                report.add(
                    Row(
                        f"get_at ({nv:,} versions, random t) vs sqlite",
                        1e6 / k,
                        1e6 / s,
                        "µs/call",
                        higher_is_better=False,
                    )
                )
                report.target("get_at time vs sqlite", s / k, GET_AT_TARGET, "x", at_least=False)
    finally:
        conn.close()


def _link_copy(src: Path, dst: Path, skip: str) -> None:
    """Copy a database directory with hard links (a plain copy if links fail)."""
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            if rel == Path(".") and f in (skip, "LOCK"):
                continue
            try:
                os.link(Path(root) / f, dst / rel / f)
            except OSError:
                shutil.copy2(Path(root) / f, dst / rel / f)


async def _timed_open(path: Path) -> tuple[float, koru.Stats, float]:
    began = perf()
    async with koru.open(path, sync="never") as db:
        opened = perf() - began
        stats = await db.stats()
        closing = perf()
    return opened, stats, perf() - closing


def _sqlite_open_count(path: str) -> float:
    began = perf()
    conn = sqlite3.connect(path)
    n = conn.execute("SELECT count(*) FROM versions").fetchone()[0]
    took = perf() - began
    conn.close()
    assert n > 0
    return took


def _sqlite_scan(path: str) -> float:
    conn = sqlite3.connect(path)
    began = perf()
    n = 0
    for _ns, _key, _seq, v in conn.execute("SELECT ns, key, seq, value FROM versions"):
        json.loads(v)
        n += 1
    took = perf() - began
    conn.close()
    return n / took


async def bench_open(sizes: Sizes, tmp: Path, report: Report) -> None:
    keys, versions = sizes.open_keys, sizes.open_versions
    events = keys * versions
    label = f"{events / 1e6:g}M" if events >= 1_000_000 else f"{events // 1000}k"
    src = tmp / "open_src"
    # (the cli group builds the same database when it runs first: built afresh here)
    shutil.rmtree(src, ignore_errors=True)
    print(f"  building a {events:,}-event database ({keys:,} keys x {versions} versions) ...")
    worst = 0.0
    began = perf()
    async with koru.open(src, sync="never") as db:
        for v in range(versions):
            for i in range(keys):
                t = perf()
                await db.put(NS, f"u{i}", value(i * versions + v))
                took = perf() - t
                if took > worst:
                    worst = took
        built = await db.stats()
    build_s = perf() - began
    assert built.events == events and built.versions == events, built
    report.note(
        f"open: built {built.events:,} events / {built.versions:,} versions with plain puts "
        f"(sync=never, default checkpoint_every) in {build_s:.1f} s "
        f"({events / build_s:,.0f} puts/s incl. close); slowest single put {worst * 1e3:.0f} ms"
    )
    ckpt = src / "checkpoint"
    report.note(
        f"open: log {sum(p.stat().st_size for p in src.rglob('*.seg')) / 1e6:.0f} MB, "
        f"checkpoint {ckpt.stat().st_size / 1e6:.0f} MB"
    )

    sq = str(tmp / "open.sqlite")
    conn = sqlite_versions(sq)
    conn.execute("DROP INDEX versions_ts")
    conn.executemany(
        "INSERT INTO versions VALUES (?, ?, ?, ?, ?)",
        (
            (NS, f"u{i}", v, v, json.dumps(value(i * versions + v)).encode())
            for v in range(versions)
            for i in range(keys)
        ),
    )
    conn.commit()
    conn.close()

    with_ckpt, sq_open = [], []
    for _ in range(sizes.open_reps):
        opened, stats, _ = await _timed_open(src)
        assert stats.checkpoint_events == events and stats.replayed_events == 0, stats
        with_ckpt.append(opened)
        sq_open.append(_sqlite_open_count(sq))
    k_open, s_open = statistics.median(with_ckpt), statistics.median(sq_open)
    report.add(
        Row(
            f"open {label} events, checkpoint vs sqlite open+count",
            k_open,
            s_open,
            "s",
            higher_is_better=False,
        )
    )

    copy = tmp / "open_nockpt"
    _link_copy(src, copy, skip="checkpoint")
    without, closes, scans = [], [], []
    for _ in range(sizes.replay_reps):
        (copy / "checkpoint").unlink(missing_ok=True)
        opened, stats, closed = await _timed_open(copy)
        assert stats.checkpoint_events == 0 and stats.replayed_events == events, stats
        without.append(opened)
        closes.append(closed)
        sq_open.append(_sqlite_open_count(sq))
        scans.append(_sqlite_scan(sq))
    k_replay = statistics.median(without)
    report.add(
        Row(
            f"open {label} events, no checkpoint vs sqlite open+count",
            k_replay,
            statistics.median(sq_open),
            "s",
            higher_is_better=False,
        )
    )
    rate = events / k_replay
    report.add(
        Row(
            "replay (open, no checkpoint) vs sqlite scan+json",
            rate,
            statistics.median(scans),
            "events/s",
        )
    )
    report.note(
        f"open without checkpoint: closing wrote a new checkpoint in "
        f"{statistics.median(closes):.2f} s (not counted in the open time)"
    )
    report.target(f"open {label} with checkpoint", k_open, OPEN_TARGET_S, "s", at_least=False)
    report.target("replay rate", rate, REPLAY_TARGET, "events/s", at_least=True)


# -- the command line ---------------------------------------------------------------------


async def bench_cli(sizes: Sizes, tmp: Path, report: Report) -> None:
    import cli  # bench/cli.py

    keys, versions = sizes.open_keys, sizes.open_versions
    events = keys * versions
    src = tmp / "open_src"  # the open bench's database, if it ran
    if not (src / "checkpoint").exists():
        print(f"  building a {events:,}-event database ...")
        await cli.build(src, keys, versions, value)
    twin = tmp / "cli.sqlite"
    cli.sqlite_twin(twin, keys, versions, value)
    key = f"u{keys // 2 + 7}"
    k, s = cli.measure(src, twin, key, sizes.cli_runs)
    label = f"{events / 1e6:g}M" if events >= 1_000_000 else f"{events // 1000}k"
    report.add(
        Row(
            f"kdelta get process on {label} events vs python -c sqlite3 select",
            k * 1e3,
            s * 1e3,
            "ms/process",
            higher_is_better=False,
        )
    )
    report.target("kdelta get process", k, cli.KDELTA_TARGET_S, "s", at_least=False)
    report.target(
        "kdelta get vs sqlite3 process", k / s, cli.KDELTA_TARGET_RATIO, "x", at_least=False
    )


# -- tiers: a data set larger than memory keeps -----------------------------------------


async def bench_tiers(sizes: Sizes, tmp: Path, report: Report) -> None:
    import tiers  # bench/tiers.py

    keys = sizes.big_keys
    small, large = tmp / "tiers_1x", tmp / "tiers_10x"
    print(f"  building {keys // 10:,} keys x 10 versions and {keys:,} keys x 10 versions ...")
    b1 = await tiers.build(small, keys // 10, 10, value)
    b10 = await tiers.build(large, keys, 10, value)
    report.note(
        f"tiers: built {keys:,} and {10 * keys:,} events in {b1:.0f} s and {b10:.0f} s "
        f"({10 * keys / b10:,.0f} puts/s)"
    )
    o1 = statistics.median([await tiers.timed_open(small) for _ in range(3)])
    o10 = statistics.median([await tiers.timed_open(large) for _ in range(3)])
    label = f"{10 * keys / 1e6:g}M" if keys >= 100_000 else f"{10 * keys // 1000}k"
    report.add(Row(f"open {label} events vs a tenth of them", o10, o1, "s", False))
    report.target(f"open {label} events", o10, 0.3, "s", at_least=False)
    report.target("open 10x the events", o10 / o1, 3.0, "x", at_least=False)

    big, twin = tmp / "tiers_big", tmp / "tiers_big.sqlite"
    print(f"  building {keys:,} keys of 1 KB ...")
    await tiers.build(big, keys, 1, tiers.big_value)
    tiers.sqlite_table(twin, keys, tiers.big_value)
    empty = tmp / "tiers_empty"
    async with koru.open(empty):
        pass
    base, full = tiers.run_child(empty, 0), tiers.run_child(big, keys)
    grown = (full["after"] - full["before"]) - (base["after"] - base["before"])
    cold_keys = keys - tiers.HOT_KEYS
    report.add(
        Row(
            f"RSS per cold key, {keys:,} keys of 1 KB, hot tier {tiers.HOT_KEYS:,}",
            max(grown, 0) / cold_keys,
            150.0,
            "bytes/key",
            False,
        )
    )
    report.note(f"tiers: resident memory of the open database: {full} (empty: {base})")
    gets = await tiers.get_latencies(big, twin, keys, 20_000)
    for state, what in (("warm", "files in the page cache"), ("dropped", "files dropped from it")):
        k_cold, s_cold = gets[state]
        report.add(
            Row(
                f"get of a cold key vs sqlite3 (same rows), {what}",
                k_cold * 1e6,
                s_cold * 1e6,
                "µs/call",
                False,
            )
        )
        report.target(f"cold get vs sqlite3, {what}", k_cold / s_cold, 3.0, "x", at_least=False)
    k_hot, s_hot = gets["hot"]
    report.add(
        Row("get of a hot key vs sqlite3 (same rows)", k_hot * 1e6, s_hot * 1e6, "µs/call", False)
    )
    report.target("hot get vs sqlite3 (time)", k_hot / s_hot, 0.5, "x", at_least=False)

    began = perf()
    waits, in_os = await tiers.put_latencies(tmp / "tiers_latency", sizes.latency_events)
    took = perf() - began
    gaps = tiers.machine_gaps(took, beside_busy=True)
    report.note(f"tiers: put waits over {len(waits):,} puts: {tiers.summary(waits)}")
    slowest = max(range(len(waits)), key=waits.__getitem__)
    own = array("d", map(sub, waits, in_os))
    report.note(
        f"tiers: the slowest put spent {in_os[slowest] * 1e3:.1f} of its "
        f"{waits[slowest] * 1e3:.1f} ms inside the OS's file calls (a write held back, a "
        f"read from the disk); outside them the slowest put waited "
        f"{max(own) * 1e3:.1f} ms, and {sum(w > 0.01 for w in own)} waited over 10 ms"
    )
    report.add(
        Row(
            "slowest put vs an empty loop's slowest stall beside a busy core",
            max(waits) * 1e3,
            max(gaps, default=1e-3) * 1e3,
            "ms",
            False,
        )
    )
    report.note(
        f"tiers: puts over 10 ms: {sum(w > 0.01 for w in waits)}; over {took:.1f} s right "
        f"after, a loop that only reads the clock, beside a process keeping the other core "
        f"busy (as the worker threads of a checkpoint's writes do), stalled {len(gaps)} "
        f"times over 1 ms, "
        f"{sum(g > 0.01 for g in gaps)} over 10 ms, at most {max(gaps, default=0) * 1e3:.1f} ms"
    )
    one = tiers.run_one_core(tmp / "tiers_latency_1", sizes.latency_events)
    report.note(
        f"tiers: the same puts in a process held to one core: {one['summary']}, "
        f"{one['over_10ms']} over 10 ms; the slowest spent {one['slowest_in_os'] * 1e3:.1f} "
        f"ms in the OS's file calls; outside them the slowest wait was "
        f"{one['slowest_outside_os'] * 1e3:.1f} ms"
    )
    report.target("slowest put", max(waits) * 1e3, 10.0, "ms", at_least=False)

    n = sizes.bulk_batches * tiers.BATCH
    print(f"  bulk load of {n:,} writes in batches of {tiers.BATCH:,} (two child processes) ...")
    kb = tiers.run_bulk(tmp / "tiers_bulk", sizes.bulk_batches, "koru")
    sb = tiers.run_bulk(tmp / "tiers_bulk.sqlite", sizes.bulk_batches, "sqlite")
    rate = n / (kb["loaded"] + kb["closed"])
    report.add(
        Row(
            f"bulk load, {n:,} writes in batches of {tiers.BATCH:,}, vs sqlite3 executemany",
            rate,
            n / (sb["loaded"] + sb["closed"]),
            "writes/s",
        )
    )
    report.add(
        Row(
            "peak RSS growth of that bulk load",
            kb["grown"] / 2**20,
            sb["grown"] / 2**20,
            "MB",
            False,
        )
    )
    report.note(
        f"tiers: bulk load, koru: load {kb['loaded']:.1f} s, close {kb['closed']:.1f} s, slowest "
        f"batch {kb['slowest'] * 1e3:.0f} ms; sqlite3: load {sb['loaded']:.1f} s, slowest batch "
        f"{sb['slowest'] * 1e3:.0f} ms"
    )


# -- queries -----------------------------------------------------------------------------

CITIES = ("Paris", "London", "Berlin", "Rome", "Madrid", "Oslo", "Vienna", "Prague")


#: The pause between two puts of the capture group's client (s): a client writing
#: about 4,000 puts/s, which leaves the sliced checkpoint most of the loop.
_CLIENT_PAUSE = 0.0002


async def _paced_puts(db: koru.Database, first: int, until: trio.Event | int) -> list[float]:
    """Each put's wait (s), putting new keys with a ttl, one ``_CLIENT_PAUSE`` after
    the last, until the event ``until`` is set or ``until`` puts are made. A wait runs
    from when the client meant to put (a loop held by other work delays the start)
    to when the put returned."""
    waits = []
    i = first
    meant = perf()
    while not until.is_set() if isinstance(until, trio.Event) else len(waits) < until:
        await db.put(NS, f"u{i}", value(i), ttl=86_400)
        done = perf()
        waits.append(done - meant)
        i += 1
        meant = done + _CLIENT_PAUSE
        await trio.sleep(_CLIENT_PAUSE)
    return waits


async def bench_capture(sizes: Sizes, tmp: Path, report: Report) -> None:
    """The slowest put while a checkpoint of many keys with a ttl and an index of as
    many entries is written: its capture runs on the event loop without yielding
    (the state and the log cursors must agree), so it was a stall of every put. The
    reference: the slowest of as many puts with no checkpoint running."""
    n = 2 * sizes.get_keys
    async with koru.open(tmp / "capture", sync="os", checkpoint_every=10**9) as db:
        await db.create_index(NS, "age")
        for start in range(0, n, 1_000):
            batch = range(start, min(n, start + 1_000))
            await db.put_batch([(NS, f"u{i}", value(i)) for i in batch], ttl=86_400)
        await db.checkpoint()
        worst, quiet = [], []
        for r in range(sizes.rounds):
            await db.put_batch([(NS, f"u{i}", value(i)) for i in range(1_000)], ttl=86_400)
            done = trio.Event()
            waits: list[float] = []

            async def client(
                done: trio.Event = done, waits: list[float] = waits, first: int = n + 10**6 * r
            ) -> None:
                waits.extend(await _paced_puts(db, first, done))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client)
                await trio.sleep(0.01)
                await db.checkpoint()
                done.set()
            worst.append(max(waits))
            alone = await _paced_puts(db, n + 10**6 * r + 500_000, len(waits))
            quiet.append(max(alone))
    k, ref = statistics.median(worst) * 1e3, statistics.median(quiet) * 1e3
    label = f"{n // 1000:,}k"
    report.add(
        Row(f"slowest put during a checkpoint, {label} ttl keys + index", k, ref, "ms", False)
    )
    report.target("slowest put during a checkpoint", k, 10.0, "ms", at_least=False)


async def bench_ttl(sizes: Sizes, tmp: Path, report: Report) -> None:
    """A database of many keys with a time to live, as a cache or a session store
    holds: its open with a checkpoint (the keys' expiry times are listed in it), and
    the expiry process's step when nothing is due yet (what it holds the loop for,
    once a minute). References: sqlite3's open and count of the same rows, and its
    indexed query of the rows due."""
    from koru._processes import steps

    n = sizes.open_keys * 10
    path = tmp / "ttl"
    async with koru.open(path, sync="never") as db:
        for start in range(0, n, 1_000):
            batch = range(start, min(n, start + 1_000))
            await db.put_batch([(NS, f"s{i}", value(i)) for i in batch], ttl=30 * 86_400)
    sq = str(tmp / "ttl.sqlite")
    conn = sqlite3.connect(sq)
    conn.execute("CREATE TABLE kv (ns TEXT, key TEXT, value BLOB, expires INTEGER)")
    conn.execute("CREATE INDEX kv_expires ON kv (expires)")
    conn.executemany(
        "INSERT INTO kv VALUES (?, ?, ?, ?)",
        ((NS, f"s{i}", json.dumps(value(i)).encode(), 2**62 + i) for i in range(n)),
    )
    conn.commit()
    conn.close()

    opens, sq_opens, steps_s, sq_due = [], [], [], []
    for _ in range(sizes.open_reps):
        began = perf()
        async with koru.open(path, sync="never") as db:
            opens.append(perf() - began)
            expiry = steps(db)["expiry"]
            for _ in range(3):
                began = perf()
                await expiry()
                steps_s.append(perf() - began)
        began = perf()
        conn = sqlite3.connect(sq)
        assert conn.execute("SELECT count(*) FROM kv").fetchone()[0] == n
        sq_opens.append(perf() - began)
        for _ in range(3):
            began = perf()
            conn.execute("SELECT ns, key FROM kv WHERE expires <= ?", (2**61,)).fetchall()
            sq_due.append(perf() - began)
        conn.close()
    label = f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n // 1000}k"
    report.add(
        Row(
            f"open {label} keys with a ttl, checkpoint vs sqlite open+count",
            statistics.median(opens),
            statistics.median(sq_opens),
            "s",
            higher_is_better=False,
        )
    )
    report.add(
        Row(
            f"expiry step, {label} ttl keys, none due, vs sqlite indexed query (ms)",
            statistics.median(steps_s) * 1e3,
            statistics.median(sq_due) * 1e3,
            "ms",
            higher_is_better=False,
        )
    )


def document(i: int) -> dict[str, Any]:
    """A query benchmark document: 8 cities, ages 0-89, 1,000 groups."""
    return {
        "name": f"user{i}",
        "age": (i * 7919) % 90,
        "city": CITIES[(i * 31) % 8],
        "group": i % 1000,
        "active": i % 3 != 0,
        "score": (i * 0.37) % 100,
    }


async def query_fixture(
    tmp: Path, name: str, n: int
) -> tuple[contextlib.AbstractAsyncContextManager[koru.Database], sqlite3.Connection]:
    """A koru database and a sqlite3 table of the same ``n`` documents (JSON text)."""
    conn = sqlite3.connect(str(tmp / f"{name}.sqlite"))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE docs (key TEXT PRIMARY KEY, value TEXT)")
    conn.executemany(
        "INSERT INTO docs VALUES (?, ?)",
        ((f"u{i:06}", json.dumps(document(i))) for i in range(n)),
    )
    conn.commit()
    opened = koru.open(tmp / name, sync="never")
    return opened, conn


async def load_documents(db: koru.Database, n: int) -> None:
    for start in range(0, n, 1000):
        await db.put_batch(
            [(NS, f"u{i:06}", document(i)) for i in range(start, min(n, start + 1000))]
        )


async def bench_query_scan(sizes: Sizes, tmp: Path, report: Report) -> None:
    n = sizes.query_docs
    opened, conn = await query_fixture(tmp, "query_scan", n)
    q = koru.Query().where(koru.F("age") >= 30, koru.F("city") == "Paris").order_by("-age")
    q = q.limit(100)
    sql = (
        "SELECT key, value FROM docs WHERE json_extract(value, '$.age') >= 30 "
        "AND json_extract(value, '$.city') = 'Paris' "
        "ORDER BY json_extract(value, '$.age') DESC, key LIMIT 100"
    )
    try:
        async with opened as db:
            await load_documents(db, n)
            began = perf()
            got = [(r.key, r.value) for r in await db.query(NS, q)]
            report.note(
                f"query_scan: the first query decoded the {n:,} documents into the "
                f"document cache in {(perf() - began) * 1e3:.0f} ms; the row is the warm scan"
            )
            want = [(k, json.loads(v)) for k, v in conn.execute(sql)]
            if got != want:
                report.note(f"query_scan MISMATCH: koru {got[:3]} vs sqlite {want[:3]}")

            async def kq(m: int) -> None:
                for _ in range(m):
                    await db.query(NS, q)

            def sq(m: int) -> None:
                for _ in range(m):
                    [(k, json.loads(v)) for k, v in conn.execute(sql)]

            k, s = await interleave(sizes, kq, sq, chunk=1)
    finally:
        conn.close()
    report.add(
        Row(
            f"query filter+sort, {n:,} docs, full scan vs sqlite json_extract",
            1e3 / k,
            1e3 / s,
            "ms/query",
            higher_is_better=False,
        )
    )


async def bench_query_index(sizes: Sizes, tmp: Path, report: Report) -> None:
    n = sizes.query_docs
    opened, conn = await query_fixture(tmp, "query_index", n)
    conn.execute("CREATE INDEX docs_group ON docs (json_extract(value, '$.group'))")
    conn.commit()
    q = koru.Query().where(koru.F("group") == 17)
    sql = "SELECT key, value FROM docs WHERE json_extract(value, '$.group') = 17 ORDER BY key"
    try:
        async with opened as db:
            await load_documents(db, n)
            unindexed = [(r.key, r.value) for r in await db.query(NS, q)]

            async def kq(m: int) -> None:
                for _ in range(m):
                    await db.query(NS, q)

            def sq(m: int) -> None:
                for _ in range(m):
                    [(k, json.loads(v)) for k, v in conn.execute(sql)]

            scan, _ = await interleave(sizes, kq, sq, chunk=1)
            began = perf()
            await db.create_index(NS, "group")
            report.note(
                f"query_index: create_index filled the index over {n:,} documents in "
                f"{(perf() - began) * 1e3:.0f} ms"
            )
            plan = await db.explain(NS, q)
            got = [(r.key, r.value) for r in await db.query(NS, q)]
            want = [(k, json.loads(v)) for k, v in conn.execute(sql)]
            if got != want or got != unindexed or not plan.uses_index:
                report.note(f"query_index MISMATCH ({plan.reason}): {got[:2]} vs {want[:2]}")
            k, s = await interleave(sizes, kq, sq, chunk=16)
    finally:
        conn.close()
    report.add(
        Row(
            f"indexed eq query ({len(got)} of {n:,} docs) vs sqlite expression index",
            1e6 / k,
            1e6 / s,
            "µs/query",
            higher_is_better=False,
        )
    )
    report.add(
        Row(
            "indexed eq query vs koru's own full scan",
            1e6 / k,
            1e6 / scan,
            "µs/query",
            higher_is_better=False,
        )
    )
    report.target("index speed-up over the full scan", k / scan, 50.0, "x", at_least=True)


VIEW_QUERIES = [
    koru.Query().where(koru.F("age") >= 30).count(),
    koru.Query().where(koru.F("city") == "Paris").order_by("-age").limit(10),
    koru.Query().group_by("city").avg("age"),
    koru.Query().sum("score"),
    koru.Query().max("age"),
    koru.Query().where(koru.F("active") == True).group_by("group").count(),  # noqa: E712
    koru.Query().distinct("city"),
    koru.Query().where(koru.F("name").matches("^user1")).count(),
    koru.Query().where(koru.F("age") < 18).select("name"),
    koru.Query().where(koru.F("city").is_in(["Rome", "Oslo"]), koru.F("age") > 60).min("score"),
]


async def alternate_puts(
    sizes: Sizes, plain: koru.Database, other: koru.Database
) -> tuple[float, float]:
    """Median put rates of two databases, measured in alternating rounds."""
    counters = [[0], [0]]
    rates: list[list[float]] = [[], []]
    for _ in range(sizes.rounds):
        for side, db in enumerate((plain, other)):

            async def batch(m: int, db: koru.Database = db, c: list[int] = counters[side]) -> None:
                i = c[0]
                for j in range(i, i + m):
                    await db.put(NS, f"u{j:07}", document(j))
                c[0] = i + m

            rates[side].append(await _rate_async(batch, sizes.round_s))
    return statistics.median(rates[0]), statistics.median(rates[1])


async def bench_views(sizes: Sizes, tmp: Path, report: Report) -> None:
    async with (
        koru.open(tmp / "views_none", sync="os") as plain,
        koru.open(tmp / "views_ten", sync="os") as viewed,
    ):
        for i, q in enumerate(VIEW_QUERIES):
            await viewed.create_view(f"v{i}", NS, q)
        none, ten = await alternate_puts(sizes, plain, viewed)
        written = (await viewed.stats()).keys
        began = perf()
        await viewed.view("v0")  # catches every view of the namespace up
        took = perf() - began
        report.note(
            f"views: maintenance is deferred to the next read; reading one view after "
            f"{written:,} puts caught all 10 views up in {took * 1e3:.0f} ms "
            f"({took / max(written, 1) * 1e6:.1f} µs per written key, all views)"
        )
        for i, q in enumerate(VIEW_QUERIES):  # spot check: each view equals its query
            if await viewed.view(f"v{i}") != await viewed.query(NS, q):
                report.note(f"views MISMATCH: view v{i} differs from its query")
    report.add(Row("put sync=os with 10 live views vs none", ten, none, "puts/s"))
    report.target("puts with 10 views / without", ten / none, 0.7, "x", at_least=True)


async def bench_subscriptions(sizes: Sizes, tmp: Path, report: Report) -> None:
    n = sizes.query_docs * 2
    async with (
        koru.open(tmp / "subs_one", sync="never") as db,
        db.subscribe(NS, buffer=n) as changes,
    ):
        await load_documents(db, n)  # queued: batches of 1,000 changes
        began = perf()
        count = 0
        async for change in changes:
            change.value  # noqa: B018  (a subscriber looks at what changed)
            count += 1
            if count == n:
                break
        rate = n / (perf() - began)
    report.add(Row("one subscriber receives changes vs target", rate, 100_000.0, "changes/s"))
    report.target("one subscriber", rate, 100_000.0, "changes/s", at_least=True)

    # The write path's share: 10 live subscriptions queue every put (they read after).
    async with (
        koru.open(tmp / "subs_none", sync="os") as plain,
        koru.open(tmp / "subs_ten", sync="os") as watched,
    ):
        subs = [watched.subscribe(NS, buffer=10**7) for _ in range(10)]
        queues = [await s.__aenter__() for s in subs]
        none, ten = await alternate_puts(sizes, plain, watched)
        written = (await watched.stats()).keys
        for q in queues:  # every subscriber gets every put, none lagged
            got = 0
            async for _ in q:
                got += 1
                if got == written:
                    break
        for s in subs:
            await s.__aexit__(None, None, None)
    report.add(Row("put sync=os with 10 live subscribers vs none", ten, none, "puts/s"))
    report.target("puts with 10 subscribers / without", ten / none, 0.7, "x", at_least=True)

    # End to end: 10 subscribers reading every change while puts run (one thread, so
    # their work shares the CPU with the writer): puts until all have read them.
    async with koru.open(tmp / "subs_e2e", sync="os") as db, trio.open_nursery() as nursery:
        seen = [0] * 10

        async def subscriber(i: int, task_status: trio.TaskStatus[None]) -> None:
            async with db.subscribe(NS, buffer=10**7) as changes:
                task_status.started()
                async for change in changes:
                    change.value  # noqa: B018
                    seen[i] += 1

        for i in range(10):
            await nursery.start(subscriber, i)
        m = 20_000 if sizes is FULL else 2_000
        began = perf()
        for j in range(m):
            await db.put(NS, f"u{j:07}", document(j))
        while min(seen) < m:  # noqa: ASYNC110  (polling is cheap beside the work measured)
            await trio.sleep(0.001)
        e2e = m / (perf() - began)
        nursery.cancel_scope.cancel()
    report.note(
        f"subscriptions end to end: {m:,} puts read by 10 subscribers in {m / e2e:.2f} s "
        f"({e2e:,.0f} puts/s, {e2e / none:.2f}x puts without subscribers; each subscriber "
        "builds its own changes, values decoded afresh)"
    )


# -- auth: signatures, capability chains, authorized reads, proof of work ----------------


async def bench_auth(group: str, sizes: Sizes, tmp: Path, report: Report) -> None:
    import auth  # bench/auth.py

    if group == "auth_verify":
        k, g, r = auth.verify_rates(sizes.rounds, sizes.round_s)
        report.add(Row("signature check (koru.events.verify) vs nacl VerifyKey.verify", k, r, "/s"))
        report.add(Row("grant signature check (message + verify) vs VerifyKey.verify", g, r, "/s"))
        report.target(
            "signature checks vs VerifyKey.verify", k / r, auth.VERIFY_TARGET, "x", at_least=True
        )
    elif group == "auth_chain":
        fresh, cached, signatures = auth.chain_times(sizes.rounds, sizes.round_s)
        depth = auth.MAX_DEPTH
        report.add(
            Row(
                f"capability chain of {depth}, fresh evaluation vs {depth} signature checks",
                fresh * 1e6,
                signatures * 1e6,
                "µs/check",
                higher_is_better=False,
            )
        )
        report.note(f"capability chain of {depth}, cached decision: {cached * 1e6:.2f} µs/check")
    elif group == "auth_get":
        n = sizes.get_keys
        s, a, p = await auth.get_rates(
            tmp / "auth_get", n, sizes.rounds, sizes.round_s, value, _rate_async
        )
        report.add(Row(f"authorized get, session ({n:,} keys) vs plain get", s, p, "gets/s"))
        report.add(Row(f"authorized get, identity ({n:,} keys) vs plain get", a, p, "gets/s"))
        report.target("session get time vs plain get", p / s, auth.GET_TARGET, "x", at_least=False)
        report.target("identity get time vs plain get", p / a, auth.GET_TARGET, "x", at_least=False)
    elif group == "auth_mine":
        m, b = auth.mining_rates(sizes.rounds, sizes.round_s)
        report.add(Row("proof-of-work search vs bare blake3(key || nonce) loop", m, b, "hashes/s"))
        default = koru.DEFAULT_DIFFICULTY
        report.note(
            f"Identity.mine() at the default difficulty ({default} bits, 2**{default} hashes "
            f"expected): {2**default / m:.2f} s expected on one core"
        )
        samples = 1 if sizes is QUICK else 8
        took = auth.default_mining_seconds(samples)
        report.note(f"Identity.mine() measured: {took:.2f} s mean over {samples} identities")


# -- memory (measured in child processes) ----------------------------------------------


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(kind: str, n: int) -> dict[str, Any]:
    """Run in a fresh process: RSS growth from putting ``n`` small keys."""
    if kind == "dict":
        gc.collect()
        before = _rss()
        d = {f"u{i}": value(i) for i in range(n)}
        gc.collect()
        after = _rss()
        assert len(d) == n
        return {"kind": kind, "n": n, "before": before, "after": after}

    # "file-nockpt": no checkpoint during the run, to separate steady-state memory from
    # what checkpoints leave behind (a checkpoint copies the whole key state).
    every = 10**9 if kind == "file-nockpt" else 100_000

    async def main(path: str) -> dict[str, Any]:
        async with koru.open(path, sync="never", checkpoint_every=every) as db:
            for i in range(100):  # warm up: first-use allocations are not per key
                await db.put("warmup", f"w{i}", value(i))
            gc.collect()
            before = _rss()
            for i in range(n):
                await db.put(NS, f"u{i}", value(i))
            await trio.sleep(1.0)  # let a due background checkpoint finish
            gc.collect()
            after = _rss()
            stats = await db.stats()
        return {
            "kind": kind,
            "n": n,
            "before": before,
            "after": after,
            "cache_bytes": stats.cache_bytes,
            "log_bytes": stats.log_bytes,
        }

    if kind == "memory":
        return trio.run(main, ":memory:")
    tmp = tempfile.mkdtemp(prefix="korubench-mem-", dir="/tmp")
    try:
        return trio.run(main, os.path.join(tmp, "db"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_memory_child(kind: str, n: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", kind, str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(sizes: Sizes, report: Report) -> None:
    n = sizes.memory_keys
    kinds = ("dict", "memory", "file", "file-nockpt")
    res = {kind: _run_memory_child(kind, n) for kind in kinds}
    per = {kind: (r["after"] - r["before"]) / n for kind, r in res.items()}
    for kind in ("memory", "file"):
        name = '":memory:"' if kind == "memory" else "file db"
        report.add(
            Row(
                f"RSS per key, {name} ({n:,} keys) vs dict",
                per[kind],
                per["dict"],
                "bytes/key",
                higher_is_better=False,
            )
        )
    f = res["file"]
    report.note(
        f"memory: file db value cache {f['cache_bytes'] / n:.0f} B/key (accounted), "
        f'log on disk {f["log_bytes"] / n:.0f} B/key; ":memory:" also holds the log in RAM'
    )
    report.note(
        f"memory: file db with no checkpoint during the run (checkpoint_every=10**9): "
        f"{per['file-nockpt']:.0f} B/key (the row uses the default, 100,000)"
    )
    report.target("file-db RSS per key", per["file"], MEMORY_TARGET, "bytes/key", at_least=False)


# -- driver ----------------------------------------------------------------------------


async def run_async(sizes: Sizes, groups: list[str], tmp: Path, report: Report) -> None:
    for group in groups:
        print(f"[{group}]", flush=True)
        began = perf()
        if group.startswith("put_"):
            await bench_put(group.removeprefix("put_"), sizes, tmp, report)
        elif group == "concurrent":
            await bench_concurrent(sizes, tmp, report)
        elif group == "get":
            await bench_get(sizes, tmp, report)
        elif group == "history":
            await bench_history_get_at(sizes, tmp, report, {"history"})
        elif group == "get_at":
            await bench_history_get_at(sizes, tmp, report, {"get_at"})
        elif group == "open":
            await bench_open(sizes, tmp, report)
        elif group == "cli":
            await bench_cli(sizes, tmp, report)
        elif group == "memory":
            bench_memory(sizes, report)
        elif group == "vectors":
            import vectors  # bench/vectors.py

            await vectors.bench_vectors(
                sizes.vectors, sizes.vector_queries, tmp, report, Row, interleave, sizes
            )
            vectors.bench_memory(sizes.vectors, report, Row, __file__)
        elif group == "tiers":
            await bench_tiers(sizes, tmp, report)
        elif group == "capture":
            await bench_capture(sizes, tmp, report)
        elif group == "ttl":
            await bench_ttl(sizes, tmp, report)
        elif group == "query_scan":
            await bench_query_scan(sizes, tmp, report)
        elif group == "query_index":
            await bench_query_index(sizes, tmp, report)
        elif group == "views":
            await bench_views(sizes, tmp, report)
        elif group == "subscriptions":
            await bench_subscriptions(sizes, tmp, report)
        elif group == "spaces":
            import spaces  # bench/spaces.py

            for row in await spaces.bench_spaces(sizes.rounds, sizes.round_s, tmp, value):
                report.add(Row(*row, higher_is_better=row[3] != "ms/call"))
        elif group.startswith("auth_"):
            await bench_auth(group, sizes, tmp, report)
        print(f"  ({perf() - began:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(GROUPS)}"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--memory-child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--vector-memory-child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.memory_child:
        kind, n = args.memory_child
        print(json.dumps(memory_child(kind, int(n))))
        return 0
    if args.vector_memory_child:
        import vectors  # bench/vectors.py

        kind, n = args.vector_memory_child
        print(json.dumps(vectors.memory_child(kind, int(n))))
        return 0

    groups = [g.strip() for g in args.only.split(",") if g.strip()] or list(GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {', '.join(GROUPS)}")
    sizes = QUICK if args.quick else FULL
    report = Report()
    began = perf()
    tmp = Path(tempfile.mkdtemp(prefix="korubench-", dir="/tmp"))
    try:
        trio.run(run_async, sizes, groups, tmp, report)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = perf() - began

    print()
    print(render(report.rows))
    if report.notes:
        print()
        for n in report.notes:
            print(f"* {n}")
    print(
        f"\n({'quick' if args.quick else 'full'} run, {total:.0f} s, "
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version})"
    )
    if args.json:
        data = {
            "quick": args.quick,
            "seconds": total,
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "rows": [asdict(r) | {"ratio": r.ratio} for r in report.rows],
            "notes": report.notes,
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
