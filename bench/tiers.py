"""The tiers bench: a data set larger than what memory keeps, opened and read.

Rows (see bench/README.md): open time at 1M and 10M events (open must not be linear in
the data set); resident memory per cold key, a cold get against sqlite3 reading the same
row from a table of the same size, a hot get against sqlite3, on 1M keys of 1 KB with a
hot tier of 10,000 values; the latency of every put while 1M events are written.
Memory is measured in child processes (``python bench/tiers.py --child ...``).
"""

from __future__ import annotations

import gc
import json
import mmap
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

import koru
from koru.events import OsDisk

perf = time.perf_counter
#: The hot tier: values kept in memory (a value cache of about this many 1 KB values).
HOT_KEYS = 10_000


def big_value(i: int) -> dict[str, Any]:
    return {"name": f"user{i}", "bio": f"{i:08d}" * 120}  # about 1 KB


async def build(path: Path, keys: int, versions: int, value: Any) -> float:
    """Plain puts (one event each), closed with a checkpoint; returns the seconds."""
    began = perf()
    async with koru.open(path, sync="never", processes=False) as db:
        for v in range(versions):
            for i in range(keys):
                await db.put("users", f"u{i}", value(i * versions + v))
    return perf() - began


async def timed_open(path: Path) -> float:
    began = perf()
    async with koru.open(path, readonly=True) as db:
        opened = perf() - began
        stats = await db.stats()
        assert stats.replayed_events == 0, stats
    return opened


def sqlite_table(path: Path, keys: int, value: Any) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE kv (ns TEXT, key TEXT, value BLOB, PRIMARY KEY (ns, key))")
    conn.executemany(
        "INSERT INTO kv VALUES (?, ?, ?)",
        (("users", f"u{i}", json.dumps(value(i))) for i in range(keys)),
    )
    conn.commit()
    conn.close()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """The process's peak resident memory (``VmHWM``: since its exec, where
    ``ru_maxrss`` would count its parent's memory at the fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(path: str, keys: int) -> dict[str, Any]:
    """In a fresh process: resident memory of an open database whose hot set has been
    read, with ``keys`` keys in all (0: an empty database, the base)."""

    async def main() -> dict[str, Any]:
        gc.collect()
        before = rss()
        async with koru.open(path, cache_bytes=HOT_KEYS * 1400, processes=False) as db:
            rng = random.Random(1)
            hot = [f"u{rng.randrange(max(keys, 1))}" for _ in range(HOT_KEYS)] if keys else []
            for _ in range(3):
                for k in hot:
                    await db.get("users", k)
            gc.collect()
            after = rss()
            tiers = (await db.stats()).tiers
        return {"before": before, "after": after, "tiers": tiers._asdict()}

    return trio.run(main)


def _in_child(*args: str) -> dict[str, Any]:
    """Run this file in a fresh Python process with ``args``; its last line of JSON."""
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_child(path: Path, keys: int) -> dict[str, Any]:
    return _in_child("--child", str(path), str(keys))


def page_cache(paths: Sequence[Path], state: str) -> None:
    """Put every file under ``paths`` in one page-cache state: ``"warm"`` (read whole,
    so every page is in memory) or ``"dropped"`` (``POSIX_FADV_DONTNEED``: each read
    goes to the disk).

    Why: this machine reclaims page-cache pages not touched for about a minute (a DAMON
    ``pageout`` scheme, kdamond), with gigabytes free. Left alone, the store whose files
    were written first (koru's, built before the sqlite3 twin) has lost more of its
    pages by the time it is read, and the row measures the bench's order, not the
    stores. Each store is put in the same state right before its reads are timed."""
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            if state == "dropped":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 1 << 20):
                    pass
        finally:
            os.close(fd)


async def get_latencies(
    path: Path, twin: Path, keys: int, n: int
) -> dict[str, tuple[float, float]]:
    """Seconds per get, (koru, sqlite3): ``"hot"`` keys (read twice before), and cold
    keys (never read before) with both stores' files ``"warm"`` in the page cache or
    ``"dropped"`` from it (see :func:`page_cache`)."""
    rng = random.Random(2)
    conn = sqlite3.connect(twin)
    query = "SELECT value FROM kv WHERE ns = ? AND key = ?"

    def sq(key: str) -> Any:
        return json.loads(conn.execute(query, ("users", key)).fetchone()[0])

    out: dict[str, tuple[float, float]] = {}
    async with koru.open(path, cache_bytes=HOT_KEYS * 1400, processes=False) as db:
        hot = [f"u{rng.randrange(keys)}" for _ in range(HOT_KEYS)]
        for _ in range(2):  # hot: read again and again (a key read once is not hot)
            for k in hot:
                await db.get("users", k)
                sq(k)
        # Hot first: the cold reads below drop the pages of sqlite3's hot rows too.
        sample = [rng.choice(hot) for _ in range(n)]
        began = perf()
        for k in sample:
            await db.get("users", k)
        k_hot = (perf() - began) / n
        began = perf()
        for k in sample:
            sq(k)
        out["hot"] = (k_hot, (perf() - began) / n)
        for state in ("warm", "dropped"):
            cold = [f"u{rng.randrange(keys)}" for _ in range(n)]
            page_cache([path], state)
            began = perf()
            for k in cold:
                await db.get("users", k)
            k_cold = (perf() - began) / n
            page_cache([twin], state)
            began = perf()
            for k in cold:
                sq(k)
            out[state] = (k_cold, (perf() - began) / n)
    conn.close()
    return out


class TimedDisk(OsDisk):
    """The operating system's filesystem, adding up the time the event loop's thread
    spends inside its calls (a write the kernel holds back while it writes other data
    out, a read of a table page it had let go): what a put waited for the OS, as
    against for koru. Calls from worker threads are not counted (the loop runs on)."""

    def __init__(self) -> None:
        self.loop = threading.get_ident()
        #: Seconds the loop's thread has spent in the calls so far.
        self.blocked = 0.0

    def map_append(self, fd: int, offset: int, length: int) -> mmap.mmap | None:
        """The map the OS's disk gives (OsDisk gives none to a disk that overrides
        pwrite, as this one does to time it: puts would then measure the pwrite path
        that ``sync="os"`` no longer takes). Copies into it are koru's time, as a
        minor page fault on a page's first touch is."""
        began = perf()
        try:
            return OsDisk().map_append(fd, offset, length)
        finally:
            if threading.get_ident() == self.loop:
                self.blocked += perf() - began


