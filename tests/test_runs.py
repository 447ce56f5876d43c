"""Replay's decoding into runs of puts (events/_runs.py) and the folds of whole runs.

Two references: decoding every record with ``decode_trusted`` and checking that it
follows its feed (what replay did record by record), and applying every event with
``Projections.apply``. Runs must give exactly what those give, on valid logs and on
logs with one crafted record (the failure at the same record, and nothing else
handed over), and a run folded twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koru._loader import BUILTIN_PROJECTIONS
from koru.events import (
    STORAGE,
    BatchEvent,
    CodecError,
    DeleteEvent,
    Event,
    ExpiringPutEvent,
    IndexEvent,
    MemoryStore,
    PutEvent,
    PutRun,
    Record,
    RunDecoder,
    Write,
    content_id,
    decode_trusted,
    encode_event,
    encode_value,
    event_id,
)
from koru.projections import AuthState, FeedState, KvState, Projections
from koru.projections._indexes import Indexes
from koru.projections._views import Views

ORIGINS = [bytes([i]) * 16 for i in (1, 2, 3)]
NAMES = ["a", "b", "c", "ключ", "x" * 1024]

# -- logs ------------------------------------------------------------------------------

_op = st.tuples(
    st.sampled_from(["put", "put", "put", "put", "delete", "batch", "ttl"]),
    st.integers(0, len(ORIGINS) - 1),
    st.sampled_from([*NAMES[:3], "ключ"]),
    st.sampled_from(NAMES),
    st.integers(0, 2),  # value
    st.sampled_from([1, 23, 24, 2**32, 2**63 + 5, 2**64 - 1]),  # hlc scale
    st.booleans(),  # previous set
)
logs = st.lists(_op, max_size=60)


def build(ops: list[Any]) -> list[Event]:
    """Events of a valid local log: each origin's feed contiguous, hlcs growing."""
    heads: dict[bytes, tuple[int, bytes | None]] = {}
    events: list[Event] = []
    for n, (kind, who, ns, key, v, scale, linked) in enumerate(ops):
        origin = ORIGINS[who]
        seq, prev = heads.get(origin, (0, None))
        header = (origin, STORAGE, seq + 1, prev, min(scale + n, 2**64 - 1))
        previous = bytes([n % 256]) * 32 if linked else None
        value = encode_value({"v": v, "n": n})
        if kind == "put":
            event: Event = PutEvent(*header, ns, key, value, previous)
        elif kind == "delete":
            event = DeleteEvent(*header, ns, key, previous)
        elif kind == "batch":
            event = BatchEvent(
                *header, (Write(ns, key, value, previous), Write(ns, "z", None, None))
            )
        else:
            event = ExpiringPutEvent(
                *header, ns, key, value, previous, min(header[4] + 10, 2**64 - 1)
            )
        data = encode_event(event)
        heads[origin] = (seq + 1, event_id(data))
        events.append(event)
    return events


def store_of(blobs: list[bytes]) -> MemoryStore:
    store = MemoryStore()
    for data in blobs:
        store.append(STORAGE, data, event_id(data))
    return store


def reference(records: Iterator[Record]) -> tuple[list[tuple[str, bytes, int]], int | None]:
    """Replay's decoding record by record: (event, id, location) of each record until
    the first that fails, and that record's position (None if none fails)."""
    heads: dict[tuple[bytes, str], tuple[int, bytes]] = {}
    out = []
    for location, position, eid, _, data in records:
        try:
            event = decode_trusted(data)
            origin, agent, seq, prev = event[:4]  # type: ignore[index]
            if agent != STORAGE:
                raise CodecError("another agent")
            head = heads.get((origin, agent))
            if (
                (seq != 1 or prev is not None)
                if head is None
                else (seq != head[0] + 1 or prev != head[1])
            ):
                raise CodecError("does not follow")
        except CodecError:
            return out, position
        heads[(origin, agent)] = (seq, eid)
        out.append((repr(tuple(event)), eid, location))
    return out, None


