"""Attacks on a served database by many clients at once: each test names what the
crowd does and asserts what must hold for the server and its honest clients."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio

import koru
import koru._remote as remote_module
from koru.nursery import Limits

DIFFICULTY = 4


async def _member(db: Any, actions: list[str]) -> koru.Identity:
    """A new identity, registered and granted ``actions`` on everything."""
    who = koru.Identity.mine(DIFFICULTY)
    await db.register(who.public)
    await db.grant(who.public, actions=actions)
    return who


_VALUE = 128 << 10  # bytes of each value written past unread subscriptions


async def _held_by_unread_streams(db: Any, endpoints: list[Any]) -> int:
    """Bytes still held (tracemalloc) after a subscription of namespace ``big`` is
    opened on each endpoint in turn, never read, and 9 values of ``_VALUE`` bytes are
    written after each (past a 1 MiB bound: each is cut off in turn)."""
    import gc
    import tracemalloc

    from koru._remote_codec import pack

    payload = pack([None, "subscribe", ["big"], {}])
    value = "x" * _VALUE
    gc.collect()
    tracemalloc.start()
    try:
        async with AsyncExitStack() as stack:
            base = tracemalloc.get_traced_memory()[0]
            written = 0
            for endpoint in endpoints:
                await stack.enter_async_context(endpoint.stream(payload))
                for _ in range(9):
                    await db.put("big", f"k{written}", value)
                    written += 1
            gc.collect()
            return int(tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()


async def test_a_client_past_the_connection_bound_is_refused_at_once_not_left_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server holds ``max_connections`` connections; one more is closed as soon as
    it is accepted. It used to be closed with no answer to its HTTP upgrade, and
    trio-websocket's client does not notice a connection closed during the upgrade:
    each attempt waited its whole connect timeout (10 s), so a client of a full
    server waited 4 x 10 s (plus the backoff) before it got ConnectionLostError. The
    server must refuse it (HTTP 503), so that it fails at once with a typed error,
    while the connection it holds goes on being served."""
    monkeypatch.setattr(remote_module, "RETRY_DELAYS", (0.0, 0.0))
    async with (
        koru.open(":memory:", difficulty=DIFFICULTY) as db,
        trio.open_nursery() as nursery,
    ):
        db.peer_limits = Limits(max_connections=1)
        port = await nursery.start(db.serve, "127.0.0.1", 0)
        first, second = await _member(db, ["read", "write"]), await _member(db, ["read", "write"])
        async with koru.connect(f"127.0.0.1:{port}", first) as held:
            await held.put("n", "k", 1)
            began = time.monotonic()
            with trio.fail_after(8), pytest.raises(koru.ConnectionLostError):
                async with koru.connect(f"127.0.0.1:{port}", second) as refused:
                    await refused.get("n", "k")  # pragma: no cover
            assert time.monotonic() - began < 5
            assert await held.get("n", "k") == 1  # the connection held goes on
        with trio.fail_after(8):  # the slot came back: the second client connects
            async with koru.connect(f"127.0.0.1:{port}", second) as now:
                assert await now.get("n", "k") == 1
        nursery.cancel_scope.cancel()


async def test_a_connection_that_never_reads_its_subscriptions_holds_a_bounded_total(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Attack: a client that never reads its socket sends a subscription request, lets
    the server write until that subscription's queue is full (cut off, but its queue
    kept until it is read: the session's task for it is blocked sending to the
    client), then sends the next one, and so on up to the 64 a connection may hold.
    Each server-side queue is bounded (``MAX_QUEUED_BYTES``, 128 MiB), but each holds
    other events than the last: together one connection pinned 64 times the bound
    (8 GiB), and many connections as many times more. Must hold: what the server's
    subscriptions for one connection keep queued, all together, stays within about
    one subscription's bound (here patched to 1 MiB), not one bound per stream."""

    import koru._serving as serving
    import koru._subscriptions as subscriptions

    bound = 1 << 20
    monkeypatch.setattr(subscriptions, "MAX_QUEUED_BYTES", bound)
    streams = 16
    async with koru.open(str(tmp_path / "db"), difficulty=DIFFICULTY) as db:
        who = await _member(db, ["read", "write"])
        endpoint = serving.ClientEndpoint(
            db.as_identity(who.public_key), who.public_key, "x", serving.ServedCalls()
        )
        held = await _held_by_unread_streams(db, [endpoint] * streams)
        assert held <= 4 * bound, held  # 16 streams: about 16 MiB
        assert endpoint._queue_share.queued == 0  # all given back once they ended


