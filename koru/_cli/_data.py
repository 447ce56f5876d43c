"""The data commands: set, get, log, diff, delete, keys, namespaces, status.

Reads are one-shot (:mod:`koru._snapshot`): no trio, no lock, answered through the
checkpoint's key directory when it can, so they work beside a process that writes the
database. Writes open the database (which takes its lock) and return once the write is
durable.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ._base import (
    Command,
    Failure,
    existing_database,
    parse_time,
    parse_value,
    read_snapshot,
    space_of,
    split_key,
    version_doc,
    with_database,
    workspace_argument,
)
from ._output import Output, dumps, escape, short

if TYPE_CHECKING:
    from collections.abc import Callable

    from koru import Database, Version, Versioned
    from koru._diff import Diff

__all__ = ["DATA_COMMANDS"]

_VALUE_WIDTH = 60


def _key_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("key", metavar="NS/KEY", help="namespace and key, split at the first '/'")
    workspace_argument(p)


def _stored(args: argparse.Namespace) -> tuple[str, str, str]:
    """(namespace, its stored form in the command's space, key) of ``NS/KEY``."""
    namespace, key = split_key(args.key)
    return namespace, space_of(args).inward(namespace), key


def _compact(value: Any, full: bool) -> str:
    text = dumps(value)
    return text if full or len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 1] + "…"


@contextmanager
def _named(namespace: str) -> Iterator[None]:
    """A key not found is named as the command line named it (not its stored form)."""
    from koru.events import KeyNotFoundError, NoValueAtTimeError

    try:
        yield
    except KeyNotFoundError as exc:
        raise KeyNotFoundError(namespace, exc.key) from None
    except NoValueAtTimeError as exc:
        raise NoValueAtTimeError(namespace, exc.key, exc.at_ns) from None


def _when(v: Version | Versioned) -> str:
    return v.datetime.isoformat(timespec="milliseconds")


# -- set -----------------------------------------------------------------------------------


def _set_args(p: argparse.ArgumentParser) -> None:
    _key_argument(p)
    p.add_argument(
        "value",
        metavar="VALUE",
        help="JSON text; '-' reads it from standard input, '@FILE' from a file",
    )
    p.add_argument(
        "--ttl",
        type=float,
        metavar="SECONDS",
        help="a time to live: the value reads as absent after this many seconds",
    )
    p.add_argument(
        "--parent",
        action="append",
        metavar="NS/KEY",
        help="a key the value was derived from (lineage; repeat for several)",
    )


def _set(args: argparse.Namespace) -> int:
    namespace, _, key = _stored(args)
    value = parse_value(args.value)
    parents = None if args.parent is None else [split_key(p) for p in args.parent]

    async def put(db: Database) -> Version:
        space = db if args.workspace is None else db.workspace(args.workspace)
        return await space.put(namespace, key, value, ttl=args.ttl, parents=parents)

    version = with_database(args, put, create=True)
    out = Output(as_json=args.json)
    if out.json:
        out.doc(version_doc(version))
    else:
        expiry = "" if version.expires is None else f", expires {_iso(version.expires)}"
        out.text(
            f"{namespace}/{key}: version {short(version.write_id)} at {_when(version)}{expiry}"
        )
    return 0


def _iso(ns: int) -> str:
    from koru._types import _to_datetime

    return _to_datetime(ns).isoformat(timespec="milliseconds")


# -- get -----------------------------------------------------------------------------------


def _get_args(p: argparse.ArgumentParser) -> None:
    _key_argument(p)
    p.add_argument(
        "--at",
        metavar="TIME",
        help="time travel: the value at TIME (ISO-8601 with an offset, or int ns)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also show the version's metadata")


def _get(args: argparse.Namespace) -> int:
    namespace, stored, key = _stored(args)
    with read_snapshot(args) as snap, _named(namespace):
        if args.at is not None:
            found = snap.reads.at(stored, key, parse_time(args.at))
        else:
            found = snap.reads.versioned(stored, key)
    found = found._replace(namespace=namespace)
    out = Output(as_json=args.json)
    if out.json:
        out.doc({"value": found.value, **version_doc(found.version)})
        return 0
    out.value(found.value)
    if args.verbose:
        out.text(
            f"# version {found.write_id} at {_when(found)} by {short(found.origin)}, "
            f"previous {found.previous or '-'}"
        )
    return 0


