"""Hostile review of workspaces, lineage and ``kdelta export``/``import``: what an
adversary (a tenant choosing names, a lying peer, a crafted file) tried, and what must
hold."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import cbor2
import pytest
import trio

import koru
from conftest import StepClock
from koru import workspace_namespace
from koru._cli import main

D = 4


def db_open() -> Any:
    return koru.open(":memory:", difficulty=D, clock=StepClock(), sync="os")


@pytest.mark.parametrize("name", ["t*", "*", "te?m"])
async def test_a_grant_on_a_workspace_named_with_a_wildcard_reaches_no_other(name: str) -> None:
    """Attack: a tenant picks the workspace name ``t*`` (or ``*``); its operator grants
    it ``workspace_namespace(name)``, as the docs say to. Globs have no escape, so that
    grant read every workspace starting with ``t`` (``team``'s secrets). What must
    hold: the helper never gives a glob wider than the workspace it names (it refuses
    such a name), and no handle of the tenant reads ``team``."""
    alice = koru.Identity.mine(D, rng=random.Random(1))
    async with db_open() as db:
        await db.register(alice)
        await db.workspace("team").put("docs", "plan", "secret")
        try:
            glob = workspace_namespace(name)
        except koru.InvalidDataError:
            return  # refused: no grant can be made this way
        await db.grant(alice, namespace=glob, actions="read,write,admin")
        with pytest.raises(koru.PermissionDeniedError):
            await db.as_identity(alice).workspace("team").get("docs", "plan")


# -- kdelta export / import -------------------------------------------------------------


async def _source(path: Path) -> str:
    """A database with workspaces (one dropped), lineage, a time to live and a delete."""
    async with koru.open(path, processes=False) as db:
        await db.put("a", "x", {"v": 1})
        await db.put("a", "y", 2, parents=[("a", "x")])
        ws = db.workspace("team")
        await ws.put("docs", "d1", "hi")
        await ws.put("docs", "d2", "ho", parents=["d1"])
        await db.workspace("gone").put("n", "k", 1)
        await db.drop_workspace("gone")
        await db.put("a", "t", 3, ttl=3600)
        await db.delete("a", "x")
        return await db.digest()


def _export(db: Path, file: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", str(db), "export", "-o", str(file), "--format", fmt]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("fmt", ["cbor", "jsonl"])
async def test_an_import_with_an_undecodable_event_writes_nothing(
    tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack: an export whose last event is not an event (bytes damaged or crafted;
    in JSON lines without a stated id, which only catches a changed event). Import
    said "the file is read and checked whole before anything is written", yet took
    the nine events before it and refused the tenth (exit 3): a part of a database,
    written. What must hold: exit 3 in one line naming the event, nothing written
    (not even an empty database made)."""
    await _source(tmp_path / "src")
    file = tmp_path / f"e.{fmt}"
    _export(tmp_path / "src", file, fmt, capsys)
    if fmt == "jsonl":
        lines = file.read_text().splitlines()  # (the last is the end mark)
        last = json.loads(lines[-2])
        del last["id"]
        last["event"] = base64.b64encode(b"\x85garbage").decode()
        file.write_text("\n".join([*lines[:-2], json.dumps(last), lines[-1]]) + "\n")
    else:
        stream = io.BytesIO(file.read_bytes())
        head, *events, _ = [
            cbor2.load(stream) for _ in iter(lambda: stream.tell() < len(stream.getvalue()), False)
        ]
        events.append(b"\x85garbage")
        end = {"koru-delta-export-end": len(events)}
        file.write_bytes(b"".join(map(cbor2.dumps, [head, *events, end])))
    copy = tmp_path / "copy"
    code = await trio.to_thread.run_sync(main, ["--db", str(copy), "import", str(file)])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("kdelta: ") and err.count("\n") == 1, err
    assert "not a valid event" in err
    assert not copy.exists()


async def test_the_command_line_reads_a_dropped_workspaces_lineage_and_views(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack: audit a dropped workspace from the command line, which docs/cli.md calls
    the audit tool ("reads also show a dropped workspace's history"). ``get`` and
    ``keys`` did; ``lineage`` and ``view list/show`` refused (exit 1, "was dropped").
    What must hold: every read answers from the history; writes still fail (exit 1)."""
    db = tmp_path / "db"
    async with koru.open(db, processes=False) as d:
        ws = d.workspace("gone")
        await ws.put("n", "a", {"x": 1})
        await ws.put("n", "b", 2, parents=["a"])
        await ws.create_view("v", "n", {})
        await d.drop_workspace("gone")

    def run(*argv: str) -> tuple[int, str]:
        code = main(["--db", str(db), "--json", *argv, "--workspace", "gone"])
        return code, capsys.readouterr().out

    for argv, expected in (
        (("lineage", "ancestors", "n/b"), [{"namespace": "n", "key": "a"}]),
        (("lineage", "descendants", "n/a"), [{"namespace": "n", "key": "b"}]),
        (("lineage", "path", "n/a", "n/b"), [{"namespace": "n", "key": k} for k in "ab"]),
        (("view", "show", "v"), None),
    ):
        code, out = await trio.to_thread.run_sync(lambda a=argv: run(*a))  # type: ignore[misc]
        assert code == 0, (argv, capsys.readouterr().err)
        if expected is not None:
            assert json.loads(out) == expected, argv
    code, out = await trio.to_thread.run_sync(lambda: run("get", "n/a"))
    assert code == 0 and json.loads(out)["value"] == {"x": 1}
    code, out = await trio.to_thread.run_sync(lambda: run("lineage", "top", "n"))
    assert code == 0 and [c["key"] for c in json.loads(out)] == ["a", "b"]
    code, out = await trio.to_thread.run_sync(lambda: run("view", "list"))
    assert code == 0 and [v["name"] for v in json.loads(out)] == ["v"]
    code, _ = await trio.to_thread.run_sync(lambda: run("set", "n/c", "3"))
    assert code == 1


async def test_two_exports_to_one_file_never_mix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: two exports to the same file at once (two cron jobs, or an attacker
    who starts one beside a backup). Both wrote through the one temporary name
    ``FILE.partial``: the second truncated the first's, renamed it, and the first
    kept writing into the renamed file, so the export that said "exported N events"
    (exit 0) left a file of the other's events with the first's written over them.
    What must hold: each export writes a file of its own; what ends at FILE is one
    whole export, byte for byte."""
    from koru._cli import _transfer

    await _source(tmp_path / "src")
    src = str(tmp_path / "src")
    out = tmp_path / "out"
    alone = tmp_path / "alone"
    _export(tmp_path / "src", alone, "cbor", capsys)
    events_of = _transfer._events_of
    inner: list[int] = []
    started: list[bool] = []

    def racing(path: Path, agents: list[str] | None) -> Any:
        for n, item in enumerate(events_of(path, agents)):
            if n == 1 and not started:  # the other export runs whole, half-way through
                started.append(True)
                inner.append(main(["--db", src, "export", "-o", str(out), "--format", "jsonl"]))
            yield item

    monkeypatch.setattr(_transfer, "_events_of", racing)
    code = await trio.to_thread.run_sync(
        main, ["--db", src, "export", "-o", str(out), "--format", "cbor"]
    )
    capsys.readouterr()
    assert inner == [0] and code == 0
    assert out.read_bytes() == alone.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["alone", "out", "src"]


@pytest.mark.parametrize("fmt", ["cbor", "jsonl"])
async def test_export_then_import_keeps_workspaces_and_lineage_exactly(
    tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """What held: a database with workspaces (one dropped), linked puts in both
    spaces, a time to live and a delete is the same after export and import (digest,
    workspaces with their times, the lineage graph), and importing twice changes
    nothing."""
    digest = await _source(tmp_path / "src")
    file = tmp_path / f"e.{fmt}"
    _export(tmp_path / "src", file, fmt, capsys)
    for _ in range(2):
        code = await trio.to_thread.run_sync(
            main, ["--db", str(tmp_path / "copy"), "import", str(file)]
        )
        assert code == 0
    capsys.readouterr()

    async def state(path: Path) -> Any:
        async with koru.open(path, processes=False, readonly=True) as db:
            return (
                await db.digest(),
                await db.workspaces(dropped=True),
                db._lineage.graph.content(),
                await db.audit_workspace("gone").keys("n"),
            )

    src, copy = await state(tmp_path / "src"), await state(tmp_path / "copy")
    assert src == copy and src[0] == digest and src[3] == ["k"]
    assert [w.name for w in src[1]] == ["gone", "team"] and len(src[2]) == 4


@pytest.fixture
def interactive() -> Any:
    """SIGINT handled as in an interactive session (Python's default handler), as a
    user pressing Ctrl-C meets it. Why: a process started in the background of a
    non-interactive shell inherits SIGINT ignored, which the command leaves ignored
    (as a background job's must be), and these tests then saw no interrupt."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.usefixtures("interactive")
def test_ctrl_c_while_an_import_reads_its_file_is_never_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: Ctrl-C while ``kdelta import`` reads and checks its file. cbor2 drops a
    KeyboardInterrupt raised inside it (its decoder silently; its encoder, which the
    strict decoder calls, printing "Exception ignored"), so the import went on, wrote
    every event and exited 0. Modelled here by a read that swallows the interrupt as
    cbor2 does. What must hold: exit 130, nothing written."""
    from koru._cli import _transfer

    trio.run(_source, tmp_path / "src")
    file = tmp_path / "e.cbor"
    _export(tmp_path / "src", file, "cbor", capsys)
    read = _transfer._read_export

    def swallowing(raw: bytes) -> list[bytes]:
        with contextlib.suppress(KeyboardInterrupt):  # what cbor2 does with it
            signal.raise_signal(signal.SIGINT)
        return read(raw)

    monkeypatch.setattr(_transfer, "_read_export", swallowing)
    copy = tmp_path / "copy"
    assert main(["--db", str(copy), "import", str(file)]) == 130
    assert not copy.exists()


@pytest.mark.usefixtures("interactive")
def test_ctrl_c_during_an_export_is_never_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: Ctrl-C half-way through ``kdelta export -o FILE``. When it landed inside
    cbor2 (reading the log), it was dropped: the export went on and exited 0 (about one
    interrupt in five, measured on a 40,000-event database). Modelled by a read that
    swallows the interrupt as cbor2 does. What must hold: exit 130, no file."""
    from koru._cli import _transfer

    trio.run(_source, tmp_path / "src")
    events_of = _transfer._events_of

    def swallowing(path: Path, agents: list[str] | None) -> Any:
        for n, item in enumerate(events_of(path, agents)):
            if n == 1:
                with contextlib.suppress(KeyboardInterrupt):  # what cbor2 does with it
                    signal.raise_signal(signal.SIGINT)
            yield item

    monkeypatch.setattr(_transfer, "_events_of", swallowing)
    out = tmp_path / "out.cbor"
    assert main(["--db", str(tmp_path / "src"), "export", "-o", str(out)]) == 130
    assert sorted(os.listdir(tmp_path)) == ["src"]
