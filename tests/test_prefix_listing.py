"""A served ``keys()`` for a client granted keys by a glob with a literal start
(``user-42/*``) reads only the range of keys starting with it, in every layer (memory,
frozen, tables), and answers exactly what a walk of the whole namespace answers
(h-wild)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import koru
from koru._reads import ANSWER_BYTES
from koru.events import DeleteEvent, ExpiringPutEvent, PutEvent, Table, encode_value
from koru.events import _table as table_module
from koru.events._table import encode_table, table_name
from koru.projections import KvState
from koru.projections._merging import merge_tables

ORIGIN = b"\x01" * 16
#: Key characters: ASCII, a 2-byte and a 4-byte UTF-8 character, and the last code
#: point (a prefix ending in it has no successor of the same length).
ALPHABET = "ab/é\U0001f600\U0010ffff"


def _table(entries: Any) -> Table:
    pieces = encode_table(entries)
    return Table(b"".join(pieces), table_name(pieces))


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.text(ALPHABET, min_size=1, max_size=4), st.just(0)),
        st.tuples(st.just("ttl"), st.text(ALPHABET, min_size=1, max_size=4), st.integers(0, 60)),
        st.tuples(st.just("delete"), st.text(ALPHABET, min_size=1, max_size=4), st.just(0)),
        st.tuples(st.just("freeze"), st.just(""), st.just(0)),
        st.tuples(st.just("checkpoint"), st.just(""), st.just(0)),
        st.tuples(st.just("merge"), st.just(""), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=_ops,
    prefixes=st.lists(st.text(ALPHABET, max_size=3), min_size=1, max_size=4),
    now=st.integers(0, 200),
)
def test_a_prefixs_range_in_every_layer_is_what_the_walk_filtered_gives(
    ops: list[tuple[str, str, int]], prefixes: list[str], now: int
) -> None:
    """Keys written in memory, in frozen layers (a checkpoint in progress), in tables
    (merged or not), some deleted, some with a time to live: the live keys and the
    records of a prefix, read by its range, are those of the whole namespace's walk
    that start with it, in the same order."""
    kv = KvState()
    for n, (op, key, arg) in enumerate(ops, 1):
        eid = (n << 8).to_bytes(32, "big")
        if op == "put":
            kv.apply(
                PutEvent(ORIGIN, "storage", n, None, n, "ns", key, encode_value(n), None), eid, n
            )
        elif op == "ttl":
            event = ExpiringPutEvent(
                ORIGIN, "storage", n, None, n, "ns", key, encode_value(n), None, n + arg
            )
            kv.apply(event, eid, n)
        elif op == "delete":
            kv.apply(DeleteEvent(ORIGIN, "storage", n, None, n, "ns", key, None), eid, n)
        elif op == "freeze":
            kv.capture()  # the checkpoint is not written: its layers stay frozen
        elif op == "checkpoint":
            new = kv.capture()["new"]
            if new is not None:
                kv.checkpointed({new: _table(new.items())})
        elif len(kv.tables) >= 2:
            inputs = kv.tables[:2]
            kv.compacted(inputs, _table(merge_tables(inputs)))
        if n % 7 == 0:  # listings between writes: orders kept, then keys added to them
            for p in prefixes:
                list(kv.live_keys("ns", None, p))
        if key:  # other namespaces beside it, before and after it in the tables' order
            for i, ns in enumerate(["nr", "nt"], 1):
                beside = PutEvent(ORIGIN, "storage", n, None, n, ns, key, encode_value(n), None)
                kv.apply(beside, (n << 8 | i).to_bytes(32, "big"), n)
    walked = list(kv.items("ns"))
    live = list(kv.live_keys("ns", now))
    for p in prefixes:
        assert list(kv.items("ns", p)) == [(k, b) for k, b in walked if k.startswith(p)]
        assert list(kv.live_keys("ns", now, p)) == [k for k in live if k.startswith(p)]


N = 60_000


async def _granted(db: Any, *patterns: str) -> Any:
    who = koru.Identity.mine(4)
    await db.register(who.public)
    for pattern in patterns:
        await db.grant(who.public, actions="read", namespace="big", key=pattern)
    return db.as_identity(who)


@pytest.mark.parametrize("layer", ["memory", "table"])
async def test_keys_for_a_client_granted_a_prefix_reads_only_its_range(
    layer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a client granted ``user-42/*`` of a namespace of many keys asks ``keys``
    of it at every request; the server walked every key of the namespace with a
    capability check each (830 ms for 300,000 keys), for an answer of 100. Must hold:
    only the range of keys starting with the grant's literal part is read (the blocks
    of a table read, the keys of the memory layer taken, are about the answer's, not
    the namespace's), and the answer is the walk's: live keys, sorted."""
    async with koru.open(":memory:", difficulty=4, checkpoint_every=10**9) as db:
        for start in range(0, N, 10_000):
            await db.put_batch(
                [("big", f"user-{i % 600}/{i:06d}", i) for i in range(start, start + 10_000)]
            )
        if layer == "table":
            await db.checkpoint()
        await db.delete("big", "user-42/000042")
        handle = await _granted(db, "user-42/*", "user-7/000007")
        want = sorted(
            [f"user-42/{i:06d}" for i in range(42, N, 600) if i != 42] + ["user-7/000007"]
        )

        blocks = 0
        block = table_module.Table._block

        def counted(self: Any, b: int) -> Any:
            nonlocal blocks
            blocks += 1
            return block(self, b)

        monkeypatch.setattr(table_module.Table, "_block", counted)
        keys = db._kv.namespaces.get("big")
        bounded = ANSWER_BYTES.set(64 << 20)  # as a served call is
        try:
            got = await handle.keys("big")
            assert got == want
            if layer == "table":
                # 100 keys in blocks of 8 (and one a lookup reads): a walk reads 7,500.
                assert 0 < blocks <= 40, blocks
            else:
                assert keys is not None and len(keys) == N
                # Timed against a walk of the namespace (the same listing for a
                # client granted a glob with no literal start, which must walk):
                # the range's read is a small share of it.
                walker = await _granted(db, "*/000042", "user-42/*")
                t0 = time.perf_counter()
                walked = await walker.keys("big")
                t1 = time.perf_counter()
                await handle.keys("big")
                t2 = time.perf_counter()
                assert "user-42/000642" in walked
                assert (t2 - t1) * 20 < t1 - t0, (t2 - t1, t1 - t0)
        finally:
            ANSWER_BYTES.reset(bounded)


