"""``kdelta start``: serve a database to its peers, and join others.

    kdelta identity create -o owner.key --difficulty 8     # once, for the cluster
    kdelta --db ./a start --port 7878 --owner owner.key
    kdelta --db ./b start --port 7879 --owner owner.key --join 127.0.0.1:7878

Every node started with the same owner key (``--owner``) is enrolled by it
(:meth:`koru.Database.enroll`): the owner becomes a root of the node and grants it
admin, so the nodes accept each other as peers with no other set-up. The command runs
until interrupted (Ctrl-C or SIGTERM), then closes the database cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from ._base import Command, Failure, Usage, database_path

__all__ = ["PEER_COMMANDS"]


def _peer_address(text: str) -> str:
    """A ``--join`` address: ``HOST:PORT`` (a port given, not 0), or a ``ws://``/
    ``wss://`` url. Why the port: ``HOST`` alone was dialled at port 80, for ever and
    without a word, where a user had left the port out by mistake."""
    import urllib.parse

    written = text.startswith(("ws://", "wss://"))
    try:
        port = urllib.parse.urlsplit(text if written else f"ws://{text}").port
    except ValueError:  # a port that is no number, or past 65535
        port = 0
    if written and port is None:
        return text  # a url written out: its scheme's port (80, 443) is meant
    if not port:  # none, or 0: no peer listens there (dialled for ever too; h-last)
        raise Usage(f"--join {text!r} is not HOST:PORT (a port from 1 to 65535 is needed)")
    return text


def _start_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=7878, help="port to listen on (7878; 0: any)")
    p.add_argument(
        "--join",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a peer to sync with (repeatable); others are learned from peers",
    )
    p.add_argument(
        "--owner",
        required=True,
        metavar="KEYFILE",
        help="the cluster owner's key file: nodes enrolled by one owner sync together",
    )
    p.add_argument(
        "--difficulty",
        type=int,
        default=20,
        metavar="BITS",
        help="proof of work this node requires of identities (default 20)",
    )


def _start(args: argparse.Namespace) -> int:
    import signal

    import trio

    import koru

    if not 0 <= args.port < 65536:
        raise Usage(f"--port must be from 0 to 65535, not {args.port}")
    for address in args.join:
        _peer_address(address)
    try:
        owner = koru.Identity.load(args.owner)
    except FileNotFoundError:
        raise Failure(1, f"no key file {args.owner}") from None
    path = database_path(args)

    async def main() -> None:
        async with koru.open(path, difficulty=args.difficulty) as db:
            await db.enroll(owner)
            async with trio.open_nursery() as nursery:
                port = await nursery.start(db.serve, args.host, args.port)
                print(f"listening on ws://{args.host}:{port} node {db.node_id}", flush=True)
                for url in args.join:
                    nursery.start_soon(db.join, url)
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break

    try:
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(main)
    except BaseExceptionGroup as group:
        raise _carried(group) from None
    print("stopped", file=sys.stderr, flush=True)
    return 0


def _carried(group: BaseExceptionGroup[Any]) -> BaseException:
    """The error a nursery's group carries (a port in use, a host that does not
    resolve, a bad --join): its first KoruError, which main() reports in one line; else
    the group itself."""
    from koru.events import KoruError

    found: BaseException | None = group.subgroup(lambda e: isinstance(e, KoruError))
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return group if found is None else found


PEER_COMMANDS: tuple[Command, ...] = (
    Command(
        "start",
        "serve the database to peers and sync with them (until Ctrl-C)",
        "kdelta --db ./b start --port 7879 --owner owner.key --join 127.0.0.1:7878",
        _start_args,
        _start,
    ),
)
