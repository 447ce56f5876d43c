"""What the command line prints: JSON for scripts, tables and pretty values for people.

Why two forms: a person reads a table (coloured when the output is a terminal), a
script parses one JSON document per command (JSON lines for streams). Values are
JSON-like except what JSON cannot hold: ``bytes`` print as ``{"$bytes": base64}`` and
infinite floats as ``{"$float": "Infinity"}`` (or ``"-Infinity"``; Python's bare
``Infinity`` is not JSON), and a map whose only key is one of these tags (or ``$map``)
prints wrapped as ``{"$map": {...}}``, so that no stored map reads as something else.
``kdelta set`` reads every form back to the same value. Characters that would drive
the terminal (controls, bidi overrides) print escaped, in JSON too. rich is imported
only by commands that draw tables, so one-shot reads do not pay for it.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

__all__ = ["Output", "dumps", "from_json", "short", "to_json"]


#: The tags of values JSON cannot hold (and of a map that would read as one of them).
_TAGS = frozenset(("$bytes", "$float", "$map"))


def to_json(value: Any) -> Any:
    """A stored value as JSON data (tagged where JSON cannot hold it; see above)."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, float) and math.isinf(value):
        return {"$float": "Infinity" if value > 0 else "-Infinity"}
    if isinstance(value, dict):
        out = {k: to_json(v) for k, v in value.items()}
        return {"$map": out} if len(out) == 1 and next(iter(out)) in _TAGS else out
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def from_json(value: Any) -> Any:
    """The inverse of :func:`to_json`."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag == "$bytes" and isinstance(inner, str):
                try:
                    return base64.b64decode(inner, validate=True)
                except ValueError as exc:
                    raise ValueError(f"$bytes is not base64: {exc}") from None
            if tag == "$float" and inner in ("Infinity", "-Infinity"):
                return float(inner)
            if tag == "$map" and isinstance(inner, dict):  # a map taken as it is
                return {k: from_json(v) for k, v in inner.items()}
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


#: What a terminal obeys rather than shows: C0 and C1 controls, DEL, and the bidi
#: overrides and isolates (they reorder the text after them). Names and values come
#: from anyone whose events were imported, so output shows these as ``\uXXXX``: a
#: visible escape in a line for people, and the same character in a JSON string.
_UNSHOWN = {
    c: f"\\u{c:04x}"
    for c in (
        *range(0x20),
        0x7F,
        *range(0x80, 0xA0),
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
}


def shown(text: str) -> str:
    """``text`` with what would drive the terminal escaped (see ``_UNSHOWN``)."""
    return text.translate(_UNSHOWN)


#: The same for JSON text, whose C0 controls json.dumps already escaped inside strings
#: (a raw newline there is the indentation's).
_UNSHOWN_IN_JSON = {c: e for c, e in _UNSHOWN.items() if c >= 0x20}


def dumps(doc: Any, *, pretty: bool = False) -> str:
    text = json.dumps(to_json(doc), indent=2 if pretty else None, ensure_ascii=False)
    return text.translate(_UNSHOWN_IN_JSON)


def short(hex_id: str | None, n: int = 12) -> str:
    """An id shortened for people, as git shows commits."""
    return "-" if hex_id is None else hex_id[:n]


class Output:
    """Where a command's results go (stdout), in the form the user asked for."""

    def __init__(self, *, as_json: bool) -> None:
        self.json = as_json
        self.tty = sys.stdout.isatty()
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        """rich's console on stdout: colour on a terminal; in a pipe, plain text with
        lines as long as they need (no wrapping to 80 columns)."""
        if self._console is None:
            from rich.console import Console

            class _Console(Console):
                def on_broken_pipe(self) -> None:
                    # rich exits 1 here ("not found" to kdelta): let main() treat it
                    # as any write to a closed pipe.
                    raise BrokenPipeError

            self._console = (
                _Console(highlight=False)
                if self.tty
                else _Console(width=10_000, no_color=True, highlight=False)
            )
        return self._console

    def doc(self, doc: Any) -> None:
        """One JSON document (``--json``)."""
        print(dumps(doc))

    def line(self, doc: Any) -> None:
        """One JSON line of a stream, flushed (``--json`` with ``--follow``)."""
        print(dumps(doc), flush=True)

    def value(self, value: Any) -> None:
        """A stored value for people: pretty JSON."""
        print(dumps(value, pretty=True))

    def text(self, text: str) -> None:
        print(shown(text), flush=True)

    def styled(self, markup: str) -> None:
        """One line with rich markup (``[green]...[/]``), plain in a pipe."""
        self.console.print(shown(markup), overflow="ignore", crop=False, soft_wrap=True)

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """A table for people."""
        from rich.table import Table

        table = Table(box=None, header_style="bold cyan", pad_edge=False)
        for n, column in enumerate(columns):
            # Times, ids and names keep their width; only the last column (a value, a
            # message) wraps on a narrow terminal.
            table.add_column(column, no_wrap=n < len(columns) - 1)
        for row in rows:
            table.add_row(*(cell(c) for c in row))
        self.console.print(table, overflow="ignore", crop=False)

    def progress(self, what: str, total: int | None) -> Progress | None:
        """A progress bar on standard error for long work, when a person watches (the
        error stream is a terminal and the output is not JSON); else None."""
        if self.json or not sys.stderr.isatty():
            return None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn(what),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        progress.add_task(what, total=total)
        return progress


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return shown(value)
    return dumps(value)


def escape(text: str) -> str:
    """Text shown through rich markup, printed as it is."""
    from rich.markup import escape as _escape

    return _escape(text)
