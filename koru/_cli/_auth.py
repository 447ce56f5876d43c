"""Identities and capabilities: ``kdelta identity create|show|register``, ``kdelta
grant`` and ``kdelta revoke``.

An identity lives in a key file (mode 0600; refused if others may read it) made by
``identity create``; what others see of it is its public text form,
``<public key hex>.<nonce hex>``. A grant is signed by its granter: the database's own
node key by default (the root of its capabilities), or ``--as KEYFILE``. The proof of
work an identity must show (``--difficulty``, default about a second of mining) is
what is mined by ``create`` and what the database is opened to require when it
registers one.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ._base import Command, Failure, Usage, database_path, existing_database, parse_time
from ._output import Output, short

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from koru import Database, Grant, Identity, PublicIdentity, Revocation

__all__ = ["AUTH_COMMANDS"]

T = TypeVar("T")

_DEFAULT_DIFFICULTY = 20  # koru.DEFAULT_DIFFICULTY, without importing the face to say it
_IN = re.compile(r"^\s*(?:in\s+|\+)(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_SCALE = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}


def _difficulty_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--difficulty",
        type=int,
        default=_DEFAULT_DIFFICULTY,
        metavar="BITS",
        help=f"{what} (default {_DEFAULT_DIFFICULTY}, about a second of mining on one core)",
    )


def _open(args: argparse.Namespace, body: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``body`` on the database opened for writing, requiring ``--difficulty``."""
    import trio

    import koru

    path = existing_database(args)
    difficulty = getattr(args, "difficulty", _DEFAULT_DIFFICULTY)

    async def main() -> T:
        async with koru.open(path, difficulty=difficulty, processes=False) as db:
            return await body(db)

    result: T = trio.run(main)
    return result


def _load(path: str) -> Identity:
    import koru

    try:
        return koru.Identity.load(path)
    except FileNotFoundError:
        raise Failure(1, f"no key file at {path}") from None
    except IsADirectoryError:
        raise Failure(3, f"{path} is a directory, not a key file") from None


def _public(text: str) -> PublicIdentity | bytes:
    """A grantee: a public identity's text form, 64 hex digits, or a key file."""
    from koru import PublicIdentity

    if "." in text and not Path(text).exists():
        return PublicIdentity.parse(text)
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    if Path(text).exists():
        return _load(text).public
    raise Usage(f"{text!r} is neither a public identity (KEY.NONCE), a public key, nor a key file")


def _time(text: str | None) -> int | str | None:
    """A moment: ISO-8601 with an offset, int ns, 'N unit ago', or 'in N unit'."""
    if text is None:
        return None
    ahead = _IN.match(text.lower())
    if ahead is not None:
        amount, unit = ahead.groups()
        now = time.time_ns()  # clock-ok: "in 2h" means from now by this shell's clock
        return now + int(float(amount) * _SCALE[unit])
    return parse_time(text)


def _identity_doc(public: PublicIdentity, **more: Any) -> dict[str, Any]:
    from koru.events import node_id_of

    return {
        "identity": str(public),
        "public_key": public.public_key.hex(),
        "nonce": public.nonce.hex(),
        "work": public.work,
        "node_id": node_id_of(public.public_key).hex(),
        **more,
    }


def _grant_doc(grant: Grant, in_effect: bool | None = None) -> dict[str, Any]:
    from koru.events import action_names

    doc = {
        "id": grant.id.hex(),
        "granter": grant.granter.hex(),
        "grantee": grant.grantee.hex(),
        "namespace": grant.namespace,
        "key": grant.key,
        "actions": list(action_names(grant.actions)),
        "not_before": grant.not_before,
        "expires": grant.expires,
        "parent": None if grant.parent is None else grant.parent.hex(),
    }
    if in_effect is not None:
        doc["in_effect"] = in_effect
    return doc


# -- identity -----------------------------------------------------------------------------------


def _identity_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=("create", "show", "register"),
        help="create: mine a new identity into a key file; show: an identity (a key "
        "file's, or the database's own) and its grants here; register: make a public "
        "identity known to the database",
    )
    p.add_argument(
        "target",
        nargs="?",
        metavar="FILE|IDENTITY",
        help="the key file (create, show) or public identity KEY.NONCE (register)",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="create: the key file to write")
    p.add_argument(
        "--register", action="store_true", help="create: also register it in the database"
    )
    _difficulty_argument(p, "proof-of-work bits to mine, and the database requires")


