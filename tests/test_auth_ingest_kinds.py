"""Proven ingest asks of each event's author the right its local call needs (see
koru/_authorship.py): a peer holding a read-only capability, or one on another key or
namespace, cannot inject embeddings, index models, index or view definitions,
workspace creations or drops, or linked puts naming parents it may not read."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import koru
from conftest import StepClock
from koru._authorship import RIGHTS, missing_right
from koru.events import (
    IDENTITY,
    ConsolidationEvent,
    EmbedEvent,
    Event,
    GenomeEvent,
    IndexEvent,
    LinkedPutEvent,
    SealEvent,
    SealPoint,
    TieringEvent,
    UnembedEvent,
    VectorIndexEvent,
    ViewEvent,
    WorkspaceEvent,
    encode_event,
    encode_value,
    event_id,
    event_types,
    node_id_of,
)
from koru.projections import Effective

D = 4
Make = Callable[[tuple[Any, ...]], Event]


def person(seed: int) -> koru.Identity:
    return koru.Identity.mine(D, rng=random.Random(seed))


def node(seed: int, clock: StepClock) -> Any:
    return koru.open(":memory:", seed=seed, difficulty=D, sync="os", clock=clock, processes=False)


def feed(
    key: koru.Identity,
    agent: str,
    makes: list[Make],
    clock: StepClock,
    times: tuple[int, ...] = (),
) -> tuple[list[bytes], bytes]:
    """One feed of ``key``'s node (an event of each maker, dated ``times`` and then by
    ``clock``) and a seal of it, made by hand: what a node that writes anything could
    send."""
    origin = node_id_of(key.public_key)
    events, prev = [], None
    for seq, make in enumerate(makes, 1):
        hlc = times[seq - 1] if seq <= len(times) else clock.now_ns()
        data = encode_event(make((origin, agent, seq, prev, hlc)))
        events.append(data)
        prev = event_id(data)
    assert prev is not None
    header = (origin, IDENTITY, 1, None, clock.now_ns())
    unsigned = SealEvent(*header, key.public_key, (SealPoint(agent, len(makes), prev),), b"")
    seal = unsigned._replace(signature=key.sign(unsigned.message()))
    return events, encode_event(seal)


async def held(db: koru.Database, key: koru.Identity, agent: str) -> int:
    """How many events of ``key``'s node's ``agent`` feed ``db`` holds."""
    heads = await db.feed_heads()
    return heads.get((node_id_of(key.public_key).hex(), agent), 0)


async def relay(db: koru.Database) -> Any:
    """A peer that may write somewhere (so it may ingest) relaying others' events."""
    identity = person(71)
    await db.register(identity)
    await db.grant(identity, namespace="x", actions="write")
    return db.as_identity(identity.public)


VECTOR = np.array([1.0, 0.5], dtype="<f4").tobytes()
TEAM, OTHER = koru.workspace_namespace("team"), koru.workspace_namespace("other")
ADULTS = encode_value((koru.Query().where(koru.F("age") >= 18)).to_data())

