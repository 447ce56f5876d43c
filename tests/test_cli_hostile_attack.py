"""The ``kdelta`` command line run by a careless or hostile user and environment:
standard streams closed or full, a database held open by another process, an empty
``--db``, and ``simulate`` arguments no run can use. What must hold: a clear one-line
message and a documented exit code, never a traceback, and output that is correct or
absent (never an error message where the data should be)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import trio
from test_cli import KDELTA, failed, kdelta

import koru


def _db(tmp_path: Path) -> Path:
    path = tmp_path / "db"

    async def write() -> None:
        async with koru.open(path) as db:
            await db.put("users", "alice", {"name": "Alice"})

    trio.run(write)
    return path


def _raw(*args: str, redirect: str) -> subprocess.CompletedProcess[bytes]:
    """``kdelta ARGS`` through a shell, with ``redirect`` applied to its streams."""
    env = {k: v for k, v in os.environ.items() if k != "KORU_HOME"}
    words = " ".join(f"'{a}'" for a in args)
    return subprocess.run(
        f"{KDELTA} {words} {redirect}",
        shell=True,
        capture_output=True,
        env=env,
        cwd="/",
        timeout=60,
    )


async def test_a_locked_database_tells_a_cli_user_what_to_do(tmp_path: Path) -> None:
    """A write while another process holds the database open for writing: the message
    told a command line user to "open it with readonly=True", a Python argument no
    command takes. It must say what the user can do: the read commands still work."""
    path = tmp_path / "db"
    async with koru.open(path) as db:
        await db.put("users", "alice", 1)
        for args in (("set", "users/alice", "2"), ("delete", "users/alice")):
            ran = await trio.to_thread.run_sync(lambda a=args: kdelta(path, *a))
            failed(ran, 3, "open for writing in another process", "read")
            assert "readonly=True" not in ran.err, ran.err
        assert await db.get("users", "alice") == 1
