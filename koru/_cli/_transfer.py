"""Moving events between databases: ``kdelta export`` and ``kdelta import``.

An export holds events exactly as stored (their canonical bytes, so their ids and
every hash chain stay what they were), each agent's log in order, so every feed comes
in sequence. Two forms, both round-trippable:

- CBOR: a CBOR sequence, a header map (``{"koru-delta-export": 1, "node": id}``)
  followed by one byte string per event;
- JSON lines: a header line, then one object per event with its bytes in base64 under
  ``"event"``, its id, and its readable fields (for people and tools; ignored on import).

Import goes through the one ingest path (:meth:`koru.Database.ingest`): every event is
decoded strictly with its values checked, its id computed from its bytes (and compared
with the id a JSON line states), and it must continue its feed. The file is read and
checked whole (its shape, then every event decoded strictly) before anything is
written.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import io
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ._base import (
    Command,
    DuplicateKeyError,
    Failure,
    existing_database,
    unique_keys,
    with_database,
)
from ._output import Output

if TYPE_CHECKING:
    from koru import Database, IngestResult

__all__ = ["TRANSFER_COMMANDS"]

_MARK = "koru-delta-export"
_VERSION = 1
#: The last item of an export to standard output that stopped half-way (damage met, a
#: Ctrl-C): what came before is a valid export of part of the database, which import
#: would otherwise take whole. Import refuses a stream holding it (so do imports that
#: predate it: it is no event).
_CUT = "koru-delta-export-cut-short"
#: The last item of a whole export, with the number of events before it; its header
#: promises it (``_ENDS: True``). Why: an export killed outright (SIGKILL, the machine
#: lost) writes no cut-short mark, and Python's buffered standard output writes whole
#: items, so the reader held a stream ending at an item boundary, imported as whole.
#: An export whose header promises no end mark (one written before it) is read as
#: before.
_END = "koru-delta-export-end"
_ENDS = "ends"
#: Events per ingest call: large enough to be quick, small enough to keep the event
#: loop responsive (ingest folds a call's events without yielding).
CHUNK = 2000


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write here ('-' or none: standard output)"
    )
    p.add_argument(
        "--format",
        choices=("cbor", "jsonl"),
        help="cbor (compact) or jsonl (readable); default: jsonl for a .jsonl file or "
        "standard output, else cbor",
    )
    p.add_argument("--agent", action="append", metavar="AGENT", help="only this agent's log")


def _log_bytes(path: Path) -> int:
    logs = path / "logs"
    return sum(p.stat().st_size for p in logs.glob("*/*.seg")) if logs.is_dir() else 0


def _events_of(path: Path, agents: list[str] | None) -> Iterator[tuple[bytes, bytes, Any]]:
    from koru._loader import proven_cursors
    from koru.events import AGENTS, FileStore, decode_trusted

    unknown = sorted(set(agents or ()) - set(AGENTS))
    if unknown:
        raise Failure(2, f"no agent is called {unknown[0]!r} (agents: {', '.join(AGENTS)})")
    store = FileStore(path, readonly=True)
    try:
        proven = proven_cursors(store)
        for agent in AGENTS:
            if agents is None or agent in agents:
                for record in store.replay(agent, durable=proven.get(agent)):
                    yield record.data, record.event_id, decode_trusted(record.data)
    finally:
        store.close()


def _export(args: argparse.Namespace) -> int:
    import cbor2

    from ._events import _iso

    path = existing_database(args)
    if args.output == "-":
        args.output = None
    fmt = args.format or (
        "jsonl" if args.output is None or args.output.lower().endswith(".jsonl") else "cbor"
    )
    if fmt == "cbor" and args.output is None and sys.stdout.isatty():
        raise Failure(2, "will not write CBOR to a terminal: use -o FILE or --format jsonl")
    node = (path / "meta").exists() and _node_of(path)
    # A file is written under a temporary name and renamed once whole: an export cut
    # short (damage met half-way, Ctrl-C, a full disk) must not leave a file that is a
    # valid export of part of the database, which import would take without a word.
    # The name is this export's own, made with O_EXCL: two exports to one file at once
    # each write their own (one shared name let the second truncate and rename the
    # first's while it was still being written), and no file or link found there is
    # written through.
    # A named pipe, a terminal or a link to one (/dev/stdout) is written through, as a
    # shell redirection would: renaming a file into its place replaced it.
    # Through a link, the file it names is replaced, not the link (/dev/stdout, when
    # standard output is a file, names that file).
    streamed = args.output is not None and _is_stream(args.output)
    final = args.output
    if final is not None and not streamed and os.path.islink(final):
        final = os.path.realpath(final)
    partial = (
        None
        if final is None or streamed
        else f"{final}.{os.getpid()}.{os.urandom(4).hex()}.partial"
    )
    if args.output is not None and os.path.isdir(args.output):
        raise Failure(2, f"cannot write {args.output}: it is a directory")
    try:
        if partial is None:
            sink: IO[bytes] = (
                open(args.output, "wb") if streamed else sys.stdout.buffer  # noqa: SIM115
            )
        else:
            sink = os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")
    except OSError as exc:
        raise Failure(2, f"cannot write {args.output}: {exc.strerror}") from None
    count = 0
    # A bar on standard error when a person waits for a file to be written.
    progress = (
        Output(as_json=args.json).progress("exporting", _log_bytes(path)) if args.output else None
    )
    if progress is not None:
        progress.start()
    try:
        with _interrupts_kept():  # a Ctrl-C is never lost: no file then
            if fmt == "cbor":
                sink.write(cbor2.dumps({_MARK: _VERSION, "node": node, _ENDS: True}))
            else:
                head = {_MARK: _VERSION, "node": node.hex() if node else None, _ENDS: True}
                sink.write(_line(head))
            try:
                for data, eid, event in _events_of(path, args.agent):
                    if fmt == "cbor":
                        sink.write(cbor2.dumps(data))
                    else:
                        sink.write(
                            _line(
                                {
                                    "id": eid.hex(),
                                    "agent": event.agent,
                                    "type": type(event).TAG,
                                    "origin": event.origin.hex(),
                                    "seq": event.seq,
                                    "time": _iso(event.hlc),
                                    "event": base64.b64encode(data).decode(),
                                }
                            )
                        )
                    count += 1
                    if progress is not None:
                        progress.advance(progress.task_ids[0], len(data) + 44)  # + framing
            except BaseException as exc:
                if partial is None:  # standard output: what was written cannot be taken back
                    _cut_short(sink, fmt, exc)
                raise
            sink.write(cbor2.dumps({_END: count}) if fmt == "cbor" else _line({_END: count}))
        if partial is not None:
            sink.flush()
            os.fsync(sink.fileno())  # a backup: whole on disk before it has its name
            sink.close()
            os.replace(partial, final)
    except OSError as exc:
        if partial is None:
            raise  # standard output: a closed pipe is main()'s business
        raise Failure(3, f"writing {args.output} failed: {exc.strerror}") from None
    finally:
        if progress is not None:
            progress.stop()
        if partial is None:
            sink.flush()
            if streamed:
                sink.close()
        else:
            sink.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
    if args.output:
        out = Output(as_json=args.json)
        if out.json:
            out.doc({"events": count, "format": fmt, "file": args.output})
        else:
            print(f"exported {count} events to {args.output} ({fmt})", file=sys.stderr)
    return 0


def _is_stream(output: str) -> bool:
    """Whether ``output`` names something that exists and is no regular file nor a
    directory (a named pipe, a terminal, a device, or a link to one)."""
    try:
        mode = os.stat(output).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _cut_short(sink: IO[bytes], fmt: str, exc: BaseException) -> None:
    """End a stream an export could not finish with the mark import refuses."""
    import cbor2

    why = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc) or type(exc).__name__
    with contextlib.suppress(OSError):  # a closed pipe has no reader to warn
        sink.write(cbor2.dumps({_CUT: why}) if fmt == "cbor" else _line({_CUT: why}))
        sink.flush()


def _node_of(path: Path) -> bytes | None:
    from koru.events import FileStore

    store = FileStore(path, readonly=True)
    try:
        return store.node_id
    finally:
        store.close()


def _line(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc) + "\n").encode()


# -- import ----------------------------------------------------------------------------------


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file", metavar="FILE", help="an export (cbor or jsonl); '-' reads standard input"
    )


def _read_export(raw: bytes) -> list[bytes]:
    """The events of an export, in order, checked for shape (and stated ids)."""
    import cbor2

    from koru.events import event_id

    if raw[:1] == b"{":
        lines = raw.decode("utf-8", errors="strict").splitlines()
        try:
            head = json.loads(lines[0], object_pairs_hook=unique_keys) if lines else None
        except DuplicateKeyError as exc:
            raise Failure(3, f"line 1: not a koru-delta export header ({exc})") from None
        except (ValueError, RecursionError):
            head = None
        if not isinstance(head, dict) or head.get(_MARK) != _VERSION:
            raise Failure(3, "not a koru-delta export (no header line)")
        ends = head.get(_ENDS) is True
        ended = False
        events: list[bytes] = []
        for n, text in enumerate(lines[1:], 2):
            if not text.strip():
                continue
            if ended:
                raise Failure(3, f"line {n}: more after the export's end mark")
            try:
                doc = json.loads(text, object_pairs_hook=unique_keys)
                if isinstance(doc, dict) and _CUT in doc:
                    raise Failure(3, f"line {n}: {_cut_message(doc[_CUT])}")
                if ends and isinstance(doc, dict) and _END in doc:
                    _check_end(doc, len(events), f"line {n}")
                    ended = True
                    continue
                data = base64.b64decode(doc["event"], validate=True)
            except (ValueError, KeyError, TypeError, RecursionError, binascii.Error) as exc:
                raise Failure(3, f"line {n}: not an exported event ({exc})") from None
            stated = doc.get("id")
            if stated is not None and stated != event_id(data).hex():
                raise Failure(3, f"line {n}: the event's bytes do not have the id {stated}")
            events.append(data)
        if ends and not ended:
            raise Failure(3, _cut_message("no end mark: the exporter stopped before its end"))
        return events
    stream = io.BytesIO(raw)
    try:
        head = cbor2.load(stream)
    except Exception:
        head = None
    if not isinstance(head, dict) or head.get(_MARK) != _VERSION:
        raise Failure(3, "not a koru-delta export (no header)")
    ends = head.get(_ENDS) is True
    ended = False
    events = []
    while stream.tell() < len(raw):
        at = stream.tell()
        if ended:
            raise Failure(3, f"byte {at}: more after the export's end mark")
        try:
            item = cbor2.load(stream)
        except Exception as exc:
            raise Failure(3, f"byte {at}: not an exported event ({exc})") from None
        if isinstance(item, dict) and _CUT in item:
            raise Failure(3, f"byte {at}: {_cut_message(item[_CUT])}")
        if ends and isinstance(item, dict) and _END in item:
            _check_end(item, len(events), f"byte {at}")
            ended = True
            continue
        if type(item) is not bytes:
            raise Failure(3, f"byte {at}: not an exported event (a {type(item).__name__})")
        events.append(item)
    if ends and not ended:
        raise Failure(3, _cut_message("no end mark: the exporter stopped before its end"))
    return events


def _check_end(mark: dict[Any, Any], count: int, where: str) -> None:
    """An end mark must state the number of events before it, and hold nothing else
    (more entries, an event's among them, were dropped without a word)."""
    if len(mark) != 1:
        raise Failure(3, f"{where}: an end mark holds its count only, not {len(mark)} entries")
    stated = mark[_END]
    if type(stated) is not int or stated != count:
        raise Failure(3, f"{where}: the end mark states {stated!r} events, {count} came before it")


def _cut_message(why: Any) -> str:
    return f"the export was cut short ({str(why)[:200]!r}): it holds part of the database only"


def _check_events(events: list[bytes]) -> None:
    """Each event decodes strictly (its values too) and is within the size limit, or
    exit 3 before anything is written: a damaged file must not be imported in part.
    (Whether an event continues its feed depends on the database: ingest says.)"""
    from koru.events import MAX_EVENT_SIZE, CodecError, decode_event

    for n, data in enumerate(events, 1):
        if len(data) > MAX_EVENT_SIZE:
            raise Failure(
                3, f"event {n}: {len(data)} bytes is over the {MAX_EVENT_SIZE}-byte limit"
            )
        try:
            decode_event(data, check_values=True)
        except CodecError as exc:
            raise Failure(3, f"event {n}: not a valid event ({exc})") from None


@contextlib.contextmanager
def _interrupts_kept() -> Iterator[None]:
    """Ctrl-C inside the block raises KeyboardInterrupt, and again at its end if
    something swallowed it: cbor2 drops an exception raised inside it (a signal handler's
    included), and an import told to stop must not go on to write every event."""
    import signal  # (here: every command's start-up would pay for them)
    import threading

    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):
        # (Ignored by whoever started it, as a shell does for a background job: an
        # interrupt meant for the foreground must not stop it; h-cli.)
        yield
        return
    interrupted: list[bool] = []

    def note(signum: int, frame: Any) -> None:
        interrupted.append(True)
        raise KeyboardInterrupt

    def unraisable(info: Any) -> None:
        if not isinstance(info.exc_value, KeyboardInterrupt):  # else it is noted
            hook(info)

    old, hook = signal.signal(signal.SIGINT, note), sys.unraisablehook
    sys.unraisablehook = unraisable  # the encoder prints what it drops
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        sys.unraisablehook = hook
    if interrupted:
        raise KeyboardInterrupt