#: kind -> (agent, the event, grants that do not allow it, a grant that does); a grant
#: is (namespace, key, actions).
KINDS: dict[str, tuple[str, Make, list[tuple[str, str, str]], tuple[str, str, str]]] = {
    "embed": (
        "vector",
        lambda h: EmbedEvent(*h, "docs", "d1", "default", 2, VECTOR, None, None),
        [("docs", "*", "read"), ("docs", "d2", "write"), ("other", "*", "admin")],
        ("docs", "d1", "write"),
    ),
    "unembed": (
        "vector",
        lambda h: UnembedEvent(*h, "docs", "d1", None),
        [("docs", "*", "read"), ("docs", "d2", "write")],
        ("docs", "d1", "write"),
    ),
    "embed-index": (
        "vector",
        lambda h: VectorIndexEvent(
            *h, "docs", "default", 2, 1, 1, 1, 1, 2, VECTOR, np.ones(1, "<f4").tobytes()
        ),
        # Write on every key it has now is not write on the whole namespace.
        [("docs", "*", "read"), ("docs", "d*", "write"), ("do?s", "d1", "admin")],
        ("do*", "*", "write"),
    ),
    "index": (
        "perspective",
        lambda h: IndexEvent(*h, "create", "docs", "age"),
        [("docs", "*", "read,write"), ("docs", "d*", "admin"), ("other", "*", "admin")],
        ("docs", "*", "admin"),
    ),
    "view": (
        "perspective",
        lambda h: ViewEvent(*h, "create", "adults", "docs", ADULTS),
        [("docs", "*", "write"), ("docs", "d1", "admin")],
        ("*", "*", "admin"),
    ),
    "view drop": (
        "perspective",
        lambda h: ViewEvent(*h, "drop", "adults", "docs", None),
        [("docs", "*", "read")],
        ("docs", "*", "admin"),
    ),
    "workspace create": (
        "workspace",
        lambda h: WorkspaceEvent(*h, "create", "team"),
        [(TEAM, "*", "read"), (OTHER, "*", "admin"), ("docs", "*", "admin")],
        # Locally a first write into a workspace creates it: write in it is enough.
        (koru.workspace_namespace("team", "docs"), "d1", "write"),
    ),
    "workspace drop": (
        "workspace",
        lambda h: WorkspaceEvent(*h, "drop", "team"),
        [
            (TEAM, "*", "read,write"),
            (koru.workspace_namespace("team", "docs"), "*", "admin"),
            (TEAM, "d*", "admin"),
        ],
        (TEAM, "*", "admin"),
    ),
    "put-linked": (
        "storage",
        lambda h: LinkedPutEvent(*h, "docs", "d1", encode_value(1), None, None, (("docs", "s"),)),
        [("docs", "*", "write"), ("docs", "*", "read"), ("docs", "d1", "read,write")],
        ("docs", "*", "read,write"),
    ),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
async def test_an_author_without_the_right_is_refused_and_taken_once_granted(kind: str) -> None:
    agent, make, wrong, right = KINDS[kind]
    clock = StepClock()
    async with node(2, clock) as b:
        peer = await relay(b)
        for n, (namespace, key, actions) in enumerate(wrong):
            m = person(100 + n)  # a fresh author with only the wrong grant
            await b.register(m)
            await b.grant(m, namespace=namespace, key=key, actions=actions)
            events, seal = feed(m, agent, [make], clock)
            result = await peer.ingest([seal, *events])
            reasons = [r.reason for r in result.refused]
            assert len(reasons) == 1 and "may not" in reasons[0], (kind, actions, reasons)
            assert await held(b, m, agent) == 0
            # The grant arrives: the same event, offered again, is taken.
            await b.grant(m, namespace=right[0], key=right[1], actions=right[2])
            result = await peer.ingest(events)
            assert result.accepted == 1 and not result.refused, (kind, result.refused)
            assert await held(b, m, agent) == 1


async def test_a_revoked_author_s_later_events_are_refused() -> None:
    """What an author wrote while its grant held stays valid; what it dated after the
    revocation is refused (and blocks what follows in its feed)."""
    clock = StepClock()
    m = person(80)
    async with node(2, clock) as b:
        peer = await relay(b)
        await b.register(m)
        g = await b.grant(m, namespace="docs", actions="admin")
        before = clock.now_ns()
        await b.revoke(g)
        embed, unembed, index = (
            KINDS["embed"][1], KINDS["unembed"][1], KINDS["embed-index"][1]
        )  # fmt: skip
        events, seal = feed(m, "vector", [embed, unembed, index], clock, times=(before,))
        result = await peer.ingest([seal, *events])
        assert await held(b, m, "vector") == 1  # the embed, dated before the revocation
        assert any("may not write 'docs'/'d1'" in r.reason for r in result.refused)
        # A new grant after the revocation does not reach back before it.
        await b.grant(m, namespace="docs", key="d2", actions="write")
        result = await peer.ingest(events[1:])
        assert await held(b, m, "vector") == 1 and result.refused


async def test_participant_kinds_need_some_capability() -> None:
    """A node's records of itself (its hot tier, its genome, its compactions) fold per
    origin or not at all: any capability will do, none will not."""
    clock = StepClock()
    makes: dict[str, Make] = {
        "lifecycle": lambda h: TieringEvent(*h, (("docs", "d1"),), ()),
        "essence": lambda h: GenomeEvent(*h, b"genome"),
        "sleep": lambda h: ConsolidationEvent(*h, 1, 2, 3),
    }
    async with node(2, clock) as b:
        peer = await relay(b)
        for n, (agent, make) in enumerate(makes.items()):
            m = person(90 + n)
            await b.register(m)
            events, seal = feed(m, agent, [make], clock)
            result = await peer.ingest([seal, *events])
            assert any("held no capability" in r.reason for r in result.refused)
            assert await held(b, m, agent) == 0
            await b.grant(m, namespace="elsewhere", actions="read")
            assert (await peer.ingest(events)).accepted == 1
            assert await held(b, m, agent) == 1


def test_every_registered_event_type_has_a_rule() -> None:
    # (Other tests register types of their own: those are no log's.)
    ours = {k.cls for k in event_types().values() if k.cls.__module__.startswith("koru.")}
    assert len(ours) >= 20 and ours == set(RIGHTS)


def test_rules_on_scopes() -> None:
    """The rules on their own: a root may do anything, nobody nothing (seals aside)."""
    from koru.projections import AuthState, Evaluator

    root = person(1).public_key
    everything = Evaluator(AuthState(), frozenset([root])).effective(root, 5, live=False)
    nothing = Effective((), 0, 2**63)
    origin = node_id_of(root)
    for agent, make, _, _ in KINDS.values():
        event = make((origin, agent, 1, None, 5))
        assert missing_right(everything, event) is None
        assert missing_right(nothing, event) is not None
    seal = SealEvent(origin, IDENTITY, 1, None, 5, root, (), b"")
    assert missing_right(nothing, seal) is None


async def everything(db: koru.Database) -> list[bytes]:
    out: list[bytes] = []
    for origin, agent in sorted(await db.feed_heads()):
        out += await db.feed_events(origin, agent)
    return out


async def test_what_a_real_node_writes_is_taken_as_far_as_its_grant_reaches() -> None:
    """A node embeds, trains an index model, defines an index and a view, creates and
    drops a workspace. A peer that granted it admin on everything takes it all; one
    that granted it write on everything takes the data, the embeddings and the model,
    and neither the definitions nor the drop."""
    clock = StepClock()
    async with node(1, clock) as a, node(2, clock) as b, node(3, clock) as c:
        rng = np.random.default_rng(0)
        for i in range(8):
            await a.embed("docs", f"d{i}", rng.standard_normal(4).tolist())
        await a.embed_search("docs", [1.0, 0.0, 0.0, 0.0], approximate=True)
        await a.create_index("docs", "age")
        await a.create_view("adults", "docs", koru.Query().where(koru.F("age") >= 18))
        await a.workspace("team").put("docs", "t1", 1)
        await a.drop_workspace("team")
        await a.seal()
        agents = {agent for _, agent in await a.feed_heads()}
        assert {"vector", "perspective", "workspace", "storage"} <= agents
        public = await a.mine_identity(D)
        for receiver, actions in ((b, "admin"), (c, "write")):
            await receiver.register(public)
            await receiver.grant(public, actions=actions)
        result = await b.as_identity(public).ingest(await everything(a))
        assert not result.refused
        mine = await a.feed_heads()
        assert {f: n for f, n in (await b.feed_heads()).items() if f in mine} == mine
        assert [v.name for v in await b.list_views()] == ["adults"]
        assert [w.name for w in await b.workspaces(dropped=True)] == ["team"]
        result = await c.as_identity(public).ingest(await everything(a))
        assert result.refused
        heads = await c.feed_heads()
        origin = a.node_id
        assert heads[(origin, "vector")] == mine[(origin, "vector")]
        assert (origin, "perspective") not in heads
        assert mine[(origin, "vector")] == 9  # 8 embeddings and the index model
        assert await c.list_indexes("docs") == [] and await c.list_views() == []
        # The workspace's creation came with a write in it; its drop needs admin.
        assert heads[(origin, "workspace")] == 1
        assert await c.workspace("team").get("docs", "t1") == 1


async def test_a_relayed_ingest_gives_way_to_checkpoints_left_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A relayed (authorized) ingest is a bulk write like ``ingest``: behind on its
    checkpoints, the database gives way to them before taking the events in, and
    counts what it took. (It skipped that, so a relayed flood was held back only by
    the single writes' stall; h-ease review.)"""
    clock = StepClock()
    async with node(2, clock) as b:
        peer = await relay(b)
        m = person(90)
        await b.register(m)
        await b.grant(m, namespace="docs", actions="read,write")
        put = KINDS["put-linked"][1]
        events, seal = feed(m, "storage", [put], clock)
        ck = b._checkpointer
        gave_way = []

        async def give_way() -> None:
            gave_way.append(ck.lag)

        monkeypatch.setattr(type(ck), "behind_by", property(lambda self: 2))
        monkeypatch.setattr(ck, "give_way", give_way)
        result = await peer.ingest([seal, *events])
        assert gave_way and result.refused == ()
        assert await held(b, m, "storage") == 1
