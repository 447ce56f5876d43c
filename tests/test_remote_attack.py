"""Attacks on remote clients (koru.connect / db.serve, role client): a malicious
client, a malicious or silent server, and the edges of retries and resumed streams.
Each test names what an adversary (or bad luck) tries and asserts what must hold."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import cbor2
import pytest
import trio

import koru
from koru._remote_codec import pack
from koru._serving import FAILED, ServedCalls
from koru.nursery import Limits

DIFFICULTY = 4


def _identity() -> koru.Identity:
    return koru.Identity.mine(DIFFICULTY)


@asynccontextmanager
async def _served(limits: Limits | None = None) -> AsyncIterator[tuple[koru.Database, int]]:
    async with (
        koru.open(":memory:", difficulty=DIFFICULTY) as db,
        trio.open_nursery() as nursery,
    ):
        if limits is not None:
            db.peer_limits = limits
        port = await nursery.start(db.serve)
        yield db, port
        nursery.cancel_scope.cancel()


async def _member(db: koru.Database, actions: Any = ("read", "write"), **scope: Any) -> Any:
    who = _identity()
    await db.register(who.public)
    grant = await db.grant(who.public, actions=list(actions), **scope)
    return who, grant


def _request(space: Any, method: str, args: list[Any], key: bytes | None) -> bytes:
    return b"c" + pack([space, method, args, {}, key])


# -- a malicious client: the table of kept answers ---------------------------------------


async def test_a_read_sent_with_a_key_is_not_answered_from_the_table_after_a_revocation() -> None:
    """A key makes sense on writes only: a read answered from the table of kept answers
    outlives the capability that allowed it."""
    async with _served() as (db, port):
        await db.put("secret", "s", "the plans")
        (reader, grant) = await _member(db, actions=["read"], namespace="secret")
        async with koru.connect(f"127.0.0.1:{port}", reader) as remote:
            payload = _request(None, "get", ["secret", "s"], b"k" * 16)
            with trio.fail_after(10):
                assert await remote._link.call(payload) == "the plans"
                await db.revoke(grant)
                with pytest.raises(koru.PermissionDeniedError):
                    await remote.get("secret", "s")
                with pytest.raises(koru.PermissionDeniedError):
                    await remote._link.call(payload)  # the same key again


async def test_one_client_cannot_evict_another_clients_kept_answers() -> None:
    """The table is shared by every client: one that sends many keyed calls (even
    refused ones: a stranger can) must not push out another's answers, or that one's
    retried write is applied twice."""
    served = ServedCalls(limit=16)
    runs: list[bytes] = []

    def answer(tag: bytes) -> Any:
        async def run() -> bytes:
            runs.append(tag)
            return tag

        return run

    assert await served.once((b"honest", b"w" * 16), answer(b"first")) == b"first"
    for i in range(1000):
        await served.once((b"flood", i.to_bytes(16, "big")), answer(b"x"))
    # The honest client's retry: answered from the table, not done again.
    assert await served.once((b"honest", b"w" * 16), answer(b"second")) == b"first"
    assert runs.count(b"second") == 0


async def test_the_kept_answers_are_bounded_in_bytes() -> None:
    served = ServedCalls(limit=1000, max_bytes=1 << 20)
    big = b"\x00" * (100 << 10)

    async def run() -> bytes:
        return big

    for i in range(100):
        await served.once((b"me", i.to_bytes(16, "big")), run)
    assert served.bytes <= 1 << 20


async def test_a_client_cannot_grow_the_servers_workspace_handles_without_end() -> None:
    """Each workspace name a client names opens a handle on the server: held per
    connection, they must be bounded."""
    import koru._serving as serving

    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        endpoints: list[Any] = []
        original = serving.ClientEndpoint.__init__

        def kept(self: Any, *args: Any) -> None:
            original(self, *args)
            endpoints.append(self)

        serving.ClientEndpoint.__init__ = kept  # type: ignore[method-assign]
        try:
            async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
                with trio.fail_after(30):
                    for i in range(600):
                        with pytest.raises(koru.KeyNotFoundError):
                            await remote.workspace(f"w{i}").get("n", "k")
        finally:
            serving.ClientEndpoint.__init__ = original  # type: ignore[method-assign]
        assert len(endpoints) == 1
        assert len(endpoints[0]._spaces) <= serving.MAX_SPACES < 600


# -- a malicious server ------------------------------------------------------------------


@pytest.mark.parametrize("payload", [pack(5), pack(["not", "an", "error"]), pack(None)])
async def test_a_failure_that_is_not_an_error_raises_a_koru_error(
    payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    import koru._serving as serving

    async def lying(self: Any, request: bytes) -> bytes:
        return FAILED + payload

    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        monkeypatch.setattr(serving.ClientEndpoint, "serve", lying)
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            with trio.fail_after(10), pytest.raises(koru.KoruError):
                await remote.get("n", "k")


async def test_a_stream_ending_with_something_not_an_error_raises_a_koru_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import koru._serving as serving
    from koru.nursery import StreamFailed

    @asynccontextmanager
    async def lying(self: Any, request: bytes) -> AsyncIterator[Any]:
        raise StreamFailed(pack(7))
        yield  # pragma: no cover

    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        monkeypatch.setattr(serving.ClientEndpoint, "stream", lying)
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            with trio.fail_after(10), pytest.raises(koru.KoruError):
                async with remote.subscribe("n") as changes:
                    async for _ in changes:
                        pass  # pragma: no cover


async def test_answers_sent_twice_leave_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server answering each call twice (or any answer for a call already answered)
    must not make the client keep the extra answers for the connection's life."""
    from koru.nursery import Msg
    from koru.nursery._session import _Runner

    original = _Runner._serve

    async def twice(self: Any, call: int, payload: bytes) -> None:
        if not (self.proto.server and payload[:1] == b"c"):
            return await original(self, call, payload)
        try:
            answer = await self.endpoint.serve(payload[1:])
        finally:
            self.calls.release()
        again = self.proto.reply(Msg.RESPONSE, call, answer)
        await self.carry_out([*again, *again, *again])

    monkeypatch.setattr(_Runner, "_serve", twice)
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            with trio.fail_after(10):
                for i in range(20):
                    await remote.put("n", f"k{i}", i)
                await remote.namespaces()  # after the duplicates of the puts arrived
            runner = remote._link._runner
            assert runner.lagged == {} and runner.replies == {}


