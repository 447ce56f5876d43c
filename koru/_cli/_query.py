"""The query commands: query, view, workspace, lineage.

``kdelta query`` is a one-shot read (:mod:`koru._snapshot`: no trio, no lock): it reads
the namespace's current documents (or their values at ``--at``) from a snapshot and
answers with the same pure evaluation ``db.query`` uses (``projections._answer``), so
the answers agree; it scans (indexes are the open database's). Views, workspaces and
lineage live in projections a snapshot does not restore, so those commands open the
database, read-only for what only reads (beside a writer, like every read) and
writable for what records an event.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ._base import (
    Command,
    Failure,
    Usage,
    parse_time,
    read_snapshot,
    space_of,
    split_key,
    unique_keys,
    with_database,
    workspace_argument,
)
from ._output import Output, dumps

if TYPE_CHECKING:
    from koru import Database, SpaceAPI

__all__ = ["QUERY_COMMANDS", "query_data"]

_AGGREGATES = ("sum", "avg", "min", "max", "distinct")


# -- the query's options, shared by query and view create ----------------------------------


def _query_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--where",
        metavar="EXPR",
        help="a filter: 'age>=30 and city=Lyon', 'tags contains x', 'name~^A', "
        "'role in [admin, root]', 'email exists' (see docs/cli.md)",
    )
    where.add_argument(
        "--where-json", metavar="JSON", help='the filter\'s data form: \'["gte", "age", 30]\''
    )
    p.add_argument("--sort", metavar="FIELD[,-FIELD]", help="sort by fields, '-' for descending")
    p.add_argument("--limit", type=int, metavar="N", help="at most N rows (or groups)")
    p.add_argument("--offset", type=int, metavar="N", help="skip the first N rows (or groups)")
    p.add_argument("--select", metavar="F,...", help="only these fields of each value")
    agg = p.add_mutually_exclusive_group()
    agg.add_argument(
        "--count",
        nargs="?",
        const="",
        metavar="FIELD",
        help="count the matching documents (or those with FIELD)",
    )
    for op in _AGGREGATES:
        agg.add_argument(f"--{op}", metavar="FIELD", help=f"the {op} of FIELD")
    p.add_argument("--group-by", metavar="FIELD", help="one result per value of FIELD")


def _fields(text: str, what: str) -> list[str]:
    fields = [f.strip() for f in text.split(",")]
    if not all(fields):
        raise Usage(f"{what} takes fields separated by commas, not {text!r}")
    return fields


def query_data(args: argparse.Namespace) -> dict[str, Any]:
    """The query's data form from the command line's options (checked by the caller
    with ``Query.from_data``)."""
    from ._where import WhereError, parse_where

    data: dict[str, Any] = {}
    if args.where is not None:
        try:
            data["where"] = parse_where(args.where)
        except WhereError as exc:
            raise Usage(f"--where: {exc}") from None
        except RecursionError:  # the parser recurses: "not not ... not a=1"
            raise Usage("--where: the expression nests too deeply") from None
    elif args.where_json is not None:
        try:
            data["where"] = json.loads(args.where_json, object_pairs_hook=unique_keys)
        except ValueError as exc:
            raise Usage(f"--where-json is not valid JSON: {exc}") from None
        except RecursionError:  # so does json.loads: "[[[[...]]]]"
            raise Usage("--where-json: the JSON nests too deeply") from None
    if args.sort:
        data["order_by"] = [
            [f[1:], "desc"] if f.startswith("-") else [f, "asc"]
            for f in _fields(args.sort, "--sort")
        ]
    if args.select:
        data["select"] = _fields(args.select, "--select")
    if args.offset is not None:
        data["offset"] = args.offset
    if args.limit is not None:
        data["limit"] = args.limit
    if args.count is not None:
        data["aggregate"] = ["count", args.count] if args.count else ["count"]
    for op in _AGGREGATES:
        if getattr(args, op) is not None:
            data["aggregate"] = [op, getattr(args, op)]
    if args.group_by is not None:
        data["group_by"] = args.group_by
    return data


def _checked(data: dict[str, Any]) -> Any:
    from koru.projections import Query

    return Query.from_data(data)  # InvalidQueryError: exit 2, naming the field


def _show(out: Output, result: Any) -> None:
    from koru.projections import Group, Row

    if isinstance(result, list) and result and isinstance(result[0], Row):
        if out.json:
            out.doc([{"key": r.key, "value": r.value} for r in result])
        else:
            out.table(("key", "value"), ((r.key, dumps(r.value)) for r in result))
    elif isinstance(result, list) and result and isinstance(result[0], Group):
        if out.json:
            out.doc([{"group": g.group, "value": g.value} for g in result])
        else:
            out.table(("group", "value"), ((dumps(g.group), dumps(g.value)) for g in result))
    elif out.json:
        out.doc(result)
    elif isinstance(result, list) and not result:
        out.text("(nothing matches)")
    else:
        out.value(result)


# -- query -----------------------------------------------------------------------------------


def _query_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("namespace", metavar="NS", help="the namespace")
    _query_arguments(p)
    p.add_argument(
        "--at", metavar="TIME", help="over the values as they were at TIME (time travel)"
    )
    workspace_argument(p)


def _query(args: argparse.Namespace) -> int:
    from koru._documents import read_at, read_live
    from koru._time import to_ns
    from koru.projections._answer import answer
    from koru.projections._predicate import compile_filter

    q = _checked(query_data(args))
    namespace = space_of(args).inward(args.namespace)
    when = None if args.at is None else to_ns(parse_time(args.at))
    with read_snapshot(args) as snap:
        reads = snap.reads
        value_bytes, peek = reads.values.value_bytes, reads.values.cache.peek
        if when is None:
            keys, values = read_live(reads.kv, namespace, reads.keys(namespace), value_bytes, peek)
        else:
            keys, values = read_at(reads.kv, namespace, when, value_bytes, peek)
        result = answer(q, compile_filter(q.filter), keys, values)
    _show(Output(as_json=args.json), result)
    return 0


# -- view --------------------------------------------------------------------------------------


def _view_args(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="keep a query's answer up to date as NAME")
    create.add_argument("name", metavar="NAME")
    create.add_argument("namespace", metavar="NS")
    _query_arguments(create)
    workspace_argument(create)
    listing = actions.add_parser("list", help="every view")
    workspace_argument(listing)
    for action, what in (
        ("show", "the view's answer"),
        ("refresh", "recompute the view from its namespace's documents, and show it"),
        ("delete", "stop keeping the view"),
    ):
        sub = actions.add_parser(action, help=what)
        sub.add_argument("name", metavar="NAME")
        workspace_argument(sub)


def _in_space(db: Database, args: argparse.Namespace, *, read: bool = False) -> SpaceAPI:
    """The space ``--workspace`` names; for a read, a handle that also reads a dropped
    workspace's history (the command line is the audit tool)."""
    name = getattr(args, "workspace", None)
    if name is None:
        return db
    return db.audit_workspace(name) if read else db.workspace(name)


