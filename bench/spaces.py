"""The workspaces and lineage bench (``--only spaces``).

Rows (see bench/README.md): puts and gets in a workspace against the same calls in the
default space (a workspace is a name prefix: it should cost next to nothing), puts
naming 3 parents against plain puts, and ``ancestors`` of a key at the end of a chain
of 1,000 derivations, read from tables after a checkpoint, against sqlite3 walking the
same chain with a recursive query.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import koru

perf = time.perf_counter
CHAIN = 1_000
_written: dict[str, list[int]] = {}  # keys each putter wrote


async def _rate(batch: Callable[[int], Awaitable[None]], seconds: float, chunk: int = 256) -> float:
    ops, began = 0, perf()
    while True:
        await batch(chunk)
        ops += chunk
        elapsed = perf() - began
        if elapsed >= seconds:
            return ops / elapsed


async def alternate(
    rounds: int,
    seconds: float,
    a: Callable[[int], Awaitable[None]],
    b: Callable[[int], Awaitable[None]],
) -> tuple[float, float]:
    """Median rates of two workloads measured in alternating rounds."""
    rates: list[list[float]] = [[], []]
    for _ in range(rounds):
        for side, batch in enumerate((a, b)):
            rates[side].append(await _rate(batch, seconds))
    return statistics.median(rates[0]), statistics.median(rates[1])


def _putter(space: Any, ns: str, value: Callable[[int], Any], **kw: Any) -> Any:
    counter = [0]
    _written[ns] = counter

    async def batch(m: int) -> None:
        i = counter[0]
        for j in range(i, i + m):
            await space.put(ns, f"u{j:07}", value(j), **kw)
        counter[0] = i + m

    return batch


def _getter(space: Any, ns: str, n: int) -> Any:
    counter = [0]

    async def batch(m: int) -> None:
        i = counter[0]
        for j in range(i, i + m):
            await space.get(ns, f"u{(j * 7919) % n:07}")
        counter[0] = i + m

    return batch


async def bench_spaces(
    rounds: int, seconds: float, tmp: Path, value: Callable[[int], Any]
) -> list[tuple[str, float, float, str]]:
    """(workload, koru, reference, unit) rows."""
    out = []
    async with koru.open(tmp / "spaces", sync="os") as db:
        ws = db.workspace("agent")
        put_ws, put_default = await alternate(
            rounds, seconds, _putter(ws, "ws", value), _putter(db, "default", value)
        )
        out.append(
            ("put sync=os in a workspace vs the default space", put_ws, put_default, "puts/s")
        )
        n = min(_written["ws"][0], _written["default"][0])
        get_ws, get_default = await alternate(
            rounds, seconds, _getter(ws, "ws", n), _getter(db, "default", n)
        )
        out.append(("get in a workspace vs the default space", get_ws, get_default, "gets/s"))
    async with koru.open(tmp / "lineage", sync="os") as db:
        for i in range(3):
            await db.put("src", f"p{i}", i)
        parents = [("src", f"p{i}") for i in range(3)]
        linked, plain = await alternate(
            rounds,
            seconds,
            _putter(db, "linked", value, parents=parents),
            _putter(db, "plain", value),
        )
        out.append(("put sync=os naming 3 parents vs a plain put", linked, plain, "puts/s"))
        await db.put("chain", "n0", 0)
        for i in range(1, CHAIN):
            await db.put("chain", f"n{i}", i, parents=[f"n{i - 1}"])
        await db.checkpoint()  # the graph is in tables now
    conn = sqlite3.connect(str(tmp / "lineage.sqlite"))
    conn.execute("CREATE TABLE links (child TEXT, parent TEXT, PRIMARY KEY (child, parent))")
    conn.executemany(
        "INSERT INTO links VALUES (?, ?)", ((f"n{i}", f"n{i - 1}") for i in range(1, CHAIN))
    )
    conn.commit()
    walk = (
        "WITH RECURSIVE up(node, depth) AS (SELECT ?, 0 UNION "
        "SELECT links.parent, up.depth + 1 FROM links JOIN up ON links.child = up.node) "
        "SELECT node FROM up WHERE depth > 0 ORDER BY depth"
    )
    async with koru.open(tmp / "lineage", readonly=True) as db:
        last = ("chain", f"n{CHAIN - 1}")
        koru_s, sqlite_s = [], []
        for _ in range(max(rounds, 3)):
            began = perf()
            found = await db.ancestors(last)
            koru_s.append(perf() - began)
            began = perf()
            rows = conn.execute(walk, (f"n{CHAIN - 1}",)).fetchall()
            sqlite_s.append(perf() - began)
        assert [k for _, k in found] == [r[0] for r in rows]  # the same chain
    conn.close()
    out.append(
        (
            f"ancestors of a {CHAIN:,}-deep chain (tables) vs sqlite recursive CTE",
            statistics.median(koru_s) * 1e3,
            statistics.median(sqlite_s) * 1e3,
            "ms/call",
        )
    )
    return out
