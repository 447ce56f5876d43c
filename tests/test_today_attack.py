"""Attacks on the changes of one day (group commit's error copies and withdrawn puts,
the write path's lazily registered observers, the bound on all of a server's calls):
each test names what the adversary does and asserts what must hold."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import cbor2
import trio
import trio.testing
from _busy_server import TryLater, served
from test_dos_attack import _auth
from test_joined_puts import _FailingSync

import koru
from koru.events import DurabilityError
from koru.nursery import ConnectionClosed, NoFeeds
from koru.nursery import _session as session
from koru.nursery._protocol import PeerProtocol
from koru.nursery._wire import Msg, decode, encode


async def test_a_writers_notes_on_a_failed_rounds_error_stay_its_own(tmp_path: Path) -> None:
    """Attack: eight writers of a round whose sync fails each add a note to the error
    they get (``add_note``, as a caller does to say what it was doing), and so do the
    writers after it. Each writer must get its own copy (the point of raising a copy
    per waiter): its notes must not show in another's, nor another's in its."""
    disk = _FailingSync()
    async with koru.open(tmp_path / "db", sync="always", disk=disk) as db:
        await db.put("ns", "before", 1)
        disk.armed = True
        errors: dict[int, BaseException] = {}

        async def put(i: int) -> None:
            try:
                await db.put("ns", f"k{i}", i)
            except DurabilityError as exc:
                exc.add_note(f"writer {i}")
                errors[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(put, i)
        assert len(errors) == 8
        for i, exc in errors.items():
            assert exc.__notes__ == [f"writer {i}"], (i, exc.__notes__)
        committer = db._committer  # type: ignore[attr-defined]
        assert committer.error is not None
        # What a later waiter is handed carries none of theirs either.
        later = []
        for _ in range(2):
            try:
                await committer.sync_now()
            except DurabilityError as exc:
                later.append(exc)
        assert [getattr(e, "__notes__", None) for e in later] == [None, None]
        later[0].add_note("mine")
        assert getattr(later[1], "__notes__", None) is None
        disk.armed = False


# -- the bound on all of a server's calls (CallBudget) -----------------------------------


class _Honest:
    """The server's end of a client that reads everything it is sent: sends go out at
    once (decoded and kept); once its messages are read, it closes when ``bye`` is set."""

    def __init__(self, incoming: trio.MemoryReceiveChannel[bytes], bye: trio.Event) -> None:
        self._incoming = incoming
        self._bye = bye
        self.remote = "honest"
        self.sent: list[Msg] = []

    async def send(self, data: bytes) -> None:
        self.sent.append(decode(data)[0])

    async def receive(self) -> bytes:
        try:
            return self._incoming.receive_nowait()
        except trio.WouldBlock:
            await self._bye.wait()
            raise ConnectionClosed(1000, "bye") from None

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        return None


class _Answering(NoFeeds):
    name = "client"

    def __init__(self) -> None:
        self.served = 0

    async def serve(self, payload: bytes) -> bytes:
        self.served += 1  # an answer that takes a moment (not always the same)
        await trio.sleep(0.5 + 0.037 * (self.served % 5))
        return b"answer"


class _AdmitCalls:
    async def hello(self) -> tuple[bytes, bytes, int, bytes]:
        return bytes(32), bytes(32), 0, bytes(16)

    async def admit(self, auth: Any, server_challenge: bytes) -> tuple[Any, list[Any]]:
        return _Answering(), [b"", bytes(64), bytes(16), []]


async def _client(
    budget: session.CallBudget,
    bye: trio.Event,
    requests: list[bytes],
    *,
    deaf: bool = False,
    admit: Any = None,
) -> None:
    """A client connection sending ``requests`` as calls after its handshake: one that
    reads its answers, or ``deaf`` (it never reads); served by ``admit``'s endpoint
    (_AdmitCalls by default)."""
    send, incoming = trio.open_memory_channel[bytes](len(requests) + 1)
    await send.send(_auth())
    for call, payload in enumerate(requests):
        await send.send(encode(Msg.REQUEST, call, payload))
    proto = PeerProtocol(server=True, role="peer", heads=dict, now=trio.current_time())
    conn = (_Deaf if deaf else _Honest)(incoming, bye)
    await session.run_session(conn, proto, admit or _AdmitCalls(), calls=budget)


async def _honest_call(
    budget: session.CallBudget, bye: trio.Event, delay: float, size: int, answered: list[float]
) -> None:
    """A client that reads: after ``delay`` s it sends one call of ``size`` bytes and
    notes in ``answered`` how long its answer took."""
    await trio.sleep(delay)
    send, incoming = trio.open_memory_channel[bytes](10)
    await send.send(_auth())
    await send.send(encode(Msg.REQUEST, 1, b"c" + bytes(size)))
    proto = PeerProtocol(server=True, role="peer", heads=dict, now=trio.current_time())
    conn = _Honest(incoming, bye)
    began = trio.current_time()

    async def watch() -> None:
        while Msg.RESPONSE not in conn.sent:  # noqa: ASYNC110
            await trio.sleep(0.01)
        answered.append(trio.current_time() - began)

    async with trio.open_nursery() as inner:
        inner.start_soon(watch)
        await session.run_session(conn, proto, _AdmitCalls(), calls=budget)


async def test_an_idle_server_does_not_turn_away_clients_that_call_at_the_same_moment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Attack (by accident): two honest clients each send one 30 KB call at the same
    moment to a server holding nothing, whose bound on all calls is 40 KB. One is
    answered at once; the other must wait its turn (30 KB waiting, within the bound)
    and be answered, not be closed with 1013 (try later): a request that passed
    straight through was counted as waiting while its reader yielded (the semaphore's
    checkpoint), so the other's found 30 + 30 KB waiting on a server holding nothing."""
    budget = session.CallBudget(40_000)
    bye = trio.Event()
    ends: list[tuple[int | None, list[Msg]]] = []

    async def client() -> None:
        send, incoming = trio.open_memory_channel[bytes](10)
        await send.send(_auth())
        await send.send(encode(Msg.REQUEST, 1, b"c" + bytes(30_000)))
        proto = PeerProtocol(server=True, role="peer", heads=dict, now=trio.current_time())
        conn = _Honest(incoming, bye)
        end = await session.run_session(conn, proto, _AdmitCalls(), calls=budget)
        ends.append((end.code, conn.sent))

    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(client)
        await trio.sleep(10)
        bye.set()
    assert [code for code, _ in ends] == [1000] * 2, ends
    assert all(sent.count(Msg.RESPONSE) == 1 for _, sent in ends), ends
    assert budget.used == budget.waiting == 0


