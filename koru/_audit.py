"""Checking a checkpoint (and its key directory) against a replay of the log it
summarises.

A checkpoint is trusted at open (its checksum passed, its cursors match the log), so
a checkpoint written by a buggy build, or crafted with a fresh checksum, would be
served. ``kdelta verify`` settles it: fold the log from genesis up to the checkpoint's
cursors into fresh projections and compare each section with what the checkpoint says.
"""

from __future__ import annotations

import zlib
from typing import Any

import cbor2

from koru.events import CorruptCheckpointError, KoruError, LogStore, decode_trusted
from koru.projections import (
    CHECKPOINT_FILE,
    KEYS_FILE,
    KeyDirectory,
    KvState,
    Projections,
    decode_checkpoint,
)

from ._loader import BUILTIN_PROJECTIONS

__all__ = ["audit_checkpoint", "audit_key_directory"]


def _canonical(data: Any) -> bytes:
    return cbor2.dumps(_plain(data), canonical=True)


def _plain(data: Any) -> Any:
    """``data`` with every memoryview (a projection's uncopied buffer) as bytes."""
    if type(data) is memoryview:
        return data.tobytes()
    if type(data) is list:
        return [_plain(v) for v in data]
    if type(data) is dict:
        return {k: _plain(v) for k, v in data.items()}
    return data


def audit_checkpoint(store: LogStore) -> tuple[list[str], list[str]]:
    """(problems, notes) of the store's checkpoint: problems are disagreements with the
    log; notes say what was not checked (no checkpoint, a projection not known here)."""
    raw = store.read_file(CHECKPOINT_FILE)
    if raw is None:
        return [], ["no checkpoint to check"]
    try:
        checkpoint = decode_checkpoint(raw)
    except CorruptCheckpointError as exc:
        return [f"checkpoint unreadable: {exc}"], []
    problems: list[str] = []
    notes: list[str] = []
    if checkpoint.node is not None and checkpoint.node != store.node_id:
        problems.append("the checkpoint was written by another node")
    projections = Projections(kind() for kind in BUILTIN_PROJECTIONS)
    for agent, cursor in sorted(checkpoint.cursors.items()):
        folded, root = 0, None
        try:
            for record in store.records(agent, 0):
                if record.position >= cursor.count:
                    break
                projections.apply(decode_trusted(record.data), record.event_id, record.location)
                folded, root = record.position + 1, record.root
        except KoruError as exc:
            problems.append(f"replaying {agent!r} to the checkpoint failed: {exc}")
            continue
        if folded < cursor.count:
            problems.append(
                f"the {agent!r} log holds {folded} records, the checkpoint covers {cursor.count}"
            )
        elif cursor.count and root != cursor.root:
            problems.append(f"the {agent!r} chain root at record {cursor.count} differs")
    captured = projections.capture()
    for name, (version, data) in sorted(checkpoint.sections.items()):
        mine = captured.get(name)
        if mine is None:
            notes.append(f"section {name!r} not checked (a projection not known here)")
        elif mine[0] != version:
            notes.append(f"section {name!r} is version {version}, not {mine[0]}: not checked")
        elif _canonical(mine[1]) != _canonical(data):
            problems.append(f"section {name!r} disagrees with a replay of the log")
    return problems, notes


def audit_key_directory(store: LogStore) -> tuple[list[str], list[str]]:
    """(problems, notes) of the checkpoint's key directory: it must be of this
    checkpoint, and list every key of its key/value section exactly where that key's
    version records lie. A directory that fails is only a slower one-shot read (readers
    then load in full), so what is wrong is reported, and nothing else depends on it."""
    raw = store.read_file(KEYS_FILE)
    checkpoint = store.read_file(CHECKPOINT_FILE)
    if raw is None:
        return [], ["no key directory (one-shot reads load the database in full)"]
    try:
        directory = KeyDirectory(raw, KvState.version)
    except CorruptCheckpointError as exc:
        return [f"key directory unreadable: {exc}"], []
    if checkpoint is None or checkpoint[8:40] != directory.checkpoint_digest:
        return [], ["the key directory is of an older checkpoint (one-shot reads load in full)"]
    try:
        section = decode_checkpoint(checkpoint).sections.get("kv")
    except CorruptCheckpointError:
        return [], ["the key directory's checkpoint is unreadable: not checked"]
    if section is None or section[0] != KvState.version:
        return [], ["the checkpoint has no key/value section of this version: not checked"]
    problems: list[str] = []
    listed = 0
    for namespace, keys in sorted(section[1]["ns"].items()):
        for key, blob in sorted(keys.items()):
            found = directory.find(namespace, key)
            if found is None:
                problems.append(f"key directory: {namespace!r}/{key!r} is missing")
                continue
            offset, length, crc = found
            if checkpoint[offset : offset + length] != blob or zlib.crc32(blob) != crc:
                problems.append(f"key directory: {namespace!r}/{key!r} points elsewhere")
            listed += 1
    if len(directory) != listed:
        problems.append(f"key directory lists {len(directory)} keys, the checkpoint {listed}")
    return problems, []
