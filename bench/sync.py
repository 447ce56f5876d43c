"""The sync bench: what two nodes spend to reconcile, by how much they differ.

Two databases hold the events of ``--origins`` writer nodes (``--events`` in all,
``put``s of small dicts, sealed), minus a difference: none, the last 1% or 50% of
every feed (the tail), or 1% spread over the origins at random (each feed a random
share of it; feeds are append-only, so whatever is missing of a feed is a tail of it).
Then they connect over an in-memory connection (the real protocol, driver and proven
ingest; no network) and sync until both hold the same events. Reported per case:
reconciliation payload (SUMMARY, RANGES, HEADS, BLOOM bytes), the events' own bytes,
all bytes on the wire, reconciliation messages sent before the first event, time, and
peak RSS growth. Then the initial sync of every event to an empty node.

Targets (the Peers issue): identical sets at most 64 bytes and one round trip; 1,000
differences in 100,000 at most 16 KB of reconciliation beyond the events and at most
2 round trips before they flow; an initial sync of 100,000 events under 20 s with at
most 1% protocol overhead. Anchor: negentropy spends 338 B on identical sets and about
800 KB (34 KB at the tail) for 1,000 differences among 100,000.

    python bench/sync.py            # 100,000 events, 20 origins
    python bench/sync.py --quick    # 5,000 events
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from typing import Any

import trio

import koru
from koru._peering import _run
from koru.nursery import memory_pair

DIFFICULTY = 4


async def _sources(origins: int, events: int, owner: Any) -> list[list[tuple[Any, list[bytes]]]]:
    """Each origin's feeds, as (feed, event bytes in order), once written and sealed."""
    out = []
    grants.clear()
    per = events // origins
    for o in range(origins):
        async with koru.open(
            ":memory:", difficulty=DIFFICULTY, sync="never", processes=False
        ) as db:
            await db.enroll(owner)
            for i in range(per):
                await db.put("bench", f"o{o}-k{i}", {"i": i, "origin": o})
            await db.seal()
            node = db.identity
            grants.append(
                (
                    node,
                    [
                        g
                        for g in db._authority.state.grants.values()
                        if g.grantee == node.public_key
                    ],
                )
            )
            feeds = []
            for (origin, agent), seq in (await db.feed_heads()).items():
                if origin == db.node_id:
                    feeds.append(((origin, agent), await db.feed_events(origin, agent, 0, seq)))
            out.append(feeds)
    return out


