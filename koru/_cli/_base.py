"""What every command shares: its description, the database it names, how it reads
and writes, and its errors."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

if TYPE_CHECKING:
    from koru import Database
    from koru._snapshot import Snapshot
    from koru._space import Space

__all__ = [
    "Command",
    "DuplicateKeyError",
    "Failure",
    "Usage",
    "database_path",
    "parse_time",
    "parse_value",
    "read_snapshot",
    "space_of",
    "split_key",
    "unique_keys",
    "version_doc",
    "with_database",
    "workspace_argument",
]

T = TypeVar("T")


class Command(NamedTuple):
    """One subcommand: its name, a one-line summary, an example, its arguments and
    what runs it (returning the exit code)."""

    name: str
    summary: str
    example: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class Failure(Exception):
    """A command failed in a way its user must hear about, with its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Usage(Exception):
    """The command line was wrong (exit code 2)."""


def database_path(args: argparse.Namespace) -> Path:
    """The database directory: ``--db``, else ``$KORU_HOME``, else the default of
    :func:`koru.open`."""
    db = getattr(args, "db", None)
    if db == "":
        # ``--db "$DB"`` with $DB unset: not the default database, read and written
        # without a word.
        raise Usage("--db names no directory (an empty path)")
    if db is not None:
        return Path(db)
    from koru._open import default_path

    return default_path()


def existing_database(args: argparse.Namespace) -> Path:
    """The database directory, which must hold a database (exit 1 otherwise)."""
    path = database_path(args)
    if not os.path.exists(os.path.join(path, "meta")):
        if os.path.exists(os.path.join(path, "logs")):
            # A database that lost its meta file, not no database: the store says what
            # (exit 3), as a writer's open does.
            from koru.events import FileStore

            FileStore(path, readonly=True).close()
        raise Failure(1, f"no database at {path} (name one with --db PATH or $KORU_HOME)")
    return path


def split_key(text: str) -> tuple[str, str]:
    """``NS/KEY``, split at the first ``/`` (a key may hold more)."""
    from koru.events import check_name, check_user_name

    namespace, sep, key = text.partition("/")
    if not sep or not namespace or not key:
        raise Usage(f"expected NAMESPACE/KEY, not {text!r}")
    check_user_name(namespace, "namespace")  # before anything is read (exit 2)
    check_name(key, "key")
    return namespace, key


def workspace_argument(p: argparse.ArgumentParser) -> None:
    """``--workspace NAME``: the command works in that workspace's space."""
    p.add_argument(
        "--workspace",
        metavar="NAME",
        help="in workspace NAME (its own namespaces; reads also a dropped one's history)",
    )


def space_of(args: argparse.Namespace) -> Space:
    """The space the command works in (``--workspace``, else the default space); a bad
    workspace name exits 2 before anything is read."""
    from koru._space import DEFAULT, Space

    name = getattr(args, "workspace", None)
    return DEFAULT if name is None else Space(name)


_UNITS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}
_AGO = (  # compiled by the first time read relative to now (``re`` caches it)
    r"^\s*(\d+(?:\.\d+)?)\s*"
    r"(ms|s|secs?|seconds?|m|mins?|minutes?|h|hours?|d|days?)\s+ago\s*$"
)


def parse_time(text: str) -> int | str:
    """A moment from the command line: int nanoseconds since the epoch, ISO-8601 with
    an offset, or a time relative to now (``90s ago``, ``5 minutes ago``, ``2h ago``,
    ``1 day ago``)."""
    # Why ASCII only and the conversions guarded: str.isdigit() holds for digits int()
    # refuses ("²"), int() refuses more than 4300 digits, and a float of many digits is
    # infinite; each was a traceback.
    if text.isascii() and text.isdigit():
        try:
            return int(text)
        except ValueError:
            raise Usage(f"not a usable time: {text[:40]!r}... has too many digits") from None
    relative = re.match(_AGO, text.lower())
    if relative is None:
        return text
    amount, unit = relative.groups()
    scale = _UNITS[unit if unit == "ms" else unit[0]]
    now = time.time_ns()  # clock-ok: "ago" means now by the wall clock of this shell
    try:
        return now - int(float(amount) * scale)
    except OverflowError:
        raise Usage(f"not a usable time: {text[:40]!r} is too far back") from None


def parse_value(text: str) -> Any:
    """A value from the command line: JSON text (``{"$bytes": base64}`` for bytes);
    ``-`` reads it from standard input, ``@FILE`` from a file."""
    from ._output import from_json

    raw: str | bytes = text
    # Bytes from a file or standard input: json.loads decodes them (UTF-8, or UTF-16/32
    # with a BOM) and reports bytes that are not text as invalid JSON.
    if text == "-":
        raw = sys.stdin.buffer.read()
    elif text.startswith("@"):
        try:
            raw = Path(text[1:]).read_bytes()
        except OSError as exc:
            raise Usage(f"cannot read {text[1:]}: {exc.strerror}") from None
    try:
        return from_json(json.loads(raw, object_pairs_hook=unique_keys))
    except RecursionError:
        raise Usage("the value nests too deeply") from None
    except (ValueError, TypeError) as exc:
        raise Usage(f"the value is not valid JSON: {exc}") from None


class DuplicateKeyError(ValueError):
    """A JSON object holds a key twice (see :func:`unique_keys`)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: ``json.loads``' ``object_pairs_hook``
    wherever the command line reads JSON (values, filters, vectors and their metadata,
    export files). Why: ``{"a": 1, "a": 2}`` was stored as ``{"a": 2}`` without a word,
    a value the user never wrote (h-cli).

    Raises:
        DuplicateKeyError: naming the key (a ValueError, as JSON that does not parse)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise DuplicateKeyError(f"the key {twice!r} appears twice in one object")
    return found


def version_doc(version: Any) -> dict[str, Any]:
    """A Version (or Versioned) as JSON data, with its time in ISO-8601 too."""
    doc: dict[str, Any] = version._asdict()
    doc["time"] = version.datetime.isoformat()
    return doc


def read_snapshot(args: argparse.Namespace) -> Snapshot:
    """A one-shot, read-only view of the database (see :mod:`koru._snapshot`): no
    trio, no lock, so it reads beside a process that writes."""
    from koru._snapshot import Snapshot

    return Snapshot(existing_database(args))


def with_database(
    args: argparse.Namespace,
    body: Callable[[Database], Awaitable[T]],
    *,
    readonly: bool = False,
    create: bool = False,
) -> T:
    """Run ``body`` with the database open (under trio), and return what it returned.

    Only writing commands and whole-database reports pay for trio and a full open.
    The database's background processes do not run: none would have its turn before
    the command ends, and a writable handle that runs them imports numpy at open.
    """
    import trio

    import koru

    path = database_path(args) if create else existing_database(args)

    async def main() -> T:
        async with koru.open(path, readonly=readonly, processes=False) as db:
            return await body(db)

    result: T = trio.run(main)
    return result
