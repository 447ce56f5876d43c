"""``kdelta``: the koru-delta command line.

Data commands (set, get, log, diff, delete, keys, namespaces, stats) and log
inspection (events, verify, export, import) against a database directory: ``--db``,
else ``$KORU_HOME``, else the default of :func:`koru.open`. Reads open the database
read-only, so they work beside a process that writes it.

Exit codes: 0 success, 1 not found, 2 usage error, 3 data or integrity error. Errors
print one line to stderr, never a traceback. Each command imports only what it needs:
a one-shot read should not pay for what it does not use.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ._commands import COMMANDS, Failure, Usage

__all__ = ["main"]

EXAMPLES = """\
examples:
  kdelta set users/alice '{"name": "Alice", "age": 30}'
  kdelta get users/alice
  kdelta get users/alice --at 2026-12-01T09:00:00Z
  kdelta log users/alice
  kdelta diff users/alice
  kdelta events --ns users --full
  kdelta verify
  kdelta export -o backup.cbor && kdelta --db ./copy import backup.cbor

exit codes: 0 success, 1 not found, 2 usage error, 3 data or integrity error
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, told the terminal's width: its own asks ``shutil``, whose
    import (with the compression modules it pulls in) costs every command about 2 ms,
    as argparse makes a formatter for each argument added. The same width: $COLUMNS,
    else the terminal's, else 80, less 2."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            columns = 0
        if columns <= 0:  # as shutil: no width set (0 or less is none), the terminal's
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (AttributeError, ValueError, OSError):
                columns = 0
        super().__init__(prog, width=(columns if columns > 0 else 80) - 2)


def parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line's parser. Given the arguments, only the command they name gets
    its own arguments (and imports what they need): a one-shot ``kdelta get`` should
    not pay for building fifteen parsers."""
    top = argparse.ArgumentParser(
        prog="kdelta",
        description="koru-delta: the invisible database. Versioned key/value data with "
        "full history and time travel, kept as an event log you can inspect.",
        epilog=EXAMPLES,
        formatter_class=_Formatter,
    )
    top.add_argument(
        "--db",
        metavar="PATH",
        help="database directory (default: $KORU_HOME, else ~/.local/share/koru-delta/default)",
    )
    top.add_argument("--json", action="store_true", help="machine-readable JSON output")
    top.add_argument("--version", action="version", version=f"kdelta {_version()}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = None if argv is None else _command_named(argv)
    known = chosen is not None and any(c.name == chosen for c in COMMANDS)
    for command in COMMANDS:
        if known and command.name != chosen:
            # Not even its name: a parser each costs 0.4 ms (argparse looks up its
            # messages' translations), and only a wrong name, which lists them all,
            # or the top-level help needs the others.
            continue
        p = sub.add_parser(
            command.name,
            help=command.summary,
            description=command.summary,
            epilog=f"example:\n  {command.example}",
            formatter_class=_Formatter,
        )
        p.set_defaults(run=command.run)
        if chosen is not None and command.name != chosen:
            continue
        p.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="as above")
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="as above")
        command.arguments(p)
    return top


def _command_named(argv: Sequence[str]) -> str | None:
    """The command the arguments name: the first word that is not a top-level option
    (or the value of ``--db``)."""
    words = iter(argv)
    for word in words:
        # argparse takes an unambiguous prefix of an option for it: --d is --db.
        if len(word) >= 3 and "--db".startswith(word):
            next(words, None)
        elif word == "-h" or (len(word) >= 3 and "--help".startswith(word)):
            return None  # the top-level help, which lists every command
        elif word == "--":
            return None  # argparse's own reading of what follows: its errors list all
        elif not word.startswith("-"):
            return word
    return None


def _joined(argv: Sequence[str]) -> list[str]:
    """``--sort -age`` as ``--sort=-age``: argparse reads a value that starts with '-'
    as an option, and a descending sort starts with one."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--sort":
            value = next(words, None)
            out.append(word if value is None else f"--sort={value}")
        else:
            out.append(word)
    return out


def _version() -> str:
    from koru import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (the ``kdelta`` script exits with it)."""
    if argv is None:
        argv = sys.argv[1:]
    _standard_streams()
    argv = _joined(argv)
    args = parser(argv).parse_args(argv)
    try:
        code = args.run(args)
        sys.stdout.flush()  # what is still buffered: failing to write it is this command's
    except Usage as exc:
        return _fail(2, str(exc))
    except Failure as exc:
        return _fail(exc.code, str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # kdelta events | head
        _quiet_stdout()
        return 0
    except OSError as exc:
        # The database's own failures are KoruErrors, and files named on the command
        # line are read and written under Failure: an OSError naming no file is the
        # output failing (a full disk, a device error under a redirection).
        if exc.filename is not None:
            raise
        _quiet_stdout()
        return _fail(3, f"cannot write the output: {exc.strerror or exc}")
    except Exception as exc:
        code = _code_of(exc)
        if code is None:
            raise
        return _fail(code, _message_of(exc, args))
    return code if isinstance(code, int) else 0


def _standard_streams() -> None:
    """Standard input, output and error open, on the null device where the caller
    closed them (``kdelta get k >&-``). Why: with one closed, Python's ``sys.stdout``
    (or ``sys.stderr``) is None, so printing the output was an AttributeError, and an
    error printed to a None stderr went to standard output, read by a script as the
    value; and the first file the database opened took the closed descriptor's number,
    so anything written to that stream would land in the database's files."""
    import os

    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


def _quiet_stdout() -> None:
    """The reader closed the pipe: what is still buffered for it goes nowhere, so the
    interpreter's last flush neither fails (exit 120) nor complains on stderr."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _code_of(exc: Exception) -> int | None:
    from koru.events import (
        InvalidArgumentError,
        InvalidDataError,
        KoruError,
        NotFoundError,
    )

    if isinstance(exc, NotFoundError):
        return 1
    if isinstance(exc, InvalidDataError | InvalidArgumentError):
        return 2
    if isinstance(exc, KoruError):
        return 3
    return None


def _message_of(exc: Exception, args: argparse.Namespace) -> str:
    """What the user is told of ``exc``: its own words, but a lock held by another
    process in the command line's terms (the store's message names the Python API's
    ``readonly=True``, which no command takes)."""
    from koru.events import DatabaseLockedError

    from ._base import database_path

    if isinstance(exc, DatabaseLockedError):
        return (
            f"{database_path(args)} is open for writing in another process: a command "
            "that writes must wait until that process closes it; the commands that read "
            "(get, log, keys, query, events, export, ...) work beside it"
        )
    return str(exc)


def _fail(code: int, message: str) -> int:
    print(f"kdelta: {message}", file=sys.stderr)
    return code
