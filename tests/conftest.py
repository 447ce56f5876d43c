"""Shared fixtures: databases in both stores, and a deterministic clock."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import settings

import koru
from koru._loader import load
from koru.events import Cursor, FileStore
from koru.projections import KvState, VectorState, state_digest

# Timing deadlines only make property tests flaky on a shared 2-core machine; the
# benchmarks measure speed.
settings.register_profile("koru", deadline=None)
settings.load_profile("koru")


class StepClock:
    """A wall clock that advances by ``step`` ns on every reading: deterministic and
    distinct timestamps without sleeping."""

    def __init__(self, start: int = 1_767_225_600 * 10**9, step: int = 1_000) -> None:
        self.now = start
        self.step = step

    def now_ns(self) -> int:
        self.now += self.step
        return self.now


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture(params=["memory", "file"])
async def db(
    request: pytest.FixtureRequest, tmp_path: Path, clock: StepClock
) -> AsyncIterator[koru.Database]:
    path = ":memory:" if request.param == "memory" else tmp_path / "db"
    async with koru.open(path, sync="os", clock=clock, seed=7) as database:
        yield database


TEST_NODE = bytes(range(16))


def open_store(path: Path, **kw: Any) -> FileStore:
    """A writable FileStore with a node id (a new store gets ``TEST_NODE``), as
    ``koru.open`` would give it."""
    store = FileStore(path, **kw)
    if store.node_id is None:
        store.create_node(TEST_NODE)
    return store


async def eventually(predicate: Callable[[], bool | Awaitable[bool]]) -> None:
    """Wait (polling, as a caller watching ``stats()`` would) until ``predicate()``
    (a plain or an async callable), for at most 10 s."""
    with trio.fail_after(10):
        while True:
            done = predicate()
            if inspect.isawaitable(done):
                done = await done
            if done:
                return
            await trio.sleep(0.005)


def digest_of(kv: KvState) -> str:
    """``Database.digest()`` of a state rebuilt outside a Database (the same formula)."""
    return state_digest(kv, VectorState())  # (no embeddings: the key/value state alone)


def full_replay(path: Path, agent: str = "storage") -> tuple[KvState, Cursor]:
    """Replay every record from genesis through a read-only store, verifying every
    checksum and chain link: (key/value state, end of the agent's log)."""
    store = FileStore(path, readonly=True)
    try:
        loaded = load(store, use_checkpoint=False)
        return loaded.kv, store.cursor(agent)
    finally:
        store.close()


def new_index(namespace: str, field: str) -> tuple[Any, Any]:
    """Indexes holding one new index of ``namespace``'s ``field``, filled (not
    pending), and that index: for tests that put entries into it directly."""
    from koru.events import IndexEvent
    from koru.projections._indexes import Indexes

    state = Indexes()
    create = IndexEvent(b"\x01" * 16, "perspective", 1, None, 5, "create", namespace, field)
    state.apply(create, b"\x02" * 32, 0)
    index = state.get(namespace, field)
    assert index is not None
    index.pending = False
    return state, index


async def expire_due(db: Any) -> None:
    """What the expiry process does, at once: record the expiry of every value of this
    node whose time to live is over by the database's read time."""
    writer = db._writer
    now = writer.read_time()
    if any([writer.expire(ns, key, now) for ns, key in list(db._kv.expiring)]):
        await writer.acknowledge()
