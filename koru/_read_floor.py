"""The read floor kept across a reopen, signed by the node key.

Why: whether a value with a time to live has expired is judged at a read time that
never goes back within a handle (see ``Writer.read_time``), but after a reopen it
started again from the newest timestamp in the logs. A value that a read had found
expired, before the expiry process recorded it as a tombstone (every 60 s), came back
when the database was reopened under a clock set back. A handle whose floor is ahead
of everything its logs hold writes it here at close, and an open starts from it.

Why signed: the file lies beside the logs, outside their hash chains, and a floor moved
into the future would make every value with a time to live read as expired (and the
expiry process then record them so). Only a floor this node's key signed counts; a
missing, damaged or foreign one is ignored, and reads fall back to the logs, as before
the file existed. What it does not cover: a crash (nothing is written on a read), and a
handle that cannot sign (read-only, or a database without a key).
"""

from __future__ import annotations

from koru.events import KoruError, LogStore, verify, warn

from ._identity import Identity

__all__ = ["READ_FLOOR_FILE", "check_read_floor", "load_read_floor", "save_read_floor"]

READ_FLOOR_FILE = "read-floor"
_CONTEXT = b"koru-delta 2026-12 read floor\x00"
_FLOOR_SIZE = 8
_SIGNATURE_SIZE = 64


def _message(node: bytes, floor: int) -> bytes:
    return _CONTEXT + node + floor.to_bytes(_FLOOR_SIZE, "big")


def save_read_floor(store: LogStore, key: Identity, floor: int) -> None:
    """Write ``floor`` (ns since the epoch), signed by ``key``, atomically and durably.

    Raises:
        StorageError: the file could not be written.
    """
    node = store.node_id
    assert node is not None
    store.write_file(
        READ_FLOOR_FILE, floor.to_bytes(_FLOOR_SIZE, "big") + key.sign(_message(node, floor))
    )


def load_read_floor(store: LogStore, public_key: bytes | None) -> int:
    """The floor saved by :func:`save_read_floor` if ``public_key`` (the node key's)
    signed it for this node, else 0 (with a warning for a file that is there but does
    not count; none for a handle that cannot read the key: a reader of another user's
    database)."""
    if public_key is None:
        return 0
    floor, problem = check_read_floor(store, public_key)
    if problem is not None:
        warn("koru: the read floor is ignored: %s", problem)
    return floor


def check_read_floor(store: LogStore, public_key: bytes | None) -> tuple[int, str | None]:
    """(the floor saved, or 0; why a file that is there does not count, or None)."""
    node = store.node_id
    try:
        # One byte past a floor's size: a longer file (of any size) is told without
        # reading it all.
        data = store.read_range(READ_FLOOR_FILE, 0, _FLOOR_SIZE + _SIGNATURE_SIZE + 1)
    except KoruError as exc:
        return 0, str(exc)
    if data is None:
        return 0, None
    if public_key is None or node is None:
        return 0, "it cannot be checked: the node key cannot be read"
    floor = int.from_bytes(data[:_FLOOR_SIZE], "big")
    if len(data) != _FLOOR_SIZE + _SIGNATURE_SIZE or not verify(
        public_key, _message(node, floor), data[_FLOOR_SIZE:]
    ):
        return 0, "it is not signed by this database's node key"
    return floor, None
