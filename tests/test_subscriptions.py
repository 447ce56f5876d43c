"""Subscriptions: every write path delivers each change exactly once, in log order;
resuming from a position leaves no gap and no duplicate at the seam; a slow subscriber
is cut off with the position to resume from and never blocks a writer."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from conftest import StepClock
from koru import F, KeyChange, LaggedError, Query

NS = "docs"
KEYS = ["a", "b", "c"]

ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(KEYS), st.integers(0, 5)),
        st.tuples(st.just("batch"), st.sampled_from(KEYS), st.integers(0, 5)),
        st.tuples(st.just("delete"), st.sampled_from(KEYS), st.none()),
        st.tuples(st.just("subscribe"), st.integers(0, 30), st.integers(1, 4)),
    ),
    min_size=5,
    max_size=30,
)


def summary(c: KeyChange) -> tuple[Any, ...]:
    return (c.position, c.namespace, c.key, c.kind, c.value)


async def drain(db: koru.Database, sub: koru.Subscription, n: int) -> list[tuple[Any, ...]]:
    """The next ``n`` changes, resuming (a new subscription) after every lag."""
    got: list[tuple[Any, ...]] = []
    try:
        while len(got) < n:
            with trio.fail_after(5):  # a missing change fails, never hangs
                got.append(summary(await sub.__anext__()))
    except LaggedError as lag:
        assert not got or got[-1][0] < lag.position  # whole events only
        async with db.subscribe(from_position=lag.position) as again:
            got += await drain(db, again, n - len(got))
    return got


@settings(max_examples=80)
@given(ops_strategy)
def test_each_change_exactly_once_in_log_order_across_lags_and_resumes(
    ops: list[tuple[str, Any, Any]],
) -> None:
    async def main() -> None:
        async with koru.open(":memory:", clock=StepClock()) as db, trio.open_nursery():
            log: list[tuple[Any, ...]] = []  # what every change should look like
            subs: list[tuple[int, Any, koru.Subscription]] = []
            state: dict[str, int] = {}
            position = 0
            for op, a, b in ops:
                if op == "put":
                    await db.put(NS, a, b)
                    state[a] = b
                    log.append((position, NS, a, "put", b))
                elif op == "batch":
                    await db.put_batch([(NS, a, b), ("other", a, b)])
                    state[a] = b
                    log += [(position, NS, a, "put", b), (position, "other", a, "put", b)]
                elif op == "delete":
                    if a not in state:
                        continue
                    await db.delete(NS, a)
                    del state[a]
                    log.append((position, NS, a, "delete", None))
                else:  # subscribe from some past position, with a small buffer
                    start = min(a, position)
                    cm = db.subscribe(from_position=start, buffer=b)
                    subs.append((start, cm, await cm.__aenter__()))
                    continue
                position += 1
            try:
                for start, _, sub in subs:
                    want = [e for e in log if e[0] >= start]
                    got = await drain(db, sub, len(want))
                    assert got == want
            finally:
                for _, cm, _ in subs:
                    await cm.__aexit__(None, None, None)

    # Virtual time: a missing change fails fail_after at once instead of hanging.
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_versions_values_and_positions(db: koru.Database) -> None:
    first = await db.put(NS, "a", {"v": 1})
    async with db.subscribe() as changes:
        second = await db.put(NS, "a", {"v": 2})
        gone = await db.delete(NS, "a")
        c1 = await changes.__anext__()
        c2 = await changes.__anext__()
    assert (c1.kind, c1.value, c1.old, c1.new) == ("put", {"v": 2}, first, second)
    assert (c2.kind, c2.value, c2.old, c2.new) == ("delete", None, second, gone)
    assert c2.position == c1.position + 1 == 2


async def test_the_write_path_calls_the_subscriptions_only_while_one_is_live(
    db: koru.Database,
) -> None:
    observers = db._writer.observers  # type: ignore[attr-defined]
    hub = db._hub.observe  # type: ignore[attr-defined]
    assert hub not in observers
    async with db.subscribe(NS) as first:
        assert observers.count(hub) == 1
        async with db.subscribe(NS, "k") as second:
            assert observers.count(hub) == 1
            await db.put(NS, "k", {"v": 1})
            assert (await second.__anext__()).key == "k"
        assert observers.count(hub) == 1  # the first is still live
        await db.put(NS, "j", {"v": 2})
        assert [(await first.__anext__()).key for _ in range(2)] == ["k", "j"]
    assert hub not in observers
    await db.put(NS, "unseen", {"v": 3})
    async with db.subscribe(NS) as again:  # live again: sees the next write
        await db.put(NS, "z", {"v": 4})
        assert (await again.__anext__()).key == "z"
    assert hub not in observers


async def test_filters_by_namespace_key_kind_and_where(db: koru.Database) -> None:
    async with (
        db.subscribe(NS) as by_ns,
        db.subscribe(NS, "k1") as by_key,
        db.subscribe(kinds={"delete"}) as deletes,
        db.subscribe(NS, where=Query().where(F("v") >= 2)) as big,
    ):
        await db.put_batch([(NS, "k1", {"v": 1}), ("elsewhere", "k1", {"v": 9})])
        await db.put(NS, "k2", {"v": 2})
        await db.delete(NS, "k2")  # its old value passes where
        await db.delete(NS, "k1")  # its old value does not
        await db.put(NS, "end", {"v": 5})
        assert [(c.key, c.kind) for c in [await by_ns.__anext__() for _ in range(5)]] == [
            ("k1", "put"),
            ("k2", "put"),
            ("k2", "delete"),
            ("k1", "delete"),
            ("end", "put"),
        ]
        assert [(c.key, c.kind) for c in [await by_key.__anext__() for _ in range(2)]] == [
            ("k1", "put"),
            ("k1", "delete"),
        ]
        assert [c.key for c in [await deletes.__anext__() for _ in range(2)]] == ["k2", "k1"]
        assert [(c.key, c.kind) for c in [await big.__anext__() for _ in range(3)]] == [
            ("k2", "put"),
            ("k2", "delete"),
            ("end", "put"),
        ]


async def test_a_replayed_where_judges_each_deletion_by_the_value_it_deleted(
    db: koru.Database,
) -> None:
    """Replayed from position 0 after the key moved on, each deletion's old value is
    an older version of the key (not its newest): the filter must judge that one."""
    for v in range(6):
        await db.put(NS, "k", {"v": v})
        await db.delete(NS, "k")
    await db.put(NS, "k", {"v": 0})
    async with db.subscribe(NS, where=Query().where(F("v") >= 3), from_position=0) as big:
        got = [await big.__anext__() for _ in range(6)]
    assert [c.kind for c in got] == ["put", "delete"] * 3
    assert [c.value for c in got[::2]] == [{"v": 3}, {"v": 4}, {"v": 5}]
    assert [c.old for c in got[1::2]] == [c.new for c in got[::2]]


async def test_a_position_past_the_logs_end_is_refused_and_the_end_itself_is_live(
    db: koru.Database,
) -> None:
    """From a position past the log's end, changes at earlier positions were delivered
    (from 6 with the end at 3: positions 3, 4 and 5); the position is refused instead,
    naming the end. From the end exactly, the next change is the first."""
    for v in range(3):
        await db.put(NS, "k", v)
    with pytest.raises(koru.InvalidArgumentError, match=r"past the log's end \(3 events\)"):
        async with db.subscribe(from_position=6):
            pass
    async with db.subscribe(from_position=3) as live:
        await db.put(NS, "k", 3)
        change = await live.__anext__()
    assert (change.position, change.value) == (3, 3)


async def test_a_subscriber_that_never_reads_never_blocks_a_writer() -> None:
    async with (
        koru.open(":memory:", clock=StepClock()) as db,
        db.subscribe(buffer=3) as stuck,
        db.subscribe() as keen,
    ):
        with trio.fail_after(5):
            for i in range(1000):
                await db.put(NS, f"k{i}", i)
        assert db._hub.subscriptions == [keen]  # the stuck one was cut off
        got = [c.key async for c in _take(stuck, 3)]
        assert got == ["k0", "k1", "k2"]
        with pytest.raises(LaggedError) as lag:
            await stuck.__anext__()
        assert lag.value.position == 3
        async with db.subscribe(from_position=lag.value.position) as resumed:
            assert [c.value async for c in _take(resumed, 997)] == list(range(3, 1000))
        assert (await keen.__anext__()).key == "k0"


async def _take(sub: koru.Subscription, n: int) -> Any:
    for _ in range(n):
        yield await sub.__anext__()


async def test_ingested_and_expired_changes_are_delivered(clock: StepClock) -> None:
    async with koru.open(":memory:", clock=clock) as db, db.subscribe() as changes:
        async with koru.open(":memory:", clock=StepClock()) as other:
            await other.put(NS, "from-peer", 1)
            await db.ingest(await other.feed_events(other.node_id))
        c = await changes.__anext__()
        assert (c.key, c.kind, c.value, c.new.origin) == ("from-peer", "put", 1, other.node_id)
        short = await db.put(NS, "short", 2, ttl=1.0)
        clock.now += 2 * 10**9
        # What the expiry process does: a tombstone through the one write path.
        assert db._writer.expire(NS, "short", db._writer.read_time())
        await db._writer.acknowledge()
        assert (await changes.__anext__()).new == short
        expired = await changes.__anext__()
        assert (expired.key, expired.kind, expired.old) == ("short", "delete", short)


async def test_closing_the_database_ends_subscriptions() -> None:
    async with koru.open(":memory:") as db:
        cm = db.subscribe()
        sub = await cm.__aenter__()
    with pytest.raises(koru.DatabaseClosedError):
        await sub.__anext__()
    await cm.__aexit__(None, None, None)


async def test_a_waiting_subscriber_is_woken_by_each_put_and_a_cancelled_wait_loses_nothing(
    db: koru.Database,
) -> None:
    """A subscriber parked on an empty queue: a deadline that cancels its wait costs
    it no change, and a wait afterwards is woken by each put as it is written."""
    async with db.subscribe(NS) as sub:
        with trio.move_on_after(0.01) as waited:
            await sub.__anext__()
        assert waited.cancelled_caught
        got: list[Any] = []

        async def reader() -> None:
            async for change in sub:
                got.append(change.value)
                if len(got) == 3:
                    return

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for i in range(3):
                    await trio.testing.wait_all_tasks_blocked()
                    assert got == list(range(i))  # parked, nothing read before the put
                    await db.put(NS, f"k{i}", i)
        assert got == [0, 1, 2]


async def test_two_readers_of_one_subscription_share_its_changes_and_both_see_it_end() -> None:
    """Two tasks reading one subscription get each change once between them, in log
    order each, and both are woken when the database closes under them."""
    seen: list[list[int]] = [[], []]
    ended: list[type[BaseException]] = []
    async with koru.open(":memory:") as db:
        cm = db.subscribe(NS)
        sub = await cm.__aenter__()

        async def reader(i: int) -> None:
            try:
                async for change in sub:
                    seen[i].append(change.value)
            except koru.DatabaseClosedError as exc:
                ended.append(type(exc))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader, 0)
                nursery.start_soon(reader, 1)
                for i in range(50):
                    await db.put(NS, f"k{i}", i)
                    if i % 7 == 0:
                        await trio.testing.wait_all_tasks_blocked()
                await trio.testing.wait_all_tasks_blocked()
                assert sorted(seen[0] + seen[1]) == list(range(50))
                assert seen[0] == sorted(seen[0]) and seen[1] == sorted(seen[1])
                await db.aclose()
    assert ended == [koru.DatabaseClosedError, koru.DatabaseClosedError]
    await cm.__aexit__(None, None, None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"namespace": ""}, "namespace"),
        ({"key": "k"}, "needs its namespace"),
        ({"kinds": "put"}, "kinds"),
        ({"kinds": {"upsert"}}, "kinds"),
        ({"kinds": set()}, "kinds"),
        ({"from_position": -1}, "from_position"),
        ({"from_position": 1}, "past the log's end"),  # (the log is empty)
        ({"buffer": 0}, "buffer"),
        ({"where": {"where": ["bad", "a", 1]}}, "unknown operator"),
    ],
)
async def test_bad_subscriptions_are_refused(db: koru.Database, kwargs: Any, match: str) -> None:
    with pytest.raises(koru.InvalidDataError, match=match):
        async with db.subscribe(**kwargs):
            pass


async def test_a_reader_cancelled_while_another_waits_leaves_the_other_woken() -> None:
    """Attack (h-review3): two tasks wait on one subscription's empty queue and one of
    them is cancelled (a deadline). The other must still be woken by the next put, and
    by the end of the subscription (the queue's "someone waits" flag was one bool, that
    the cancelled task cleared while the other still waited: it slept through both)."""
    async with koru.open(":memory:") as db:
        cm = db.subscribe(NS)
        sub = await cm.__aenter__()
        got: list[Any] = []
        ended: list[type[BaseException]] = []

        async def reader() -> None:
            try:
                got.append((await sub.__anext__()).value)
                await sub.__anext__()
            except koru.DatabaseClosedError as exc:
                ended.append(type(exc))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                with trio.CancelScope() as other:
                    async with trio.open_nursery() as inner:
                        inner.start_soon(sub.__anext__)
                        await trio.testing.wait_all_tasks_blocked()
                        other.cancel()  # the second waiter goes; the first still waits
                await trio.testing.wait_all_tasks_blocked()
                await db.put(NS, "k", 1)
                await trio.testing.wait_all_tasks_blocked()
                assert got == [1]
                await db.aclose()
        assert ended == [koru.DatabaseClosedError]
        await cm.__aexit__(None, None, None)