def _timed(name: str) -> Any:
    base = getattr(OsDisk, name)

    def call(self: TimedDisk, *args: Any) -> Any:
        if threading.get_ident() != self.loop:
            return base(self, *args)
        began = perf()
        try:
            return base(self, *args)
        finally:
            self.blocked += perf() - began

    call.__name__ = name
    return call


for _name in (
    "open", "close", "pwrite", "pread", "size", "truncate", "allocate", "fdatasync",
    "fsync", "fsync_dir", "read_file", "replace", "unlink",
):  # fmt: skip
    setattr(TimedDisk, _name, _timed(_name))


async def put_latencies(path: Path, events: int) -> tuple[array[float], array[float]]:
    """The wait of every put while ``events`` small puts are written with the default
    settings but ``sync="os"`` (an fsync per put would measure the disk, not koru), and
    the part of each wait spent inside the OS's file calls on the loop's thread (see
    :class:`TimedDisk`).

    The waits are kept in an ``array``, not a list: a million float objects in a list
    would lengthen every full collection of the cyclic collector by the time it takes
    to visit them, a stall of the harness's own making that it would then report."""
    waits, in_os = array("d"), array("d")
    disk = TimedDisk()
    async with koru.open(path, sync="os", disk=disk) as db:
        for i in range(events):
            blocked = disk.blocked
            began = perf()
            await db.put("users", f"u{i % 100_000}", {"i": i})
            waits.append(perf() - began)
            in_os.append(disk.blocked - blocked)
    return waits, in_os