async def test_connections_that_never_read_their_subscriptions_hold_a_bounded_total(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Attack: as above, but with one subscription on each of many connections (up to
    1,024 of them), opened one after another, each filled with other events than the
    last. Each connection's queues are bounded (``MAX_QUEUED_BYTES``), but together
    they pinned one bound per connection (1,024 x 128 MiB). Must hold: what the
    server's subscriptions for all its clients keep queued stays within
    ``MAX_SERVED_QUEUED_BYTES`` (here patched to 2 MiB) and about an event per
    connection."""

    import koru._serving as serving
    import koru._subscriptions as subscriptions

    bound = 1 << 20
    monkeypatch.setattr(subscriptions, "MAX_QUEUED_BYTES", bound)
    monkeypatch.setattr(subscriptions, "MAX_SERVED_QUEUED_BYTES", 2 * bound)
    async with koru.open(str(tmp_path / "db"), difficulty=DIFFICULTY) as db:
        who = await _member(db, ["read", "write"])
        endpoints = [  # a connection each, opened one after another
            serving.ClientEndpoint(
                db.as_identity(who.public_key), who.public_key, "x", db._served_calls()
            )
            for _ in range(16)
        ]
        held = await _held_by_unread_streams(db, endpoints)
        assert held <= 2 * bound + 16 * _VALUE + bound, held  # 16 connections: 16 MiB
        assert db._hub.served.queued == 0  # all given back once they ended


async def test_the_subscriptions_a_server_serves_at_once_are_bounded_in_total(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """Attack: a reader opens the 64 subscriptions a connection may hold on each of
    many connections (1,024: 65,536 subscriptions). Every write is pushed to every
    subscription on the writer's path, about 0.7 µs each: 47 ms a put. Must hold: past
    ``MAX_SERVED_STREAMS`` (patched to 3 here) a subscription is refused, typed, on any
    connection; one ending makes room for the next."""
    import koru._serving as serving
    from koru._remote_codec import pack
    from koru.nursery import StreamFailed

    monkeypatch.setattr(serving, "MAX_SERVED_STREAMS", 3)
    async with koru.open(str(tmp_path / "db"), difficulty=DIFFICULTY) as db:
        who = await _member(db, ["read"])
        endpoints = [
            serving.ClientEndpoint(
                db.as_identity(who.public_key), who.public_key, "x", db._served_calls()
            )
            for _ in range(3)
        ]
        payload = pack([None, "subscribe", ["n"], {}])
        async with AsyncExitStack() as stack:
            first = AsyncExitStack()
            await first.enter_async_context(endpoints[0].stream(payload))
            await stack.enter_async_context(endpoints[1].stream(payload))
            await stack.enter_async_context(endpoints[1].stream(payload))
            for endpoint in endpoints:  # a fourth: refused, whichever connection asks
                with pytest.raises(StreamFailed):
                    await stack.enter_async_context(endpoint.stream(payload))
            await first.aclose()
            await stack.enter_async_context(endpoints[2].stream(payload))  # room again
            assert db._hub.served.streams == 3
        assert db._hub.served.streams == 0


# -- what held: regressions for attacks the server withstood ----------------------------------


def _tasks() -> int:
    """Every task running now (the client's and the server's: one process)."""
    count = 0
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        count += 1
        pending += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return count


async def test_clients_dropped_mid_message_mid_calls_and_mid_stream_leave_nothing_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: clients that vanish abruptly: one leaves 8 MiB of a message half sent
    and its socket is torn down; one is cancelled with 200 writes in flight; one is
    cancelled while the server streams its subscription changes. Must hold: the
    server's budget of bytes partly received goes back to 0, no task is left behind,
    no subscription stays in the hub, and another client is served throughout."""
    from wsproto.events import BytesMessage

    import koru.nursery._transport as transport

    budgets: list[transport.PendingBudget] = []

    class Recorded(transport.PendingBudget):
        def __init__(self, limit: int) -> None:
            super().__init__(limit)
            budgets.append(self)

    monkeypatch.setattr(transport, "PendingBudget", Recorded)
    async with (
        koru.open(":memory:", difficulty=DIFFICULTY) as db,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(db.serve, "127.0.0.1", 0)
        who = await _member(db, ["admin"])
        await db.put("n", "k", 1)
        async with koru.connect(f"127.0.0.1:{port}", who) as good:
            assert await good.get("n", "k") == 1
            await trio.sleep(0.1)
            [budget] = budgets
            before = _tasks()
            with trio.fail_after(10):
                async with koru.connect(f"127.0.0.1:{port}", who) as bad:
                    await bad.get("n", "k")
                    ws = bad._link._runner.conn._ws
                    half = BytesMessage(data=b"x" * (8 << 20), message_finished=False)
                    await ws._stream.send_all(ws._wsproto.send(half))
                    while budget.used < 8 << 20:  # noqa: ASYNC110
                        await trio.sleep(0.01)
                    await trio.aclose_forcefully(ws._stream)
                    await trio.sleep(0.2)
                with trio.move_on_after(0.3):
                    async with (
                        koru.connect(f"127.0.0.1:{port}", who) as bad,
                        trio.open_nursery() as calls,
                    ):
                        for i in range(200):
                            calls.start_soon(bad.put, "n", f"b{i}", "y" * 100_000)
                with trio.move_on_after(0.5):
                    async with (
                        koru.connect(f"127.0.0.1:{port}", who) as bad,
                        bad.subscribe("s") as changes,
                    ):

                        async def write() -> None:
                            for i in range(500):
                                await db.put("s", f"k{i}", "z" * 10_000)

                        nursery.start_soon(write)
                        async for _ in changes:
                            assert await good.get("n", "k") == 1
                while _tasks() > before or budget.used or db._hub.subscriptions:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                assert await good.get("n", "k") == 1
        nursery.cancel_scope.cancel()


async def test_a_client_flooding_calls_does_not_starve_another_clients_get() -> None:
    """Attack: one client floods the server from 4 connections, 100 calls in flight on
    each (writes of 10 KB and listings), as fast as it is answered. Must hold: another
    client's single ``get`` is answered within a second (about 30 ms here)."""
    async with (
        koru.open(":memory:", difficulty=DIFFICULTY) as db,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(db.serve, "127.0.0.1", 0)
        flooder, other = await _member(db, ["read", "write"]), await _member(db, ["read", "write"])
        await db.put("n", "k", 1)
        calls = [0]

        async def flood(remote: koru.RemoteDatabase, i: int) -> None:
            while True:
                if i % 2:
                    await remote.put("n", f"f{i}", "y" * 10_000)
                else:
                    await remote.keys("n")
                calls[0] += 1

        async def connection() -> None:
            async with (
                koru.connect(f"127.0.0.1:{port}", flooder) as remote,
                trio.open_nursery() as inner,
            ):
                for i in range(100):
                    inner.start_soon(flood, remote, i)

        async with koru.connect(f"127.0.0.1:{port}", other) as remote:
            for _ in range(4):
                nursery.start_soon(connection)
            while calls[0] < 2000:  # noqa: ASYNC110
                await trio.sleep(0.05)
            for _ in range(5):
                began = time.monotonic()
                with trio.fail_after(10):
                    assert await remote.get("n", "k") == 1
                assert time.monotonic() - began < 1.0
        nursery.cancel_scope.cancel()


async def test_a_client_that_sends_calls_and_never_reads_their_answers_holds_few_of_them() -> None:
    """Attack: a client sends ``get`` after ``get`` of a 256 KiB value and never reads
    its socket. A call gave back its share of the connection's bounds (64 calls in
    flight, 128 MiB of requests) once answered, before its answer was sent: the
    answer then waited for the blocked socket, and the server read the next request,
    so one connection piled up an answer per request it sent (400 here, 200 MiB;
    the rate limit, 5,000 a second, for the idle timeout, 60 s: 300,000 answers).
    Must hold: the answers waiting to be sent are bounded per connection (at most
    the calls in flight, 64)."""
    import gc
    import tracemalloc

    async with (
        koru.open(":memory:", difficulty=DIFFICULTY) as db,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(db.serve, "127.0.0.1", 0)
        who = await _member(db, ["read"])
        value = "x" * (256 << 10)
        await db.put("n", "big", value)
        async with koru.connect(f"127.0.0.1:{port}", who) as remote:
            assert await remote.get("n", "big") == value
            remote._link._runner.conn.receive = trio.sleep_forever  # type: ignore[method-assign]
            gc.collect()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                async with trio.open_nursery() as calls:
                    for _ in range(400):
                        calls.start_soon(remote.get, "n", "big")
                    await trio.sleep(2)
                    gc.collect()
                    held = tracemalloc.get_traced_memory()[0] - base
                    calls.cancel_scope.cancel()
            finally:
                tracemalloc.stop()
        assert held < 64 * 2 * len(value) + (16 << 20), held >> 20  # (an answer, its frame)
        nursery.cancel_scope.cancel()


async def test_clients_that_send_calls_and_never_read_their_answers_hold_a_bounded_total() -> None:
    """Attack: several clients each send ``get`` after ``get`` of a 256 KiB value and
    never read their sockets. Each connection's answers waiting to be sent were
    bounded (64 calls in flight, 128 MiB), but all connections' together were not:
    1,024 connections could hold 128 GiB until their sends timed out (the idle
    timeout, 60 s). Must hold: all the server's calls together hold about
    ``Limits.max_call_bytes``; an honest client's call that fits the room they leave
    is answered while they are there, and still once they are gone."""
    import gc
    import tracemalloc

    async with (
        koru.open(":memory:", difficulty=DIFFICULTY) as db,
        trio.open_nursery() as nursery,
    ):
        db.peer_limits = Limits(max_call_bytes=4 << 20)
        port = await nursery.start(db.serve, "127.0.0.1", 0)
        who = await _member(db, ["read"])
        value = "x" * (256 << 10)
        await db.put("n", "big", value)
        await db.put("n", "small", 1)
        async with AsyncExitStack() as stack:
            hostile = []
            for _ in range(4):
                remote = await stack.enter_async_context(koru.connect(f"127.0.0.1:{port}", who))
                assert await remote.get("n", "big") == value
                remote._link._runner.conn.receive = trio.sleep_forever  # type: ignore[method-assign]
                hostile.append(remote)
            gc.collect()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                async with trio.open_nursery() as calls:
                    for remote in hostile:
                        for _ in range(100):
                            calls.start_soon(remote.get, "n", "big")
                    await trio.sleep(2)
                    gc.collect()
                    held = tracemalloc.get_traced_memory()[0] - base
                    # 4 connections x 64 calls x (an answer, its frame) without the
                    # bound: 128 MiB.
                    assert held < 16 << 20, held >> 20
                    honest = []

                    async def ask(remote: Any) -> None:
                        honest.append(await remote.get("n", "small"))

                    async with koru.connect(f"127.0.0.1:{port}", who) as polite:
                        calls.start_soon(ask, polite)
                        await trio.sleep(1)
                        # Answered while they hold their room: their answers that do
                        # not fit (256 KiB, in the last 256 KiB of the bound) wait,
                        # behind the line, and its small call fits (it waited for the
                        # hostile ones to go while their answers passed the bound).
                        assert honest == [1]
                        for remote in hostile:  # they go (as the idle timeout would)
                            await remote._link._runner.conn.aclose()
                        with trio.fail_after(10):
                            while not honest:  # noqa: ASYNC110
                                await trio.sleep(0.05)
                        assert honest == [1]
                    calls.cancel_scope.cancel()
            finally:
                tracemalloc.stop()
        nursery.cancel_scope.cancel()
