#!/usr/bin/env python
"""CPU time per operation of the hot paths, koru and its references in one process.

Usage::

    python bench/hotpath.py            # one JSON line: microseconds (ms for history)

Why CPU time: on a shared machine the wall-clock rows of ``bench/run.py`` move by a
third from run to run, while ``time.process_time`` (best of several passes) moves by a
few percent, so a change to the put, get, get_at or history path can be judged by it.
Measured: ``put`` with ``sync="os"`` against lmdb (one transaction per put) and sqlite3
(WAL/NORMAL, one commit per put), and the same put with a ``ttl`` (``put ttl os``);
``get_nowait`` of 100,000 keys in random order against lmdb (one read transaction per
get); ``history`` of 1,000 versions and ``get_at`` among them against sqlite3; and 16
concurrent writers with ``sync="always"`` on a disk whose fsync does nothing (the CPU
of group commit). lmdb is a bench-only dependency.
"""

from __future__ import annotations

import gc
import json
import random
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import cbor2
import lmdb
import trio

import koru
from koru.events import OsDisk

NS = "users"


def value(i: int) -> dict[str, Any]:
    return {"name": f"user{i}", "age": i % 90, "active": True}


def best(run: Callable[[], None], ops: int, passes: int = 7) -> float:
    """Fewest CPU microseconds per operation over ``passes`` runs."""
    times = []
    for _ in range(passes):
        began = time.process_time()
        run()
        times.append((time.process_time() - began) / ops * 1e6)
    return min(times)


async def best_async(run: Callable[[], Awaitable[None]], ops: int, passes: int = 7) -> float:
    times = []
    for _ in range(passes):
        began = time.process_time()
        await run()
        times.append((time.process_time() - began) / ops * 1e6)
    return min(times)


class NoSyncDisk(OsDisk):
    """The operating system's disk with fsync a no-op: group commit's CPU alone."""

    def fdatasync(self, fd: int) -> None:
        pass

    def fsync(self, fd: int) -> None:
        pass


async def puts(where: str, out: dict[str, float]) -> None:
    env = lmdb.open(where + "/put.lmdb", map_size=1 << 32, sync=False, metasync=False)
    conn = sqlite3.connect(where + "/put.sqlite")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE kv (ns TEXT, key TEXT, value BLOB, PRIMARY KEY (ns, key))")
    n = 5000
    counters = [0, 0, 0]
    async with koru.open(where + "/put", sync="os") as db:

        async def koru_puts() -> None:
            i = counters[0]
            for j in range(i, i + n):
                await db.put(NS, f"u{j}", value(j))
            counters[0] = i + n

        async def koru_ttl_puts() -> None:
            i = counters[0]
            for j in range(i, i + n):
                await db.put(NS, f"u{j}", value(j), ttl=3600)
            counters[0] = i + n

        def lmdb_puts() -> None:
            i = counters[1]
            for j in range(i, i + n):
                with env.begin(write=True) as txn:
                    txn.put(f"{NS}/u{j}".encode(), cbor2.dumps(value(j)))
            counters[1] = i + n

        def sqlite_puts() -> None:
            i = counters[2]
            for j in range(i, i + n):
                row = (NS, f"u{j}", json.dumps(value(j)).encode())
                conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", row)
                conn.commit()
            counters[2] = i + n

        out["put os"] = await best_async(koru_puts, n)
        out["put ttl os"] = await best_async(koru_ttl_puts, n)
        out["lmdb put"] = best(lmdb_puts, n)
        out["sqlite put"] = best(sqlite_puts, n)
    env.close()
    conn.close()


async def gets(where: str, out: dict[str, float]) -> None:
    n = 100_000
    order = [f"u{i}" for i in range(n)]
    random.Random(42).shuffle(order)
    env = lmdb.open(where + "/get.lmdb", map_size=1 << 32, sync=False, metasync=False)
    with env.begin(write=True) as txn:
        for i in range(n):
            txn.put(f"{NS}/u{i}".encode(), cbor2.dumps(value(i)))
    async with koru.open(where + "/get", sync="never") as db:
        for i in range(n):
            await db.put(NS, f"u{i}", value(i))
        for key in order:
            await db.get(NS, key)

        def koru_gets() -> None:
            get_nowait = db.get_nowait
            for key in order:
                get_nowait(NS, key)

        def lmdb_gets() -> None:
            begin = env.begin
            for key in order:
                with begin() as txn:
                    cbor2.loads(txn.get(f"{NS}/{key}".encode()))

        out["get_nowait"] = best(koru_gets, n, 5)
        out["lmdb get"] = best(lmdb_gets, n, 5)
    env.close()


async def versions(where: str, out: dict[str, float]) -> None:
    conn = sqlite3.connect(where + "/versions.sqlite")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(
        "CREATE TABLE versions (ns TEXT, key TEXT, seq INTEGER, ts INTEGER, value BLOB, "
        "PRIMARY KEY (ns, key, seq))"
    )
    conn.execute("CREATE INDEX versions_ts ON versions (ns, key, ts)")
    async with koru.open(where + "/versions", sync="never") as db:
        for i in range(1000):
            await db.put(NS, "hot", value(i))
        stamps = [v.timestamp for v in await db.history(NS, "hot")]
        conn.executemany(
            "INSERT INTO versions VALUES (?, ?, ?, ?, ?)",
            ((NS, "hot", i, stamps[i], json.dumps(value(i)).encode()) for i in range(1000)),
        )
        conn.commit()
        rng = random.Random(7)
        times = [rng.randint(stamps[0], stamps[-1]) for _ in range(4096)]

        async def koru_history() -> None:
            for _ in range(20):
                await db.history(NS, "hot")

        def sqlite_history() -> None:
            for _ in range(20):
                rows = conn.execute(
                    "SELECT seq, ts, value FROM versions WHERE ns = ? AND key = ? ORDER BY seq",
                    (NS, "hot"),
                ).fetchall()
                [(seq, ts, json.loads(v)) for seq, ts, v in rows]

        async def koru_get_at() -> None:
            for t in times:
                await db.get_at(NS, "hot", t)

        def sqlite_get_at() -> None:
            for t in times:
                row = conn.execute(
                    "SELECT value FROM versions WHERE ns = ? AND key = ? AND ts <= ? "
                    "ORDER BY ts DESC LIMIT 1",
                    (NS, "hot", t),
                ).fetchone()
                json.loads(row[0])

        out["history ms"] = await best_async(koru_history, 20) / 1000
        out["sqlite history ms"] = best(sqlite_history, 20) / 1000
        out["get_at"] = await best_async(koru_get_at, len(times))
        out["sqlite get_at"] = best(sqlite_get_at, len(times))
    conn.close()


async def writers(where: str, out: dict[str, float]) -> None:
    async with koru.open(where + "/writers", sync="always", disk=NoSyncDisk()) as db:
        times = []
        for r in range(5):
            began = time.process_time()

            async def writer(w: int, r: int = r) -> None:
                for i in range(300):
                    await db.put(NS, f"r{r}w{w}k{i}", value(i))

            async with trio.open_nursery() as nursery:
                for w in range(16):
                    nursery.start_soon(writer, w)
            times.append((time.process_time() - began) / (16 * 300) * 1e6)
        out["16 writers, no-op fsync"] = min(times)


async def main() -> None:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as where:
        for group in (puts, gets, versions, writers):
            await group(where, out)
            gc.collect()  # each group's database is gone before the next is timed
    print(json.dumps({k: round(v, 3) for k, v in out.items()}))


if __name__ == "__main__":
    trio.run(main)
