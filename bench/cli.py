"""The command line's start-up bench: one-shot ``kdelta get`` processes against fresh
``python -c`` processes that open sqlite3 and select the same row from the same data.

Both sides are whole processes (interpreter start, imports, open, lookup, printing the
value as pretty JSON, exit), run in turn so that the machine's drift hits both.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import koru

KDELTA_TARGET_S = 0.3
KDELTA_TARGET_RATIO = 3.0

_SQLITE_GET = (
    "import sqlite3, json, sys; c = sqlite3.connect(sys.argv[1]); "
    "r = c.execute('SELECT value FROM kv WHERE ns = ? AND key = ?', "
    "(sys.argv[2], sys.argv[3])).fetchone(); print(json.dumps(json.loads(r[0]), indent=2))"
)


async def build(path: Path, keys: int, versions: int, value: Callable[[int], Any]) -> int:
    """``keys`` x ``versions`` plain puts (one event each), closed with a checkpoint."""
    async with koru.open(path, sync="never") as db:
        for v in range(versions):
            for i in range(keys):
                await db.put("users", f"u{i}", value(i * versions + v))
        return (await db.stats()).events


def sqlite_twin(path: Path, keys: int, versions: int, value: Callable[[int], Any]) -> None:
    """The same current values in sqlite3 (what a user of sqlite would keep)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE kv (ns TEXT, key TEXT, value BLOB, PRIMARY KEY (ns, key))")
    conn.executemany(
        "INSERT INTO kv VALUES (?, ?, ?)",
        (("users", f"u{i}", json.dumps(value(i * versions + versions - 1))) for i in range(keys)),
    )
    conn.commit()
    conn.close()


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    began = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/", check=True)
    return time.perf_counter() - began, done.stdout


def measure(db: Path, twin: Path, key: str, runs: int) -> tuple[float, float]:
    """Median seconds per process: (kdelta get, python -c sqlite3), interleaved."""
    kdelta = str(Path(sys.executable).parent / "kdelta")
    # Compiled modules are what an installed package runs from; an environment that
    # forbids writing them (PYTHONDONTWRITEBYTECODE) would time the compiler instead.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    k_cmd = [kdelta, "--db", str(db), "get", f"users/{key}"]
    s_cmd = [sys.executable, "-c", _SQLITE_GET, str(twin), "users", key]
    _, mine = _timed(k_cmd, env)  # warm-up (and compiled modules written)
    _, theirs = _timed(s_cmd, env)
    assert json.loads(mine) == json.loads(theirs), (mine, theirs)
    ks, ss = [], []
    for _ in range(runs):
        ks.append(_timed(k_cmd, env)[0])
        ss.append(_timed(s_cmd, env)[0])
    return statistics.median(ks), statistics.median(ss)
