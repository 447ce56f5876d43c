"""The README's quickstart and the examples run as documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import koru

ROOT = Path(__file__).resolve().parent.parent


def test_readme_quickstart_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.setenv("KORU_HOME", str(tmp_path / "home"))
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert (tmp_path / "home" / "logs" / "storage").is_dir()

    async def check() -> None:
        async with koru.open() as db:  # the same default place, via KORU_HOME
            assert await db.get("users", "alice") == {"name": "Alice", "age": 30}
            assert len(await db.history("users", "alice")) == 1

    trio.run(check)


def test_quickstart_example_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT / "examples",
        env={**os.environ},
        check=True,
    ).stdout
    assert "current: {'age': 31, 'city': 'Lyon', 'name': 'Alice'}" in out
    assert "as of the first write: {'age': 30, 'name': 'Alice'}" in out
    assert "after delete, contains: False" in out