async def test_a_client_keeping_the_servers_calls_busy_cannot_starve_a_larger_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Attack: a client reads its answers (no idle timeout ever closes it) but keeps
    sending 10 KB calls, four always in flight, to a server whose bound on all calls
    is 40 KB. An honest client's 25 KB call (waiting beside the busy client's next
    one: 35 KB, within the bound) needs 15 KB held at most: each time one of the busy
    client's calls ended, the busy client's next one fitted and took the room, and the
    honest call waited for as long as the busy client kept on. Must hold: a call that
    waits its turn is taken before calls that came after it; the honest call is
    answered within a few of the busy client's calls.
    """
    budget = session.CallBudget(40_000)
    bye = trio.Event()
    answered: list[float] = []

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_client, budget, bye, [b"c" + bytes(10_000)] * 400)
        nursery.start_soon(_honest_call, budget, bye, 0.1, 25_000, answered)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert answered and answered[0] < 3.0, answered  # was never, while the busy one went on
    assert budget.used == budget.waiting == 0  # all given back, cancelled mid-call


class _Deaf(_Honest):
    """A client that never reads: past the handshake's messages, a send waits for ever
    (a full socket)."""

    async def send(self, data: bytes) -> None:
        if len(self.sent) >= 2:
            await trio.sleep_forever()
        await super().send(data)


async def test_a_client_that_never_reads_cannot_hold_the_queue_of_calls_waiting_for_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Attack: a client that never reads sends a 10 KB call (its answer waits to be
    sent, until its idle timeout) and then a 35 KB one, which waits for room under a
    40 KB bound, first in line; the room it waits for is its own first call's, which
    it never lets go. An honest 5 KB call that came after it fits (15 KB held) and must
    be answered at once, not wait behind it for the idle timeout (60 s)."""
    budget = session.CallBudget(40_000)
    bye = trio.Event()
    answered: list[float] = []

    async with trio.open_nursery() as nursery:
        deaf = partial(_client, deaf=True)
        nursery.start_soon(deaf, budget, bye, [b"c" + bytes(10_000), b"c" + bytes(35_000)])
        nursery.start_soon(_honest_call, budget, bye, 2, 5_000, answered)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert answered and answered[0] < 2.0, answered
    assert budget.used == budget.waiting == 0 and not budget.queue


async def test_a_client_told_to_try_later_tries_later(monkeypatch: Any) -> None:
    """Attack (a busy server): the server closes each connection whose call it cannot
    hold with 1013 (try later), for a second and a half. The client sent its call again
    at once on a new connection, six times in a few milliseconds, then raised
    ConnectionLostError: told to try later, it never did. Must hold: it waits before
    each new attempt after a 1013 (its reconnection delays), and its call is answered
    once the server has room; the write is done once."""
    async with served() as (db, nursery, address, who), koru.connect(address, who) as remote:
        await remote.put("n", "k", 0)  # connected
        busy = TryLater(monkeypatch)
        busy.refusing = True

        async def room() -> None:
            await trio.sleep(1.5)
            busy.refusing = False

        nursery.start_soon(room)
        with trio.fail_after(20):
            version = await remote.put("n", "k", 1)
        assert 1 <= busy.refused <= 4, busy.refused  # a few attempts, not a burst
        assert (await db.get_versioned("n", "k")).version == version
        assert len(await db.history("n", "k")) == 2