def one_core_child(path: str, events: int) -> dict[str, Any]:
    """In a fresh process held to one core (its worker threads too): the slowest put
    of :func:`put_latencies`, the part of it in the OS's file calls, and the slowest
    wait outside them. What is left of the put waits where the two-core stalls of a
    virtual machine (see :func:`machine_gaps`) cannot happen."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    waits, in_os = trio.run(put_latencies, Path(path), events)
    slowest = max(range(len(waits)), key=waits.__getitem__)
    return {
        "slowest": waits[slowest],
        "slowest_in_os": in_os[slowest],
        "slowest_outside_os": max(w - o for w, o in zip(waits, in_os, strict=True)),
        "over_10ms": sum(w > 0.01 for w in waits),
        "summary": summary(waits),
    }


def run_one_core(path: Path, events: int) -> dict[str, Any]:
    return _in_child("--one-core", str(path), str(events))


def machine_gaps(seconds: float, beside_busy: bool = False) -> array[float]:
    """Every gap over 1 ms that a loop doing nothing but read the clock sees in
    ``seconds``: the machine's own stalls (a virtual machine whose host takes its CPU
    away, with no steal time counted, stalled such a loop for up to 30 ms here). Run
    after the puts, for as long as they took, it is the reference for their waits.

    ``beside_busy``: with a child process spinning on the other core meanwhile, as a
    checkpoint's worker thread keeps a second core busy beside the puts. Why: on this
    virtual machine one busy core ran for 15 s without a gap over 6 ms, while two
    busy cores stalled each other for up to 31 ms (docs/speed.md)."""
    spinner = (
        subprocess.Popen([sys.executable, __file__, "--spin", str(seconds + 0.5)])
        if beside_busy
        else None
    )
    try:
        gaps = array("d")
        last = perf()
        end = last + seconds
        while last < end:
            now = perf()
            if now - last > 1e-3:
                gaps.append(now - last)
            last = now
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return gaps


def spin(seconds: float) -> None:
    """Keep a core busy for ``seconds`` (the other core of :func:`machine_gaps`)."""
    end = perf() + seconds
    while perf() < end:
        pass


#: Writes per batch of the bulk load.
BATCH = 1_000


def bulk_child(path: str, batches: int, which: str) -> dict[str, Any]:
    """In a fresh process: ``batches`` batches of :data:`BATCH` small writes to new
    keys, ``which`` being "koru" (``put_batch`` under the default settings but
    ``sync="os"``: background checkpoints and merges run) or "sqlite" (WAL,
    ``synchronous=NORMAL``, one ``executemany`` and commit per batch). The seconds of
    the load and of the close, the slowest batch, and the peak resident memory beyond
    the process's before it opened the database."""
    before = rss()
    waits = array("d")

    def rows(b: int) -> list[tuple[str, dict[str, int]]]:
        return [(f"k{b}-{i}", {"i": i}) for i in range(BATCH)]

    if which == "koru":

        async def main() -> tuple[float, float]:
            async with koru.open(path, sync="os") as db:
                began = perf()
                for b in range(batches):
                    t = perf()
                    await db.put_batch([("u", k, v) for k, v in rows(b)])
                    waits.append(perf() - t)
                loaded = perf() - began
                closing = perf()
            return loaded, perf() - closing

        loaded, closed = trio.run(main)
    else:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE kv (ns TEXT, key TEXT, value BLOB, PRIMARY KEY (ns, key))")
        began = perf()
        for b in range(batches):
            t = perf()
            conn.executemany(
                "INSERT OR REPLACE INTO kv VALUES ('u', ?, ?)",
                [(k, json.dumps(v)) for k, v in rows(b)],
            )
            conn.commit()
            waits.append(perf() - t)
        loaded = perf() - began
        closing = perf()
        conn.close()
        closed = perf() - closing
    return {"loaded": loaded, "closed": closed, "slowest": max(waits), "grown": peak_rss() - before}


def run_bulk(path: Path, batches: int, which: str) -> dict[str, Any]:
    return _in_child("--bulk", str(path), str(batches), which)


def percentile(values: Sequence[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(p * len(values)))]


def summary(waits: Sequence[float]) -> str:
    return (
        ", ".join(
            f"{name} {percentile(waits, p) * 1e3:.2f} ms"
            for name, p in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999))
        )
        + f", max {max(waits) * 1e3:.1f} ms"
    )


__all__ = [
    "BATCH",
    "HOT_KEYS",
    "TimedDisk",
    "big_value",
    "build",
    "get_latencies",
    "machine_gaps",
    "page_cache",
    "put_latencies",
    "run_bulk",
    "run_child",
    "run_one_core",
    "sqlite_table",
    "statistics",
    "summary",
    "timed_open",
]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]))))
    elif sys.argv[1:2] == ["--one-core"]:
        print(json.dumps(one_core_child(sys.argv[2], int(sys.argv[3]))))
    elif sys.argv[1:2] == ["--spin"]:
        spin(float(sys.argv[2]))
    elif sys.argv[1:2] == ["--bulk"]:
        print(json.dumps(bulk_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
    else:
        sys.exit("run it through bench/run.py --only tiers")
