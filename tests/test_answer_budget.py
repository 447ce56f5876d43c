"""Served answers built under the bound an answer may hold (``ANSWER_BYTES``): a
remote client's small request for a listing of unbounded size (keys, namespaces,
expiring keys, a lineage walk, ``most_connected`` with a huge k, a query with select
or group_by) must be refused with a typed error before the server builds and packs an
answer of about the whole listing; what fits is answered; local calls are unbounded."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from test_dos_attack import _bounded_server as bounded_server

BOUND = 2_000
N = 300


def _bounded_server(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A database served with answers of at most ``BOUND`` bytes, a client holding
    read on everything, the sizes of every answer the server packed, and the port."""
    return bounded_server(monkeypatch, BOUND)


async def _refused(ask: Any, built: list[int], match: str) -> None:
    import koru

    built.clear()
    with trio.fail_after(10), pytest.raises(koru.InvalidArgumentError, match=match):
        await ask()
    assert max(built, default=0) <= 2 * BOUND, "a whole answer was packed, then refused"


async def _listings(db: Any) -> tuple[str, str]:
    """N keys with a time to live in "n", N namespaces, and in "g" a chain of N keys
    each derived from the one before, from "root"; the chain's last node."""
    pad = "k" * 20
    await db.put_batch([("n", f"{pad}{i:04}", i) for i in range(N)], ttl=3600)
    for i in range(N):
        await db.put(f"ns{pad}{i:04}", "x", 1)
    await db.put_batch([("small", f"{i}", i) for i in range(10)])
    await db.put("g", "root", 0)
    for i in range(N):
        parent = "root" if i == 0 else f"{pad}{i - 1:04}"
        await db.put("g", f"{pad}{i:04}", i, parents=[parent])
    return ("g", f"{pad}{N - 1:04}")


#: Each listing: how a client asks for all of it, the error's hint, and how a client
#: asks for a part that fits.
LISTINGS: dict[str, tuple[Any, str, Any]] = {
    "keys": (lambda r, last: r.keys("n"), "less", lambda r, last: r.keys("small")),
    "namespaces": (lambda r, last: r.namespaces(), "less", None),
    "expiring": (lambda r, last: r.expiring(7200), "less", lambda r, last: r.expiring(0)),
    "descendants": (
        lambda r, last: r.descendants(("g", "root")),
        "depth",
        lambda r, last: r.descendants(("g", "root"), depth=5),
    ),
    "ancestors": (
        lambda r, last: r.ancestors(last),
        "depth",
        lambda r, last: r.ancestors(last, depth=5),
    ),
    "most_connected": (
        lambda r, last: r.most_connected("g", 10**9),
        "smaller k",
        lambda r, last: r.most_connected("g", 10),
    ),
}


@pytest.mark.parametrize("call", list(LISTINGS))
async def test_a_clients_listing_past_an_answers_bound_is_refused_before_it_is_built(
    monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """A client asks for the keys of a namespace of many keys, the namespaces of a
    database of many, the expiring keys, every descendant or ancestor of a key (no
    depth) or ``most_connected`` with k of a billion (each a request of some 50
    bytes): the server built the whole listing and packed it, then refused it as over
    MAX_ANSWER. What must hold: refused before it is packed, with the typed
    InvalidArgumentError naming how to ask for less; what fits is answered; the local
    call is unbounded."""
    whole, hint, part = LISTINGS[call]
    async with _bounded_server(monkeypatch) as (db, remote, built, _):
        last = await _listings(db)
        await _refused(lambda: whole(remote, last), built, hint)
        if part is not None:
            assert len(await part(remote, last)) in (0, 5, 10)  # what fits is answered
        assert len(await whole(db, last)) >= N  # a local call: no bound


async def test_a_listing_counts_only_what_the_client_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client may read a few keys of a namespace of many (a key glob): its listing
    of the namespace's keys, the namespaces and the expiring keys is small, and must
    be answered, not refused because the keys it may not read are over the bound."""
    import koru

    async with _bounded_server(monkeypatch) as (db, _, _, port):
        await _listings(db)
        who = koru.Identity.mine(4)
        await db.register(who.public)
        await db.grant(who.public, actions=["read"], namespace="n", key="k*000*")
        async with koru.connect(f"127.0.0.1:{port}", who) as few:
            assert len(await few.keys("n")) == 10
            assert await few.namespaces() == ["n"]
            assert len(await few.expiring(7200)) == 10


async def test_a_clients_selected_or_grouped_query_past_the_bound_is_refused_before_it_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client asks for a namespace of many documents with ``select`` of its large
    field, or ``group_by`` (or ``distinct``) on a field each document holds a different
    value of, or a view defined so (requests of some 50 bytes): only queries without
    select or aggregation were estimated, so these rows or groups were built (each
    document decoded afresh), packed, then refused as over MAX_ANSWER. What must hold:
    refused before it is packed, with the typed InvalidArgumentError; what fits is
    answered; local queries are unbounded."""
    from koru import Query

    async with _bounded_server(monkeypatch) as (db, remote, built, _):
        await db.put_batch(
            [("n", f"k{i:04}", {"i": i, "pad": f"{i:04}" + "x" * 200}) for i in range(N)]
        )
        await db.create_view("picked", "n", Query().select("pad"))
        await db.create_view("grouped", "n", Query().group_by("pad"))
        for ask in (
            lambda: remote.query("n", Query().select("pad")),
            lambda: remote.query("n", Query().select("pad", "i", "pad.x")),
            lambda: remote.query("n", Query().group_by("pad")),
            lambda: remote.query("n", Query().group_by("pad").sum("i")),
            lambda: remote.query("n", Query().distinct("pad")),
            lambda: remote.query("n", Query().select("pad"), at=db._writer.read_time()),
            lambda: remote.view("picked"),
            lambda: remote.view("grouped"),
        ):
            await _refused(ask, built, "less")
        # What fits is answered.
        assert len(await remote.query("n", Query().select("i").limit(50))) == 50
        assert len(await remote.query("n", Query().select("pad").limit(5))) == 5
        assert len(await remote.query("n", Query().group_by("pad").limit(5))) == 5
        assert len(await remote.query("n", Query().distinct("i"))) == N
        assert await remote.query("n", Query().sum("i")) == sum(range(N))
        # Local queries are unbounded.
        assert len(await db.query("n", Query().select("pad"))) == N
        assert len(await db.query("n", Query().group_by("pad"))) == N
        assert len(await db.view("picked")) == N
        assert isinstance(await db.query("n", Query().distinct("pad")), list)