def _view(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    action = args.action
    if action == "create":
        data = query_data(args)
        _checked(data)
        space_of(args).inward(args.namespace)  # bad names exit 2 before the open

        async def create(db: Database) -> None:
            await _in_space(db, args).create_view(args.name, args.namespace, data)

        with_database(args, create)
        if out.json:
            out.doc({"created": args.name})
        else:
            out.text(f"view {args.name} created")
        return 0
    if action == "delete":

        async def delete(db: Database) -> None:
            await _in_space(db, args).delete_view(args.name)

        with_database(args, delete)
        if out.json:
            out.doc({"deleted": args.name})
        else:
            out.text(f"view {args.name} deleted")
        return 0
    if action == "list":

        async def listing(db: Database) -> Any:
            return await _in_space(db, args, read=True).list_views()

        views = with_database(args, listing, readonly=True)
        if out.json:
            out.doc([v._asdict() for v in views])
        else:
            out.table(
                ("view", "namespace", "query", "state"),
                (
                    (
                        v.name,
                        v.namespace,
                        dumps(v.query),
                        v.error or ("building" if v.building else "ok"),
                    )
                    for v in views
                ),
            )
        return 0

    async def read(db: Database) -> Any:
        space = _in_space(db, args, read=True)
        if action == "refresh":
            await space.refresh_view(args.name)
        return await space.view(args.name)

    _show(out, with_database(args, read, readonly=True))
    return 0


# -- workspace ---------------------------------------------------------------------------------


def _workspace_args(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the workspaces")
    listing.add_argument("--dropped", action="store_true", help="the dropped ones too")
    for action, what in (
        ("create", "record a workspace's creation"),
        ("drop", "drop a workspace for good (its history stays readable)"),
    ):
        actions.add_parser(action, help=what).add_argument("name", metavar="NAME")


def _workspace(args: argparse.Namespace) -> int:
    from koru._types import _to_datetime

    out = Output(as_json=args.json)
    if args.action == "list":

        async def listing(db: Database) -> Any:
            return await db.workspaces(dropped=args.dropped)

        found = with_database(args, listing, readonly=True)
        if out.json:
            out.doc([w._asdict() for w in found])
        else:

            def when(ns: int | None) -> str | None:
                return None if ns is None else _to_datetime(ns).isoformat(timespec="seconds")

            out.table(
                ("workspace", "created", "dropped"),
                ((w.name, when(w.created), when(w.dropped)) for w in found),
            )
        return 0
    from koru.events import check_workspace

    check_workspace(args.name)  # exit 2 before the open

    async def change(db: Database) -> Any:
        if args.action == "create":
            return await db.create_workspace(args.name)
        await db.drop_workspace(args.name)
        return True

    done = with_database(args, change, create=args.action == "create")
    verb = "created" if args.action == "create" else "dropped"
    if out.json:
        out.doc({verb: args.name, "changed": done})
    else:
        out.text(f"workspace {args.name} {verb}" if done else f"workspace {args.name} exists")
    return 0


# -- lineage ---------------------------------------------------------------------------------


def _lineage_args(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, what in (
        ("ancestors", "every key NS/KEY derives from, nearest first"),
        ("descendants", "every key derived from NS/KEY, nearest first"),
    ):
        sub = actions.add_parser(action, help=what)
        sub.add_argument("key", metavar="NS/KEY")
        sub.add_argument("--depth", type=int, metavar="N", help="at most N links away")
        workspace_argument(sub)
    path = actions.add_parser("path", help="a shortest chain of derivations between two keys")
    path.add_argument("key", metavar="NS/KEY")
    path.add_argument("other", metavar="NS/KEY")
    path.add_argument("--max-depth", type=int, default=100, metavar="N", help="default 100")
    workspace_argument(path)
    top = actions.add_parser("top", help="the keys of NS with the most links")
    top.add_argument("namespace", metavar="NS")
    top.add_argument("-k", type=int, default=10, metavar="K", help="how many (default 10)")
    workspace_argument(top)


def _lineage(args: argparse.Namespace) -> int:
    out = Output(as_json=args.json)
    action = args.action
    if action == "top":
        space_of(args).inward(args.namespace)

        async def top(db: Database) -> Any:
            return await _in_space(db, args, read=True).most_connected(args.namespace, args.k)

        ranked = with_database(args, top, readonly=True)
        if out.json:
            out.doc([{**c._asdict(), "links": c.links} for c in ranked])
        else:
            out.table(
                ("key", "links", "parents", "children"),
                ((c.key, c.links, c.parents, c.children) for c in ranked),
            )
        return 0
    node = split_key(args.key)
    space_of(args).inward(node[0])
    if action == "path":
        other = split_key(args.other)

        async def path(db: Database) -> Any:
            return await _in_space(db, args, read=True).connection_path(
                node, other, max_depth=args.max_depth
            )

        found = with_database(args, path, readonly=True)
        if found is None:
            raise Failure(1, f"no chain of at most {args.max_depth} links joins them")
    else:

        async def walk(db: Database) -> Any:
            space = _in_space(db, args, read=True)
            call = space.ancestors if action == "ancestors" else space.descendants
            return await call(node, args.depth)

        found = with_database(args, walk, readonly=True)
    if out.json:
        out.doc([{"namespace": ns, "key": key} for ns, key in found])
    else:
        for ns, key in found:
            out.text(f"{ns}/{key}")
    return 0


QUERY_COMMANDS: tuple[Command, ...] = (
    Command(
        "query",
        "the documents of a namespace that match a filter, sorted, paged or aggregated",
        "kdelta query users --where 'age>=30 and city=Lyon' --sort -age --limit 10",
        _query_args,
        _query,
    ),
    Command(
        "view",
        "materialized views: create, list, show, refresh, delete",
        "kdelta view create adults users --where 'age>=18' && kdelta view show adults",
        _view_args,
        _view,
    ),
    Command(
        "workspace",
        "workspaces (isolated spaces of a database): list, create, drop",
        "kdelta workspace list --dropped",
        _workspace_args,
        _workspace,
    ),
    Command(
        "lineage",
        "what keys derive from: ancestors, descendants, path, top",
        "kdelta lineage ancestors reports/q3",
        _lineage_args,
        _lineage,
    ),
)
