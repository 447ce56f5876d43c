"""The large per-entry maps of secondary indexes, of the keys with a time to live and
of the document cache's dirty keys hold nothing the cyclic garbage collector tracks:
a full collection visits every entry of a tracked container, and with 200,000 index
entries or keys with a ttl it paused every put for 70-100 ms (issue #14 asks at most 10
ms of any put). What must hold: the containers are untracked, and the number of
objects the collector tracks does not grow with the number of entries."""

from __future__ import annotations

import gc
import types
from collections.abc import Callable

import trio

import koru
from conftest import new_index
from koru._documents import Documents
from koru.projections import KvState
from koru.projections._indexes import Indexes
from koru.projections._order import order_key

NS = "docs"


def index_of(n: int, value: Callable[[int], object]) -> Indexes:
    """An index of ``n`` entries, ``value(i)`` the field of key ``k{i}``, every key
    written twice (buckets emptied and refilled), snapshots taken and settled between."""
    state, index = new_index(NS, "v")
    for round in (0, 1):
        for i in range(n):
            v = None if i % 10 == 0 else order_key(value(i + round))
            index.put(f"k{i}", (round * n + i + 1).to_bytes(56, "big"), v)
        list(index.entries.snapshot().items())  # the encoder's listing merges layers
        state.checkpointed({})
    return state


def kv_with_ttl(n: int) -> KvState:
    kv = KvState()
    for round in (0, 1):
        for i in range(n):
            kv.expiring[(NS, f"k{i}")] = 10**18 + i + round
            if i % 7 == 0:
                kv.expiring.pop((NS, f"k{i}"))
        list(kv.expiring.snapshot().items())
        kv.expiring.settle()
    return kv


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
           types.MethodType, types.CodeType)


def tracked(root: object) -> int:
    """Objects the collector tracks among those reachable from ``root`` (classes,
    modules and functions not followed), once collections stop untracking any: one
    untracks a tuple whose items are untracked, and the tuples nested in a list's or
    map's order key may take one each (their order in the collector's lists varies).
    Counted from ``root``, not over the whole heap: garbage earlier tests left, freed
    mid-measure, once made a global count fall by 33 (a spurious failure)."""
    count = -1
    for _ in range(12):
        gc.collect()
        if count == (count := _reachable_tracked(root)):
            break
    return count


def _reachable_tracked(root: object) -> int:
    seen, stack, count = {id(root)}, [root], 0
    while stack:
        obj = stack.pop()
        count += gc.is_tracked(obj)
        for ref in gc.get_referents(obj):
            if not isinstance(ref, _OPAQUE) and id(ref) not in seen:
                seen.add(id(ref))
                stack.append(ref)
    return count


VALUES: dict[str, Callable[[int], object]] = {
    "unique strings": lambda i: f"user{i}",
    "few ints": lambda i: i % 90,
    "floats": lambda i: i / 7,
    "bools and nulls": lambda i: [True, False, None][i % 3],
    "bytes": lambda i: str(i % 500).encode(),
    "lists": lambda i: [i % 300, "tag", [1.0 * (i % 7)]],
    "maps": lambda i: {"a": i % 200, "b": {"c": -0.0 if i % 2 else 0}},
}


def test_index_maps_are_never_tracked() -> None:
    for name, value in VALUES.items():
        state = index_of(5_000, value)
        gc.collect()  # (tuples of atomics are untracked lazily, by a collection)
        index = state.get(NS, "v")
        assert index is not None
        entries = index.entries
        for layer in (entries._top, *entries._below):
            assert not gc.is_tracked(layer), name
        for found in index.buckets.values():
            assert not gc.is_tracked(found), name
        for shared in index.shared.values():
            assert not any(gc.is_tracked(b) for b in shared.values()), name
        # A new entry and value (a new tuple, tracked until a collection) track nothing.
        index.put("new", (10**9).to_bytes(56, "big"), order_key(value(10**6)))
        assert not gc.is_tracked(entries._top), name
        assert not any(gc.is_tracked(found) for found in index.buckets.values()), name
        # A list or map value never seen: its bucket is keyed by bytes, not by a tuple
        # (which would track the bucket map until the next full collection).
        for n, new in enumerate((["new", [1.5]], {"n": {"m": 10**6}})):
            index.put(f"new{n}", (10**9 + 1 + n).to_bytes(56, "big"), order_key(new))
            assert not any(gc.is_tracked(found) for found in index.buckets.values()), name


def test_tracked_objects_do_not_grow_with_index_entries() -> None:
    for name, value in VALUES.items():
        with_small = tracked(index_of(100, value))
        with_large = tracked(index_of(20_000, value))
        assert with_large - with_small <= 10, (name, with_small, with_large)


def test_keys_with_a_ttl_are_never_tracked() -> None:
    with_small = tracked(kv_with_ttl(100))
    kv = kv_with_ttl(20_000)
    with_large = tracked(kv)
    assert with_large - with_small <= 10, (with_small, with_large)
    for layer in (kv.expiring._top, *kv.expiring._below):
        assert not gc.is_tracked(layer)
    snapshot = kv.expiring.snapshot()  # a checkpoint's capture
    kv.expiring[(NS, f"new{len(kv.expiring)}")] = 1  # (a new tuple: tracked until collected)
    assert not any(gc.is_tracked(layer) for layer in snapshot.layers)
    assert not gc.is_tracked(kv.expiring._top)


def test_dirty_keys_of_the_document_cache_are_never_tracked(tmp_path: object) -> None:
    async def main() -> None:
        async with koru.open(tmp_path, processes=False) as db:  # type: ignore[arg-type]
            await db.create_index(NS, "v")
            await db.query(NS, koru.Query())  # scanned once: its documents are cached
            for start in range(0, 5_000, 500):
                await db.put_batch([(NS, f"k{i}", {"v": i}) for i in range(start, start + 500)])
            gc.collect()
            dirty = [o for o in gc.get_objects() if type(o) is Documents and o.dirty is not None]
            assert dirty and all(not gc.is_tracked(d.dirty) for d in dirty)
            assert max(len(d.dirty or ()) for d in dirty) >= 5_000

    trio.run(main)