def decoded(
    records: Iterator[tuple[int, int, bytes, bytes]], cut: int = 0, size: int = 256
) -> tuple[list[tuple[str, bytes, int]], int | None, list[Any]]:
    """The same through RunDecoder: (events, failing position, what it yielded)."""
    decoder = RunDecoder(records, STORAGE, {}.get, cut=cut, size=size)
    out: list[tuple[str, bytes, int]] = []
    items: list[Any] = []
    try:
        for item in decoder:
            items.append(item)
            if isinstance(item, PutRun):
                out += [(repr(tuple(e)), eid, loc) for e, eid, loc in item.events()]
            else:
                out.append((repr(tuple(item[3])), item[2], item[0]))
    except CodecError:
        return out, decoder.position, items
    return out, None, items


# -- decoding --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(logs, st.integers(0, 70), st.integers(1, 9))
def test_runs_hold_exactly_the_events_of_the_log(ops: list[Any], cut: int, size: int) -> None:
    blobs = [encode_event(e) for e in build(ops)]
    store = store_of(blobs)
    want, failed = reference(store.replay(STORAGE))
    got, got_failed, items = decoded(store.replay_plain(STORAGE), cut=cut, size=size)
    assert failed is None and got_failed is None
    assert got == want
    for item in items:
        if not isinstance(item, PutRun):
            continue
        assert 1 <= len(item) <= size
        assert not item.position < cut < item.position + len(item)  # never spans the cut
        assert item.last_seq == item.seq + len(item) - 1
        assert item.top == max(row[0] for row in item.rows)
        assert item.last_id == item.rows[-1][2]
    # Nearly every put of an ASCII name is in a run, not handed over alone.
    singles = [i for i in items if not isinstance(i, PutRun)]
    assert not any(
        type(i[3]) is PutEvent and i[3].key.isascii() and i[3].namespace.isascii() for i in singles
    )


def _crafted(raw: list[Any], where: int, value: Any) -> list[Any]:
    """``raw`` (an event's CBOR array) with item ``where`` replaced; an index past the
    header reaches into the body."""
    raw = list(raw)
    if where < 8:
        raw[where] = value
    else:
        body = list(raw[7])
        body[(where - 8) % len(body)] = value
        raw[7] = body
    return raw


_bad = st.sampled_from(
    [
        True,
        False,
        1.0,
        -1,
        0,
        2**64,
        None,
        "",
        "storage",
        "é" * 600,
        b"",
        b"x" * 31,
        b"x" * 32,
        b"x" * 16,
        [],
        ["a"],
        cbor2.CBORTag(2, b"\x01" * 9),
        "x" * 1025,
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_op, min_size=1, max_size=25),
    st.data(),
)
def test_a_crafted_record_fails_where_record_by_record_decoding_fails(
    ops: list[Any], data: st.DataObject
) -> None:
    blobs = [encode_event(e) for e in build(ops)]
    k = data.draw(st.integers(0, len(blobs) - 1))
    how = data.draw(st.sampled_from(["field", "field", "field", "drop", "dup", "swap", "agent"]))
    if how == "field":
        raw = cbor2.loads(blobs[k])
        blobs[k] = cbor2.dumps(_crafted(raw, data.draw(st.integers(0, 11)), data.draw(_bad)))
    elif how == "drop":
        del blobs[k]
    elif how == "dup":
        blobs.insert(k, blobs[k])
    elif how == "swap" and k + 1 < len(blobs):
        blobs[k], blobs[k + 1] = blobs[k + 1], blobs[k]
    elif how == "agent":
        raw = cbor2.loads(blobs[k])
        raw[3] = "identity"
        blobs[k] = cbor2.dumps(raw)
    store = store_of(blobs)
    want, failed = reference(store.replay(STORAGE))
    size = data.draw(st.integers(1, 5))
    got, got_failed, _ = decoded(store.replay_plain(STORAGE), size=size)
    assert got_failed == failed
    # What was handed over before the failure (a run being built is not) is what the
    # reference decoded; without a failure, everything.
    assert got == (want if failed is None else want[: len(got)])


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (6, True),  # hlc: True == 1, but not an int timestamp
        (4, 2.0),  # seq: 2.0 == 2
        (5, "x" * 32),  # prev of the wrong type
        (11, b"x" * 31),  # previous of 31 bytes
        (8, ""),  # empty namespace
        (9, "k" * 1025),  # key over the limit
        (10, "text"),  # value not bytes
        (3, "vector"),  # another agent
    ],
)
def test_a_put_crafted_in_the_middle_of_a_run_fails_there(where: int, value: Any) -> None:
    blobs = [encode_event(e) for e in build([("put", 0, "a", "b", 0, 2**63, False)] * 6)]
    blobs[3] = cbor2.dumps(_crafted(cbor2.loads(blobs[3]), where, value))
    store = store_of(blobs)
    got, failed, items = decoded(store.replay_plain(STORAGE))
    assert failed == 3
    assert got == [] and not items  # the run being built is not handed over


