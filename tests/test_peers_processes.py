"""Three real ``kdelta start`` processes on loopback converge; a killed node catches up."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

import koru

KDELTA = str(Path(sys.executable).parent / "kdelta")
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _run(*args: str) -> str:
    done = subprocess.run([KDELTA, *args], capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _start(db: Path, owner: Path, *join: str, port: int = 0) -> tuple[subprocess.Popen[str], int]:
    args = [KDELTA, "--db", str(db), "start", "--port", str(port), "--owner", str(owner)]
    args += ["--difficulty", "4"]
    for url in join:
        args += ["--join", url]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()  # the one line it prints
    match = re.match(r"listening on ws://127\.0\.0\.1:(\d+) node ([0-9a-f]{32})", line)
    assert match, line + (proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
    return proc, int(match.group(1))


def _digest(db: Path) -> tuple[str, dict]:
    async def read() -> tuple[str, dict]:
        async with koru.open(db, readonly=True) as handle:
            return await handle.digest(), await handle.feed_heads()

    return trio.run(read)


def _converged(dbs: list[Path], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        seen = [_digest(db) for db in dbs]
        if all(s == seen[0] for s in seen):
            return seen[0][0]
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    _reap(proc)


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


# A pipe of a killed child is reported unclosed by the garbage collector mid-test;
# the children themselves are all reaped in the finally.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_three_processes_converge_and_a_killed_node_catches_up(tmp_path: Path) -> None:
    owner = tmp_path / "owner.key"
    _run("identity", "create", "-o", str(owner), "--difficulty", "4")
    dbs = [tmp_path / f"n{i}" for i in range(3)]
    for i, db in enumerate(dbs):  # each node writes before it starts (the lock is free)
        _run("--db", str(db), "set", f"ns/from{i}", f'"value {i}"')
    first, port = _start(dbs[0], owner)
    procs = [first]
    try:
        for db in dbs[1:]:
            procs.append(_start(db, owner, f"127.0.0.1:{port}")[0])
        digest = _converged(dbs)
        for db in dbs:
            for i in range(3):
                assert _run("--db", str(db), "get", f"ns/from{i}").strip() == f'"value {i}"'
        # Kill node 2 without warning; node 0 takes a new write while it is down.
        _reap(procs[2])
        _stop(procs[0])
        _run("--db", str(dbs[0]), "set", "ns/late", '"while n2 was down"')
        procs[0] = _start(dbs[0], owner, port=port)[0]
        procs[2] = _start(dbs[2], owner, f"127.0.0.1:{port}")[0]
        assert _converged(dbs) != digest
        assert _run("--db", str(dbs[2]), "get", "ns/late").strip() == '"while n2 was down"'
    finally:
        for proc in procs:
            _reap(proc)
