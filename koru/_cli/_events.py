"""Reading the event logs: ``kdelta events`` (like ``git log``) and ``kdelta watch``
(changes as they happen).

Both read the logs through the store's side-effect-free reader on a read-only handle,
so they run beside a process that writes, and ``--follow``/``watch`` poll for what
that process appends next, starting each time from the cursor after the last record
read (so only the new bytes are read, and each is verified from there).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._base import Command, Failure, existing_database, parse_time, split_key
from ._output import Output, dumps, escape, short

if TYPE_CHECKING:
    from koru.events import Cursor, Event, FileStore, Record

__all__ = ["EVENT_COMMANDS", "describe"]

#: Seconds between polls of a followed log.
POLL_SECONDS = 0.2
_HEADER_FIELDS = 5  # origin, agent, seq, prev, hlc


def _iso(ns: int) -> str:
    from koru._types import _to_datetime

    return _to_datetime(ns).isoformat(timespec="milliseconds")


def describe(event: Event, record: Record, *, values: bool) -> dict[str, Any]:
    """An event as JSON data: where it is, its header, and its body (the key writes of
    key/value events, with values when asked; the fields of other types)."""
    from koru.events import decode_value

    doc: dict[str, Any] = {
        "agent": event.agent,
        "position": record.position,
        "id": record.event_id.hex(),
        "type": type(event).TAG,
        "time": _iso(event.hlc),
        "hlc": event.hlc,
        "origin": event.origin.hex(),
        "seq": event.seq,
        "prev": None if event.prev is None else event.prev.hex(),
    }
    writes = event.writes
    if writes:
        doc["writes"] = [
            {
                "namespace": w.namespace,
                "key": w.key,
                "deleted": w.value is None,
                **({"value": decode_value(w.value)} if values and w.value is not None else {}),
            }
            for w in writes
        ]
    else:
        fields: tuple[str, ...] = getattr(event, "_fields", ())[_HEADER_FIELDS:]
        body: tuple[Any, ...] = tuple(event)[_HEADER_FIELDS:]  # type: ignore[arg-type]
        doc["fields"] = {
            name: (v.hex() if isinstance(v, bytes) else v)
            for name, v in zip(fields, body, strict=True)
        }
    return doc


class Filter:
    """Which events (and which of their writes) a listing shows."""

    def __init__(
        self,
        namespace: str | None = None,
        key: str | None = None,
        since: int | None = None,
        until: int | None = None,
    ) -> None:
        self.namespace, self.key, self.since, self.until = namespace, key, since, until

    def wants(self, event: Event) -> bool:
        if self.since is not None and event.hlc < self.since:
            return False
        if self.until is not None and event.hlc > self.until:
            return False
        if self.namespace is None and self.key is None:
            return True
        return any(
            (self.namespace is None or w.namespace == self.namespace)
            and (self.key is None or w.key == self.key)
            for w in event.writes
        )


class Follower:
    """Reads agents' logs from where it last stopped, each call returning what is new."""

    def __init__(self, store: FileStore, agents: list[str]) -> None:
        from koru._loader import proven_cursors

        self.store = store
        self.cursors: dict[str, Cursor | None] = dict.fromkeys(agents)
        #: The first read holds each log to what the checkpoint proves durable (see
        #: proven_cursors): a log cut short is data loss, not a shorter listing.
        self.proven = proven_cursors(store)

    def read(self) -> Iterator[tuple[str, Record]]:
        for agent, cursor in self.cursors.items():
            records = (
                self.store.replay(agent, durable=self.proven.get(agent))
                if cursor is None
                else self.store.records(agent, after=cursor)
            )
            for record in records:
                yield agent, record
                self.cursors[agent] = self.store.cursor_after(record)

    def skip_to_end(self) -> None:
        """Start from the logs' current ends (``watch`` shows only what comes next)."""
        for _ in self.read():
            pass


def _time_bound(text: str | None, *, end: bool) -> int | None:
    if text is None:
        return None
    from koru._time import to_ns

    return to_ns(parse_time(text), end=end)


# -- events ----------------------------------------------------------------------------------


def _events_args(p: argparse.ArgumentParser) -> None:
    from koru.events import AGENTS

    p.add_argument("--agent", choices=AGENTS, metavar="AGENT", help="one agent's log only")
    p.add_argument("--ns", metavar="NS", help="events writing this namespace")
    p.add_argument("--key", metavar="KEY", help="events writing this key")
    p.add_argument("--since", metavar="TIME", help="events at or after TIME")
    p.add_argument("--until", metavar="TIME", help="events at or before TIME")
    p.add_argument("-n", "--limit", type=int, metavar="N", help="at most N events")
    p.add_argument("--full", action="store_true", help="values and whole ids")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep listing events as they are written"
    )


