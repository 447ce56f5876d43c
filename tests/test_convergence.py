"""Convergence: the same events in any order, any number of times, give the same state.

Three simulated origins write to overlapping keys with hybrid-logical-clock timestamps
that often collide across origins, sometimes after syncing from each other (so writes
are causally linked) and sometimes not (so writes are concurrent). Their events are then
delivered in shuffled orders, with duplicates, to fresh projections and to memory stores.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koru import CorruptLogError
from koru._loader import load
from koru.events import (
    STORAGE,
    BatchEvent,
    DeleteEvent,
    Event,
    HybridLogicalClock,
    MemoryStore,
    PutEvent,
    Write,
    content_id,
    decode_event,
    encode_event,
    encode_value,
    event_id,
    write_id,
)
from koru.projections import FeedState, KvState

EPOCH = 1_767_225_600 * 10**9
ORIGINS = (b"\x30" * 16, b"\x10" * 16, b"\x20" * 16)
SLOTS = [(ns, key) for ns in ("a", "b") for key in ("x", "y")]


@attrs.frozen
class Sent:
    """One event as it travels: decoded form, canonical bytes, id."""

    event: Event
    data: bytes
    eid: bytes


@attrs.define
class Node:
    """A simulated origin: its feed, its clock and its own view of the keys."""

    origin: bytes
    clock: HybridLogicalClock = attrs.field(factory=HybridLogicalClock)
    view: KvState = attrs.field(factory=KvState)
    seen: set[bytes] = attrs.field(factory=set)
    seq: int = 0
    prev: bytes | None = None

    def learn(self, sent: Sent) -> None:
        if sent.eid not in self.seen:
            self.seen.add(sent.eid)
            self.view.apply(sent.event, sent.eid, 0)
            self.clock.observe(sent.event.hlc)

    def previous(self, slot: tuple[str, str]) -> bytes | None:
        cur = self.view.current(*slot)
        return None if cur is None else cur.write_id

    def emit(self, kind: type[Event], wall: int, *body: Any) -> Sent:
        """Make this node's next event of ``kind`` at wall time EPOCH + ``wall`` ns."""
        self.seq += 1
        header = (self.origin, STORAGE, self.seq, self.prev, self.clock.tick(EPOCH + wall))
        event = kind(*header, *body)
        data = encode_event(event)
        assert decode_event(data) == event
        sent = Sent(event, data, event_id(data))
        self.prev = sent.eid
        self.learn(sent)
        return sent


def simulate(script: list[tuple[Any, ...]]) -> list[Sent]:
    """Run a script of writes and syncs; return every event in the order it was made."""
    nodes = [Node(o) for o in ORIGINS]
    out: list[Sent] = []
    for step in script:
        kind, node = step[0], nodes[step[1]]
        if kind == "gossip":  # everyone learns everything made so far
            for other in nodes:
                for sent in out:
                    other.learn(sent)
            continue
        if kind == "sync":  # one node learns another's events
            for sent in out:
                if sent.event.origin == ORIGINS[step[2]]:
                    node.learn(sent)
            continue
        wall = step[2] * 1_000
        if kind == "put":
            (ns, key), value = step[3], encode_value(step[4])
            prev = node.previous((ns, key))
            out.append(node.emit(PutEvent, wall, ns, key, value, prev))
        elif kind == "delete":
            cur = node.view.current(*step[3])
            if cur is None or cur.deleted:
                continue
            ns, key = step[3]
            out.append(node.emit(DeleteEvent, wall, ns, key, cur.write_id))
        else:
            items = tuple(
                Write(ns, key, encode_value(v) if v is not None else None, node.previous((ns, key)))
                for (ns, key), v in step[3]
            )
            out.append(node.emit(BatchEvent, wall, items))
    return out