# Any CBOR value a crafted record might carry in a slot: near misses of every check of
# decode_trusted that RunDecoder repeats inline (types, ranges, lengths, ASCII names).
_slot = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**65), 2**65),
    st.sampled_from([0, 1, 2, 2**64 - 1, 2**64, -1, -(2**64)]),
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.sampled_from(["a", "ключ", "é" * 600, "x" * 1024, "x" * 1025, "", "storage", "a\x00"]),
    st.binary(max_size=3),
    st.integers(0, 40).map(lambda n: b"\x07" * n),
    st.lists(st.integers(0, 3), max_size=4),
    st.builds(cbor2.CBORTag, st.sampled_from([2, 3, 24]), st.binary(max_size=9)),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(2, 11), _slot), min_size=1, max_size=3), st.data())
def test_the_inline_put_checks_agree_with_decode_trusted(
    changes: list[tuple[int, Any]], data: st.DataObject
) -> None:
    """RunDecoder checks a put's fields inline (for speed) instead of calling
    decode_trusted: one put in a run, crafted in up to three slots, is handed over
    exactly as decode_trusted decodes it (in the run or alone), or fails at that record
    exactly when decode_trusted (or the feed's order) refuses it. The namespace of the
    puts around it is the same, which the inline checks remember."""
    ops = [("put", 0, "a", f"k{v}", v % 3, 2**63, v % 2 == 1) for v in range(5)]
    blobs = [encode_event(e) for e in build(ops)]
    k = data.draw(st.integers(0, len(blobs) - 1))
    raw = cbor2.loads(blobs[k])
    for where, value in sorted(changes, key=lambda c: -c[0]):  # the body's items first
        raw = _crafted(raw, where, value)
    blobs[k] = cbor2.dumps(raw)
    store = store_of(blobs)
    want, failed = reference(store.replay(STORAGE))
    got, got_failed, items = decoded(store.replay_plain(STORAGE))
    assert got_failed == failed
    assert got == (want if failed is None else want[: len(got)])
    if failed is None:  # a put decode_trusted accepts with ASCII names stays in the run
        event = decode_trusted(blobs[k])
        if type(event) is PutEvent and event.namespace.isascii() and event.key.isascii():
            assert all(isinstance(item, PutRun) for item in items)


def test_a_fork_inside_a_run_fails_at_the_fork() -> None:
    events = build([("put", 0, "a", "b", v, 2**63, False) for v in range(5)])
    fork = events[3]._replace(key="other")
    blobs = [encode_event(e) for e in events[:3]] + [encode_event(fork)]
    blobs.append(encode_event(events[3]))
    got, failed, _ = decoded(store_of(blobs).replay_plain(STORAGE))
    assert failed == 4 and len(got) == 4


