"""Checkpoints: projection state saved with the log positions and roots it reflects.

Opening a large database loads the newest checkpoint and replays only the log tail
after its cursors. A checkpoint is a hint, never the truth: if it is missing, fails its
checksum, or its cursors do not match the log (checked by the store against the
stored chain root), the caller replays from genesis and gets identical state.

Format: ``b"KORUCKP1" | blake3(body) | body``, body a CBOR map (plain data only):
``format`` (3), ``node``, ``cursors``, ``hlc`` and ``sections``, one per projection,
``{name: [section version, data]}``. Sections are independent: each projection restores
its own (see :mod:`._projection`). Formats 1 and 2 (the key/value state and the feeds as
two fixed fields) are read as the version-1 sections ``kv`` and ``feeds``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import blake3
import cbor2

from koru.events import AGENTS, NODE_ID_SIZE, CorruptCheckpointError, Cursor, cbor_head

from ._projection import Projections

__all__ = [
    "CHECKPOINT_FILE",
    "Checkpoint",
    "Placed",
    "capture_checkpoint",
    "decode_checkpoint",
    "encode_captured",
]

#: The checkpoint's file name in a database directory.
CHECKPOINT_FILE = "checkpoint"
_MAGIC = b"KORUCKP1"
#: Format 3 holds one section per projection; 2 named the node; 1 is still read.
_FORMAT = 3


class Checkpoint(NamedTuple):
    """Decoded checkpoint: each projection's section (``name -> (version, data)``, not
    yet restored), the cursor of each agent's log, the newest HLC, and the node that
    wrote it (None in a format-1 checkpoint)."""

    sections: dict[str, tuple[int, Any]]
    cursors: dict[str, Cursor]
    hlc: int
    node: bytes | None


def capture_checkpoint(
    projections: Projections, cursors: dict[str, Cursor], hlc: int, node: bytes
) -> dict[str, Any]:
    """Copy out a consistent snapshot as plain, immutable data.

    Take it without yielding between reading the state and the cursors; the result
    can then be encoded anywhere (a worker thread) while the state moves on.
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


#: Where a key's version records lie in a checkpoint file: (namespace, key, offset,
#: length), offsets from the start of the file.
Placed = tuple[str, str, int, int]
#: The path, in a captured checkpoint, of the key/value section's per-namespace maps.
_KV_NAMESPACES = ("sections", "kv", 1, "ns")
#: Values the encoder takes apart rather than handing to one ``cbor2.dumps``.
_NESTED = (dict, list, memoryview)


class _Encoder:
    """Appends the CBOR of a captured checkpoint to ``out`` in pieces, keeping count of
    the bytes so far, so that where each key's version records land can be noted for
    the key directory."""

    def __init__(self, chunk: int, placed: list[Placed] | None) -> None:
        self.out: list[bytes | memoryview] = []
        self.size = 0
        self.chunk = chunk
        self.placed = placed

    def add(self, piece: bytes | memoryview) -> None:
        self.out.append(piece)
        self.size += len(piece)

    def encode(self, value: Any, path: tuple[Any, ...] = ()) -> None:
        """Maps that hold maps are assembled entry by entry; a flat map (the per-key
        version blobs of a namespace) is encoded ``chunk`` entries per ``cbor2.dumps``
        call. Why pieces: one ``dumps`` of the whole state holds the GIL for as long as
        it runs (hundreds of ms at a million versions), freezing the event loop even
        though the encoding happens in a worker thread; between pieces the loop runs."""
        if type(value) is memoryview:
            # A large buffer a projection promises never to write again (a vector
            # matrix): written as a byte string without a copy.
            self.add(cbor_head(2, value.nbytes))
            self.add(value)
            return
        if type(value) is list and any(type(v) in _NESTED for v in value):
            self.add(cbor_head(4, len(value)))
            for i, v in enumerate(value):
                self.encode(v, (*path, i))
            return
        if type(value) is not dict:
            self.add(cbor2.dumps(value))
            return
        self.add(cbor_head(5, len(value)))
        if any(type(v) in _NESTED for v in value.values()):
            for k, v in value.items():
                self.add(cbor2.dumps(k))
                self.encode(v, (*path, k))
            return
        items = list(value.items())
        note = self.placed is not None and path[:-1] == _KV_NAMESPACES
        for i in range(0, len(items), self.chunk):
            piece = dict(items[i : i + self.chunk])
            data = cbor2.dumps(piece)[len(cbor_head(5, len(piece))) :]
            if note:
                self._note(path[-1], items[i : i + self.chunk])
            self.add(data)

    def _note(self, namespace: str, items: list[tuple[str, bytes]]) -> None:
        """Where each blob of a piece about to be added lands (cbor2 writes a map's
        entries in insertion order: key text, then the blob's byte-string head)."""
        assert self.placed is not None
        at = self.size
        for key, blob in items:
            size = len(key.encode())
            at += len(cbor_head(3, size)) + size + len(cbor_head(2, len(blob)))
            self.placed.append((namespace, key, _HEADER + at, len(blob)))
            at += len(blob)


_HEADER = len(_MAGIC) + 32


def encode_captured(
    captured: dict[str, Any], *, chunk: int = 1000, placed: list[Placed] | None = None
) -> list[bytes | memoryview]:
    """The checkpoint bytes of a :func:`capture_checkpoint` result, as pieces to write
    in order (their concatenation is the checkpoint file). With ``placed``, also note
    there where every key's version records of the key/value section lie in the file
    (for :func:`~koru.projections.encode_key_directory`)."""
    encoder = _Encoder(chunk, placed)
    encoder.encode(captured)
    hasher = blake3.blake3()
    for piece in encoder.out:
        hasher.update(piece)
    return [_MAGIC, hasher.digest(), *encoder.out]


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
        raw: Any = cbor2.loads(body)
        fmt = raw["format"]
        if fmt not in (1, 2, _FORMAT) or type(fmt) is not int:
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
        return Checkpoint(sections, cursors, hlc, node)
    except CorruptCheckpointError:
        raise
    except Exception as exc:
        # Why catch broadly: the checksum passed, so this is a format bug or a
        # checkpoint from another version; either way the safe answer is to replay.
        raise CorruptCheckpointError(f"malformed checkpoint: {exc!r}") from None