def _identity(args: argparse.Namespace) -> int:
    if args.action == "create":
        return _create(args)
    if args.action == "register":
        if args.target is None:
            raise Usage("identity register needs a public identity (KEY.NONCE)")
        public = _public(args.target)
        if isinstance(public, bytes):
            raise Usage("registering needs the proof of work too: KEY.NONCE, or a key file")
        return _register(args, public)
    return _show(args)


def _create(args: argparse.Namespace) -> int:
    import koru

    target = args.output or args.target
    if target is None:
        raise Usage("identity create needs the key file to write: -o FILE")
    if Path(target).exists() or Path(target).is_symlink():
        raise Failure(3, f"{target} exists: a key file is never overwritten")
    if args.register:
        existing_database(args)  # before a second of mining, not after
    if not 0 <= args.difficulty <= 40:
        raise Usage(f"--difficulty must be from 0 to 40 bits, not {args.difficulty}")
    identity = koru.Identity.mine(args.difficulty)
    identity.save(target)
    registered = False
    if args.register:

        async def register(db: Database) -> bool:
            return await db.register(identity)

        registered = _open(args, register)
    out = Output(as_json=args.json)
    if out.json:
        out.doc(_identity_doc(identity.public, file=str(target), registered=registered))
    else:
        out.text(f"identity {identity.public}")
        out.text(f"# key file {target} (keep it private), {identity.work} bits of work")
        if registered:
            out.text(f"# registered in {database_path(args)}")
    return 0


def _register(args: argparse.Namespace, public: PublicIdentity) -> int:
    async def register(db: Database) -> bool:
        return await db.register(public)

    new = _open(args, register)
    out = Output(as_json=args.json)
    if out.json:
        out.doc(_identity_doc(public, registered=True, new=new))
    else:
        out.text(f"registered {short(public.public_key.hex(), 16)} ({public.work} bits of work)")
    return 0


def _show(args: argparse.Namespace) -> int:
    import trio

    import koru

    public: PublicIdentity | None = None
    if args.target is not None:
        public = _load(args.target).public
    path = database_path(args)
    has_db = (path / "meta").exists()
    if public is None and not has_db:
        raise Failure(1, f"no key file named and no database at {path}")

    async def look() -> tuple[PublicIdentity, bool, list[tuple[Grant, bool]]]:
        # Read-only: showing changes nothing (and works beside a writer).
        async with koru.open(path, readonly=True, difficulty=args.difficulty) as db:
            me = public if public is not None else _node_public(path)
            authority = db._authority
            now = db._writer.read_time()
            evaluator = authority.evaluator()
            grants = [
                (g, evaluator.in_effect(gid, now))
                for gid, g in authority.state.grants.items()
                if me.public_key in (g.grantee, g.granter)
            ]
            return me, authority.registered(me.public_key), grants

    if has_db:
        me, registered, grants = trio.run(look)
    else:
        assert public is not None
        me, registered, grants = public, False, []
    out = Output(as_json=args.json)
    if out.json:
        doc = _identity_doc(me, registered=registered)
        if has_db:
            doc["grants"] = [_grant_doc(g, live) for g, live in grants]
        out.doc(doc)
        return 0
    out.text(f"identity {me}")
    out.text(f"# {me.work} bits of work; as a node it is {_identity_doc(me)['node_id']}")
    if has_db:
        out.text(f"# {'registered' if registered else 'not registered'} in {path}")
        if grants:
            out.table(
                ("grant", "from", "to", "namespace", "key", "actions", "in effect"),
                (
                    (
                        short(g.id.hex()),
                        short(g.granter.hex()),
                        short(g.grantee.hex()),
                        g.namespace,
                        g.key,
                        ",".join(_grant_doc(g)["actions"]),
                        "yes" if live else "no",
                    )
                    for g, live in grants
                ),
            )
    return 0