origin_ix = st.integers(min_value=0, max_value=2)
walls = st.integers(min_value=0, max_value=6)  # few distinct wall times: collisions
small_values = st.integers(min_value=0, max_value=3) | st.text(max_size=2)
puts = st.tuples(st.just("put"), origin_ix, walls, st.sampled_from(SLOTS), small_values)
steps = st.one_of(
    puts,
    puts,
    st.tuples(st.just("delete"), origin_ix, walls, st.sampled_from(SLOTS)),
    st.tuples(
        st.just("batch"),
        origin_ix,
        walls,
        st.lists(
            st.tuples(st.sampled_from(SLOTS), st.none() | small_values),
            min_size=1,
            max_size=3,
            unique_by=lambda t: t[0],
        ),
    ),
    st.tuples(st.just("sync"), origin_ix, origin_ix),
    st.tuples(st.just("sync"), origin_ix, origin_ix),
    st.tuples(st.just("gossip"), origin_ix),
)
# Every script starts with a put, so it makes at least one event.
scripts = st.tuples(puts, st.lists(steps, min_size=3, max_size=30)).map(lambda t: [t[0], *t[1]])

# -- helpers -------------------------------------------------------------------------------

Location = dict[bytes, int]


def in_feed_order(order: list[Sent]) -> list[Sent]:
    """``order`` with each feed's events put back in sequence order, in the places that
    feed had: a random interleaving of the feeds, as the ingest path delivers them (it
    holds back an event until its predecessor is in)."""
    by_feed: dict[tuple[bytes, str], list[Sent]] = {}
    for s in order:
        by_feed.setdefault((s.event.origin, s.event.agent), []).append(s)
    queues = {feed: iter(sorted(q, key=lambda s: s.event.seq)) for feed, q in by_feed.items()}
    return [next(queues[(s.event.origin, s.event.agent)]) for s in order]


def fold(events: list[Sent], where: Location) -> tuple[KvState, FeedState]:
    """Fold into both projections: the key/value state in exactly the order given, the
    feeds in that order with each feed kept in sequence (what they are promised)."""
    kv, feeds = KvState(), FeedState()
    for s in events:
        kv.apply(s.event, s.eid, where[s.eid])
    for s in in_feed_order(events):
        feeds.apply(s.event, s.eid, where[s.eid])
    return kv, feeds


def snapshot(kv: KvState, *, with_locations: bool = True) -> dict[str, Any]:
    """Everything observable about the state, for comparing two folds."""
    histories = {
        slot: [tuple(r) if with_locations else tuple(r)[:5] + tuple(r)[6:] for r in recs]
        for slot in SLOTS
        if (recs := kv.history(*slot))
    }
    return {
        "digest": kv.digest(),
        "live": kv.live,
        "versions": kv.versions,
        "max_hlc": kv.max_hlc,
        "keys": {ns: kv.keys(ns) for ns in ("a", "b")},
        "namespaces": kv.live_namespaces(),
        "histories": histories,
    }


def oracle(events: list[Sent]) -> dict[tuple[str, str], list[tuple[int, bytes, bytes, bool]]]:
    """Every write per key sorted by (hlc, origin, write id): the documented order."""
    per: dict[tuple[str, str], list[tuple[int, bytes, bytes, bool]]] = {}
    for s in events:
        for i, w in enumerate(s.event.writes):
            wid = write_id(s.eid, i)
            per.setdefault((w.namespace, w.key), []).append(
                (s.event.hlc, s.event.origin, wid, w.value is None)
            )
    return {slot: sorted(v) for slot, v in per.items()}


def check_against_oracle(kv: KvState, events: list[Sent]) -> None:
    expected = oracle(events)
    assert set(expected) == {slot for slot in SLOTS if kv.history(*slot)}
    live = 0
    for slot, writes in expected.items():
        history = kv.history(*slot)
        assert [(r.hlc, r.origin, r.write_id, r.deleted) for r in history] == writes
        cur = kv.current(*slot)
        assert cur is not None
        assert (cur.hlc, cur.origin, cur.write_id, cur.deleted) == writes[-1]
        live += not writes[-1][3]
    assert kv.live == live
    assert kv.versions == sum(len(w) for w in expected.values())


