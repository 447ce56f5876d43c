"""Group commit: acknowledgement rules per sync mode, shared fsyncs, fatal failures."""

from __future__ import annotations

import pytest
import trio
import trio.testing

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
    committer = Committer(store, "always")
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


@pytest.mark.parametrize("mode", ["os", "never"])
async def test_other_modes_acknowledge_without_sync(mode: str) -> None:
    store = CountingStore()
    committer = Committer(store, mode)  # type: ignore[arg-type]
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
    committer = Committer(store, "always")
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


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="sync must be one of"):
        Committer(MemoryStore(), "sometimes")  # type: ignore[arg-type]