def test_a_run_starts_at_each_feed_switch_and_continues_from_its_head() -> None:
    ops = [("put", who, "a", f"k{i}", 0, 2**63, False) for i, who in enumerate([0, 0, 1, 0, 1])]
    store = store_of([encode_event(e) for e in build(ops)])
    _, failed, items = decoded(store.replay_plain(STORAGE))
    assert failed is None
    assert [(r.origin[0], r.seq, len(r)) for r in items] == [
        (1, 1, 2),
        (2, 1, 1),
        (1, 3, 1),
        (2, 2, 1),
    ]


def test_a_run_needs_room_for_one_put() -> None:
    with pytest.raises(ValueError, match="at least one"):
        RunDecoder([], STORAGE, {}.get, size=0)


# -- folding ---------------------------------------------------------------------------


def _fresh() -> Projections:
    projections = Projections(kind() for kind in BUILTIN_PROJECTIONS)
    # An index and a view on namespace "a": the runs' folds of both then do work.
    index = IndexEvent(b"\x09" * 16, "perspective", 1, None, 1, "create", "a", "v")
    projections.apply(index, event_id(encode_event(index)), 0)
    indexes = projections["indexes"]
    assert isinstance(indexes, Indexes)
    indexes.by_namespace["a"]["v"].pending = False  # built: it takes writes from here
    views = projections["views"]
    assert isinstance(views, Views)
    views.dirty["a"] = set()
    return projections


def _state(projections: Projections) -> dict[str, Any]:
    kv = projections["kv"]
    feeds = projections["feeds"]
    auth = projections["auth"]
    indexes = projections["indexes"]
    views = projections["views"]
    assert isinstance(kv, KvState) and isinstance(feeds, FeedState)
    assert isinstance(auth, AuthState) and isinstance(indexes, Indexes)
    assert isinstance(views, Views)
    return {
        "kv": (list(kv.all_items()), kv.digest(), kv.live, dict(kv.ns_live), kv.key_total),
        "kv counts": (kv.versions, kv.max_hlc, dict(kv.expiring), kv.mem_bytes),
        "feeds": (dict(feeds.heads), {f: list(a) for f, a in feeds.recent.items()}),
        "auth": dict(auth.heads),
        "index": [
            sorted(map(repr, index.items())) for index in indexes.by_namespace.get("a", {}).values()
        ],
        "views": {ns: sorted(keys) for ns, keys in views.dirty.items()},
    }


def _fold(projections: Projections, store: MemoryStore, size: int, freeze_at: int) -> None:
    kv = projections["kv"]
    assert isinstance(kv, KvState)
    decoder = RunDecoder(store.replay_plain(STORAGE), STORAGE, {}.get, cut=freeze_at, size=size)
    for item in decoder:
        position = item.position if isinstance(item, PutRun) else item[1]
        if position == freeze_at:
            kv.capture()  # what lies in memory moves to a frozen layer below it
        if isinstance(item, PutRun):
            projections.apply_run(item)
        else:
            location, _, eid, event = item
            projections.apply(event, eid, location)


@settings(max_examples=120, deadline=None)
@given(logs, st.integers(1, 7), st.integers(0, 60))
def test_folding_runs_equals_applying_every_event(
    ops: list[Any], size: int, freeze_at: int
) -> None:
    store = store_of([encode_event(e) for e in build(ops)])
    one_by_one = _fresh()
    kv = one_by_one["kv"]
    assert isinstance(kv, KvState)
    for location, position, eid, _, data in store.replay(STORAGE):
        if position == freeze_at:
            kv.capture()
        one_by_one.apply(decode_trusted(data), eid, location)
    in_runs = _fresh()
    _fold(in_runs, store, size, freeze_at)
    assert _state(in_runs) == _state(one_by_one)