async def test_a_server_that_never_sends_its_challenge_is_unreachable_not_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """This side's own handshake timeout is not the server refusing the client."""
    from trio_websocket import serve_websocket

    import koru._remote as remote_module

    monkeypatch.setattr(remote_module, "RETRY_DELAYS", (0.0, 0.0))

    async def mute(request: Any) -> None:
        await request.accept()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, mute, "127.0.0.1", 0, None)
        limits = Limits(handshake_timeout=0.2)
        with trio.fail_after(20), pytest.raises(koru.ConnectionLostError):
            async with koru.connect(f"127.0.0.1:{server.port}", _identity(), limits=limits):
                pass  # pragma: no cover
        nursery.cancel_scope.cancel()


async def test_a_server_that_goes_silent_ends_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that answers nothing after the handshake (not even PINGs): the call
    ends (idle timeout, reconnections, then ConnectionLostError), never hangs."""
    import koru._remote as remote_module
    import koru._serving as serving
    from koru.nursery import PeerProtocol

    monkeypatch.setattr(remote_module, "RETRY_DELAYS", (0.0, 0.0))
    receive = PeerProtocol.receive

    def deaf(self: Any, data: bytes, now: float) -> Any:
        if self.server and self.open:
            return []
        return receive(self, data, now)

    async def never(self: Any, payload: bytes) -> bytes:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        monkeypatch.setattr(PeerProtocol, "receive", deaf)
        monkeypatch.setattr(serving.ClientEndpoint, "serve", never)
        limits = Limits(idle_timeout=0.3, heartbeat=0.1, handshake_timeout=0.5)
        async with koru.connect(f"127.0.0.1:{port}", owner, limits=limits) as remote:
            with trio.fail_after(20), pytest.raises(koru.ConnectionLostError):
                await remote.get("n", "k")


# -- subscriptions -----------------------------------------------------------------------


async def test_a_subscription_lost_before_its_first_change_misses_nothing() -> None:
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            async with remote.subscribe("n") as changes:
                runner = remote._link._runner
                runner.nursery.cancel_scope.cancel()  # the connection is lost...
                with trio.fail_after(10):
                    await runner.closed.wait()
                    await db.put("n", "while-away", 1)  # ...and a change happens
                    change = await changes.__anext__()
                assert (change.key, change.value) == ("while-away", 1)
            assert remote.connections == 2


async def test_a_subscription_cancelled_while_opening_leaves_nothing_open() -> None:
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            runner = remote._link._runner
            for _ in range(5):
                with trio.CancelScope() as scope:
                    scope.cancel()
                    async with remote.subscribe("n"):
                        pass  # pragma: no cover
            with trio.fail_after(10):
                await remote.put("n", "k", 1)
            assert runner is remote._link._runner and runner.replies == {}


async def test_a_lagged_subscriber_resuming_where_it_was_told_sees_no_duplicate() -> None:
    """LaggedError names where to resume: as locally, resuming there gives every
    change not seen, and none twice, even when the cut fell inside one event."""
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            seen: list[str] = []
            with trio.fail_after(20):
                async with remote.subscribe("n", buffer=4) as changes:
                    await remote.put_batch([("n", f"k{i}", i) for i in range(10)])  # one event
                    await remote.put("n", "after", 1)
                    await trio.sleep(0.5)
                    with pytest.raises(koru.LaggedError) as lagged:
                        async for change in changes:
                            seen.append(change.key)
                async with remote.subscribe("n", from_position=lagged.value.position) as rest:
                    async for change in rest:
                        seen.append(change.key)
                        if change.key == "after":
                            break
            assert seen == [*(f"k{i}" for i in range(10)), "after"]


def test_the_calls_kept_by_key_are_those_the_client_sends_as_writes() -> None:
    """The client sends a key on exactly the calls the server keeps answers of."""
    import inspect

    from koru import RemoteDatabase
    from koru._serving import DATABASE_CALLS, WRITE_CALLS

    sent_as_writes = {
        name
        for name in DATABASE_CALLS
        if "self._write(" in inspect.getsource(getattr(RemoteDatabase, name))
    }
    assert sent_as_writes == WRITE_CALLS


async def test_a_change_made_right_after_subscribing_is_seen() -> None:
    """As locally: once ``subscribe`` returns, every later change is delivered (the
    stream request and the write travel apart on the server)."""
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            for i in range(5):
                with trio.fail_after(10):
                    async with remote.subscribe("n", key=f"k{i}") as changes:
                        await db.put("n", f"k{i}", i)
                        change = await changes.__anext__()
                assert (change.key, change.value) == (f"k{i}", i)


async def test_a_refused_subscription_raises_when_opened_as_locally() -> None:
    async with _served() as (db, port):
        (reader, _) = await _member(db, actions=["read"], namespace="mine")
        async with koru.connect(f"127.0.0.1:{port}", reader) as remote:
            with trio.fail_after(10), pytest.raises(koru.PermissionDeniedError):
                async with remote.subscribe("secret"):
                    raise AssertionError("opened")  # pragma: no cover
            async with remote.subscribe("mine"):
                pass


async def test_a_client_cannot_size_the_servers_queue_of_a_subscription() -> None:
    """A client that subscribes and never reads its socket: what the server holds for
    it is bounded whatever ``buffer`` it asked for (its own buffer is its own)."""
    import koru._serving as serving

    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            with trio.fail_after(10):
                async with remote.subscribe("n", buffer=2**62):
                    (held,) = [s for s in db._hub.subscriptions if s.namespace == "n"]
                    assert held.buffer <= serving.MAX_STREAM_BUFFER
                payload = b"s" + pack(
                    [None, "subscribe", ["n", None, ["put"], None, None, 2**62], {}]
                )
                async with serving.ClientEndpoint(
                    db.as_identity(owner.public_key), b"x", "x", serving.ServedCalls()
                ).stream(payload[1:]):
                    held = db._hub.subscriptions[-1]  # the one just opened
                    assert held.buffer <= serving.MAX_STREAM_BUFFER


# -- more of a malicious client: what passed --------------------------------------------


async def test_a_client_sending_sync_messages_is_closed_and_syncs_nothing() -> None:
    from koru.nursery import Msg
    from koru.nursery._wire import encode

    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        await db.put("n", "k", 1)
        for message in (
            encode(Msg.SUMMARY, b"\x00" * 32, 1),
            encode(Msg.EVENTS, b"\xa0"),
            encode(Msg.HEADS, 0, 0, b"", []),
            encode(Msg.RESPONSE, 1, b"\x00"),
        ):
            async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
                runner = remote._link._runner
                await runner.conn.send(message)
                with trio.fail_after(10):
                    await runner.closed.wait()
                assert runner.proto.close_code == 1008
                assert await remote.get("n", "k") == 1  # a new connection
        assert len(await db.history("n", "k")) == 1


async def test_a_client_cannot_cancel_another_clients_stream() -> None:
    async with _served() as (db, port):
        (alice, _) = await _member(db, actions=["admin"])
        (mallory, _) = await _member(db, actions=["admin"])
        url = f"127.0.0.1:{port}"
        async with (
            koru.connect(url, alice) as a,
            koru.connect(url, mallory) as m,
            a.subscribe("n") as changes,
        ):
            runner = m._link._runner
            for call in range(64):
                await runner.carry_out(runner.proto.cancel(call))
            await m.namespaces()  # the CANCELs were read
            await db.put("n", "k", 1)
            with trio.fail_after(10):
                change = await changes.__anext__()
            assert change.key == "k"


async def test_ten_thousand_calls_at_once_are_all_answered() -> None:
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        await db.put("n", "k", "v")
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            answers: list[Any] = []

            async def one() -> None:
                answers.append(await remote.get("n", "k"))

            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    for _ in range(10_000):
                        nursery.start_soon(one)
            assert answers == ["v"] * 10_000
            assert remote._link._runner.replies == {}


async def test_a_write_retried_while_its_first_attempt_runs_is_applied_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection drops while the server is still writing: the retry (on a new
    connection) waits for the first attempt and gets its answer."""
    import koru._serving as serving

    original = serving.ClientEndpoint._answer
    started, release, retried = trio.Event(), trio.Event(), trio.Event()
    once = serving.ServedCalls.once
    attempts: list[int] = []

    async def counted(self: Any, key: Any, run: Any, *rest: Any) -> bytes:
        attempts.append(1)
        if len(attempts) == 2:
            retried.set()
        return await once(self, key, run, *rest)

    async def slow(self: Any, call: Any, method: str, *rest: Any) -> bytes:
        if method == "put" and not started.is_set():
            started.set()
            await release.wait()
        return await original(self, call, method, *rest)

    monkeypatch.setattr(serving.ClientEndpoint, "_answer", slow)
    monkeypatch.setattr(serving.ServedCalls, "once", counted)
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            versions: list[Any] = []

            async def write() -> None:
                versions.append(await remote.put("n", "k", 1))

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(write)
                    await started.wait()
                    remote._link._runner.nursery.cancel_scope.cancel()  # lost mid-write
                    await retried.wait()  # the retry arrived on a new connection...
                    await trio.testing.wait_all_tasks_blocked()  # ...and waits
                    assert not versions
                    release.set()
            assert remote.connections == 2
            history = await db.history("n", "k")
            assert len(history) == 1 and history[0].write_id == versions[0].write_id
            assert db._served_calls().repeated == 1


