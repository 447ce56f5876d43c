"""Residual weak points of earlier reviews, attacked (h-resid): each test here is a
defect found, with what must hold."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest

import koru
from koru._reads import ANSWER_BYTES

N = 40_000


async def _partial_reader(db: Any) -> Any:
    """An identity that may read namespace ``small`` and one key of ``big``: its
    authorized handle."""
    who = koru.Identity.mine(4)
    await db.register(who.public)
    await db.grant(who.public, actions="read", namespace="small")
    await db.grant(who.public, actions="read", namespace="big", key="key-000000001")
    return db.as_identity(who)


@pytest.mark.parametrize("call", ["keys", "expiring", "namespaces"])
async def test_a_listing_for_a_client_that_may_read_part_is_filtered_as_it_is_read(
    call: str,
) -> None:
    """Attack: a remote client that may read one key of a large namespace (and one
    tiny namespace) asks for ``keys`` of it, ``expiring`` or ``namespaces``. The
    authorized handle read the listing with no bound at all (``unbounded``), built and
    sorted it whole (every key of the namespace, every key with a ttl of the
    database), and only then kept what the client may read: at every request, work
    and memory in the size of the database (300,000 keys: 2.6 s and 35 MB for
    ``keys``, 3 s and 80 MB for ``expiring``) for an answer of one name. Must hold:
    what the client may not read is skipped as the listing is read, so the memory
    the call takes is about its answer's, not the database's; the answer holds only
    what it may read."""
    async with koru.open(":memory:", difficulty=4, checkpoint_every=10**9) as db:
        for start in range(0, N, 5000):
            batch = [("big", f"key-{i:09d}", 1) for i in range(start, start + 5000)]
            await db.put_batch(batch, ttl=3600)
        for start in range(0, N, 5000):  # many namespaces the client may not read
            await db.put_batch([(f"ns{i}", "k", 1) for i in range(start, start + 5000)])
        await db.put("small", "a", 1)
        await db.checkpoint()  # the keys in a table, read streamed (as most are)
        handle = await _partial_reader(db)
        bounded = ANSWER_BYTES.set(64 << 20)  # as a served call is
        tracemalloc.start()
        try:
            if call == "keys":
                got: Any = await handle.keys("big")
                want: Any = ["key-000000001"]
            elif call == "expiring":
                got = [(e.namespace, e.key) for e in await handle.expiring(10**6)]
                want = [("big", "key-000000001")]
            else:
                got = await handle.namespaces()
                want = ["big", "small"]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            ANSWER_BYTES.reset(bounded)
        assert got == want
        # Listed whole first: some 100-250 bytes for each of the 40,000 names.
        assert peak < 20 * N, peak


async def test_keys_of_a_namespace_a_client_may_read_nothing_of_reads_none_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: a client that may read one tiny namespace asks ``keys`` of a large
    namespace it may read nothing of, again and again. The answer is empty, but
    every key of the namespace was walked (and, before ``VISIBLE``, listed and
    sorted) to find that out: work in its size per request, and a time that tells
    its size. Must hold: the namespace is not read at all; the answer is empty."""
    from koru.projections import KvState

    async with koru.open(":memory:", difficulty=4) as db:
        await db.put_batch([("huge", f"k{i}", 1) for i in range(1000)])
        handle = await _partial_reader(db)
        read: list[str] = []
        items = KvState.items

        def counted(self: Any, namespace: str) -> Any:
            read.append(namespace)
            return items(self, namespace)

        monkeypatch.setattr(KvState, "items", counted)
        bounded = ANSWER_BYTES.set(64 << 20)
        try:
            assert await handle.keys("huge") == []
        finally:
            ANSWER_BYTES.reset(bounded)
        assert "huge" not in read, read
        with pytest.raises(koru.KoruError):
            await handle.keys("")  # a malformed name is still refused, typed


@pytest.mark.xfail(
    strict=True,
    reason="defect left open (h-resid): the memory layer is sorted whole for every listing",
)
async def test_a_served_listing_of_one_readable_key_does_not_sort_the_memory_layer() -> None:
    """Attack: a client that may read one key of a namespace asks ``keys`` of it again
    and again while the namespace's keys are in the memory layer (written since the
    last checkpoint: up to ``checkpoint_every`` events, each batch many keys). The
    listing skips what the client may not read as it is read (``VISIBLE``), but
    ``KvState.items`` first sorts every key of the namespace in each memory layer
    (``_sorted_keys``), at every request (there is no cursor): 300,000 keys cost 86 ms
    even for a listing refused after 200 bytes (0 ms once they are in a table), and
    270 ms and a list of them all for this client's answer of one name. (For a client
    that may read the whole namespace the sort is of the order of the largest answer
    it may be sent, 64 MiB of names.) Must hold: the memory the call takes is about
    its answer's, not a sort of everything written since the last checkpoint."""
    async with koru.open(":memory:", difficulty=4, checkpoint_every=10**9) as db:
        for start in range(0, N, 5000):
            batch = [("big", f"key-{i:09d}", 1) for i in range(start, start + 5000)]
            await db.put_batch(batch)
        handle = await _partial_reader(db)
        bounded = ANSWER_BYTES.set(64 << 20)  # as a served call is
        tracemalloc.start()
        try:
            assert await handle.keys("big") == ["key-000000001"]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            ANSWER_BYTES.reset(bounded)
        assert peak < 20 * N, peak  # (sorted whole: about 100 bytes a key)


class _SetClock:
    """A wall clock the test sets (ns since the epoch)."""

    def __init__(self, now: int) -> None:
        self.now = now

    def now_ns(self) -> int:
        return self.now