# -- log -----------------------------------------------------------------------------------


def _log_args(p: argparse.ArgumentParser) -> None:
    _key_argument(p)
    p.add_argument("-n", "--limit", type=int, metavar="N", help="only the newest N versions")
    p.add_argument("--since", metavar="TIME", help="versions at or after TIME")
    p.add_argument("--until", metavar="TIME", help="versions at or before TIME")
    p.add_argument("--reverse", action="store_true", help="oldest first")
    p.add_argument("--full", action="store_true", help="whole values and ids")


def _log(args: argparse.Namespace) -> int:
    namespace, stored, key = _stored(args)
    if args.limit is not None and args.limit < 0:
        raise Failure(2, "--limit must not be negative")
    since = None if args.since is None else parse_time(args.since)
    until = None if args.until is None else parse_time(args.until)
    with read_snapshot(args) as snap:
        if not snap.reads.kv.history_raw(stored, key):
            raise Failure(1, f"{namespace}/{key} was never written")
        rows = snap.reads.history(stored, key, since, until, args.limit)
    rows = [r._replace(namespace=namespace) for r in rows]
    if not args.reverse:
        rows.reverse()
    out = Output(as_json=args.json)
    if out.json:
        out.doc([{"value": r.value, **version_doc(r.version)} for r in rows])
        return 0
    if args.full:
        out.table(
            ("time", "version", "origin", "previous", "value"),
            (
                (_when(r), r.write_id, r.origin, r.previous or "-", _shown(r, full=True))
                for r in rows
            ),
        )
    else:
        out.table(
            ("time", "version", "value"),
            ((_when(r), short(r.write_id), _shown(r, full=False)) for r in rows),
        )
    return 0


def _shown(r: Versioned, *, full: bool) -> str:
    return "(deleted)" if r.deleted else _compact(r.value, full)


# -- diff ----------------------------------------------------------------------------------


def _version_refs(text: str) -> list[int | str]:
    """What ``text`` may name, in the order tried: a history index, then a write id
    prefix (the other way round for a leading zero). Why both: a prefix copied from
    ``kdelta log`` is all decimal digits about one time in forty (eight hex digits),
    and read as an index alone it named no version."""
    try:
        index = int(text)
    except ValueError:
        return [text]
    if len(text) < 4 or not (text.isascii() and text.isdigit()):
        return [index]  # (a sign, an underscore or short: only an index)
    # Nobody writes an index with a leading zero: "0123" is a prefix first.
    return [text, index] if text[0] == "0" else [index, text]


def _diff_args(p: argparse.ArgumentParser) -> None:
    _key_argument(p)
    p.add_argument(
        "--from",
        dest="old",
        default="-2",
        metavar="V",
        help=(
            "history index (0 oldest, -1 newest) or write id prefix (digits that name no "
            "index are one); default -2"
        ),
    )
    p.add_argument("--to", dest="new", default="-1", metavar="V", help="as --from; default -1")


def _first_found(
    diff: Callable[[int | str, int | str], Diff], pairs: list[tuple[int | str, int | str]]
) -> Diff:
    """``diff`` of the first pair of references that both name a version; else the
    first pair's error."""
    from koru.events import VersionNotFoundError

    first: VersionNotFoundError | None = None
    for old, new in pairs:
        try:
            return diff(old, new)
        except VersionNotFoundError as exc:
            first = first or exc
    assert first is not None
    raise first


def _path(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path) or "(the value)"


def _diff(args: argparse.Namespace) -> int:
    namespace, stored, key = _stored(args)
    with read_snapshot(args) as snap:
        diff = _first_found(
            lambda old, new: snap.reads.diff(stored, key, old, new),
            [(o, n) for o in _version_refs(args.old) for n in _version_refs(args.new)],
        )
    diff = diff._replace(
        old=diff.old._replace(namespace=namespace), new=diff.new._replace(namespace=namespace)
    )
    out = Output(as_json=args.json)
    if out.json:
        out.doc(
            {
                "old": version_doc(diff.old),
                "new": version_doc(diff.new),
                "changes": [c._asdict() for c in diff.changes],
            }
        )
        return 0
    out.styled(
        f"[bold]{escape(namespace)}/{escape(key)}[/]  {short(diff.old.write_id)} "
        f"({_when(diff.old)}) -> {short(diff.new.write_id)} ({_when(diff.new)})"
    )
    for c in diff.changes:
        where = escape(_path(c.path))
        if c.op == "add":
            out.styled(f"[green]+ {where}: {escape(dumps(c.new))}[/]")
        elif c.op == "remove":
            out.styled(f"[red]- {where}: {escape(dumps(c.old))}[/]")
        else:
            out.styled(f"[yellow]~ {where}: {escape(dumps(c.old))} -> {escape(dumps(c.new))}[/]")
    if not diff.changes:
        out.text("(no changes)")
    return 0


