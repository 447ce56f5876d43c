"""The value cache (koru/_cache.py): a byte budget kept, never a wrong value, and a
scan of one-off reads does not push out values read again and again."""

from __future__ import annotations

import gc
from collections import OrderedDict

import cbor2
from _strategies import values as cached_values
from hypothesis import given, settings
from hypothesis import strategies as st

from koru._cache import (
    _OVERHEAD,
    _REPLACE_EVERY,
    MISSING,
    PROTECTED_SHARE,
    SHARDS,
    ValueCache,
    _Order,
    _template_cost,
)


def _cid(i: int, shard: int = 0) -> bytes:
    """A content id in ``shard`` (the cache splits its budget by the first byte)."""
    return bytes([shard]) + i.to_bytes(4, "big")


def _value(i: int, size: int) -> bytes:
    return bytes([i % 251]) * size


ops = st.lists(
    st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 40), st.integers(1, 300)),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(capacity=st.integers(0, 4000), ops=ops)
def test_the_cache_keeps_its_budget_and_answers_only_what_was_put(
    capacity: int, ops: list[tuple[str, int, int]]
) -> None:
    cache = ValueCache(capacity)
    stored: dict[bytes, bytes] = {}  # what each content id was put with (content ids never change)
    hits = misses = 0
    for op, i, size in ops:
        cid = _cid(i, i % 3)
        if op == "put":
            value = stored.setdefault(cid, _value(i, size))
            cache.put(cid, value)
        else:
            got = cache.get(cid)
            if got is None:
                misses += 1
            else:
                hits += 1
                assert got == stored[cid]
        held = {c: v for c in (_cid(j, j % 3) for j in range(41)) if (v := cache.peek(c))}
        assert cache.size == sum(len(v) + _OVERHEAD for v in held.values())
        assert cache.size <= capacity
        assert len(cache) == len(held)
        for shard in cache._shards:
            assert shard.size <= capacity / SHARDS
            assert shard.protected_size <= shard.capacity * PROTECTED_SHARE
            assert set(shard.probation) | set(shard.protected) == set(shard.data)
            assert not set(shard.probation) & set(shard.protected)
    assert (cache.hits, cache.misses) == (hits, misses)


def test_a_scan_of_one_off_reads_leaves_the_values_read_again() -> None:
    cache = ValueCache(SHARDS * 100 * (100 + _OVERHEAD))  # 100 values of 100 B a shard
    hot = [_cid(i) for i in range(50)]
    for cid in hot:
        cache.put(cid, b"h" * 100)
        assert cache.get(cid) is not None  # read again: protected
    for i in range(1000, 3000):  # two thousand values read once
        cache.put(_cid(i), b"c" * 100)
    assert all(cache.get(cid) == b"h" * 100 for cid in hot)
    # A plain LRU would hold only the last hundred of the scan.
    assert cache.get(_cid(1000)) is None


def test_protected_values_return_to_probation_past_their_share() -> None:
    cache = ValueCache(SHARDS * 10 * (10 + _OVERHEAD))  # 10 values of 10 B a shard
    for i in range(10):
        cache.put(_cid(i), b"x" * 10)
        cache.get(_cid(i))
    # Eight fit the protected share; the two read again first went back to probation,
    # and they are the first to go when a new value needs room.
    assert len(cache._shards[0].protected) == 8
    cache.put(_cid(99), b"y" * 10)
    assert cache.peek(_cid(0)) is None
    assert cache.peek(_cid(9)) is not None


# -- decoded templates (ValueCache.value) ---------------------------------------------