async def test_a_cancelled_call_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    import koru._serving as serving

    original = serving.ClientEndpoint._answer

    async def slow(self: Any, call: Any, method: str, *rest: Any) -> bytes:
        if method == "get":
            await trio.sleep(0.2)
        return await original(self, call, method, *rest)

    monkeypatch.setattr(serving.ClientEndpoint, "_answer", slow)
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        await db.put("n", "k", 1)
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            for _ in range(10):
                with trio.move_on_after(0.05):
                    await remote.get("n", "k")
            runner = remote._link._runner
            assert runner.replies == {} and runner.lagged == {}
            with trio.fail_after(10):
                assert await remote.get("n", "k") == 1
            assert remote.connections == 1


async def test_connect_hands_back_the_callers_own_exception() -> None:
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        url = f"127.0.0.1:{port}"
        with pytest.raises(KeyError):
            async with koru.connect(url, owner):
                raise KeyError("mine")
        with pytest.raises(ExceptionGroup) as group:
            async with koru.connect(url, owner):
                raise ExceptionGroup("mine", [KeyError(1), ValueError(2)])
        assert group.value.message == "mine"
        with pytest.raises(koru.KeyNotFoundError):
            async with koru.connect(url, owner) as remote:
                await remote.get("n", "nothing")


# -- decompression bombs -----------------------------------------------------------------