# -- shuffled delivery to projections ------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(scripts, st.data())
def test_any_delivery_order_gives_the_same_state(script: list[Any], data: st.DataObject) -> None:
    sent = simulate(script)
    where = {s.eid: i for i, s in enumerate(sent)}
    ref_kv, ref_feeds = fold(sent, where)
    check_against_oracle(ref_kv, sent)
    reference = snapshot(ref_kv)
    for _ in range(3):
        order = data.draw(st.permutations(sent))
        kv, feeds = fold(order, where)
        assert snapshot(kv) == reference
        assert feeds.heads == ref_feeds.heads
        assert {
            (feed, seq): feeds.location(*feed, seq)
            for feed, (head, _) in feeds.heads.items()
            for seq in range(1, head + 1)
        } == {
            (feed, seq): ref_feeds.location(*feed, seq)
            for feed, (head, _) in ref_feeds.heads.items()
            for seq in range(1, head + 1)
        }


@settings(max_examples=100, deadline=None)
@given(scripts, st.data())
def test_duplicates_change_nothing(script: list[Any], data: st.DataObject) -> None:
    sent = simulate(script)
    where = {s.eid: i for i, s in enumerate(sent)}
    reference = snapshot(fold(sent, where)[0])
    again = data.draw(st.lists(st.sampled_from(sent), max_size=2 * len(sent)))
    shuffled = data.draw(st.permutations(sent + again))
    kv, _ = fold(shuffled, where)
    assert snapshot(kv) == reference
    # Applying everything a second time on top changes nothing either.
    for s in sent:
        kv.apply(s.event, s.eid, where[s.eid])
    assert snapshot(kv) == reference


@settings(max_examples=100, deadline=None)
@given(scripts)
def test_feed_heads_follow_each_origin(script: list[Any]) -> None:
    sent = simulate(script)
    feeds = fold(list(reversed(sent)), {s.eid: 0 for s in sent})[1]
    last = {s.event.origin: (s.event.seq, s.eid) for s in sent}
    assert feeds.heads == {(origin, STORAGE): head for origin, head in last.items()}
    for origin in ORIGINS:
        seq, prev = feeds.next(origin, STORAGE)
        expected = (last[origin][0] + 1, last[origin][1]) if origin in last else (1, None)
        assert (seq, prev) == expected


# -- shuffled delivery through stores ------------------------------------------------------


def feed_ordered(order: list[Sent]) -> list[Sent]:
    """``order`` with each origin's events put back in feed order, in the places that
    origin's events hold: a random interleaving of the feeds, which is every order a
    local log can have (the ingest path holds back an event until its predecessor)."""
    out = list(order)
    for origin in ORIGINS:
        places = [i for i, s in enumerate(order) if s.event.origin == origin]
        mine = sorted((order[i] for i in places), key=lambda s: s.event.seq)
        for i, s in zip(places, mine, strict=True):
            out[i] = s
    return out


@settings(max_examples=60, deadline=None)
@given(scripts, st.data())
def test_stores_fed_in_different_orders_converge(script: list[Any], data: st.DataObject) -> None:
    sent = simulate(script)
    orders = [sent] + [feed_ordered(data.draw(st.permutations(sent))) for _ in range(3)]
    loaded = []
    roots = []
    for order in orders:
        store = MemoryStore()
        for s in order:
            store.append(STORAGE, s.data, s.eid)
        loaded.append(load(store))
        roots.append(store.cursor(STORAGE).root)
    first = loaded[0]
    check_against_oracle(first.kv, sent)
    for order, result, root in zip(orders, loaded, roots, strict=True):
        # Same events, same state: locations differ (each store's own positions).
        assert snapshot(result.kv, with_locations=False) == snapshot(first.kv, with_locations=False)
        assert result.feeds.heads == first.feeds.heads
        assert result.hlc == first.hlc == max(s.event.hlc for s in sent)
        assert result.replayed == len(sent)
        # A chain root is the local perspective: it tells the arrival order apart.
        same_order = [s.eid for s in order] == [s.eid for s in sent]
        assert (root == roots[0]) is same_order