_T0 = 1_767_225_600 * 10**9


def _forge_expiry(base: Any, at: Any, key: str, by: int) -> None:
    """Copy the database at ``base`` to ``at`` with its checkpoint's expiry time of
    ``key`` (namespace ``ns``) moved by ``by`` ns, still a plausible time, the
    checkpoint's checksum made right again."""
    import shutil

    import blake3
    import cbor2

    from koru._loader import CHECKPOINT_FILE

    shutil.copytree(base, at)
    raw = (at / CHECKPOINT_FILE).read_bytes()
    body = cbor2.loads(raw[40:])
    columns = body["sections"]["kv"][1]["expiring_at"]
    columns["times"][columns["keys"].index(chr(2) + "ns" + key)] += by
    data = cbor2.dumps(body)
    (at / CHECKPOINT_FILE).write_bytes(raw[:8] + blake3.blake3(data).digest() + data)


async def _seen(at: Any, now: int) -> tuple[Any, ...]:
    """What a database opened at ``at`` at time ``now`` serves of key ``ns/k``."""
    async with koru.open(at, clock=_SetClock(now), processes=False) as db:
        try:
            got: Any = await db.get("ns", "k")
        except koru.KeyNotFoundError:
            got = "absent"
        except koru.KoruError as exc:  # refused as corrupt: never a wrong answer
            return ("refused", type(exc).__name__)
        return (
            got,
            await db.contains("ns", "k"),
            "k" in await db.keys("ns"),
            [e.expires for e in await db.expiring(10**6) if e.key == "k"],
        )


@pytest.mark.xfail(
    strict=True,
    reason="defect left open (h-resid): a checkpoint's expiry times are not proven",
)
@pytest.mark.parametrize(
    ("by", "after"),
    [
        pytest.param(10_000 * 10**9, 200, id="moved-later-served-past-expiry"),
        pytest.param(-90 * 10**9, 50, id="moved-earlier-hidden-early"),
    ],
)
def test_a_forged_expiry_time_in_a_checkpoint_is_not_served(
    tmp_path: Any, by: int, after: int
) -> None:
    """Attack: a checkpoint whose ``expiring_at`` time of a key is moved (later by
    10,000 s, or earlier by 90 s: plausible times, in range, listed once; the
    checksum made right again), the log untouched. The open checks the columns'
    shape only, and ``get``, ``contains``, ``keys``, ``expiring`` judge expiry by that
    map: the value was served 100 s past its real expiry (``get_versioned`` and
    ``history``, which read the version record, say it expired), or hidden 40 s
    before it (and, as ``Writer.expire`` reads the record, never recorded as expired:
    hidden until overwritten). ``kdelta verify`` reports the kv section as disagreeing
    with the log. Must hold: the open serves the expiry the log holds (the put
    event at the version's location, as values are proven by their content id) or
    refuses; never the forged time."""
    import trio

    base = tmp_path / "db"

    async def made() -> None:
        async with koru.open(base, clock=_SetClock(_T0), processes=False) as db:
            await db.put("ns", "k", 1, ttl=100)
            await db.put("ns", "other", 2)
            await db.checkpoint()

    trio.run(made)
    now = _T0 + after * 10**9
    truth = trio.run(_seen, base, now)
    forged = tmp_path / "forged"
    _forge_expiry(base, forged, "k", by)
    got = trio.run(_seen, forged, now)
    assert got == truth or got[0] == "refused", (got, truth)


async def test_whole_messages_a_connection_has_not_taken_count_against_the_pending_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: admitted connections whose session has stopped reading (it waits while
    64 calls, or 128 MiB of their requests, are being answered: backpressure), each
    sent one whole message of up to ``max_message`` (96 MiB). ``PendingBudget``
    counted a message only while partly received: once whole, trio-websocket holds it
    in its queue (``message_queue_size`` 1) outside the server's ``max_pending`` (256
    MiB) and every other bound, as the budget sees nothing held: some 96 GiB over
    1,024 connections (a second message, blocked handing over, stays counted but for
    its last fragment, which went unchecked). Must hold: the messages all
    connections hold unread stay within the budget (a connection whose message would
    pass it is closed, 1009, as for a partial one)."""
    import trio
    from trio_websocket import open_websocket_url

    from koru.nursery import _transport as transport

    limit = 1 << 20
    watched: list[Any] = []
    watch = transport.PendingBudget.watch

    def recorded(self: Any, ws: Any) -> Any:
        watched.append(ws)
        return watch(self, ws)

    monkeypatch.setattr(transport.PendingBudget, "watch", recorded)

    async def handler(request: Any) -> None:
        await request.accept()  # then never reads: a session waiting for its calls
        await trio.sleep_forever()

    def held() -> int:
        total = 0
        for ws in watched:
            state = ws._recv_channel._state
            total += sum(len(m) for m in state.data)
            total += sum(len(m) for m in state.send_tasks.values())
        return total

    async def sender(port: int) -> None:
        try:
            async with open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                try:
                    await ws.send_message(b"x" * (600 << 10))
                    await trio.sleep_forever()
                finally:  # (trio-websocket leaves it open once the server closed first)
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(ws._stream)
        except Exception:  # closed by the server (1009): what must happen past the budget
            pass

    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: transport.serve_websockets(
                handler,
                "127.0.0.1",
                0,
                max_message_size=2 << 20,
                connect_timeout=5,
                max_pending=limit,
                task_status=task_status,
            )
        )
        for _ in range(4):  # one after another: no two partly received at once
            nursery.start_soon(sender, port)
            await trio.sleep(0.4)
        assert held() <= limit, (held(), len(watched))
        nursery.cancel_scope.cancel()