def _empty_arrays(n: int) -> bytes:
    """An array of ``n`` empty arrays: ``n + 5`` bytes, some ``64 * n`` decoded."""
    return b"\x9a" + n.to_bytes(4, "big") + b"\x80" * n


def test_a_payload_that_would_decode_to_too_much_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import koru._remote_codec as codec
    from koru._remote_codec import unpack

    monkeypatch.setattr(codec, "MAX_DECODED", 1 << 20)
    for bomb in (
        _empty_arrays(100_000),  # 100 KB in, 6 MB out
        b"\x9a" + (200_000).to_bytes(4, "big") + b"\xa0" * 200_000,  # empty maps
        b"\x9a" + (100_000).to_bytes(4, "big") + b"\xd9\x9c\x36\x80" * 100_000,  # tuples
        b"\x9a" + (100_000).to_bytes(4, "big") + b"\x41x" * 100_000,  # one-byte bytes
    ):
        with pytest.raises(koru.CodecError):
            unpack(bomb)
    # What fits decodes: many small items, and one big string (counted as its size).
    assert unpack(_empty_arrays(1000)) == [[]] * 1000
    assert unpack(pack(b"\x00" * 900_000)) == b"\x00" * 900_000
    assert unpack(pack([{"k": i, "v": [1.5, "x"]} for i in range(1000)]))[999]["k"] == 999