def _mutate(value: object) -> None:
    """Change a returned value in place wherever it can be changed."""
    if isinstance(value, dict):
        for k in list(value):
            _mutate(value[k])
            value[k] = "changed"
        value["extra"] = [1]
    elif isinstance(value, list):
        for item in value:
            _mutate(item)
        value.append("changed")
        if len(value) > 1:
            value[0] = None


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(0, 6000),
    values=st.lists(cached_values, min_size=1, max_size=8),
    ops=st.lists(
        st.tuples(st.sampled_from(["put", "get", "value"]), st.integers(0, 7)), max_size=200
    ),
)
def test_value_is_always_a_fresh_decode_and_the_budget_holds(
    capacity: int, values: list[object], ops: list[tuple[str, int]]
) -> None:
    cache = ValueCache(capacity)
    encoded = [cbor2.dumps(v) for v in values]
    for op, i in ops:
        i %= len(values)
        cid = _cid(i, i % 3)
        if op == "put":
            cache.put(cid, encoded[i])
        elif op == "get":
            got = cache.get(cid)
            assert got is None or got == encoded[i]
        else:
            got = cache.value(cid)
            if got is not MISSING:
                # Equal to a fresh decode, of the same types, and never shared: a
                # caller changing it in place changes nothing the next read sees.
                fresh = cbor2.loads(encoded[i])
                assert got == fresh and type(got) is type(fresh)
                assert cbor2.dumps(got) == encoded[i]
                _mutate(got)
        for shard in cache._shards:
            values_size = sum(len(v) + _OVERHEAD for v in shard.data.values())
            templates_size = sum(
                _template_cost(t, len(shard.data[c])) for c, t in shard.decoded.items()
            )
            assert shard.size == values_size + templates_size
            assert shard.size <= capacity / SHARDS
            assert set(shard.decoded) <= set(shard.data)
            in_protected = sum(len(shard.data[c]) + _OVERHEAD for c in shard.protected)
            assert shard.protected_size == in_protected
            assert shard.protected_size <= shard.capacity * PROTECTED_SHARE
        assert cache.size == sum(shard.size for shard in cache._shards)


def test_templates_are_counted_and_kept_only_for_what_can_be_copied() -> None:
    cache = ValueCache(1 << 20)
    flat, nested = {"name": "a", "n": 1, "ok": True}, {"inner": {"a": 1}}
    for i, v in enumerate((flat, nested, "text", [1, 2.5, None])):
        cache.put(_cid(i), cbor2.dumps(v))
    before = cache.size
    assert cache.value(_cid(0)) == flat
    shard = cache._shards[0]
    assert _cid(0) not in shard.decoded and cache.size == before  # one read: no template
    assert cache.value(_cid(0)) == flat
    assert shard.decoded[_cid(0)] == flat and cache.size > before  # its template, counted
    first, second = cache.value(_cid(0)), cache.value(_cid(0))
    assert first == second == flat and first is not second
    assert cache.value(_cid(1)) == nested
    assert cache.value(_cid(1)) is not cache.value(_cid(1))  # decoded every time
    assert cache.value(_cid(2)) == "text"
    assert cache.value(_cid(3)) == [1, 2.5, None]
    assert cache.value(_cid(99)) is MISSING


def test_templates_use_only_the_room_values_leave() -> None:
    encoded = [cbor2.dumps({"name": "x" * 20, "n": i}) for i in range(5)]
    v = len(encoded[0]) + _OVERHEAD
    t = _template_cost({"name": "x" * 20, "n": 0}, len(encoded[0]))
    assert t > v  # a template costs more than its bytes
    cache = ValueCache(SHARDS * (4 * v + t))  # a shard: four values and one template
    shard = cache._shards[0]
    for i in range(4):
        cache.put(_cid(i), encoded[i])
        assert cache.value(_cid(i)) == cache.value(_cid(i))  # read again: a template
    # Every value is still cached: templates never displace one. The first template
    # filled the room, and the next ones were not kept (one read in _REPLACE_EVERY
    # without room replaces the oldest).
    assert all(cache.peek(_cid(i)) == encoded[i] for i in range(4))
    assert list(shard.decoded) == [_cid(0)]
    for _ in range(_REPLACE_EVERY):
        cache.value(_cid(3))
    assert list(shard.decoded) == [_cid(3)]
    cache.put(_cid(4), encoded[4])  # a new value takes the template's room first
    assert not shard.decoded
    assert cache.peek(_cid(4)) == encoded[4]
    assert all(cache.peek(_cid(i)) == encoded[i] for i in range(5))  # values stay
    assert cache.size == shard.size <= cache.capacity / SHARDS


