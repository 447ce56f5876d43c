"""Every public call of the database, made with arguments of every wrong kind, locally
and through the remote server: only a ``KoruError`` comes out (or Python's own
``TypeError`` for a wrong number of arguments, locally), nothing hangs, the handle
keeps working, and what was written reopens as it was (a replay of every record gives
the same digest).

A seeded fuzz, not an example list: each seed draws thousands of calls from the same
pool of bad values (wrong types, NaN and infinities, huge and negative ints, empty and
oversized text, NUL, path-like names, nested containers, objects no codec knows)."""

from __future__ import annotations

import inspect
import random
from pathlib import Path
from typing import Any

import pytest
import trio

import koru
from koru._remote_codec import pack
from koru._serving import DATABASE_CALLS, SPACE_CALLS

#: Calls that take over the handle or the connection (serving, syncing, streams) or
#: end it: exercised by their own tests.
_SKIP = {"serve", "sync_with", "close", "aclose", "subscribe", "watch"}
#: Values of every wrong kind (and a few right ones, so that calls get further in).
_JUNK: list[Any] = [
    None,
    0,
    -1,
    2**70,
    -(10**30),
    1.5,
    float("nan"),
    float("inf"),
    True,
    "",
    "x",
    "n",
    "k",
    "\x00",
    "a/b",
    "../..",
    "*",
    "x" * 5000,
    "2026-12-05T00:00:00",
    b"",
    b"\x00" * 32,
    b"\xff" * 3,
    [],
    [1, 2],
    [None],
    [[["deep"]]],
    ["n", "k", 1],
    [["n", "k", 1]],
    {},
    {"a": 1},
    {"$gt": 1},
    {"k": [1, {"x": None}]},
]
#: Only the local API can be handed these (the wire carries CBOR values only).
_LOCAL_JUNK: list[Any] = [object(), (1,), {1, 2}, 1j]
_KEYWORDS = ["ttl", "since", "until", "latest", "limit", "where", "agent", "after", "k"]


def _is_arity(exc: TypeError) -> bool:
    """A TypeError Python raises for a call's shape (missing or extra arguments)."""
    text = str(exc)
    return "argument" in text and any(w in text for w in ("missing", "positional", "keyword"))


async def _call_locally(db: Any, method: str, rng: random.Random) -> None:
    fn = getattr(db, method)
    params = inspect.signature(fn).parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keywords = [p.name for p in params if p.kind == p.KEYWORD_ONLY]
    pool = _JUNK + _LOCAL_JUNK
    # Mostly as many arguments as the call needs (a wrong count now and then).
    needed = sum(p.default is p.empty for p in positional)
    count = rng.randint(needed, len(positional)) if rng.random() < 0.9 else rng.randint(0, 4)
    args = [rng.choice(pool) for _ in range(count)]
    kwargs = {k: rng.choice(pool) for k in keywords if rng.random() < 0.3}
    try:
        with trio.fail_after(10):
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                await result
            elif hasattr(result, "__aenter__"):
                async with result:
                    pass
    except koru.KoruError:
        pass
    except TypeError as exc:
        if not _is_arity(exc):
            raise AssertionError(f"{method}(*{args!r}, **{kwargs!r}): {exc!r}") from exc


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_call_with_bad_arguments_raises_a_koru_error_locally(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    methods = sorted(DATABASE_CALLS - _SKIP)
    path = tmp_path / "db"
    async with koru.open(path, sync="os") as db:
        await db.put("n", "k", {"a": 1})
        for _ in range(1500):
            await _call_locally(db, rng.choice(methods), rng)
        await db.put("fresh", "z", 5)
        assert await db.get("fresh", "z") == 5
        digest = await db.digest()
    async with koru.open(path) as db:
        assert await db.digest() == digest
    assert koru.replay(path).digest == digest  # every record replayed, every projection


async def test_every_call_of_a_workspace_with_bad_arguments_raises_a_koru_error(
    tmp_path: Path,
) -> None:
    """The same for a workspace's handle (the calls a space answers)."""
    rng = random.Random(7)
    path = tmp_path / "db"
    async with koru.open(path, sync="os") as db:
        space = db.workspace("w")
        await space.put("n", "k", {"a": 1})
        for _ in range(1500):
            await _call_locally(space, rng.choice(sorted(SPACE_CALLS - _SKIP)), rng)
        await space.put("fresh", "z", 5)
        assert await space.get("fresh", "z") == 5
        digest = await db.digest()
    async with koru.open(path) as db:
        assert await db.digest() == digest
    assert koru.replay(path).digest == digest


@pytest.mark.parametrize("seed", [1, 2])
async def test_every_call_with_bad_arguments_raises_a_typed_error_through_the_server(
    seed: int,
) -> None:
    """Sent raw (the client's own checks bypassed): the server answers each with a
    typed error; none fails as an error it did not expect (``RemoteFailureError``,
    which it logs as its own fault), none goes unanswered, and the connection lives."""
    rng = random.Random(seed)
    async with koru.open(koru.MEMORY, difficulty=4) as db, trio.open_nursery() as nursery:
        port = await nursery.start(db.serve)
        who = koru.Identity.mine(4)
        await db.register(who.public)
        await db.grant(who.public, actions=["read", "write"])
        await db.put("n", "k", {"a": 1})
        methods = sorted(DATABASE_CALLS - _SKIP)
        async with koru.connect(f"127.0.0.1:{port}", who) as remote:
            for _ in range(1500):
                method = rng.choice(methods)
                args = [rng.choice(_JUNK) for _ in range(rng.randint(0, 4))]
                kwargs = {}
                if rng.random() < 0.5:
                    kwargs = {rng.choice(_KEYWORDS): rng.choice(_JUNK)}
                payload = b"c" + pack([None, method, args, kwargs, None])
                try:
                    with trio.fail_after(10):
                        await remote._link.call(payload)
                except koru.RemoteFailureError as exc:
                    raise AssertionError(f"{method}(*{args!r}, **{kwargs!r}): {exc}") from exc
                except koru.KoruError:
                    pass
            with trio.fail_after(10):
                await remote.put("fresh", "z", 5)
                assert await remote.get("fresh", "z") == 5
        nursery.cancel_scope.cancel()