# -- the write path's observers, registered lazily (what held) ---------------------------


async def test_the_hub_watches_writes_exactly_while_some_subscription_is_live(
    tmp_path: Path,
) -> None:
    """Attack: a subscriber falls behind and is cut off inside the write path (the hub
    drops it there and cannot leave the writer's observers then); at once, before it
    has noticed, another subscribes, then a remote client subscribes and its
    connection is cut. Must hold: every live subscription sees every write; the hub
    is among the observers exactly once while one is live, and not once none is."""
    async with koru.open(tmp_path / "db", difficulty=4) as db, trio.open_nursery() as nursery:
        observers = db._writer.observers  # type: ignore[attr-defined]
        hub = db._hub  # type: ignore[attr-defined]
        async with db.subscribe("n", buffer=1) as slow:
            for i in range(3):
                await db.put("n", f"k{i}", i)  # the second cuts it off
            assert hub.subscriptions == [] and observers.count(hub.observe) == 1
            async with db.subscribe("n") as fresh:
                assert observers.count(hub.observe) == 1
                await db.put("n", "seen", 1)
                assert (await fresh.__anext__()).key == "seen"
            assert hub.observe not in observers  # the slow one is no longer counted
            try:
                while True:
                    await slow.__anext__()
            except koru.LaggedError:
                pass
        assert hub.observe not in observers
        port = await nursery.start(db.serve)
        who = koru.Identity.mine(4)
        await db.register(who.public)
        await db.grant(who.public, actions=["read", "write"])
        async with (
            koru.connect(f"127.0.0.1:{port}", who) as remote,
            remote.subscribe("n") as changes,
        ):
            assert observers.count(hub.observe) == 1
            await db.put("n", "far", 2)
            with trio.fail_after(10):
                assert (await changes.__anext__()).key == "far"
            await remote._link._runner.conn.aclose()  # type: ignore[attr-defined]
            with trio.fail_after(10):
                while hub.subscriptions:  # noqa: ASYNC110
                    await trio.sleep(0.01)
        with trio.fail_after(10):
            while hub.observe in observers:  # noqa: ASYNC110
                await trio.sleep(0.01)
        await db.put("n", "after", 3)  # no subscriber: the write path does not call it
        nursery.cancel_scope.cancel()


async def test_views_and_queries_see_writes_made_before_and_after_their_first_use(
    tmp_path: Path,
) -> None:
    """Attack: writes before any query (the engine not yet observing), a view created
    then (its first read fills from the document cache, which registers the engine),
    writes of a peer's ingested events and batches after, the cache emptied by its
    budget, and a reopen from a checkpoint. Must hold: the view and a query agree with
    the keys' current values each time."""
    from koru import F, Query

    q = Query().where(F("v") >= 1)
    async with koru.open(tmp_path / "db") as db:
        await db.put("n", "a", {"v": 1})
        await db.put("n", "b", {"v": 0})
        await db.create_view("big", "n", q)
        assert [r.key for r in await db.view("big")] == ["a"]
        await db.put_batch([("n", "b", {"v": 2}), ("n", "c", {"v": 3})])
        await db.delete("n", "a")
        assert [r.key for r in await db.query("n", q)] == ["b", "c"]
        assert [r.key for r in await db.view("big")] == ["b", "c"]
        db._queries.documents.by_namespace.clear()  # type: ignore[attr-defined]
        await db.put("n", "d", {"v": 5})
        assert [r.key for r in await db.query("n", q)] == ["b", "c", "d"]
        await db.put("n", "d", {"v": 0})
        assert [r.key for r in await db.query("n", q)] == ["b", "c"]
        await db.checkpoint()
    async with koru.open(tmp_path / "db") as db:
        assert [r.key for r in await db.view("big")] == ["b", "c"]
        await db.put("n", "e", {"v": 9})
        assert [r.key for r in await db.query("n", q)] == ["b", "c", "e"]
        assert [r.key for r in await db.view("big")] == ["b", "c", "e"]


# -- group commit: withdrawn puts (what held) --------------------------------------------


