"""A log store held entirely in memory: ``koru.open(":memory:")`` and simulations.

It follows the same contract as the file store (chaining, replay from a cursor,
checkpoint files), so the database above cannot tell them apart except that nothing
survives the process.
"""

from __future__ import annotations

from collections.abc import Iterator

from koru._errors import CorruptCheckpointError

from ._chain import AGENTS, agent_index, chain, genesis_root
from ._store import Cursor, Record, pack_location, unpack_location

__all__ = ["MemoryStore"]


class MemoryStore:
    """Per-agent lists of (event bytes, event id, root)."""

    readonly = False

    def __init__(self) -> None:
        self._logs: dict[str, list[tuple[bytes, bytes, bytes]]] = {}
        self._files: dict[str, bytes] = {}
        self._appended = 0
        self._syncs = 0

    def agents(self) -> list[str]:
        return sorted(name for name, log in self._logs.items() if log)

    def replay(self, agent: str, start: Cursor | None = None) -> Iterator[Record]:
        log = self._logs.get(agent, [])
        begin = 0 if start is None else start.count
        if start is not None and (
            not 0 <= begin <= len(log)
            or start.root != (log[begin - 1][2] if begin else genesis_root(agent))
        ):
            raise CorruptCheckpointError(f"cursor for {agent!r} does not match the log")
        idx = agent_index(agent)
        for i in range(begin, len(log)):
            data, eid, root = log[i]
            yield Record(pack_location(idx, 0, i), i, eid, root, data)

    def cursor(self, agent: str) -> Cursor:
        log = self._logs.get(agent, [])
        root = log[-1][2] if log else genesis_root(agent)
        return Cursor(len(log), root, 0, len(log), len(log) - 1)

    def append(self, agent: str, data: bytes, event_id: bytes) -> tuple[int, bytes]:
        log = self._logs.setdefault(agent, [])
        root = chain(log[-1][2] if log else genesis_root(agent), event_id)
        log.append((data, event_id, root))
        self._appended += len(data)
        return pack_location(agent_index(agent), 0, len(log) - 1), root

    def read(self, location: int) -> bytes:
        idx, _, i = unpack_location(location)
        return self._logs[AGENTS[idx]][i][0]

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        self._syncs += 1

    def read_file(self, name: str) -> bytes | None:
        return self._files.get(name)

    def write_file(self, name: str, *parts: bytes) -> None:
        self._files[name] = b"".join(parts)

    def stats(self) -> dict[str, int]:
        return {
            "bytes_appended": self._appended,
            "syncs": self._syncs,
            "records": sum(len(log) for log in self._logs.values()),
        }

    def close(self) -> None:
        pass
