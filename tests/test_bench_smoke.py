"""Smoke test of the benchmark script: a tiny run must work and print a table row."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_put_os_prints_a_row() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "put_os"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A table row: workload, koru, reference, ratio, unit.
    row = re.compile(r"^put sync=os .*\s(\d+(?:\.\d+)?)\s+puts/s\s*$", re.MULTILINE)
    match = row.search(proc.stdout)
    assert match is not None, proc.stdout
    assert float(match.group(1)) > 0


def test_bench_quick_query_rows_agree_with_sqlite() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--only",
            "query_scan,query_index",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MISMATCH" not in proc.stdout, proc.stdout
    assert re.search(r"^query filter\+sort.*ms/query\s*$", proc.stdout, re.MULTILINE)
    assert re.search(r"^indexed eq query vs koru's own full scan.*µs/query\s*$", proc.stdout, re.M)


def test_bench_quick_auth_rows() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--only",
            "auth_verify,auth_chain",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^signature check .*\s\d[\d,.]*\s+/s\s*$", proc.stdout, re.MULTILINE)
    assert re.search(r"^capability chain of 8, .*µs/check\s*$", proc.stdout, re.MULTILINE)
    assert "target signature checks vs VerifyKey.verify" in proc.stdout


def test_bench_remote_quick_prints_each_row() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "remote.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(r"^(get|put), .*\s(\d+)\s+(\d+)\s+(\d+\.\d+)\s+calls/s$", proc.stdout, re.M)
    assert len(rows) == 6, proc.stdout
    assert all(int(ours) > 0 and int(ref) > 0 for _, ours, ref, _ in rows)
