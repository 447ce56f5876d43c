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

import heapq
import inspect
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import Token
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from koru.events import (
    CodecError,
    InvalidArgumentError,
    KoruError,
    RemoteFailureError,
    SessionError,
)
from koru.nursery import NoFeeds, StreamFailed

from ._api import DatabaseAPI, SpaceAPI
from ._reads import ANSWER_BYTES
from ._remote_codec import pack, pack_error, unpack
from ._subscriptions import DEFAULT_BUFFER, QUEUE_SHARE, QueueShare

if TYPE_CHECKING:
    from ._authorized import AuthorizedDatabase

__all__ = ["ClientEndpoint", "ServedCalls", "DATABASE_CALLS", "SPACE_CALLS", "WRITE_CALLS"]

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

#: The calls that change something: only theirs are kept by key (a read answered
#: from the table would outlive the capability that allowed it).
WRITE_CALLS = frozenset(
    {
        "put", "put_with_causal_links", "put_batch", "delete", "create_index",
        "drop_index", "create_view", "refresh_view", "delete_view", "create_workspace",
        "drop_workspace", "embed", "delete_embedding", "put_similar", "ingest",
        "checkpoint", "register", "grant", "revoke",
    }
)  # fmt: skip

#: Answers kept for retried writes (and their bytes); subscriptions open at once per
#: connection; workspace handles kept open per connection.
MAX_KEPT_ANSWERS = 8192
MAX_KEPT_BYTES = 64 << 20
MAX_STREAMS = 64
#: Subscriptions served at once, all connections together. Why: every write is pushed
#: to every subscription on the writer's path (about 0.7 µs each), and 64 a connection
#: over 1,024 connections let one reader hold 65,536 of them: 47 ms a put (h-crowd2).
#: At this bound a write pays about 3 ms at worst.
MAX_SERVED_STREAMS = 4096
MAX_SPACES = 64
#: Events a subscription holds on the server for a client that does not read them
#: (the client's ``buffer`` is its own; the server's is at most this: then the client
#: gets LaggedError, as a local subscriber would).
MAX_STREAM_BUFFER = DEFAULT_BUFFER
#: The largest answer sent (a message holds 96 MiB): a bigger one is an error, not a
#: message the client's websocket refuses (it reconnected and asked again, in vain).
MAX_ANSWER = 64 << 20

OK, FAILED = b"\x00", b"\x01"


async def _feed_events(
    handle: Any, origin: Any, agent: Any = "storage", after: Any = 0, limit: Any = None
) -> list[bytes]:
    """A client's ``feed_events``: the log read only up to what an answer holds, and
    refused past it, rather than read whole first (a feed of gigabytes, asked for with
    no limit, was read into memory before its answer was refused as too large)."""
    await handle.feed_events(origin, agent, after, 0)  # the arguments and the right
    db, node = handle._db, bytes.fromhex(origin)
    head = db._feeds.heads.get((node, agent))
    wanted = max(0, (0 if head is None else head[0]) - after)
    if limit is not None:
        wanted = min(wanted, limit)
    events: list[bytes] = await db._feed_range(node, agent, after, limit, MAX_ANSWER)
    if len(events) < wanted or sum(map(len, events)) > MAX_ANSWER:  # (stopped short)
        raise InvalidArgumentError(
            f"feed_events(): the events are over the {MAX_ANSWER} bytes an answer may "
            "hold: ask for fewer (limit)"
        )
    return events