@settings(max_examples=40, deadline=None)
@given(scripts, st.data())
def test_a_local_log_with_a_feed_gap_or_fork_is_corrupt(
    script: list[Any], data: st.DataObject
) -> None:
    """A local log holds every feed contiguously; a record out of its feed's order (a
    gap) or a second event at a feed position already held (a fork) was not written by
    koru, and replay says so instead of folding it."""
    sent = simulate(script)
    origin = data.draw(st.sampled_from(sorted({s.event.origin for s in sent})))
    mine = [s for s in sent if s.event.origin == origin]
    # A gap (the feed's first event missing), or with one event a repeat of it.
    damaged = [s for s in sent if s is not mine[0]] if len(mine) >= 2 else [*sent, mine[0]]
    store = MemoryStore()
    for s in damaged:
        store.append(STORAGE, s.data, s.eid)
    with pytest.raises(CorruptLogError, match="does not follow its feed"):
        load(store)


# -- concurrency, explicitly ---------------------------------------------------------------


def _two_nodes_write_after_the_same_version(hlc_b: int) -> tuple[list[Sent], Sent, Sent, Sent]:
    a, b = Node(ORIGINS[1]), Node(ORIGINS[2])  # b's origin sorts after a's
    first = a.emit(PutEvent, 1_000, "a", "x", encode_value(1), None)
    b.learn(first)
    prev = first.eid
    left = a.emit(PutEvent, 5_000, "a", "x", encode_value("left"), prev)
    right = b.emit(PutEvent, hlc_b, "a", "x", encode_value("right"), prev)
    return [first, left, right], first, left, right


@pytest.mark.parametrize("hlc_b", [4_000, 5_000, 6_000], ids=["b-earlier", "tie", "b-later"])
def test_concurrent_writes_are_both_kept(hlc_b: int) -> None:
    events, first, left, right = _two_nodes_write_after_the_same_version(hlc_b)
    assert left.event.hlc == EPOCH + 5_000
    assert right.event.hlc == EPOCH + hlc_b
    # On a tie the origin decides, and b's origin sorts after a's.
    winner = right if hlc_b >= 5_000 else left
    states = []
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]):
        kv, _ = fold([events[i] for i in order], {s.eid: 0 for s in events})
        history = kv.history("a", "x")
        assert len(history) == 3
        assert history[0].write_id == first.eid
        branches = [r for r in history if r.previous == first.eid]
        assert {r.write_id for r in branches} == {left.eid, right.eid}
        current = kv.current("a", "x")
        assert current is not None
        assert current.write_id == winner.eid
        assert current.content_id == content_id(winner.event.writes[0].value or b"")
        states.append(snapshot(kv))
    assert all(s == states[0] for s in states)


def test_a_concurrent_delete_can_lose_to_a_later_put() -> None:
    a, b = Node(ORIGINS[1]), Node(ORIGINS[2])
    first = a.emit(PutEvent, 1_000, "a", "x", encode_value(1), None)
    b.learn(first)
    deleted = a.emit(DeleteEvent, 2_000, "a", "x", first.eid)
    put = b.emit(PutEvent, 3_000, "a", "x", encode_value(2), first.eid)
    for order in ([first, deleted, put], [put, deleted, first], [deleted, first, put]):
        kv, _ = fold(order, {s.eid: 0 for s in order})
        assert kv.keys("a") == ["x"]
        assert [r.deleted for r in kv.history("a", "x")] == [False, True, False]
        assert kv.live == 1


def test_batch_writes_get_distinct_ids_in_their_keys_histories() -> None:
    node = Node(ORIGINS[0])
    items = tuple(Write(ns, key, encode_value(ns + key), None) for ns, key in SLOTS)
    sent = node.emit(BatchEvent, 0, items)
    kv, _ = fold([sent], {sent.eid: 0})
    ids = [kv.history(*slot)[0].write_id for slot in SLOTS]
    assert ids == [write_id(sent.eid, i) for i in range(len(SLOTS))]
    assert len(set(ids)) == len(SLOTS)
    assert ids[0] == sent.eid