@settings(max_examples=60, deadline=None)
@given(logs, st.integers(1, 7))
def test_folding_a_run_twice_changes_nothing(ops: list[Any], size: int) -> None:
    store = store_of([encode_event(e) for e in build(ops)])
    once, twice = _fresh(), _fresh()
    _fold(once, store, size, -1)
    for item in RunDecoder(store.replay_plain(STORAGE), STORAGE, {}.get, size=size):
        for _ in range(2):
            if isinstance(item, PutRun):
                twice.apply_run(item)
            else:
                twice.apply(item[3], item[2], item[0])
    assert _state(twice) == _state(once)


def test_the_seam_calls_no_projection_for_a_type_it_does_not_fold() -> None:
    projections = Projections(kind() for kind in BUILTIN_PROJECTIONS)
    put = build([("put", 0, "a", "b", 0, 5, False)])[0]
    names = {apply.__self__.name for apply in projections._route(STORAGE, PutEvent)}
    assert names == {"kv", "feeds", "indexes", "views", "auth"}
    assert projections._routes[(STORAGE, PutEvent)]  # decided once
    projections.apply(put, event_id(encode_event(put)), 7)
    with pytest.raises(KeyError):
        projections.apply(put._replace(agent="nobody"), b"\x00" * 32, 8)


def test_the_put_route_hands_the_content_id_to_the_key_value_fold_only() -> None:
    projections = Projections(kind() for kind in BUILTIN_PROJECTIONS)
    route = {apply.__self__.name: takes for apply, takes in projections._put_route}
    assert route == {"kv": True, "feeds": False, "indexes": False, "views": False, "auth": False}
    put = build([("put", 0, "a", "b", 0, 5, False)])[0]
    assert isinstance(put, PutEvent)
    wrong = b"\x07" * 32  # the fold takes the id it is given: proof it did not hash
    projections.apply_put(put, event_id(encode_event(put)), 7, wrong)
    kv = projections["kv"]
    assert isinstance(kv, KvState)
    assert kv.live_content_id("a", "b") == wrong


@settings(max_examples=80, deadline=None)
@given(logs, st.integers(0, 60))
def test_folding_batches_with_their_content_ids_equals_applying_them(
    ops: list[Any], freeze_at: int
) -> None:
    # The live write path hands a batch's content ids to the seam (apply_writes), and a
    # plain put's (apply_put); the state must be exactly what apply gives, which hashes
    # the values itself.
    store = store_of([encode_event(e) for e in build(ops)])
    applied, handed = _fresh(), _fresh()
    for location, position, eid, _, data in store.replay(STORAGE):
        event = decode_trusted(data)
        for projections in (applied, handed):
            if position == freeze_at:
                kv = projections["kv"]
                assert isinstance(kv, KvState)
                kv.capture()
            if projections is applied:
                projections.apply(event, eid, location)
            elif type(event) is PutEvent:
                projections.apply_put(event, eid, location, content_id(event.value))
            else:
                ids = [b"" if w.value is None else content_id(w.value) for w in event.writes]
                projections.apply_writes(event, eid, location, ids)
    assert _state(handed) == _state(applied)


def test_the_batch_route_hands_the_content_ids_to_the_key_value_fold_only() -> None:
    projections = Projections(kind() for kind in BUILTIN_PROJECTIONS)
    batch = build([("batch", 0, "a", "b", 0, 5, False)])[0]
    wrong = b"\x07" * 32  # the fold takes the ids it is given: proof it did not hash
    projections.apply_writes(batch, event_id(encode_event(batch)), 7, [wrong, b""])
    route = {
        apply.__self__.name: takes
        for apply, takes in projections._writes_routes[(STORAGE, BatchEvent)]
    }
    assert route == {"kv": True, "feeds": False, "indexes": False, "views": False, "auth": False}
    kv = projections["kv"]
    assert isinstance(kv, KvState)
    assert kv.live_content_id("a", "b") == wrong
    assert kv.live_content_id("a", "z") is None  # the batch's tombstone
    assert kv.current("a", "z") is not None