async def test_a_stranger_cannot_make_the_server_decode_a_bomb() -> None:
    """4 MiB of empty arrays would take some 300 MB on the server, before the call is
    checked (a stranger, holding no capability, can send it)."""
    async with (
        _served() as (_, port),
        koru.connect(f"127.0.0.1:{port}", _identity()) as stranger,
    ):
        n = 4 << 20
        bomb = b"c" + b"\x85\xf6cget\x82" + _empty_arrays(n) + b"ak\xa0\xf6"
        with trio.fail_after(30), pytest.raises(koru.CodecError):
            await stranger._link.call(bomb)
        with pytest.raises(koru.PermissionDeniedError):
            await stranger.get("n", "k")  # the connection serves on


# -- retries -----------------------------------------------------------------------------


async def test_a_write_after_the_session_expired_is_applied_on_the_renewed_session() -> None:
    """The first attempt's refusal (the session expired) is not the write's answer: the
    retry on a fresh session must not get it back from the table of kept answers."""
    from conftest import StepClock

    clock = StepClock()
    async with (
        koru.open(":memory:", difficulty=DIFFICULTY, clock=clock) as db,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(db.serve)
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            await remote.put("n", "k", 1)
            clock.now += 2 * 3600 * 10**9  # past the session's hour
            with trio.fail_after(10):
                version = await remote.put("n", "k", 2)
            assert remote.connections == 2
            assert (await db.get_versioned("n", "k")).write_id == version.write_id
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("method", [["get"], {"get": 1}, 7, None])
async def test_a_call_named_by_something_not_a_name_is_refused_and_the_connection_stays(
    method: Any,
) -> None:
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            for kind, payload in (
                (b"c", [None, method, ["n", "k"], {}, None]),
                (b"c", [None, method, ["n", "k"], {}, b"k" * 16]),
                (b"s", [None, method, [], {}]),
                (b"c", [["workspace", "w"], method, ["n", "k"], {}, None]),
            ):
                with trio.fail_after(10), pytest.raises(koru.InvalidArgumentError):
                    if kind == b"c":
                        await remote._link.call(kind + cbor2.dumps(payload))
                    else:
                        await _stream_end(remote, kind + cbor2.dumps(payload))
            assert remote.connections == 1


async def _stream_end(remote: Any, payload: bytes) -> None:
    """Send a streamed request as it is; raise the error its end names."""
    from koru._remote import _error_of
    from koru.nursery import Msg

    link = remote._link
    runner = await link.runner()
    call = next(link._ids)
    send, receive = trio.open_memory_channel[Any](10)
    runner.replies[call] = send
    await link.request(runner, call, payload)
    kind, data = await receive.receive()
    assert kind is Msg.STREAM_END and data is not None
    raise _error_of(data)


async def test_a_subscription_lost_at_an_event_boundary_resumes_with_no_duplicate() -> None:
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            got: list[str] = []
            with trio.fail_after(10):
                async with remote.subscribe("n") as changes:
                    await db.put_batch([("n", f"k{i}", i) for i in range(3)])  # one event
                    async for change in changes:
                        got.append(change.key)
                        if len(got) == 3:  # the whole event, and only it
                            runner = remote._link._runner
                            runner.nursery.cancel_scope.cancel()
                            await runner.closed.wait()
                            await db.put("n", "next", 1)
                        if len(got) == 4:
                            break
            assert got == ["k0", "k1", "k2", "next"] and remote.connections == 2


async def test_a_call_cancelled_while_reconnecting_leaves_no_connection_open() -> None:
    """A caller cancelled while its call reconnects: the connection it was opening is
    closed, not left open (its heartbeats keep it alive on both sides) for ever."""
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            for i in range(1, 30):
                runner = remote._link._runner
                if runner is not None:
                    runner.nursery.cancel_scope.cancel()
                    await runner.closed.wait()
                with trio.move_on_after(0.001 * i):
                    await remote.namespaces()
            with trio.fail_after(10):
                await remote.namespaces()
                while len(db._peer_sessions or ()) > 1:  # noqa: ASYNC110 (closing)
                    await trio.sleep(0.01)
            assert len(db._peer_sessions or ()) == 1


async def test_an_answer_too_big_for_a_message_is_an_error_not_a_reconnection_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An honest call whose answer the client's websocket would refuse (over its
    message limit): one typed error, not reconnection after reconnection."""
    import koru._remote as remote_module

    monkeypatch.setattr(remote_module, "RETRY_DELAYS", (0.0, 0.0))
    async with _served() as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        value = b"x" * (4 << 20)
        for i in range(4):
            await db.put("n", "k", value + bytes([i]))
        limits = Limits(max_message=8 << 20)  # as if the answer were over 96 MiB
        monkeypatch.setattr("koru._serving.MAX_ANSWER", 8 << 20)
        async with koru.connect(f"127.0.0.1:{port}", owner, limits=limits) as remote:
            with trio.fail_after(20), pytest.raises(koru.InvalidArgumentError):
                await remote.history("n", "k")
            assert len(await remote.history("n", "k", latest=1)) == 1
            assert remote.connections == 1


async def test_a_request_too_big_for_a_message_is_an_error_not_a_reconnection_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's websocket refuses a message over its limit by closing: the client
    must not reconnect and send it again until ConnectionLostError."""
    import koru._remote as remote_module

    monkeypatch.setattr(remote_module, "RETRY_DELAYS", (0.0, 0.0))
    async with _served(Limits(max_message=4 << 20)) as (db, port):
        (owner, _) = await _member(db, actions=["admin"])
        limits = Limits(max_message=4 << 20)
        async with koru.connect(f"127.0.0.1:{port}", owner, limits=limits) as remote:
            items = [("n", f"k{i}", b"x" * (1 << 20)) for i in range(6)]
            with trio.fail_after(20), pytest.raises(koru.InvalidArgumentError):
                await remote.put_batch(items)
            await remote.put_batch(items[:2])
            assert remote.connections == 1
        assert sorted(await db.keys("n")) == ["k0", "k1"]


