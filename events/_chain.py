"""The canonical agents and their hash chains.

The original's synthesis rule ``ΔNew = ΔLocal ⊕ ΔAction`` becomes a verifiable hash
chain: each agent starts at a genesis root derived from its name, and appending an
event with id ``e`` moves the agent's root to ``blake3(root || e)``. An agent's root
is therefore the chain head of its local log: two logs with the same root hold the
same events in the same order, and any edit to a stored event breaks every later link.
"""

from __future__ import annotations

import blake3

__all__ = ["AGENTS", "STORAGE", "agent_index", "chain", "genesis_root"]

#: The original's canonical roots, in a fixed order (the order is part of the on-disk
#: format: a value's location names its agent by index).
AGENTS: tuple[str, ...] = (
    "field",
    "orchestrator",
    "storage",
    "temperature",
    "chronicle",
    "archive",
    "essence",
    "sleep",
    "evolution",
    "lineage",
    "perspective",
    "identity",
    "network",
    "workspace",
    "vector",
    "lifecycle",
    "session",
    "subscription",
    "process",
    "reconciliation",
)

#: The agent whose log holds key/value writes.
STORAGE = "storage"

_INDEX = {name: i for i, name in enumerate(AGENTS)}


def agent_index(agent: str) -> int:
    """The fixed index of a canonical agent (KeyError for an unknown name)."""
    return _INDEX[agent]


def genesis_root(agent: str) -> bytes:
    """The root of an empty log: deterministic from the agent's name."""
    return blake3.blake3(b"koru-delta/genesis/" + agent.encode()).digest()


def chain(root: bytes, event_id: bytes) -> bytes:
    """The next root: ``blake3(root || event_id)``."""
    return blake3.blake3(root + event_id).digest()