def _node_public(path: Path) -> PublicIdentity:
    """The database's node identity, read from its key file without opening it."""
    import koru
    from koru._nodekey import NODE_KEY_FILE
    from koru.events import FileStore

    store = FileStore(path, readonly=True)
    try:
        data = store.read_private(NODE_KEY_FILE)
    finally:
        store.close()
    if data is None:
        raise Failure(1, f"{path} has no node key yet: open it for writing once")
    return koru.Identity.from_bytes(data, NODE_KEY_FILE).public


# -- grant, revoke ------------------------------------------------------------------------------


def _grant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--to",
        required=True,
        metavar="IDENTITY",
        help="the grantee: its public identity KEY.NONCE (registered if it is not), its "
        "public key, or its key file",
    )
    p.add_argument("--ns", default="*", metavar="GLOB", help="namespaces ('*' any run, '?' one)")
    p.add_argument("--key", default="*", metavar="GLOB", help="keys, the same way")
    p.add_argument(
        "--actions", default="read", metavar="LIST", help="read, write, admin (comma-separated)"
    )
    p.add_argument("--not-before", metavar="TIME", help="from when (default: always)")
    p.add_argument(
        "--expires",
        metavar="TIME",
        help="until when: ISO-8601, int ns, or 'in 30d' (default: never)",
    )
    p.add_argument("--parent", metavar="GRANT", help="the grant this one delegates from (its id)")
    p.add_argument(
        "--as",
        dest="granter",
        metavar="KEYFILE",
        help="sign as this identity (default: the database's node key, its root)",
    )
    _difficulty_argument(p, "proof-of-work bits the database requires of identities")


def _grant(args: argparse.Namespace) -> int:
    from koru import PublicIdentity

    grantee = _public(args.to)
    granter = None if args.granter is None else _load(args.granter)

    async def give(db: Database) -> Grant:
        if isinstance(grantee, PublicIdentity):
            await db.register(grantee)
        return await db.grant(
            grantee,
            namespace=args.ns,
            key=args.key,
            actions=args.actions,
            not_before=_time(args.not_before),
            expires=_time(args.expires),
            parent=args.parent,
            granter=granter,
        )

    grant = _open(args, give)
    out = Output(as_json=args.json)
    if out.json:
        out.doc(_grant_doc(grant))
    else:
        doc = _grant_doc(grant)
        out.text(
            f"grant {grant.id.hex()}: {short(doc['grantee'], 16)} may "
            f"{','.join(doc['actions'])} {grant.namespace}/{grant.key}"
        )
    return 0


def _revoke_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("grant", metavar="GRANT", help="the id of the grant to revoke (64 hex digits)")
    p.add_argument(
        "--as",
        dest="revoker",
        metavar="KEYFILE",
        help="sign as this identity (default: the database's node key)",
    )


def _revoke(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", args.grant):
        raise Usage(f"a grant id is 64 hex digits, not {args.grant!r}")
    gid = bytes.fromhex(args.grant)
    revoker = None if args.revoker is None else _load(args.revoker)

    async def revoke(db: Database) -> Revocation | None:
        if gid not in db._authority.state.grants:
            return None
        return await db.revoke(gid, revoker=revoker)

    revocation = _open(args, revoke)
    if revocation is None:
        raise Failure(1, f"no grant {args.grant} in {database_path(args)}")
    out = Output(as_json=args.json)
    if out.json:
        out.doc({"grant": gid.hex(), "revoker": revocation.revoker.hex(), "at": revocation.at})
    else:
        out.text(f"revoked grant {gid.hex()} (for good)")
    return 0


AUTH_COMMANDS: tuple[Command, ...] = (
    Command(
        "identity",
        "create, show or register an identity (an Ed25519 key with a proof of work)",
        "kdelta identity create -o alice.key --register",
        _identity_args,
        _identity,
    ),
    Command(
        "grant",
        "give an identity a capability: actions on namespace and key globs",
        "kdelta grant --to KEY.NONCE --ns users --key 'a*' --actions read,write",
        _grant_args,
        _grant,
    ),
    Command(
        "revoke",
        "revoke a grant, for good",
        "kdelta revoke 3f2a...e1 --as admin.key",
        _revoke_args,
        _revoke,
    ),
)