@settings(max_examples=25, deadline=None)
@given(
    patterns=st.lists(
        st.text("ab/*?", min_size=1, max_size=4).filter(lambda p: p[0] not in "*?"),
        min_size=1,
        max_size=3,
    ),
    deleted=st.sets(st.integers(0, 80), max_size=10),
)
async def test_keys_for_a_client_granted_globs_is_what_the_walk_filtered_gives(
    patterns: list[str], deleted: set[int]
) -> None:
    """Whatever globs with a literal start a client holds, keys in a table, in memory
    (written after the checkpoint), deleted and expired: the answer is the live keys
    of the namespace that one of its globs matches, sorted."""
    names = sorted({"".join("ab/"[i // 3**s % 3] for s in range(1 + i % 4)) for i in range(81)})
    async with koru.open(":memory:", difficulty=4, checkpoint_every=10**9) as db:
        half = len(names) // 2
        await db.put_batch([("big", k, i) for i, k in enumerate(names[:half])])
        await db.put_batch([("big", k, i) for i, k in enumerate(names[::5])], ttl=0.000001)
        await db.checkpoint()
        await db.put_batch([("big", k, i) for i, k in enumerate(names[half:])])
        for i in deleted:
            if i < len(names):
                with contextlib.suppress(koru.KeyNotFoundError):  # (expired already)
                    await db.delete("big", names[i])
        handle = await _granted(db, *patterns)
        globs = [koru.events.Glob(p) for p in patterns]
        want = [k for k in await db.keys("big") if any(g.match(k) for g in globs)]
        assert await handle.keys("big") == want
