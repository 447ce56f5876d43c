"""Group commit: acknowledgement rules per sync mode, shared fsyncs, fatal failures."""

from __future__ import annotations

import random
import time

import blake3
import pytest
import trio
import trio.testing

import koru
from koru import DurabilityError
from koru.events import MemoryStore
from koru.nursery import Committer


class CountingStore(MemoryStore):
    """A memory store that counts syncs and can be told to fail them."""

    def __init__(self) -> None:
        super().__init__()
        self.synced = 0
        self.flushed = 0
        self.fail = False

    def sync(self) -> None:
        if self.fail:
            raise DurabilityError("fsync failed: injected")
        self.synced += 1

    def flush(self) -> None:
        self.flushed += 1


async def test_always_waits_for_a_sync_and_writers_share_it() -> None:
    store = CountingStore()
    committer = Committer(store, "always", flush_interval=1.0)
    acked = []
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)

        async def writer(i: int) -> None:
            committer.mark_appended()
            await committer.wait_durable()
            acked.append((i, store.synced))

        async with trio.open_nursery() as writers:
            for i in range(16):
                writers.start_soon(writer, i)
        nursery.cancel_scope.cancel()
    assert len(acked) == 16
    assert all(synced >= 1 for _, synced in acked)  # nobody was acknowledged before a sync
    assert store.synced < 16  # and they shared syncs
    assert committer.durable == committer.appended == 16
    assert committer.syncs == store.synced


@pytest.mark.parametrize("mode", ["os", "never"])
async def test_other_modes_acknowledge_without_sync(mode: str) -> None:
    store = CountingStore()
    committer = Committer(store, mode, flush_interval=1.0)  # type: ignore[arg-type]
    committer.mark_appended()
    with trio.fail_after(1):
        await committer.wait_durable()
    assert store.synced == 0


async def test_never_mode_flushes_on_its_interval(autojump_clock: trio.testing.MockClock) -> None:
    store = CountingStore()
    committer = Committer(store, "never", flush_interval=2.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        await trio.sleep(9)  # instant under the mock clock
        nursery.cancel_scope.cancel()
    assert store.flushed == 4


async def test_failed_sync_is_fatal_for_every_waiter_and_later_writes() -> None:
    store = CountingStore()
    store.fail = True
    committer = Committer(store, "always", flush_interval=1.0)
    errors = []
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)

        async def writer() -> None:
            committer.mark_appended()
            try:
                await committer.wait_durable()
            except DurabilityError as exc:
                errors.append(exc)

        async with trio.open_nursery() as writers:
            for _ in range(5):
                writers.start_soon(writer)
        store.fail = False  # even if the device recovers, nothing is retried and acked
        committer.mark_appended()
        with pytest.raises(DurabilityError):
            await committer.wait_durable()
        nursery.cancel_scope.cancel()
    assert len(errors) == 5
    assert committer.durable == 0 and store.synced == 0


class SlowDisk(MemoryStore):
    """A memory store whose sync takes real time (so the committer runs it in a worker
    thread) and covers exactly the records appended before it began, as a device does:
    records appended while it runs are not covered."""

    def __init__(self) -> None:
        super().__init__()
        self.appended = 0
        self.covered = 0
        self.syncing = False
        self.latency = 0.003

    def append(self, agent: str, data: bytes, event_id: bytes) -> tuple[int, bytes]:
        self.appended += 1
        return super().append(agent, data, event_id)

    def sync(self) -> None:
        before = self.appended  # what this sync covers, decided when it begins
        self.syncing = True
        time.sleep(self.latency)
        self.syncing = False
        self.covered = max(self.covered, before)


async def test_a_writer_that_joins_a_round_in_progress_waits_for_the_next() -> None:
    """Writers append while a sync runs in a worker thread; each must be acknowledged
    only by a sync that began after its record was appended."""
    store = SlowDisk()
    committer = Committer(store, "always", flush_interval=1.0, inline_sync_max=0.0)
    rng = random.Random(3)
    early: list[tuple[int, int]] = []
    joined_mid_sync = 0

    async def writer(w: int) -> None:
        nonlocal joined_mid_sync
        for i in range(15):
            await trio.sleep(rng.random() * 0.004)
            data = f"{w}-{i}".encode()
            store.append("storage", data, blake3.blake3(data).digest())
            mine = store.appended
            joined_mid_sync += store.syncing
            committer.mark_appended()
            await committer.wait_durable()
            if store.covered < mine:
                early.append((mine, store.covered))

    async with trio.open_nursery() as nursery:
        for w in range(6):
            nursery.start_soon(writer, w)
    assert early == [], f"acknowledged before a sync covered them: {early}"
    assert joined_mid_sync >= 3  # the case happened: records appended during a sync
    assert committer.durable == committer.appended == 90


