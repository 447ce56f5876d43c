"""Checkpoints: projection state saved with the log positions and roots it reflects.

Opening a large database loads the newest checkpoint and replays only the log tail
after its cursors. A checkpoint is a hint, never the truth: if it is missing, fails its
checksum, or its cursors do not match the log (checked by the store against the
stored chain root), the caller replays from genesis and gets identical state.

Format: ``b"KORUCKP1" | blake3(body) | body``, body a CBOR map (plain data only):
``format`` (4), ``node``, ``cursors``, ``hlc`` and ``sections``, one per projection,
``{name: [section version, data]}``. Sections are independent: each projection restores
its own (see :mod:`._projection`). Data may name tables (CBOR tag 27001 with the
table's name): large, immutable parts of a projection's state written beside the
checkpoint (``tables/``) before it, read in place after (see :mod:`._newtable`).
Format 3 is format 4 without tables; formats 1 and 2 (the key/value state and the feeds
as two fixed fields) are read as the version-1 sections ``kv`` and ``feeds``.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain, islice
from typing import Any, NamedTuple

import blake3
import cbor2

from koru.events import (
    AGENTS,
    NODE_ID_SIZE,
    CorruptCheckpointError,
    Cursor,
    Offload,
    Table,
    TableEncoder,
    call_here,
    cbor_head,
)

from ._layered import LazyList
from ._newtable import TABLE_TAG, NewTable, TableRef
from ._projection import Projections

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpoint",
    "WriteTable",
    "capture_checkpoint",
    "decode_checkpoint",
    "encode_captured",
    "open_tables",
    "table_names",
]

#: The checkpoint's file name in a database directory.
CHECKPOINT_FILE = "checkpoint"
_MAGIC = b"KORUCKP1"
#: Format 4 may name tables (a CBOR tag); 3 holds one section per projection; 2 named
#: the node; 1 is still read.
_FORMAT = 4


class Checkpoint(NamedTuple):
    """Decoded checkpoint: each projection's section (``name -> (version, data)``, not
    yet restored), the cursor of each agent's log, the newest HLC, and the node that
    wrote it (None in a format-1 checkpoint)."""

    sections: dict[str, tuple[int, Any]]
    cursors: dict[str, Cursor]
    hlc: int
    node: bytes | None
    #: The names of the tables it refers to (``table_names`` of its sections, noted
    #: while decoding: no second walk of rows listed by the million).
    tables: frozenset[str] = frozenset()


def capture_checkpoint(
    projections: Projections, cursors: dict[str, Cursor], hlc: int, node: bytes
) -> dict[str, Any]:
    """Copy out a consistent snapshot as plain, immutable data.

    Take it without yielding between reading the state and the cursors; the result
    can then be encoded anywhere (a worker thread) while the state moves on, before the
    next capture (its lazy lists read snapshots, see :mod:`._layered`).
    """
    return {
        "format": _FORMAT,
        "node": node,
        "cursors": {
            agent: [c.count, c.root, c.segment, c.offset, c.last]
            for agent, c in sorted(cursors.items())
        },
        "hlc": hlc,
        "sections": projections.capture(),
    }


#: Writes a new table durably and returns it, opened (the shell's
#: ``LogStore.write_table``).
WriteTable = Callable[[TableEncoder], Table]


class _Encoder:
    """Appends the CBOR of a captured checkpoint to ``out`` in pieces; writes the new
    tables it meets (through ``write_table``) and puts their names in their place."""

    def __init__(
        self,
        chunk: int,
        write_table: WriteTable | None,
        pace: Callable[[], None],
        offload: Offload,
    ) -> None:
        self.out: list[bytes | memoryview] = []
        self.chunk = chunk
        self.lazy = max(1, chunk // 8)
        self.write_table = write_table
        self.pace = pace
        self.offload = offload
        #: Each new table met, and the table it was written as.
        self.written: dict[NewTable, Table] = {}

    def encode(self, value: Any) -> None:
        """Maps that hold maps are assembled entry by entry; a flat map is encoded
        ``chunk`` entries per ``cbor2.dumps`` call. Why pieces: one ``dumps`` of a large
        state holds the GIL for as long as it runs, freezing the event loop even though
        the encoding happens in a worker thread; between pieces the loop runs."""
        if isinstance(value, NewTable):
            if self.write_table is None:
                raise ValueError("a new table in a checkpoint that cannot write tables")
            encoder = TableEncoder(value.items(), pace=self.pace, offload=self.offload)
            table = self.write_table(encoder)
            self.written[value] = table
            value = table
        if isinstance(value, Table):
            # The name and the index's hash: a file swapped in under the name (another
            # table of this database, or of another) is told at open by its header.
            tag = cbor2.CBORTag(TABLE_TAG, [value.name, value.index_digest])
            self.out.append(cbor2.dumps(tag))
            return
        if type(value) is memoryview:
            # A large buffer a projection promises never to write again (a vector
            # matrix): written as a byte string without a copy.
            self.out.append(cbor_head(2, value.nbytes))
            self.out.append(value)
            return
        if type(value) is LazyList:
            # A snapshot's entries, made here (a capture takes the snapshot in O(1)),
            # ``lazy`` entries per piece: making an entry costs more than encoding it.
            # The same bytes as the list they make.
            count = len(value)
            self.out.append(cbor_head(4, count))
            entries = iter(value)
            while count:
                self.pace()
                run = list(islice(entries, min(self.lazy, count)))
                if not run:
                    raise ValueError("a lazy list made fewer entries than it counts")
                count -= len(run)
                self.out.append(cbor2.dumps(run)[len(cbor_head(4, len(run))) :])
            if next(entries, None) is not None:
                raise ValueError("a lazy list made more entries than it counts")
            return
        if type(value) is list and any(_container(v) for v in value):
            self.out.append(cbor_head(4, len(value)))
            for v in value:
                self.encode(v)
            return
        if type(value) is list and len(value) > self.chunk:
            # A long flat list (a feed's locations, the keys with a time to live) in
            # pieces too, for the same reason as a flat map.
            self.out.append(cbor_head(4, len(value)))
            for i in range(0, len(value), self.chunk):
                self.pace()
                run = value[i : i + self.chunk]
                self.out.append(cbor2.dumps(run)[len(cbor_head(4, len(run))) :])
            return
        if type(value) is not dict:
            self.out.append(cbor2.dumps(value))
            return
        self.out.append(cbor_head(5, len(value)))
        if any(_container(v) for v in value.values()):
            for k, v in value.items():
                self.out.append(cbor2.dumps(k))
                self.encode(v)
            return
        items = list(value.items())
        for i in range(0, len(items), self.chunk):
            self.pace()
            piece = dict(items[i : i + self.chunk])
            self.out.append(cbor2.dumps(piece)[len(cbor_head(5, len(piece))) :])


def _container(value: Any) -> bool:
    return type(value) in (dict, list, memoryview, LazyList) or isinstance(value, Table | NewTable)


def _no_pace() -> None:
    pass


def encode_captured(
    captured: dict[str, Any],
    *,
    chunk: int = 1000,
    write_table: WriteTable | None = None,
    pace: Callable[[], None] = _no_pace,
    offload: Offload = call_here,
) -> tuple[list[bytes | memoryview], dict[NewTable, Table]]:
    """The checkpoint bytes of a :func:`capture_checkpoint` result, as pieces to write
    in order (their concatenation is the checkpoint file), and the tables written for
    the new tables in it (with ``write_table``, before the checkpoint that names them).
    ``pace`` is called between pieces of work (see :class:`~koru.events.TableEncoder`):
    the same bytes come out whether it is given or not. The pieces are hashed through
    ``offload`` (tens of megabytes, hashed without the GIL), and new tables' long C
    calls go through it (see :class:`~koru.events.TableEncoder`)."""
    encoder = _Encoder(chunk, write_table, pace, offload)
    encoder.encode(captured)
    digest = offload(_digest, encoder.out)
    return [_MAGIC, digest, *encoder.out], encoder.written


def _digest(pieces: list[bytes | memoryview]) -> bytes:
    hasher = blake3.blake3()
    for piece in pieces:
        hasher.update(piece)
    return hasher.digest()


#: What a decoded checkpoint holds besides containers and tables.
_SCALARS = frozenset({int, str, bytes, float, bool, type(None)})


def _plain(value: list[Any] | tuple[Any, ...]) -> bool:
    """True if ``value`` holds only scalars, or only lists of scalars: no table can be
    in it. Decided by C iterators. Why: a checkpoint lists rows by the million (keys
    with a time to live, index entries), and walking them a Python call per row to
    look for tables took 8-10 s of opening a database of 1,000,000 keys with a ttl."""
    types = set(map(type, value))
    if types <= _SCALARS:
        return True
    return types == {list} and set(map(type, chain.from_iterable(value))) <= _SCALARS


def table_names(value: Any) -> set[str]:
    """The names of every table a decoded checkpoint, a section or a capture refers to
    (new tables not included: they have no name until written)."""
    if isinstance(value, TableRef | Table):
        return {value.name}
    if type(value) in (list, tuple):
        if _plain(value):
            return set()
        return set().union(*map(table_names, value))
    if type(value) is dict:
        return table_names(list(value.values()))
    return set()


def open_tables(value: Any, open_table: Callable[[str], Table]) -> Any:
    """``value`` with every table it refers to opened (``open_table(name)``)."""
    if isinstance(value, TableRef):
        table = open_table(value.name)
        if value.index_digest is not None and table.index_digest != value.index_digest:
            # Why here and not only in the scrub: every checksum of a sound table put
            # under another's name passes, and its values are proven against content
            # ids it holds itself, so stale versions were served as current ones until
            # the scrub (if processes ran at all) hashed it whole.
            table.release()
            raise CorruptCheckpointError(
                f"table {value.name} is not the one the checkpoint names (its index differs)"
            )
        return table
    if type(value) is list:
        if _plain(value):
            return value
        return [open_tables(v, open_table) for v in value]
    if type(value) is dict:
        return {k: open_tables(v, open_table) for k, v in value.items()}
    return value


def _tag_hook(tag: cbor2.CBORTag, *_: Any) -> Any:
    """cbor2 (6) calls this for every tag it does not know: ``(tag, immutable)``."""
    if tag.tag == TABLE_TAG and type(tag.value) is str:
        return TableRef(tag.value)  # written before the index's hash was recorded
    if tag.tag == TABLE_TAG and type(tag.value) in (list, tuple) and len(tag.value) == 2:
        name, digest = tag.value
        if type(name) is str and type(digest) is bytes and len(digest) == 32:
            return TableRef(name, digest)
    raise CorruptCheckpointError(f"unknown tag {tag.tag} in a checkpoint")


def decode_checkpoint(data: bytes) -> Checkpoint:
    """Decode and verify a checkpoint; raises CorruptCheckpointError if it is unusable.

    Sections are returned as data: restoring them is each projection's business, and a
    section that fails costs only that projection a rebuild.
    """
    if len(data) < len(_MAGIC) + 32 or not data.startswith(_MAGIC):
        raise CorruptCheckpointError("not a koru checkpoint")
    digest = data[len(_MAGIC) : len(_MAGIC) + 32]
    body = memoryview(data)[len(_MAGIC) + 32 :]  # no copy of a file of 100+ MB
    # A checkpoint is large and read once at open: hash it on every core.
    if blake3.blake3(body, max_threads=blake3.blake3.AUTO).digest() != digest:
        raise CorruptCheckpointError("checkpoint checksum mismatch")
    try:
        named: set[str] = set()

        def noted(tag: cbor2.CBORTag, *_: Any) -> Any:
            ref = _tag_hook(tag)
            named.add(ref.name)
            return ref

        raw: Any = cbor2.loads(body, tag_hook=noted)
        fmt = raw["format"]
        if fmt not in (1, 2, 3, _FORMAT) or type(fmt) is not int:
            raise CorruptCheckpointError(f"unknown checkpoint format {fmt!r}")
        node = raw["node"] if fmt >= 2 else None
        if fmt >= 2 and (type(node) is not bytes or len(node) != NODE_ID_SIZE):
            raise CorruptCheckpointError("checkpoint names no valid node id")
        cursors = {}
        for agent, c in raw["cursors"].items():
            count, root, segment, offset, last = c
            if agent not in AGENTS or type(root) is not bytes or len(root) != 32:
                raise CorruptCheckpointError("malformed cursor")
            if not all(type(v) is int for v in (count, segment, offset, last)):
                raise CorruptCheckpointError("malformed cursor")
            if count < 0 or segment < 0 or offset < 0 or last < -1:
                raise CorruptCheckpointError("malformed cursor")
            cursors[agent] = Cursor(count, root, segment, offset, last)
        hlc = raw["hlc"]
        if type(hlc) is not int or hlc < 0:
            raise CorruptCheckpointError("malformed hlc")
        if fmt < 3:  # upcast: the two fixed fields were the version-1 sections
            sections = {"kv": (1, raw["kv"]), "feeds": (1, raw["feeds"])}
        else:
            sections = {}
            for name, section in raw["sections"].items():
                version, value = section
                if type(name) is not str or type(version) is not int:
                    raise CorruptCheckpointError("malformed section")
                sections[name] = (version, value)
        # Every table named anywhere in it (one named outside the sections, where a
        # crafted file could put it, is kept from clean-up, never opened).
        return Checkpoint(sections, cursors, hlc, node, frozenset(named))
    except CorruptCheckpointError:
        raise
    except Exception as exc:
        # Why catch broadly: the checksum passed, so this is a format bug or a
        # checkpoint from another version; either way the safe answer is to replay.
        raise CorruptCheckpointError(f"malformed checkpoint: {exc!r}") from None