class ServedCalls:
    """The answers of recent writes, by (client identity, the write's key).

    Bounded in answers and in bytes; when full, the client holding the most (bytes,
    each answer counted 256 more; of equals, the one with the oldest answer) gives up
    its oldest answer, so a client that sends many keyed calls (a stranger can: its
    refusals are kept too) pushes out its own answers, not another's."""

    def __init__(self, limit: int = MAX_KEPT_ANSWERS, max_bytes: int = MAX_KEPT_BYTES) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        #: By client: its answers by key (with when each was kept), oldest first; and
        #: their weight.
        self._answers: dict[bytes, OrderedDict[bytes, tuple[int, bytes]]] = {}
        self._weight: dict[bytes, int] = {}
        #: Clients by (weight, oldest answer), heaviest first, lazily: an entry that no
        #: longer matches its client is skipped. Finding the heaviest scans nothing.
        self._heaviest: list[tuple[int, int, bytes]] = []
        self._kept = 0
        self.count = 0
        self.bytes = 0
        self._running: dict[tuple[bytes, bytes], trio.Event] = {}
        #: Writes answered from here (a retry) rather than done again.
        self.repeated = 0

    def kept(self, key: tuple[bytes, bytes]) -> bytes | None:
        """The answer kept for ``key`` (None: none)."""
        table = self._answers.get(key[0])
        found = None if table is None else table.get(key[1])
        return None if found is None else found[1]

    def _oldest(self, who: bytes) -> int:
        return next(iter(self._answers[who].values()))[0]

    def _weigh(self, who: bytes, change: int) -> None:
        weight = self._weight[who] = self._weight.get(who, 0) + change
        if weight:
            heapq.heappush(self._heaviest, (-weight, self._oldest(who), who))
        else:
            del self._weight[who], self._answers[who]
        if len(self._heaviest) > 2 * len(self._weight) + 64:  # mostly stale: rebuild
            self._heaviest = [(-w, self._oldest(c), c) for c, w in self._weight.items()]
            heapq.heapify(self._heaviest)

    def _keep(self, key: tuple[bytes, bytes], answer: bytes) -> None:
        who, call = key
        self._kept += 1
        self._answers.setdefault(who, OrderedDict())[call] = (self._kept, answer)
        self.count += 1
        self.bytes += len(answer)
        self._weigh(who, len(answer) + 256)
        while self.count > self.limit or self.bytes > self.max_bytes:
            weight, oldest, victim = self._heaviest[0]
            if self._weight.get(victim) != -weight or self._oldest(victim) != oldest:
                heapq.heappop(self._heaviest)  # stale
                continue
            _, (_, dropped) = self._answers[victim].popitem(last=False)
            self.count -= 1
            self.bytes -= len(dropped)
            self._weigh(victim, -(len(dropped) + 256))

    async def once(
        self,
        key: tuple[bytes, bytes],
        run: Callable[[], Awaitable[bytes]],
        keep: Callable[[bytes], bool] | None = None,
    ) -> bytes:
        """``run()``'s answer, run once for ``key`` (while its answer is kept; an
        answer ``keep`` refuses is not: the call was not attempted, and its retry is a
        new attempt)."""
        while True:
            kept = self.kept(key)
            if kept is not None:  # (kept in the order they came: a retry is soon)
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
            if keep is None or keep(answer):
                self._keep(key, answer)
        finally:
            del self._running[key]
            done.set()
        return answer


def _attempted(answer: bytes) -> bool:
    """False for a call refused for its session (expired): the client renews the
    session and sends it again, with the same key, for the write to be done then."""
    return answer[:1] == OK or not isinstance(unpack(answer[1:], errors=True), SessionError)