async def test_a_slow_device_syncs_off_the_event_loop() -> None:
    """Once the device has shown it is slow (its fastest recent sync over
    ``inline_sync_max``), syncs run in a worker thread: other tasks keep running while a
    writer waits. A fast device syncs inline (a thread hop would cost as much)."""
    for latency, expect_thread in ((0.02, True), (0.0, False)):
        store = SlowDisk()
        store.latency = latency
        committer = Committer(store, "always", flush_interval=1.0)
        ticks_during_syncs = 0
        done = False

        async def ticker(store: SlowDisk = store) -> None:
            nonlocal ticks_during_syncs
            while not done:  # noqa: B023 - set below, in this same iteration
                await trio.sleep(0.001)
                ticks_during_syncs += store.syncing

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            for i in range(8):
                data = bytes([i])
                store.append("storage", data, blake3.blake3(data).digest())
                committer.mark_appended()
                await committer.wait_durable()
            done = True
        assert committer.syncs == 8
        assert (ticks_during_syncs > 5) is expect_thread, ticks_during_syncs


async def test_a_fast_device_syncs_inline_from_the_first_sync(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A device whose syncs take microseconds never pays the thread hop (~100 µs), not
    even for the first sync, and however many rounds it runs."""
    hops = 0
    real = trio.to_thread.run_sync

    async def counting(*args: object, **kw: object) -> object:
        nonlocal hops
        hops += 1
        return await real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(trio.to_thread, "run_sync", counting)
    store = CountingStore()
    committer = Committer(store, "always", flush_interval=1.0)
    for _ in range(300):
        committer.mark_appended()
        await committer.wait_durable()
    assert (hops, committer.syncs, store.synced) == (0, 300, 300)


async def test_a_sync_with_nothing_new_is_skipped() -> None:
    store = CountingStore()
    committer = Committer(store, "always", flush_interval=1.0)
    for _ in range(300):
        committer.mark_appended()
    await committer.sync_now()
    await committer.sync_now()  # nothing appended since: no second fsync
    assert (committer.syncs, store.synced, committer.durable) == (1, 1, 300)
    committer.mark_appended()
    await committer.sync_now()
    assert (committer.syncs, committer.durable) == (2, 301)


async def test_a_failed_flush_stops_the_flusher_and_fails_the_next_sync(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class FailingFlush(CountingStore):
        def flush(self) -> None:
            super().flush()
            if self.flushed >= 3:
                raise DurabilityError("write failed: injected")

    store = FailingFlush()
    committer = Committer(store, "never", flush_interval=1.0)
    async with trio.open_nursery() as nursery:  # the flusher returns; nothing raises out
        await nursery.start(committer.run)
        await trio.sleep(10)
    assert store.flushed == 3  # it stopped at the failure
    assert committer.error is not None
    committer.mark_appended()
    with pytest.raises(DurabilityError, match="injected"):
        await committer.sync_now()


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(koru.InvalidArgumentError, match="sync must be one of"):
        Committer(MemoryStore(), "sometimes", flush_interval=1.0)  # type: ignore[arg-type]


async def test_a_writer_cancelled_while_parked_leaves_the_round_and_the_rest_are_acknowledged() -> (
    None
):
    """Writers park while a leader's sync runs in a worker thread; cancelling some of
    them wakes those at once (Cancelled) and takes nothing from the others: each of them
    is acknowledged by a sync that covers its record, and the committer stays usable."""
    store = SlowDisk()
    store.latency = 0.05
    committer = Committer(store, "always", flush_interval=1.0, inline_sync_max=0.0)
    acked: list[int] = []
    cancelled: list[int] = []
    scopes: dict[int, trio.CancelScope] = {}

    async def writer(w: int) -> None:
        data = f"w{w}".encode()
        store.append("storage", data, blake3.blake3(data).digest())
        mine = store.appended
        committer.mark_appended()
        with trio.CancelScope() as scope:
            scopes[w] = scope
            await committer.wait_durable()
            assert store.covered >= mine
            acked.append(w)
            return
        cancelled.append(w)

    for i in range(3):  # three slow syncs: from now on they run in a worker thread
        data = bytes([i])
        store.append("storage", data, blake3.blake3(data).digest())
        committer.mark_appended()
        await committer.wait_durable()
    with trio.fail_after(30):  # a parked writer never woken would hang here
        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, w)
            while not store.syncing:  # noqa: ASYNC110 - set in the sync's worker thread
                await trio.sleep(0.001)
            for w in (1, 2, 5):  # not the leader (writer 0 or 7 leads, see trio's order)
                if w in scopes and w not in acked:
                    scopes[w].cancel()
        data = b"after"
        store.append("storage", data, blake3.blake3(data).digest())
        committer.mark_appended()
        await committer.wait_durable()
    assert sorted(acked + cancelled) == list(range(8))
    assert cancelled and all(w in (1, 2, 5) for w in cancelled)
    assert committer.durable == committer.appended == 12
    assert store.covered == 12