def test_a_cache_sized_for_its_values_decodes_every_read_and_keeps_them_all() -> None:
    # The tiers set-up: the room left after the values is less than any template
    # that saves a decode, but more than a nested value's marker would cost.
    encoded = [cbor2.dumps({"name": f"u{i}", "bio": "x" * 300}) for i in range(3)]
    v = len(encoded[0]) + _OVERHEAD
    cache = ValueCache(SHARDS * (3 * v + 100))
    shard = cache._shards[0]
    for i in range(3):
        cache.put(_cid(i), encoded[i])
    reads = 5 * _REPLACE_EVERY
    for _ in range(reads):
        for i in range(2):  # two hot values (the protected share holds two)
            got = cache.value(_cid(i))
            assert got == {"name": f"u{i}", "bio": "x" * 300}
            got["bio"] = "changed"  # a fresh decode: the next read is unchanged
    assert not shard.decoded and cache.size == 3 * v  # no template, no value lost
    assert cache.hits == 2 * reads and cache.misses == 0
    assert shard.full == 2 * (reads - 1)  # every read after the first found no room
    assert [cache.peek(_cid(i)) for i in range(3)] == encoded
    assert set(shard.protected) == {_cid(0), _cid(1)}  # read again: protected


# -- the order kept without the garbage collector's attention -------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "renew", "remove", "pop"]), st.integers(0, 9))))
def test_order_behaves_as_an_ordered_dict(ops: list[tuple[str, int]]) -> None:
    order, model = _Order(), OrderedDict[bytes, None]()
    for op, i in ops:
        key = _cid(i)
        if op == "add" and key not in model:
            order.add(key)
            model[key] = None
        elif op == "renew" and key in model:
            order.renew(key)
            model.move_to_end(key)
        elif op == "remove" and key in model:
            order.remove(key)
            del model[key]
        elif op == "pop" and model:
            assert order.pop_oldest() == model.popitem(last=False)[0]
        assert list(order) == list(model)
        assert len(order) == len(model)
        assert all((k in order) == (k in model) for k in map(_cid, range(10)))


def test_the_collector_never_traverses_the_recency_of_values() -> None:
    """A full collection visits every tracked container's entries; the cache's only
    structures that grow with the values it holds must stay untracked (an ordered dict
    of 400,000 entries held every task for over 30 ms)."""
    cache = ValueCache(1 << 20)
    for i in range(2000):
        cache.put(_cid(i, i % SHARDS), b"v" * 20)
        if i % 3:
            cache.get(_cid(i, i % SHARDS))
    for shard in cache._shards:
        assert len(shard.protected) and len(shard.probation)
        for held in (shard.data, shard.probation.at, shard.probation.stamp):
            assert not gc.is_tracked(held)
        assert not gc.is_tracked(shard.protected.at) and not gc.is_tracked(shard.protected.stamp)
        assert not gc.is_tracked(shard.made.at) and not gc.is_tracked(shard.made.stamp)


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 50)), max_size=60))
@settings(max_examples=50, deadline=None)
def test_peek_all_is_peek_of_each_in_order(ids: list[tuple[int, int]]) -> None:
    """The bulk lookup a history makes answers as one lookup per id would, in order,
    across every shard (first bytes 0-255), for ids cached, evicted and never seen."""
    cache = ValueCache(capacity=SHARDS * 600)  # small: some puts evict others
    cids = [bytes([first]) + n.to_bytes(4, "big") for first, n in ids]
    for i, cid in enumerate(cids):
        if i % 3:
            cache.put(cid, cbor2.dumps([i] * (i % 7)))
    assert cache.peek_all(cids) == [cache.peek(cid) for cid in cids]
    assert cache.peek_all(tuple(cids)) == cache.peek_all(cids)
