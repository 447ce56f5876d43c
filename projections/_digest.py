"""The digest of a whole state: one formula for a live database, a replay of its logs and
a simulated node rebuilt from its disk.

Why one function: the formula had three copies, and the replay's had not followed the
database's when embeddings joined it, so ``koru.replay`` reported a digest no database
holding the same events would (for any database with vectors).
"""

from __future__ import annotations

import blake3

from ._kv import KvState
from ._vectors import VectorState

__all__ = ["state_digest"]

_PREFIX = b"koru-delta/digest/v1"


def state_digest(kv: KvState, vectors: VectorState) -> str:
    """The hex digest of the key/value state and the embeddings: equal on every node
    holding the same events, whatever order they arrived in (a database without
    embeddings keeps the digest it had before they existed)."""
    state = _PREFIX + kv.digest()
    if vectors.spaces:
        state += vectors.digest()
    return blake3.blake3(state).hexdigest()