async def test_a_put_cancelled_after_its_round_took_it_is_written_not_withdrawn(
    tmp_path: Path,
) -> None:
    """Attack: writers join a round, the round appends them and syncs in a worker
    thread, and they are cancelled during that sync; then more join and are cancelled
    before a round takes them, and the database is reopened. Must hold: the first are
    written (taken, never withdrawn: not counted as such), the second never are, and
    the count of withdrawn puts is back to none once a round has passed."""
    from test_joined_puts import _SlowRecordingDisk

    disk = _SlowRecordingDisk()
    async with koru.open(tmp_path / "db", sync="always", disk=disk) as db:
        writer = db._writer  # type: ignore[attr-defined]
        for i in range(3):  # slow syncs: the committer moves them to a thread
            await db.put("ns", f"warm{i}", i)
        scopes: list[trio.CancelScope] = []

        async def victim(key: str) -> None:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                await db.put("ns", key, 1)

        disk.gate.clear()
        disk.entered.clear()
        async with trio.open_nursery() as nursery:
            for i in range(4):  # one round takes them all; its sync waits at the gate
                nursery.start_soon(victim, f"taken{i}")
            assert await trio.to_thread.run_sync(disk.entered.wait, 10)
            for scope in scopes:
                scope.cancel()
            scopes.clear()
            await trio.testing.wait_all_tasks_blocked()
            assert writer._withdrawn == 0
            for i in range(4):  # these join the next round, and go before it
                nursery.start_soon(victim, f"gone{i}")
            await trio.testing.wait_all_tasks_blocked()
            for scope in scopes:
                scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert writer._withdrawn == 4
            disk.gate.set()
        await db.put("ns", "last", 1)  # a round passes
        assert writer._withdrawn == 0 and not writer._joined
    async with koru.open(tmp_path / "db") as db:
        assert all([await db.contains("ns", f"taken{i}") for i in range(4)])
        assert not any([await db.contains("ns", f"gone{i}") for i in range(4)])


# -- the put path's inlined CBOR heads (what held) ---------------------------------------

_EDGES = [1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]


def test_the_inlined_heads_give_the_general_codecs_bytes_at_every_edge() -> None:
    """Attack: the seq, value-length and flat-int heads inlined today, at each edge of
    CBOR's head sizes (random seqs up to 2**64 almost never fall between 65,536 and
    2**32). Must hold: the same bytes as the general codec, decoding back."""
    from koru.events import STORAGE, ExpiringPutEvent, PutEncoder, PutEvent, decode_event
    from koru.events import encode_event as general
    from koru.events._cbor_parts import encode_flat

    origin = bytes(range(16))
    for seq in _EDGES:
        for size in (0, 23, 24, 255, 256, 65536):
            for expires in (None, 7):
                value = b"v" * size
                prev = None if seq == 1 else bytes(32)
                header = (origin, STORAGE, seq, prev, seq, "n", "k", value, None)
                event = PutEvent(*header) if expires is None else ExpiringPutEvent(*header, 7)
                fused = PutEncoder(origin).encode(seq, prev, seq, "n", "k", value, None, expires)
                assert fused == general(event), (seq, size)
                assert decode_event(fused) == event
    for n in [0, *_EDGES]:
        for v in (n, -n - 1):
            flat = encode_flat({"a": v})
            assert flat == cbor2.dumps({"a": v}), v
            assert cbor2.loads(flat) == {"a": v}


class _EmptyAnswers(_Answering):
    """Answers an empty call with no bytes at all (and any other as _Answering does)."""

    async def serve(self, payload: bytes) -> bytes:
        answer = await super().serve(payload)
        return answer if payload else b""


class _AdmitEmpty(_AdmitCalls):
    async def admit(self, auth: Any, server_challenge: bytes) -> tuple[Any, list[Any]]:
        return _EmptyAnswers(), [b"", bytes(64), bytes(16), []]


async def test_calls_of_no_bytes_in_flight_do_not_let_a_client_hold_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Attack (h-review2's residue): a client that never reads keeps calls of no bytes,
    with answers of no bytes, in flight, so its connection's byte count stays 0, then
    sends a 35 KB call that waits for room under a 40 KB bound that another deaf
    client's 30 KB call holds. Judged by its bytes, it held nothing and took the first
    place in line, and an honest 5 KB call that fits waited behind it until its idle
    timeout. Must hold: a connection with calls in flight never takes a place in line,
    so the honest call is answered at once."""
    budget = session.CallBudget(40_000)
    bye = trio.Event()
    answered: list[float] = []

    async with trio.open_nursery() as nursery:
        deaf = partial(_client, deaf=True)
        nursery.start_soon(deaf, budget, bye, [b"c" + bytes(30_000)])
        await trio.sleep(1)
        empties = partial(_client, deaf=True, admit=_AdmitEmpty())
        nursery.start_soon(empties, budget, bye, [b"", b"", b"", b"c" + bytes(35_000)])
        nursery.start_soon(_honest_call, budget, bye, 2, 5_000, answered)
        await trio.sleep(20)
        nursery.cancel_scope.cancel()
    assert answered and answered[0] < 2.0, answered