# -- delete --------------------------------------------------------------------------------


def _delete(args: argparse.Namespace) -> int:
    namespace, _, key = _stored(args)

    async def delete(db: Database) -> Version:
        space = db if args.workspace is None else db.workspace(args.workspace)
        return await space.delete(namespace, key)

    version = with_database(args, delete)
    out = Output(as_json=args.json)
    if out.json:
        out.doc(version_doc(version))
    else:
        out.text(f"{namespace}/{key}: deleted (version {short(version.write_id)})")
    return 0


# -- keys, namespaces ------------------------------------------------------------------------


def _keys_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("namespace", metavar="NS", help="the namespace")
    p.add_argument("--prefix", default="", help="only keys starting with this")
    workspace_argument(p)


def _keys(args: argparse.Namespace) -> int:
    stored = space_of(args).inward(args.namespace)
    with read_snapshot(args) as snap:
        keys = [k for k in snap.reads.keys(stored) if k.startswith(args.prefix)]
    out = Output(as_json=args.json)
    if out.json:
        out.doc(keys)
    else:
        for k in keys:
            out.text(k)
    return 0


def _namespaces(args: argparse.Namespace) -> int:
    space = space_of(args)
    with read_snapshot(args) as snap:
        counts = {ns: len(snap.reads.keys(space.inward(ns))) for ns in snap.reads.namespaces(space)}
    out = Output(as_json=args.json)
    if out.json:
        out.doc(counts)
    else:
        out.table(("namespace", "keys"), counts.items())
    return 0


# -- status --------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    path = existing_database(args)
    with read_snapshot(args) as snap:
        kv = snap.reads.kv
        namespaces = {ns: len(snap.reads.keys(ns)) for ns in snap.reads.namespaces()}
        # Every space's keys, a value past its time to live as deleted (as stats()).
        live = kv.live_at(snap.reads.now())
        doc = {
            "path": str(path),
            "node_id": snap.store.node_id.hex() if snap.store.node_id else None,
            "keys": live,
            "deleted_keys": kv.key_count() - live,
            "versions": kv.versions,
            "namespaces": namespaces,
        }
    out = Output(as_json=args.json)
    if out.json:
        out.doc(doc)
        return 0
    out.text(f"database  {doc['path']}")
    out.text(f"node      {doc['node_id']}")
    out.text(
        f"keys      {doc['keys']} live, {doc['deleted_keys']} deleted, "
        f"{doc['versions']} versions in all"
    )
    if namespaces:
        out.table(("namespace", "keys"), namespaces.items())
    return 0


DATA_COMMANDS: tuple[Command, ...] = (
    Command(
        "set",
        "store a JSON value as the new version of a key",
        'kdelta set users/alice \'{"name": "Alice", "age": 30}\'',
        _set_args,
        _set,
    ),
    Command(
        "get",
        "print a key's current value, or its value at a past time",
        "kdelta get users/alice --at 2026-12-01T09:00:00Z",
        _get_args,
        _get,
    ),
    Command("log", "a key's history, newest first", "kdelta log users/alice -n 5", _log_args, _log),
    Command(
        "diff",
        "what changed between two versions of a key",
        "kdelta diff users/alice --from 0 --to -1",
        _diff_args,
        _diff,
    ),
    Command(
        "delete",
        "delete a key (its history keeps every version)",
        "kdelta delete users/alice",
        _key_argument,
        _delete,
    ),
    Command("keys", "the keys of a namespace", "kdelta keys users --prefix a", _keys_args, _keys),
    Command(
        "namespaces",
        "namespaces with their key counts",
        "kdelta namespaces",
        workspace_argument,
        _namespaces,
    ),
    Command(
        "status",
        "what the database holds: keys, versions, namespaces",
        "kdelta status",
        lambda p: None,
        _status,
    ),
)
