"""The README's and the docs' code blocks, and every example, run as documented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import koru

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), re.S)


def test_readme_quickstart_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = blocks(ROOT / "README.md", "python")
    assert found, "the README has no Python example"
    monkeypatch.setenv("KORU_HOME", str(tmp_path / "home"))
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(found[0], "README.md", "exec"), namespace)
    assert (tmp_path / "home" / "logs" / "storage").is_dir()

    async def check() -> None:
        async with koru.open() as db:  # the same default place, via KORU_HOME
            assert await db.get("users", "alice") == {"name": "Alice", "age": 30}
            assert len(await db.history("users", "alice")) == 1

    trio.run(check)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_docs_python_blocks_run(doc: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KORU_HOME", str(tmp_path / "home"))
    for n, code in enumerate(blocks(doc, "python")):
        exec(compile(code, f"{doc.name} block {n}", "exec"), {"__name__": "docs"})


def test_readme_command_line_block_runs(tmp_path: Path) -> None:
    """Every line of the README's command-line block, in order, in a fresh place."""
    script = next(b for b in blocks(ROOT / "README.md", "sh") if "kdelta" in b)
    env = {
        **os.environ,
        "KORU_HOME": str(tmp_path / "home"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "NO_COLOR": "1",
    }
    out: dict[str, str] = {}
    for line in script.splitlines():
        command = line.split("  #")[0].strip()
        done = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        out[command] = done.stdout
    assert json.loads(out["kdelta get users/alice"])["age"] == 31
    assert json.loads(out['kdelta get users/alice --at "3s ago"'])["age"] == 30
    assert "~ .age: 30 -> 31" in out["kdelta diff users/alice"]
    assert out["kdelta verify"].startswith("ok:")
    assert (tmp_path / "copy" / "checkpoint").exists()


def run_example(name: str) -> str:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT / "examples",
        env={**os.environ},
        check=True,
    ).stdout


def test_every_example_is_tested() -> None:
    tested = {"quickstart.py", "audit_trail.py", "config_management.py"}
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == tested


def test_quickstart_example_runs() -> None:
    out = run_example("quickstart.py")
    assert "current: {'age': 31, 'city': 'Lyon', 'name': 'Alice'}" in out
    assert "as of the first write: {'age': 30, 'name': 'Alice'}" in out
    assert "after delete, contains: False" in out


def test_audit_trail_example_runs() -> None:
    out = run_example("audit_trail.py")
    assert "never authorised: True" in out and "ip changed: True" in out
    assert "change ip: 10.0.0.4 -> 203.0.113.9" in out
    assert "balance when the payment was opened: 1200" in out
    assert "balance now: 250" in out
    assert "versions kept: 3 distinct ids: True" in out


def test_config_management_example_runs() -> None:
    out = run_example("config_management.py")
    assert "timeout at incident: 800" in out
    assert "flag at incident: True" in out and "flag now: False" in out
    changed = out.split("== what changed from the optimisation to the incident ==")[1]
    assert changed.split("== and since ==")[0].split() == [
        "timeout_ms",
        "->",
        "800",
        "new_checkout",
        "->",
        "True",
    ]
    assert "retries: 3 -> 0" in out