def _event_row(doc: dict[str, Any], full: bool) -> tuple[str, ...]:
    writes = doc.get("writes")
    if writes:
        first = writes[0]
        what = f"{first['namespace']}/{first['key']}"
        if len(writes) > 1:
            what += f" (+{len(writes) - 1} more)"
        if full:
            what = "; ".join(
                f"{w['namespace']}/{w['key']} = "
                + ("(deleted)" if w["deleted"] else dumps(w.get("value")))
                for w in writes
            )
    else:
        what = dumps(doc.get("fields", {}))
    ids = (lambda h: h) if full else short
    return (
        f"{doc['agent']}:{doc['position']}",
        doc["time"],
        doc["type"],
        what,
        ids(doc["id"]),
        ids(doc["origin"]),
    )


def _events(args: argparse.Namespace) -> int:
    from koru.events import AGENTS, FileStore, decode_trusted

    if args.limit is not None and args.limit < 0:
        raise Failure(2, "--limit must not be negative")
    path = existing_database(args)
    wanted = Filter(
        args.ns,
        args.key,
        _time_bound(args.since, end=False),
        _time_bound(args.until, end=True),
    )
    out = Output(as_json=args.json)
    agents = [args.agent] if args.agent else list(AGENTS)
    store = FileStore(path, readonly=True)
    try:
        follower = Follower(store, agents)
        shown = 0
        for _, record in follower.read():
            if args.limit is not None and shown >= args.limit:
                break
            event = decode_trusted(record.data)
            if wanted.wants(event):
                _show(out, describe(event, record, values=args.full), args.full)
                shown += 1
        return _follow(follower, wanted, out, args.full) if args.follow else 0
    finally:
        store.close()


def _show(out: Output, doc: dict[str, Any], full: bool) -> None:
    """One event: a JSON line, or a line of columns (streamed: a log may hold millions
    of events, so there is no table to lay out first)."""
    if out.json:
        out.line(doc)
        return
    position, when, kind, what, eid, origin = _event_row(doc, full)
    out.styled(
        f"[cyan]{escape(position):<14}[/] [dim]{when}[/] [bold]{escape(kind):<7}[/] "
        f"[yellow]{escape(eid)}[/] [dim]{escape(origin)}[/]  {escape(what)}"
    )


def _follow(follower: Follower, wanted: Filter, out: Output, full: bool) -> int:
    from koru.events import decode_trusted

    try:
        while True:
            for _, record in follower.read():
                event = decode_trusted(record.data)
                if wanted.wants(event):
                    _show(out, describe(event, record, values=full), full)
            time.sleep(POLL_SECONDS)  # clock-ok: a person waits; nothing is timestamped
    except KeyboardInterrupt:
        return 0


# -- watch -----------------------------------------------------------------------------------


def _watch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", metavar="NS[/KEY]", help="only this namespace (or key)")


def _watch(args: argparse.Namespace) -> int:
    from koru.events import STORAGE, FileStore, decode_trusted

    namespace = key = None
    if args.target:
        if "/" in args.target:
            namespace, key = split_key(args.target)
        else:
            namespace = args.target
    path = existing_database(args)
    out = Output(as_json=args.json)
    store = FileStore(path, readonly=True)
    try:
        follower = Follower(store, [STORAGE])
        follower.skip_to_end()
        if not out.json:
            out.styled(f"[dim]watching {escape(args.target or 'everything')} (Ctrl-C stops)[/]")
        try:
            while True:
                for _, record in follower.read():
                    _changes(out, decode_trusted(record.data), record, namespace, key)
                time.sleep(POLL_SECONDS)  # clock-ok: a person waits; nothing is timestamped
        except KeyboardInterrupt:
            return 0
    finally:
        store.close()


def _changes(
    out: Output, event: Event, record: Record, namespace: str | None, key: str | None
) -> None:
    from koru.events import decode_value, write_id

    for i, w in enumerate(event.writes):
        if (namespace is not None and w.namespace != namespace) or (
            key is not None and w.key != key
        ):
            continue
        value = None if w.value is None else decode_value(w.value)
        kind = "delete" if w.value is None else "put"
        doc = {
            "kind": kind,
            "namespace": w.namespace,
            "key": w.key,
            "value": value,
            "write_id": write_id(record.event_id, i).hex(),
            "time": _iso(event.hlc),
            "origin": event.origin.hex(),
            "position": record.position,
        }
        if out.json:
            out.line(doc)
        else:
            shown = "(deleted)" if w.value is None else dumps(value)
            colour = "red" if w.value is None else "green"
            out.styled(
                f"{doc['time']}  [{colour}]{kind:6}[/] {escape(w.namespace)}/{escape(w.key)}"
                f"  {escape(shown)}"
            )


EVENT_COMMANDS: tuple[Command, ...] = (
    Command(
        "events",
        "list the events in the logs, like git log",
        "kdelta events --ns users --since 2026-12-01T00:00:00Z --full",
        _events_args,
        _events,
    ),
    Command(
        "watch",
        "print changes as they are written (Ctrl-C stops)",
        "kdelta watch users",
        _watch_args,
        _watch,
    ),
)
