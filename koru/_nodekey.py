"""A database's node key, and the node id it derives.

Every writable database holds an Ed25519 key pair in ``node.key`` (mode 0600, read with
the same refusals as any key file), and writes as the node id that key derives
(:func:`koru.events.node_id_of`): anyone can check with one hash that a seal's key
speaks for its origin, and nobody else can make one.

- A new database makes its key first, then takes the derived id.
- A database without a key (every one written before keys existed, or one whose key
  file was deleted) gets a new key at its first writable open and from then on writes
  as the derived id. What it wrote before keeps its old id: readable, exportable and
  importable by its owner, but no key can prove who wrote it, so peers that require
  proof do not take it. The key file remembers the id it replaced, so an open
  interrupted between writing the key and switching the id completes the switch, while
  a key file copied from another database is refused.
- A read-only open never needs the key (another user may read a database whose key
  it may not read; nothing read-only signs): it reads the key's public half if it can,
  to know whose grants count here.
"""

from __future__ import annotations

import blake3

from koru.events import KeyFileError, KoruError, LogStore, node_id_of, warn

from ._identity import Identity
from ._sessions import Entropy

__all__ = ["NODE_KEY_FILE", "node_key", "node_public_key"]

NODE_KEY_FILE = "node.key"
_SEED_CONTEXT = "koru-delta 2026-12 node key seed"


def node_key(store: LogStore, entropy: Entropy) -> Identity | None:
    """The node key of a store opened for writing (made if missing, the node id set to
    the one it derives); None for a read-only store.

    Raises:
        KeyFileError: ``node.key`` is not private, not a key file, or belongs to
            another database.
    """
    if store.readonly:
        return None
    data = store.read_private(NODE_KEY_FILE)
    if data is not None:
        key = Identity.from_bytes(data, NODE_KEY_FILE)
        derived = node_id_of(key.public_key)
        if store.node_id is None:
            store.create_node(derived)  # a crash after the key, before the meta file
        elif store.node_id != derived:
            if key._previous != store.node_id:
                raise KeyFileError(
                    f"{NODE_KEY_FILE} belongs to another database (its key speaks for node "
                    f"{derived.hex()}, this database is node {store.node_id.hex()})"
                )
            store.replace_node(derived)  # a switch interrupted before the meta file
        return key
    previous = store.node_id
    # Through blake3's key derivation: a seeded database's key is then never the key an
    # identity mined from the same seed would have.
    seed = blake3.blake3(entropy.token(32), derive_key_context=_SEED_CONTEXT).digest()
    key = Identity(seed, bytes(8), previous)
    store.write_private(NODE_KEY_FILE, key.key_file_bytes())
    derived = node_id_of(key.public_key)
    if previous is None:
        store.create_node(derived)
    else:
        store.replace_node(derived)
        warn(
            "koru: this database had no node key; it now writes as node %s with a new "
            "key (what it wrote as node %s keeps that id)",
            derived.hex(),
            previous.hex(),
        )
    return key


def node_public_key(store: LogStore) -> bytes | None:
    """The node key's public half, for a read-only store (its root, to decide whose
    grants count), if the key file can be read here; else None (then nothing counts
    as rooted: a reader who may not read the key file learns no more than that)."""
    try:
        data = store.read_private(NODE_KEY_FILE)
        if data is None:
            return None
        key = Identity.from_bytes(data, NODE_KEY_FILE)
    except KoruError:
        return None
    if store.node_id != node_id_of(key.public_key):
        return None
    return key.public_key