class ClientEndpoint(NoFeeds):
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
        #: What this connection's subscriptions hold queued, together: bounded as one's
        #: (and all connections' together: the database's hub's share).
        self._queue_share = QueueShare(handle._db._hub.served)

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
            found = opener(name)
            if len(self._spaces) >= MAX_SPACES:  # a cache: a client names any number
                del self._spaces[next(iter(self._spaces))]
            self._spaces[(kind, name)] = found
        return SPACE_CALLS, found

    def _target(self, space: Any, method: Any) -> Callable[..., Any]:
        allowed, target = self._space(space)
        if type(method) is not str or method not in allowed:  # (a list is unhashable)
            raise InvalidArgumentError(f"no call {method!r} here")
        if method == "feed_events":
            return partial(_feed_events, target)
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

        if key is None or method not in WRITE_CALLS:
            return await run()  # a read is never answered from the table
        if type(key) is not bytes or not 8 <= len(key) <= 32:
            return FAILED + pack_error(InvalidArgumentError("a call key is 8 to 32 bytes"))
        return await self._served.once((self._who, key), run, _attempted)

    async def _answer(
        self, call: Callable[..., Any], method: str, args: list[Any], kwargs: Any
    ) -> bytes:
        bounded = ANSWER_BYTES.set(MAX_ANSWER)  # (a history refuses itself early)
        try:
            result = await call(*args, **kwargs)
            answer = OK + pack(result)
            if len(answer) > MAX_ANSWER:
                raise InvalidArgumentError(
                    f"{method}(): the answer is {len(answer)} bytes, over the {MAX_ANSWER} "
                    "an answer may hold: ask for less"
                )
            return answer
        except KoruError as exc:
            return FAILED + pack_error(exc)
        except TypeError as exc:  # the call's signature refused the arguments
            return FAILED + pack_error(InvalidArgumentError(f"{method}(): {exc}"))
        except Exception as exc:
            log.exception("a client's call %s failed", method)
            return FAILED + pack_error(RemoteFailureError(f"{method}(): {type(exc).__name__}"))
        finally:
            ANSWER_BYTES.reset(bounded)

    @asynccontextmanager
    async def stream(self, payload: bytes) -> AsyncIterator[AsyncIterator[bytes]]:
        """A subscription's changes, packed, until the client cancels it."""
        try:
            space, method, args, kwargs = self._request(payload, 4)
            if method != "subscribe":
                raise InvalidArgumentError(f"{method!r} is not a streamed call")
            if self._streams >= MAX_STREAMS:
                raise InvalidArgumentError(f"at most {MAX_STREAMS} subscriptions a connection")
            served = self._queue_share.parent
            if served is not None and served.streams >= MAX_SERVED_STREAMS:
                raise InvalidArgumentError(
                    f"this server serves at most {MAX_SERVED_STREAMS} subscriptions at once"
                )
            opener = self._space(space)[1].subscribe
            # The server's queue is not the client's to size.
            if len(args) > 5 and type(args[5]) is int:
                args[5] = min(args[5], MAX_STREAM_BUFFER)
            if type(kwargs.get("buffer")) is int:
                kwargs["buffer"] = min(kwargs["buffer"], MAX_STREAM_BUFFER)
        except KoruError as exc:
            raise StreamFailed(pack_error(exc)) from None
        self._streams += 1
        if served is not None:
            served.streams += 1
        # The subscription opened counts what it queues against the connection's share.
        share: list[Token[QueueShare | None]] = [QUEUE_SHARE.set(self._queue_share)]
        try:
            async with opener(*args, **kwargs) as changes:
                QUEUE_SHARE.reset(share.pop())
                yield _Packed(changes, changes.start)
        except KoruError as exc:
            raise StreamFailed(pack_error(exc)) from None
        except TypeError as exc:
            raise StreamFailed(pack_error(InvalidArgumentError(f"subscribe(): {exc}"))) from None
        finally:
            if share:
                QUEUE_SHARE.reset(share.pop())
            self._streams -= 1
            if served is not None:
                served.streams -= 1


class _Packed:
    """A subscription's changes as packed bytes; its errors as the stream's end. The
    first item is the log position it starts from (an int): a client that loses the
    connection before any change resumes from there, missing nothing."""

    def __init__(self, changes: AsyncIterator[Any], start: int) -> None:
        self._changes = changes
        self._start: int | None = start

    def __aiter__(self) -> _Packed:
        return self

    async def __anext__(self) -> bytes:
        if self._start is not None:
            start, self._start = self._start, None
            return pack(start)
        try:
            change = await self._changes.__anext__()
        except KoruError as exc:
            raise StreamFailed(pack_error(exc)) from None
        return pack(change)
