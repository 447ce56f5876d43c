"""Serving remote clients: a client's calls, answered by its authorized handle.

A client (role ``client`` in the handshake) gets no feeds; it sends requests, each a
call of :class:`koru.DatabaseAPI` (or of :class:`koru.SpaceAPI` on a workspace), and
gets back what the local call returns (:mod:`koru._remote_codec`). Every call goes
through the client's :class:`~koru.AuthorizedDatabase` (the handle a session opens),
so each is checked against the client's capabilities exactly as a local authorized
call is. Only the interface's calls are served; nothing else of the handle is
reachable.

A write carries a key the client chose; its answer is kept (bounded) by the client's
identity and that key, so a write retried after a lost connection is done once: the
retry waits for the first attempt, or gets its answer. The first attempt runs to its
end even when the connection drops (its cancellation is shielded), so that its
answer is always known. (The answers live in memory: a server that restarts between
the attempts applies the write again.)
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from koru.events import CodecError, InvalidArgumentError, KoruError, RemoteFailureError
from koru.nursery import Feed, StreamFailed

from ._api import DatabaseAPI, SpaceAPI
from ._remote_codec import pack, pack_error, unpack

if TYPE_CHECKING:
    from ._authorized import AuthorizedDatabase

__all__ = ["ClientEndpoint", "ServedCalls", "DATABASE_CALLS", "SPACE_CALLS"]

log = logging.getLogger("koru.peers")


def _calls(protocol: type) -> frozenset[str]:
    return frozenset(
        name
        for cls in protocol.__mro__
        if cls in (SpaceAPI, DatabaseAPI)
        for name, member in vars(cls).items()
        if inspect.iscoroutinefunction(member)
    )


#: What a client may call: the interface's awaitable calls (closing the server's
#: database is not one of them: a client's ``aclose`` closes its connection).
DATABASE_CALLS = _calls(DatabaseAPI) - {"aclose"}
SPACE_CALLS = _calls(SpaceAPI)

#: Answers kept for retried writes (in all, and per client identity); subscriptions
#: open at once per connection.
MAX_KEPT_ANSWERS = 8192
MAX_KEPT_PER_CLIENT = 1024
MAX_STREAMS = 64

OK, FAILED = b"\x00", b"\x01"


class ServedCalls:
    """The answers of recent writes, by (client identity, the write's key). Only
    answers of writes that succeeded are kept (a refused write is refused again), at
    most :data:`MAX_KEPT_PER_CLIENT` per identity and ``limit`` in all, oldest first
    out: one client cannot push another's out with more than its share."""

    def __init__(self, limit: int = MAX_KEPT_ANSWERS) -> None:
        self.limit = limit
        self._answers: OrderedDict[tuple[bytes, bytes], bytes] = OrderedDict()
        self._per_client: dict[bytes, OrderedDict[bytes, None]] = {}
        self._running: dict[tuple[bytes, bytes], trio.Event] = {}
        #: Writes answered from here (a retry) rather than done again.
        self.repeated = 0

    async def once(self, key: tuple[bytes, bytes], run: Callable[[], Awaitable[bytes]]) -> bytes:
        """``run()``'s answer, run once for ``key`` (while its answer is kept)."""
        while True:
            kept = self._answers.get(key)
            if kept is not None:
                self._answers.move_to_end(key)
                self.repeated += 1
                return kept
            running = self._running.get(key)
            if running is None:
                break
            await running.wait()
        done = self._running[key] = trio.Event()
        try:
            with trio.CancelScope(shield=True):
                answer = await run()
            if answer[:1] == OK:
                self._keep(key, answer)
        finally:
            del self._running[key]
            done.set()
        return answer

    def _keep(self, key: tuple[bytes, bytes], answer: bytes) -> None:
        who, _ = key
        mine = self._per_client.setdefault(who, OrderedDict())
        mine[key[1]] = None
        self._answers[key] = answer
        if len(mine) > MAX_KEPT_PER_CLIENT:
            self._drop((who, mine.popitem(last=False)[0]))
        while len(self._answers) > self.limit:
            self._drop(next(iter(self._answers)))

    def _drop(self, key: tuple[bytes, bytes]) -> None:
        self._answers.pop(key, None)
        mine = self._per_client.get(key[0])
        if mine is not None:
            mine.pop(key[1], None)
            if not mine:
                del self._per_client[key[0]]


class ClientEndpoint:
    """One client connection's view of the database (nursery's ``Endpoint``): no
    feeds, only calls."""

    def __init__(
        self, handle: AuthorizedDatabase, who: bytes, name: str, served: ServedCalls
    ) -> None:
        self.name = name
        self._handle = handle
        self._who = who
        self._served = served
        self._spaces: dict[tuple[str, str], Any] = {}
        self._streams = 0

    # -- what a peer connection uses (a client has no feeds) -----------------------------

    def heads(self) -> Mapping[Feed, tuple[int, bytes]]:
        return {}

    async def fetch(self, feed: Feed, after: int, upto: int, max_bytes: int) -> list[bytes]:
        return []

    async def before_push(self) -> None:
        return None

    async def ingest(self, events: list[bytes]) -> None:
        raise InvalidArgumentError("a client sends calls, not events")

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        return lambda: None

    async def recent(self, window: int) -> list[tuple[Feed, int, bytes]]:
        return []

    def heard(self, addresses: list[str]) -> None:
        return None

    def known_peers(self) -> list[str]:
        return []

    # -- calls -------------------------------------------------------------------------

    def _space(self, space: Any) -> tuple[frozenset[str], Any]:
        """The calls allowed on ``space`` and the handle that answers them."""
        if space is None:
            return DATABASE_CALLS, self._handle
        if (
            type(space) is not list
            or len(space) != 2
            or space[0] not in ("workspace", "audit")
            or type(space[1]) is not str
        ):
            raise InvalidArgumentError(f"no space {space!r}")
        kind, name = space
        found = self._spaces.get((kind, name))
        if found is None:
            handle = self._handle
            opener = handle.workspace if kind == "workspace" else handle.audit_workspace
            found = self._spaces[(kind, name)] = opener(name)
        return SPACE_CALLS, found

    def _target(self, space: Any, method: Any) -> Callable[..., Any]:
        allowed, target = self._space(space)
        if method not in allowed:
            raise InvalidArgumentError(f"no call {method!r} here")
        return getattr(target, method)  # type: ignore[no-any-return]

    @staticmethod
    def _request(payload: bytes, size: int) -> list[Any]:
        request = unpack(payload)
        if (
            type(request) is not list
            or len(request) != size
            or type(request[2]) is not list
            or type(request[3]) is not dict
            or not all(type(k) is str for k in request[3])
        ):
            raise CodecError("a request is [space, call, args, kwargs, key]")
        return request

    async def serve(self, payload: bytes) -> bytes:
        """Answer one call: ``OK`` + its packed result, or ``FAILED`` + its error."""
        try:
            space, method, args, kwargs, key = self._request(payload, 5)
            call = self._target(space, method)
        except KoruError as exc:
            return FAILED + pack_error(exc)

        async def run() -> bytes:
            return await self._answer(call, method, args, kwargs)

        if key is None:
            return await run()
        if type(key) is not bytes or not 8 <= len(key) <= 32:
            return FAILED + pack_error(InvalidArgumentError("a call key is 8 to 32 bytes"))
        return await self._served.once((self._who, key), run)

    async def _answer(
        self, call: Callable[..., Any], method: str, args: list[Any], kwargs: Any
    ) -> bytes:
        try:
            result = await call(*args, **kwargs)
            return OK + pack(result)
        except KoruError as exc:
            return FAILED + pack_error(exc)
        except TypeError as exc:  # the call's signature refused the arguments
            return FAILED + pack_error(InvalidArgumentError(f"{method}(): {exc}"))
        except Exception as exc:
            log.exception("a client's call %s failed", method)
            return FAILED + pack_error(RemoteFailureError(f"{method}(): {type(exc).__name__}"))

    @asynccontextmanager
    async def stream(self, payload: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        """A subscription's changes, packed, until the client cancels it."""
        try:
            space, method, args, kwargs = self._request(payload, 4)
            if method != "subscribe":
                raise InvalidArgumentError(f"{method!r} is not a streamed call")
            if self._streams >= MAX_STREAMS:
                raise InvalidArgumentError(f"at most {MAX_STREAMS} subscriptions a connection")
            opener = self._space(space)[1].subscribe
        except KoruError as exc:
            raise StreamFailed(pack_error(exc)) from None
        self._streams += 1
        try:
            async with opener(*args, **kwargs) as changes:
                yield _Packed(changes)  # an empty item first: the subscription is open
        except KoruError as exc:
            raise StreamFailed(pack_error(exc)) from None
        except TypeError as exc:
            raise StreamFailed(pack_error(InvalidArgumentError(f"subscribe(): {exc}"))) from None
        finally:
            self._streams -= 1


class _Packed:
    """A subscription's changes as packed bytes; its errors as the stream's end."""

    def __init__(self, changes: AsyncIterator[Any]) -> None:
        self._changes = changes
        self._opened = False

    def __aiter__(self) -> _Packed:
        return self

    async def __anext__(self) -> bytes:
        if not self._opened:  # tells the client its subscribe() succeeded
            self._opened = True
            return b""
        try:
            change = await self._changes.__anext__()
        except KoruError as exc:
            raise StreamFailed(pack_error(exc)) from None
        return pack(change)