def _cut(
    sources: list[list[tuple[Any, list[bytes]]]], case: str, rng: random.Random
) -> list[bytes]:
    """The events the second node holds in ``case``."""
    storage = [
        (feed, events) for feeds in sources for feed, events in feeds if feed[1] == "storage"
    ]
    total = sum(len(events) for _, events in storage)
    missing: dict[Any, int] = {}
    if case == "tail 1%":
        missing = {feed: len(events) // 100 for feed, events in storage}
    elif case == "tail 50%":
        missing = {feed: len(events) // 2 for feed, events in storage}
    elif case == "scattered 1%":
        for _ in range(total // 100):
            feed, events = rng.choice(storage)
            missing[feed] = min(len(events), missing.get(feed, 0) + 1)
    held = []
    for feeds in sources:
        for feed, events in feeds:
            held += events[: len(events) - missing.get(feed, 0)]
    return held


#: Each writer's identity and the owner's grants to it: what a node that met the
#: writer holds (a peer presents them in its handshake, and the node stores them).
grants: list[Any] = []


async def _node(owner: Any, events: list[bytes]) -> Any:
    db = koru.open(":memory:", difficulty=DIFFICULTY, sync="never", processes=False)
    handle = await db.__aenter__()
    await handle.enroll(owner)
    for identity, held in grants:
        await handle.register(identity)
        for grant in held:
            await handle.grant(grant)
    await _feed(handle, events)
    return db, handle


async def _feed(db: Any, events: list[bytes]) -> None:
    for start in range(0, len(events), 2000):
        result = await db.ingest(events[start : start + 2000])
        assert not result.refused, result.refused[:1]


async def _sync(a: Any, b: Any) -> dict[str, Any]:
    ca, cb = memory_pair("b", "a")
    book_a, sessions_a = a._peering()
    book_b, sessions_b = b._peering()
    limits = a.peer_limits
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    protocols: list[Any] = []

    async def run(db: Any, book: Any, conn: Any, server: bool, sessions: set[Any]) -> None:
        await _run(db, book, conn, server=server, role="peer", limits=limits, sessions=sessions)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, a, book_a, ca, True, sessions_a)
        nursery.start_soon(run, b, book_b, cb, False, sessions_b)
        with trio.fail_after(600):
            while len(protocols) < 2:
                protocols = a._peer_protocols() + b._peer_protocols()
                await trio.sleep(0.001)
            while True:
                if (
                    all(p.open and not p.busy for p in protocols)
                    and await a.feed_heads() == await b.feed_heads()
                ):
                    break
                await trio.sleep(0.002)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    assert await a.digest() == await b.digest()
    return {
        "reconcile": sum(p.reconcile_bytes_sent for p in protocols),
        "event bytes": sum(p.event_bytes_sent for p in protocols),
        "wire": sum(p.bytes_sent for p in protocols),
        "events": sum(p.events_sent for p in protocols),
        "before events": max(p.reconcile_messages_before_events for p in protocols),
        "seconds": elapsed,
        "rss MB": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024,
    }


async def main(events: int, origins: int, seed: int) -> int:
    rng = random.Random(seed)
    owner = koru.Identity.mine(DIFFICULTY, rng=rng)
    sources = await _sources(origins, events, owner)
    everything = [e for feeds in sources for _, evs in feeds for e in evs]
    print(f"sync bench: {events:,} puts from {origins} origins ({len(everything):,} events)")
    header = (
        f"{'case':<22}{'reconcile B':>12}{'events B':>12}{'wire B':>12}{'events':>9}"
        f"{'msgs<1st':>9}{'s':>8}{'rss MB':>8}"
    )
    print(header)
    print("-" * len(header))
    cases = ["identical", "tail 1%", "scattered 1%", "tail 50%", "initial (empty node)"]
    failures = []
    for case in cases:
        # Two nodes that know each other already (their own identity feeds synced),
        # then given the writers' events: all, and all but the difference.
        a_db, a = await _node(owner, [])
        b_db, b = await _node(owner, [])
        await _sync(a, b)
        await _feed(a, everything)
        await _feed(b, [] if case.startswith("initial") else _cut(sources, case, rng))
        row = await _sync(a, b)
        print(
            f"{case:<22}{row['reconcile']:>12,}{row['event bytes']:>12,}{row['wire']:>12,}"
            f"{row['events']:>9,}{row['before events']:>9}{row['seconds']:>8.2f}"
            f"{row['rss MB']:>8.1f}"
        )
        if case == "identical" and row["reconcile"] > 2 * 64:
            failures.append(f"identical: {row['reconcile']} B of reconciliation (64 a side)")
        if case.endswith("1%") and row["reconcile"] > 16 * 1024:
            failures.append(f"{case}: {row['reconcile']} B of reconciliation (16 KB)")
        if case.startswith("initial"):
            overhead = (row["wire"] - row["event bytes"]) / max(1, row["event bytes"])
            print(f"  initial sync protocol overhead {overhead:.2%} (target <= 1%)")
            if overhead > 0.01:
                failures.append(f"initial sync overhead {overhead:.2%}")
        await b_db.__aexit__(None, None, None)
        await a_db.__aexit__(None, None, None)
    print("targets:", "all met" if not failures else "MISSED: " + "; ".join(failures))
    print("anchor: negentropy 338 B identical; ~800 KB (34 KB tail) for 1,000 in 100,000")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--origins", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="5,000 events")
    args = parser.parse_args()
    n = 5_000 if args.quick else args.events
    sys.exit(trio.run(main, n, args.origins, args.seed))
