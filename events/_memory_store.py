"""A log store held entirely in memory: ``koru.open(":memory:")`` and simulations.

It follows the same contract as the file store (chaining, replay from a cursor,
checkpoint files), so the database above cannot tell them apart except that nothing
survives the process.
"""

from __future__ import annotations

from collections.abc import Iterator

from ._chain import AGENTS, agent_index, chain, genesis_root
from ._errors import CorruptCheckpointError, CorruptLogError, DataLossError, StorageError
from ._store import (
    Cursor,
    Offload,
    Record,
    call_here,
    check_read_position,
    pack_location,
    unpack_location,
)
from ._table import Table, TableEncoder, table_name

__all__ = ["MemoryStore"]


class MemoryStore:
    """Per-agent lists of (event bytes, event id, root)."""

    readonly = False
    segment_size: int | None = None

    def __init__(self) -> None:
        self.node_id: bytes | None = None
        self._logs: dict[str, list[tuple[bytes, bytes, bytes]]] = {}
        self._files: dict[str, bytes] = {}
        self._tables: dict[str, bytes] = {}
        self._appended = 0
        self._syncs = 0

    def create_node(self, node: bytes) -> None:
        if self.node_id is not None:
            raise StorageError("the database already has a node id")
        self.node_id = node

    def agents(self) -> list[str]:
        return sorted(name for name, log in self._logs.items() if log)

    def replay(
        self, agent: str, start: Cursor | None = None, durable: Cursor | None = None
    ) -> Iterator[Record]:
        for location, position, eid, data in self.replay_plain(agent, start, durable):
            yield Record(location, position, eid, self._logs[agent][position][2], data)

    def replay_plain(
        self, agent: str, start: Cursor | None = None, durable: Cursor | None = None
    ) -> Iterator[tuple[int, int, bytes, bytes]]:
        log = self._logs.get(agent, [])
        for cursor in (start, durable):
            if cursor is None:
                continue
            if cursor.count > len(log):
                raise DataLossError(
                    agent, len(log), 0, f"the checkpoint proves {cursor.count} records durable"
                )
            root = log[cursor.count - 1][2] if cursor.count > 0 else genesis_root(agent)
            if cursor.count < 0 or cursor.root != root:
                raise CorruptLogError(
                    agent, cursor.count - 1, 0, "the log does not match the checkpoint's cursor"
                )
        begin = 0 if start is None else start.count
        idx = agent_index(agent)
        for i in range(begin, len(log)):
            data, eid, _ = log[i]
            yield pack_location(idx, 0, i), i, eid, data

    def records(
        self, agent: str, start: int = 0, *, after: Cursor | None = None
    ) -> Iterator[Record]:
        check_read_position(agent, start)
        log = self._logs.get(agent, [])
        idx = agent_index(agent)
        if after is not None:
            if after.count > len(log) or (after.count and log[after.count - 1][2] != after.root):
                raise DataLossError(agent, after.count, after.count, "the cursor is not in the log")
            start = max(start, after.count)
        for position in range(start, len(log)):
            data, eid, root = log[position]
            yield Record(pack_location(idx, 0, position), position, eid, root, data)

    def write_table(self, encoder: TableEncoder, offload: Offload = call_here) -> Table:
        entries = list(encoder.entries())
        pieces = [encoder.header(), *entries, encoder.index()]
        name = table_name(pieces)
        self._tables.setdefault(name, b"".join(pieces))
        return self.open_table(name)

    def open_table(self, name: str) -> Table:
        data = self._tables.get(name)
        if data is None:
            raise CorruptCheckpointError(f"table {name!r} is missing")
        return Table(data, name)

    def table_names(self) -> set[str]:
        return set(self._tables)

    def remove_tables(self, keep: set[str]) -> int:
        gone = set(self._tables) - keep
        for name in gone:
            del self._tables[name]
        return len(gone)

    def cursor_after(self, record: Record) -> Cursor:
        n = record.position + 1
        return Cursor(n, record.root, 0, n, record.position)

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

    def read(self, location: int, expect: int = 4096) -> bytes:
        idx, _, i = unpack_location(location)
        log = self._logs.get(AGENTS[idx], []) if idx < len(AGENTS) else []
        if i >= len(log):
            raise CorruptLogError(*self.locate(location)[:3], "no record at this location")
        return log[i][0]

    def locate(self, location: int) -> tuple[str, int, int, str]:
        idx, _, i = unpack_location(location)
        return (AGENTS[idx] if idx < len(AGENTS) else "?"), i, i, ""

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        self._syncs += 1

    def read_file(self, name: str) -> bytes | None:
        return self._files.get(name)

    def read_range(self, name: str, offset: int, size: int) -> bytes | None:
        data = self._files.get(name)
        return None if data is None else data[offset : offset + size]

    def write_file(self, name: str, *parts: bytes | memoryview) -> None:
        self._files[name] = b"".join(parts)

    def read_private(self, name: str) -> bytes | None:
        return self._files.get(name)

    def write_private(self, name: str, data: bytes) -> None:
        self._files[name] = bytes(data)

    def replace_node(self, node: bytes) -> None:
        self.node_id = node

    def stats(self) -> dict[str, int]:
        return {
            "bytes_appended": self._appended,
            "syncs": self._syncs,
            "records": sum(len(log) for log in self._logs.values()),
        }

    def close(self) -> None:
        pass