def _import(args: argparse.Namespace) -> int:
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        raise Failure(1, f"cannot read {args.file}: {exc.strerror}") from None
    with _interrupts_kept():
        try:
            events = _read_export(raw)
        except UnicodeDecodeError as exc:
            raise Failure(3, f"not a koru-delta export: {exc}") from None
        _check_events(events)
    out = Output(as_json=args.json)
    progress = out.progress("importing", len(events))

    async def ingest(db: Database) -> tuple[int, int, int, list[Any]]:
        accepted = duplicates = 0
        refused: list[Any] = []
        result: IngestResult | None = None
        if progress is not None:
            progress.start()
        try:
            for i in range(0, len(events), CHUNK):
                result = await db.ingest(events[i : i + CHUNK])
                accepted += result.accepted
                duplicates += result.duplicates
                refused.extend(result.refused)
                if progress is not None:
                    progress.update(progress.task_ids[0], completed=min(i + CHUNK, len(events)))
        finally:
            if progress is not None:
                progress.stop()
        held = 0 if result is None else result.held
        return accepted, duplicates, held, refused

    accepted, duplicates, held, refused = with_database(args, ingest, create=True)
    doc = {
        "events": len(events),
        "accepted": accepted,
        "duplicates": duplicates,
        "held": held,
        "refused": [r._asdict() for r in refused],
    }
    if out.json:
        out.doc(doc)
    else:
        out.text(
            f"{len(events)} events: {accepted} imported, {duplicates} already held, "
            f"{held} waiting for earlier events, {len(refused)} refused"
        )
        for r in refused:
            out.text(f"  refused {r.event_id or '(not an event)'}: {r.reason}")
    return 3 if refused or held else 0


TRANSFER_COMMANDS: tuple[Command, ...] = (
    Command(
        "export",
        "write every event, as stored, to a file (CBOR or JSON lines)",
        "kdelta export -o backup.cbor",
        _export_args,
        _export,
    ),
    Command(
        "import",
        "take in the events of an export through the ingest path (verified)",
        "kdelta --db ./copy import backup.cbor",
        _import_args,
        _import,
    ),
)
