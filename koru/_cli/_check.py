"""Checking and describing a database: ``kdelta verify`` and ``kdelta stats``.

``verify`` is for a person who wants the whole picture, so it does not stop at the first
problem: every segment header, every record's checksums and chain link, every event's
shape (:func:`koru.events.verify_logs`), the checkpoint against a replay of the log and
its key directory against the checkpoint (:mod:`koru._audit`), and what recovery set
aside in ``lost+found``. It reads files only, so it is safe beside a live writer.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from ._base import Command, existing_database, with_database
from ._output import Output, escape

if TYPE_CHECKING:
    from koru import Database
    from koru.events import SegmentSummary

__all__ = ["CHECK_COMMANDS"]


def _problem(severity: str, where: str, message: str, **more: Any) -> dict[str, Any]:
    return {"severity": severity, "where": where, "message": message, **more}


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--logs-only",
        action="store_true",
        help="check the logs, not the checkpoint (which replays every log from genesis)",
    )


def _verify(args: argparse.Namespace) -> int:
    from koru.events import AGENTS, LOST_FOUND, verify_logs

    path = existing_database(args)
    out = Output(as_json=args.json)
    problems: list[dict[str, Any]] = []
    summaries: list[SegmentSummary] = []
    segments = sum(
        1
        for agent in AGENTS
        if os.path.isdir(d := os.path.join(path, "logs", agent))
        for name in os.listdir(d)
        if name.endswith(".seg")
    )
    progress = out.progress("verifying segments", segments)
    if progress is not None:
        progress.start()
    try:
        seen = 0
        for found in verify_logs(path, summaries):
            problems.append(
                _problem(
                    found.severity,
                    f"{os.path.relpath(found.path, path)} @ {found.offset} "
                    f"(record {found.position})",
                    found.message,
                    agent=found.agent,
                    path=found.path,
                    offset=found.offset,
                    position=found.position,
                )
            )
            if progress is not None and len(summaries) != seen:
                seen = len(summaries)
                progress.update(progress.task_ids[0], completed=seen)
    finally:
        if progress is not None:
            progress.stop()
    notes = _check_store(path, problems, checkpoint=not args.logs_only)
    lost = os.path.join(path, LOST_FOUND)
    if os.path.isdir(lost):
        try:
            kept = sorted(os.listdir(lost))
        except OSError as exc:  # a writer's private directory, say
            kept = []
            why = exc.strerror or str(exc)
            problems.append(_problem("warning", LOST_FOUND, f"cannot be listed: {why}"))
        for name in kept:
            problems.append(
                _problem(
                    "warning",
                    f"{LOST_FOUND}/{name}",
                    "bytes a recovery set aside (written after the last point the log "
                    "was proven durable; never acknowledged)",
                )
            )
    elif os.path.lexists(lost):
        problems.append(
            _problem(
                "warning",
                LOST_FOUND,
                "not a directory: a recovery that must set bytes aside will not open the "
                "database for writing until it is moved away",
            )
        )
    errors = sum(p["severity"] == "error" for p in problems)
    warnings = len(problems) - errors
    records = sum(s.records for s in summaries)
    if out.json:
        out.doc(
            {
                "ok": errors == 0,
                "errors": errors,
                "warnings": warnings,
                "segments": len(summaries),
                "records": records,
                "problems": problems,
                "notes": notes,
            }
        )
    else:
        for p in problems:
            colour = "red" if p["severity"] == "error" else "yellow"
            out.styled(f"[{colour}]{p['severity']}[/] {escape(p['where'])}: {escape(p['message'])}")
        for note in notes:
            out.styled(f"[dim]note: {escape(note)}[/]")
        verdict = "[green]ok[/]" if errors == 0 else "[red]damaged[/]"
        out.styled(
            f"{verdict}: {len(summaries)} segments, {records} records checked; "
            f"{errors} errors, {warnings} warnings"
        )
    return 0 if errors == 0 else 3


def _check_store(path: Any, problems: list[dict[str, Any]], *, checkpoint: bool) -> list[str]:
    """The meta file and manifest (by opening the store read-only), and the checkpoint
    (and its tables) against a replay."""
    from koru._audit import audit_checkpoint
    from koru._nodekey import node_public_key
    from koru._read_floor import READ_FLOOR_FILE, check_read_floor
    from koru.events import FileStore, KoruError

    try:
        store = FileStore(path, readonly=True)
    except KoruError as exc:
        problems.append(_problem("error", "meta", str(exc)))
        return []
    notes: list[str] = []
    try:
        if checkpoint:
            try:
                found, notes = audit_checkpoint(store)
            except KoruError as exc:  # a file it reads cannot be read: one more problem
                found, notes = [str(exc)], []
            problems.extend(_problem("error", "checkpoint", message) for message in found)
        else:
            notes.append("the checkpoint was not checked (--logs-only)")
        _, problem = check_read_floor(store, node_public_key(store))
        if problem is not None:
            problems.append(_problem("warning", READ_FLOOR_FILE, f"ignored: {problem}"))
    finally:
        store.close()
    return notes


# -- stats ---------------------------------------------------------------------------------


def _stats(args: argparse.Namespace) -> int:
    from koru.events import AGENTS

    path = existing_database(args)

    async def gather(db: Database) -> dict[str, Any]:
        stats = (await db.stats())._asdict()
        roots = await db.roots()
        heads = await db.feed_heads()
        return {"stats": stats, "roots": roots, "feeds": heads}

    found = with_database(args, gather, readonly=True)
    agents = {}
    for agent in AGENTS:
        directory = os.path.join(path, "logs", agent)
        if not os.path.isdir(directory):
            continue
        files = [os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".seg")]
        agents[agent] = {
            "segments": len(files),
            "bytes": sum(os.path.getsize(f) for f in files),
            "root": found["roots"][agent],
            "feeds": {
                origin: seq
                for (origin, feed_agent), seq in found["feeds"].items()
                if feed_agent == agent
            },
        }
    sizes = {
        name: os.path.getsize(os.path.join(path, name))
        for name in ("meta", "checkpoint")
        if os.path.exists(os.path.join(path, name))
    }
    tables = path / "tables"
    if tables.is_dir():
        found_tables = list(tables.glob("*.tab"))
        sizes["tables"] = sum(t.stat().st_size for t in found_tables)
        sizes["table files"] = len(found_tables)
    doc = {"database": found["stats"], "agents": agents, "files": sizes}
    out = Output(as_json=args.json)
    if out.json:
        out.doc(doc)
        return 0
    out.table(("statistic", "value"), sorted(found["stats"].items()))
    out.text("")
    out.table(
        ("agent", "segments", "bytes", "feeds", "root"),
        (
            (a, d["segments"], d["bytes"], sum(d["feeds"].values()), d["root"][:16])
            for a, d in agents.items()
        ),
    )
    out.text("")
    out.table(("file", "bytes"), sizes.items())
    return 0


# -- replay --------------------------------------------------------------------------------


def _replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--until",
        metavar="TIME",
        help="fold only events at or before TIME (ISO-8601 with an offset, int ns, '2h ago')",
    )
    p.add_argument(
        "--position",
        type=int,
        metavar="N",
        help="fold only the first N records of the storage log",
    )


def _replay(args: argparse.Namespace) -> int:
    from koru._replay import replay

    from ._base import parse_time

    path = existing_database(args)
    until = None if args.until is None else parse_time(args.until)
    found = replay(path, until=until, position=args.position)
    out = Output(as_json=args.json)
    if out.json:
        out.doc(found._asdict())
        return 0
    out.text(f"digest    {found.digest}")
    out.text(
        f"keys      {found.keys} live, {found.deleted_keys} deleted, {found.versions} versions"
    )
    by_log = ", ".join(f"{agent} {n}" for agent, n in found.events.items())
    out.text(f"events    {sum(found.events.values())} ({by_log})")
    if found.namespaces:
        out.table(("namespace", "keys"), found.namespaces.items())
    return 0


CHECK_COMMANDS: tuple[Command, ...] = (
    Command(
        "verify",
        "check every checksum, chain link and checkpoint; exit 3 and list every problem",
        "kdelta verify --json",
        _verify_args,
        _verify,
    ),
    Command(
        "replay",
        "rebuild the state at a point of the log; print its digest and a summary",
        "kdelta replay --until '2026-12-01T09:00:00Z'",
        _replay_args,
        _replay,
    ),
    Command(
        "stats",
        "counters, agents (segments, bytes, roots, feeds) and files",
        "kdelta stats",
        lambda p: None,
        _stats,
    ),
)