async def test_a_subscription_outlives_its_session() -> None:
    """Sessions are renewed for calls; a subscription open past its session's hour
    resumes on a renewed one too, missing nothing, rather than ending with
    SessionExpiredError."""
    from conftest import StepClock

    clock = StepClock()
    async with (
        koru.open(":memory:", difficulty=DIFFICULTY, clock=clock) as db,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(db.serve)
        (owner, _) = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", owner) as remote:
            with trio.fail_after(10):
                async with remote.subscribe("n") as changes:
                    await db.put("n", "before", 1)
                    assert (await changes.__anext__()).key == "before"
                    clock.now += 2 * 3600 * 10**9  # past the session's hour
                    await db.put("n", "after", 2)
                    assert (await changes.__anext__()).key == "after"
            assert remote.connections == 2
        nursery.cancel_scope.cancel()


async def test_a_workspace_or_its_audit_handle_gives_nothing_without_rights() -> None:
    async with _served() as (db, port):
        (reader, _) = await _member(db, actions=["read", "write"], namespace="mine")
        await db.create_workspace("lab")
        await db.workspace("lab").put("notes", "n", "secret")
        await db.drop_workspace("lab")
        await db.create_workspace("lab2")
        await db.workspace("lab2").put("notes", "n", "secret")
        async with koru.connect(f"127.0.0.1:{port}", reader) as remote:
            for space in (remote.audit_workspace("lab"), remote.workspace("lab2")):
                with pytest.raises(koru.PermissionDeniedError):
                    await space.get("notes", "n")
                with pytest.raises(koru.PermissionDeniedError):
                    await space.history("notes", "n")
                assert await space.keys("notes") == []
            with pytest.raises(koru.PermissionDeniedError):
                await remote.workspace("lab2").put("notes", "n", "mine now")
            with pytest.raises(koru.PermissionDeniedError):
                async with remote.audit_workspace("lab").subscribe("notes", from_position=0):
                    pass  # pragma: no cover
            assert await remote.workspaces(dropped=True) == []
        assert await db.workspace("lab2").get("notes", "n") == "secret"


async def test_many_clients_keep_their_answers_in_order_and_quickly() -> None:
    """With the table full of many clients' answers (one each), a new one's answer is
    kept and the oldest goes; finding whom to evict does not scan every client."""
    import time

    served = ServedCalls(limit=4096)

    async def run() -> bytes:
        return b"v"

    clients = [i.to_bytes(32, "big") for i in range(4096 + 2000)]
    for who in clients[:4096]:
        await served.once((who, b"k" * 16), run)
    began = time.perf_counter()
    for who in clients[4096:]:
        await served.once((who, b"k" * 16), run)
        assert served.kept((who, b"k" * 16)) == b"v"  # the newest is kept
    assert (time.perf_counter() - began) / 2000 < 200e-6  # a scan of 4,096: ~400 us
    assert served.count == 4096
    assert served.kept((clients[1999], b"k" * 16)) is None  # the oldest went
    assert served.kept((clients[2000], b"k" * 16)) == b"v"


# -- what one connection may hold -----------------------------------------------------------


async def test_the_bytes_of_a_clients_calls_in_flight_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Big requests are answered one at a time once their bytes reach the bound (the
    reader waits: the client's socket backs up), small ones side by side."""
    import koru._serving as serving
    import koru.nursery._session as session

    monkeypatch.setattr(session, "MAX_CALL_BYTES", 4000)
    original = serving.ClientEndpoint.serve
    running, most = [0], [0]

    async def slow(self: Any, payload: bytes) -> bytes:
        running[0] += 1
        most[0] = max(most[0], running[0])
        await trio.sleep(0.05)
        try:
            return await original(self, payload)
        finally:
            running[0] -= 1

    monkeypatch.setattr(serving.ClientEndpoint, "serve", slow)
    async with _served() as (db, port):
        who, _ = await _member(db, actions=["admin"])
        async with koru.connect(f"127.0.0.1:{port}", who) as remote:
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(remote.put, "n", f"big{i}", "x" * 3000)
            assert most[0] == 1  # each 3 KB request alone under the 4 KB bound
            most[0] = 0
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(remote.get, "n", f"big{i}")
            assert most[0] == 4
            assert [await remote.get("n", f"big{i}") for i in range(4)] == ["x" * 3000] * 4


async def test_heartbeats_start_when_the_connection_opens() -> None:
    """Not at the handshake's deadline: with a short idle timeout and a long handshake
    timeout, an idle client still sends its pings (and is not dropped as silent)."""
    limits = Limits(handshake_timeout=10.0, idle_timeout=1.0, heartbeat=0.2)
    async with _served(limits) as (db, port):
        who, _ = await _member(db)
        async with koru.connect(f"127.0.0.1:{port}", who, limits=limits) as remote:
            proto = remote._link._runner.proto
            sent = proto.messages_sent
            await trio.sleep(1.5)  # idle, past the idle timeout
            assert proto.messages_sent - sent >= 3  # pings, every 0.2 s
            assert await remote.keys("n") == []
            assert remote.connections == 1  # never dropped as silent


async def test_a_clients_feed_events_past_an_answers_bound_reads_no_whole_feed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client holding read asked for a whole feed (no limit): the server read every
    event into memory before refusing the answer as too large (a feed of gigabytes).
    What must hold: refused after reading about one answer's worth, with a typed
    error; a limit within the bound is answered."""
    import koru._serving

    monkeypatch.setattr(koru._serving, "MAX_ANSWER", 10_000)
    async with _served() as (db, port):
        for i in range(2000):
            await db.put("feed", f"k{i}", "x" * 64)
        reader, _ = await _member(db, actions=["read"])
        reads = 0
        read = db._store.read

        def counted(*args: Any) -> bytes:
            nonlocal reads
            reads += 1
            return read(*args)

        monkeypatch.setattr(db._store, "read", counted)
        async with koru.connect(f"127.0.0.1:{port}", reader) as remote:
            with pytest.raises(koru.InvalidArgumentError, match="limit"):
                await remote.feed_events(db.node_id, "storage", 0)
            assert reads <= 2 * 256  # about one answer's worth (10 KB), not 2,000 events
            events = await remote.feed_events(db.node_id, "storage", 10, 50)
            assert events == await db.feed_events(db.node_id, "storage", 10, 50)
            with pytest.raises(koru.InvalidArgumentError):
                await remote.feed_events(db.node_id, "storage", -1)


async def test_serve_on_an_address_it_cannot_listen_on_is_an_invalid_argument() -> None:
    """A port in use or a host that does not resolve raised OSError out of serve."""
    async with _served() as (db, port), trio.open_nursery() as nursery:
        for host, taken in (("127.0.0.1", port), ("no-such-host.invalid", 0)):
            with trio.fail_after(30), pytest.raises(koru.InvalidArgumentError, match="listen"):
                await nursery.start(db.serve, host, taken)
