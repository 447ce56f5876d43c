"""Checkpoints: projection state saved with the log positions and roots it reflects.

Opening a large database loads the newest checkpoint and replays only the log tail
after its cursors. A checkpoint is a hint, never the truth: if it is missing, fails its
checksum, or its cursors do not match the log (checked by the store against the
stored chain root), the caller replays from genesis and gets identical state.

Format: ``b"KORUCKP1" | blake3(body) | body``, body a CBOR map (plain data only).
"""

from __future__ import annotations

from typing import Any

import attrs
import blake3
import cbor2

from koru._errors import CorruptCheckpointError
from koru.events import Cursor

from ._feeds import FeedState
from ._kv import KvState

__all__ = [
    "Checkpoint",
    "capture_checkpoint",
    "decode_checkpoint",
    "encode_captured",
    "encode_checkpoint",
]

_MAGIC = b"KORUCKP1"
_FORMAT = 1


@attrs.frozen(slots=True)
class Checkpoint:
    """Decoded checkpoint: state, feeds, and the cursor of each agent's log."""

    kv: KvState
    feeds: FeedState
    cursors: dict[str, Cursor]
    hlc: int


def capture_checkpoint(
    kv: KvState, feeds: FeedState, cursors: dict[str, Cursor], hlc: int
) -> dict[str, Any]:
    """Copy out a consistent snapshot as plain, immutable data.

    Take it without yielding between reading the state and the cursors; the result
    can then be encoded anywhere (a worker thread) while the state moves on.
    """
    return {
        "format": _FORMAT,
        "kv": kv.snapshot(),
        "feeds": feeds.snapshot(),
        "cursors": {
            agent: [c.count, c.root, c.segment, c.offset, c.last]
            for agent, c in sorted(cursors.items())
        },
        "hlc": hlc,
    }


def _map_header(n: int) -> bytes:
    if n < 24:
        return bytes((0xA0 | n,))
    if n < 0x100:
        return b"\xb8" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xb9" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\xba" + n.to_bytes(4, "big")
    return b"\xbb" + n.to_bytes(8, "big")


def _encode_map(value: dict[Any, Any], out: list[bytes], chunk: int) -> None:
    """Append the CBOR of a (possibly huge) map as pieces of at most ``chunk`` entries.

    Why pieces: one ``cbor2.dumps`` of the whole state holds the GIL for as long as it
    runs (hundreds of ms at a million versions), freezing the event loop even though
    the encoding happens in a worker thread; between pieces the loop gets to run.
    """
    out.append(_map_header(len(value)))
    items = list(value.items())
    for i in range(0, len(items), chunk):
        piece = dict(items[i : i + chunk])
        out.append(cbor2.dumps(piece)[len(_map_header(len(piece))) :])


def encode_captured(captured: dict[str, Any], *, chunk: int = 1000) -> list[bytes]:
    """The checkpoint bytes of a :func:`capture_checkpoint` result, as pieces to write
    in order (their concatenation is the checkpoint file)."""
    body: list[bytes] = [_map_header(len(captured))]
    for name, value in captured.items():
        body.append(cbor2.dumps(name))
        if name != "kv":
            body.append(cbor2.dumps(value))
            continue
        body.append(_map_header(len(value)))
        for field, item in value.items():
            body.append(cbor2.dumps(field))
            if field != "ns":
                body.append(cbor2.dumps(item))
                continue
            body.append(_map_header(len(item)))
            for namespace, keys in item.items():
                body.append(cbor2.dumps(namespace))
                _encode_map(keys, body, chunk)
    hasher = blake3.blake3()
    for piece in body:
        hasher.update(piece)
    return [_MAGIC, hasher.digest(), *body]


def encode_checkpoint(kv: KvState, feeds: FeedState, cursors: dict[str, Cursor], hlc: int) -> bytes:
    """Capture and encode in one step, as one bytes object."""
    return b"".join(encode_captured(capture_checkpoint(kv, feeds, cursors, hlc)))


def decode_checkpoint(data: bytes) -> Checkpoint:
    """Decode and verify a checkpoint; raises CorruptCheckpointError if it is unusable."""
    if len(data) < len(_MAGIC) + 32 or not data.startswith(_MAGIC):
        raise CorruptCheckpointError("not a koru checkpoint")
    digest, body = data[len(_MAGIC) : len(_MAGIC) + 32], data[len(_MAGIC) + 32 :]
    if blake3.blake3(body).digest() != digest:
        raise CorruptCheckpointError("checkpoint checksum mismatch")
    try:
        raw: Any = cbor2.loads(body)
        if raw["format"] != _FORMAT:
            raise CorruptCheckpointError(f"unknown checkpoint format {raw['format']!r}")
        cursors = {
            str(agent): Cursor(int(c[0]), bytes(c[1]), int(c[2]), int(c[3]), int(c[4]))
            for agent, c in raw["cursors"].items()
        }
        return Checkpoint(
            KvState.from_snapshot(raw["kv"]),
            FeedState.from_snapshot(raw["feeds"]),
            cursors,
            int(raw["hlc"]),
        )
    except CorruptCheckpointError:
        raise
    except Exception as exc:
        # Why catch broadly: the checksum passed, so this is a format bug or a
        # checkpoint from another version; either way the safe answer is to replay.
        raise CorruptCheckpointError(f"malformed checkpoint: {exc!r}") from None
