"""An event's place in its feed, read off its first bytes without decoding it.

An event is a canonical CBOR array ``[version, tag, origin, agent, seq, ...]``
(docs/design/event-model.md): the sync protocol reads ``(origin, agent)`` and
``seq`` of each event it receives to know what the sender holds, and must not pay a
full decode for it (ingest decodes, strictly, once). Anything that does not look like
an event gives None; what this returns is a hint about the sender, never trusted for
the event itself.
"""

from __future__ import annotations

import io

import cbor2

__all__ = ["feed_of", "split_events"]


def _head(data: bytes, at: int) -> tuple[int, int, int] | None:
    """(major type, argument, next offset) of the CBOR item at ``at``."""
    if at >= len(data):
        return None
    first = data[at]
    major, info = first >> 5, first & 31
    if info < 24:
        return major, info, at + 1
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if size is None or at + 1 + size > len(data):
        return None
    return major, int.from_bytes(data[at + 1 : at + 1 + size], "big"), at + 1 + size


def feed_of(data: bytes) -> tuple[tuple[bytes, str], int] | None:
    """``((origin, agent), seq)`` of an event's bytes, or None."""
    item = _head(data, 0)
    if item is None or item[0] != 4 or item[1] < 5:  # an array of at least 5
        return None
    at = item[2]
    version = _head(data, at)  # the schema version: an unsigned int
    if version is None or version[0] != 0:
        return None
    tag = _head(data, version[2])
    if tag is None or tag[0] != 3:
        return None
    origin = _head(data, tag[2] + tag[1])
    if origin is None or origin[0] != 2 or origin[1] != 16:
        return None
    start = origin[2]
    agent = _head(data, start + 16)
    if agent is None or agent[0] != 3 or agent[1] > 64:
        return None
    seq = _head(data, agent[2] + agent[1])
    if seq is None or seq[0] != 0:
        return None
    try:
        name = data[agent[2] : agent[2] + agent[1]].decode()
    except UnicodeDecodeError:
        return None
    return (bytes(data[start : start + 16]), name), seq[1]


def split_events(blob: bytes) -> list[bytes] | None:
    """The events of an EVENTS message (concatenated CBOR items, each an event's
    bytes), or None if the blob is not a run of whole CBOR items. Each event is
    checked strictly by ingest; this only finds where one ends."""
    out = []
    stream = io.BytesIO(blob)
    decoder = cbor2.CBORDecoder(stream)
    start, end = 0, len(blob)
    try:
        while start < end:
            decoder.decode()
            stop = stream.tell()
            if stop <= start:
                return None
            out.append(blob[start:stop])
            start = stop
    except Exception:  # malformed, truncated, or nested too deep: cbor2 raises several
        return None
    return out
