"""Attacks on puts with a time to live joining the group-commit round (``Writer.join``
with a ttl, ``Writer._append_joined``): every version must carry the ``expires`` a
non-joined put would get (``max(hlc, read floor) + ttl_ns``), expire as it would, and
leave a state a full replay rebuilds."""

from __future__ import annotations

import time
from pathlib import Path

import trio

import koru
from conftest import StepClock, digest_of
from koru._loader import load
from koru._processes import steps
from koru._writer import checked_ttl_ns
from koru.events import FileStore, OsDisk


def _replayed(path: Path) -> tuple[str, dict[tuple[str, str], int]]:
    store = FileStore(path, readonly=True)
    try:
        kv = load(store, use_checkpoint=False).kv
        return digest_of(kv), dict(kv.expiring.items())
    finally:
        store.close()


async def test_a_joined_renewal_and_a_cleared_ttl_in_one_round_expire_as_appended(
    tmp_path: Path,
) -> None:
    """One round: key r put with 60 s then 600 s (a renewal), key c put with 60 s then
    without ttl (must clear its expiry), key s put once with 60 s, in joined batches.
    After 90 s only s reads absent and the expiry process tombstones s alone; after
    700 s r expires too and c never does; the expiry index and the state equal a full
    replay, before and after a reopen."""
    clock = StepClock()
    path = tmp_path / "db"
    async with koru.open(path, sync="always", clock=clock) as db:
        w = db._writer
        js = [
            w.join("ns", "r", 1, 60 * 10**9),
            w.join("ns", "c", 1, 60 * 10**9),
            w.join("ns", "s", 1, 60 * 10**9),
            w.join("ns", "r", 2, 600 * 10**9),
            w.join("ns", "c", 2, None),
        ]
        await db._committer.sync_now()
        assert all(j.error is None and j.version is not None for j in js)
        r2, c2 = js[3].version, js[4].version
        assert r2 is not None and c2 is not None
        assert r2.expires == r2.timestamp + 600 * 10**9
        assert c2.expires is None
        assert set(db._kv.expiring.keys()) == {("ns", "r"), ("ns", "s")}
        clock.now += 90 * 10**9
        assert await db.get("ns", "r") == 2 and await db.get("ns", "c") == 2
        assert not await db.contains("ns", "s")
        await steps(db)["expiry"]()
        assert (await db.history("ns", "s"))[-1].deleted
        assert not (await db.history("ns", "r"))[-1].deleted
        assert not (await db.history("ns", "c"))[-1].deleted
        digest, expiring = await db.digest(), dict(db._kv.expiring.items())
    assert _replayed(path) == (digest, expiring)
    async with koru.open(path, sync="always", clock=clock) as db:
        assert await db.digest() == digest
        assert dict(db._kv.expiring.items()) == expiring
        clock.now += 700 * 10**9
        await steps(db)["expiry"]()
        assert (await db.history("ns", "r"))[-1].deleted
        assert await db.get("ns", "c") == 2
        assert not db._kv.expiring
        digest = await db.digest()
    assert _replayed(path)[0] == digest


async def test_joined_ttl_puts_after_the_read_floor_rose_expire_from_the_floor(
    tmp_path: Path,
) -> None:
    """The clock is set back behind the read floor; puts of one ttl joined then (and a
    read raising the floor again between their join and the round) expire at
    ``max(hlc, floor) + ttl``, as a non-joined put would: not already expired."""
    clock = StepClock()
    async with koru.open(tmp_path / "db", sync="always", clock=clock) as db:
        await db.put("ns", "x", 0)
        await db.get("ns", "x")
        clock.now -= 3600 * 10**9  # an hour back
        w = db._writer
        js = [w.join("ns", f"k{i}", i, 10 * 10**9) for i in range(4)]
        await db.get("ns", "x")  # a read between the join and the round
        floor = w.read_floor
        await db._committer.sync_now()
        for i, j in enumerate(js):
            v = j.version
            assert j.error is None and v is not None
            assert v.expires is not None and v.expires >= floor + 10 * 10**9
            assert v.expires == max(v.timestamp, floor) + 10 * 10**9
            assert await db.get("ns", f"k{i}") == i


async def test_joined_ttls_at_the_limits_get_the_expiry_a_lone_put_gets(
    tmp_path: Path,
) -> None:
    """ttls of 1e-12 s, 1e-9 s, 0.1 s, 1.5 s, an int and a century, joined in one
    round (several of each): each version's expires is its timestamp plus its
    ``checked_ttl_ns``; the tiny ones read as expired once the clock moves; a reopen
    equals a full replay."""
    clock = StepClock()
    path = tmp_path / "db"
    ttls: list[float | int] = [1e-12, 1e-9, 0.1, 1.5, 7, 100 * 365 * 86400]
    async with koru.open(path, sync="always", clock=clock) as db:
        w = db._writer
        versions: dict[str, koru.Version] = {}

        async def put(name: str, ttl: float | int) -> None:
            versions[name] = await db.put("ns", name, name, ttl=ttl)

        async with trio.open_nursery() as nursery:
            for n in range(3):
                for t, ttl in enumerate(ttls):
                    nursery.start_soon(put, f"t{t}n{n}", ttl)
        assert w.read_floor <= min(v.timestamp for v in versions.values())
        for name, v in versions.items():
            ttl_ns = checked_ttl_ns(ttls[int(name[1])])
            assert v.expires == v.timestamp + ttl_ns, name
        clock.now += 2 * 10**9
        for name in versions:
            assert await db.contains("ns", name) == (int(name[1]) >= 4), name
        digest = await db.digest()
    assert _replayed(path)[0] == digest


async def test_subscribers_see_joined_ttl_puts_with_their_expiry(tmp_path: Path) -> None:
    """A subscriber sees each put of a joined ttl batch, with the value and expiry the
    put returned."""
    async with koru.open(tmp_path / "db", sync="always") as db:
        seen: list[koru.Version] = []
        async with db.subscribe("ns") as changes:
            versions: list[koru.Version] = []

            async def put(i: int) -> None:
                versions.append(await db.put("ns", f"k{i}", i, ttl=30 + i % 2))

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(put, i)
            async for change in changes:
                seen.append(change)
                if len(seen) == 8:
                    break
        got = {(c.key, c.new.write_id, c.new.expires, c.value) for c in seen}
        assert got == {(v.key, v.write_id, v.expires, int(v.key[1:])) for v in versions}


async def test_a_round_of_thousands_of_alternating_ttls_is_linear(tmp_path: Path) -> None:
    """4000 queued puts of two alternating ttls and 4000 of 4000 ttls, each key put
    twice: each round is appended in well under a second (no n * n scan), every put
    with its own ttl, each key's puts in order."""
    async with koru.open(tmp_path / "db", sync="always") as db:
        w = db._writer
        for ttl_of in (lambda i: (1 + i % 2) * 10**12, lambda i: (10**9 + i) * 1000):
            js = [w.join("ns", f"k{i % 2000}", i, ttl_of(i)) for i in range(4000)]
            start = time.perf_counter()
            await db._committer.sync_now()
            assert time.perf_counter() - start < 5
            for j, i in zip(js, range(4000), strict=True):
                assert j.error is None and j.version is not None
                assert j.version.expires == j.version.timestamp + ttl_of(i)
            for k in (0, 1999):
                history = await db.history("ns", f"k{k}")
                assert [v.value for v in history[-2:]] == [k, k + 2000]


async def test_joined_ttl_puts_whose_expiry_overflows_fail_alone(tmp_path: Path) -> None:
    """The clock near the end of 64 bits: joined puts of a century's ttl (their expiry
    past 64 bits) fail with InvalidDataError as a lone put does, writing nothing,
    while puts of a short ttl and none in the same round are written; a reopen
    equals a full replay."""
    clock = StepClock(start=2**64 - 10**18)
    path = tmp_path / "db"
    century = 100 * 365 * 86400
    async with koru.open(path, sync="always", clock=clock) as db:
        outcomes: dict[int, object] = {}
        ttls = [century, 1.0, None, century, 1.0, century]

        async def put(i: int) -> None:
            try:
                outcomes[i] = await db.put("ns", f"k{i}", i, ttl=ttls[i])
            except koru.KoruError as exc:
                outcomes[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(len(ttls)):
                nursery.start_soon(put, i)
        for i, ttl in enumerate(ttls):
            if ttl == century:
                assert isinstance(outcomes[i], koru.InvalidDataError), outcomes[i]
                assert not await db.contains("ns", f"k{i}")
            else:
                assert isinstance(outcomes[i], koru.Version), outcomes[i]
                assert await db.get("ns", f"k{i}") == i
        await db.put("ns", "after", 1)
        digest = await db.digest()
    assert _replayed(path)[0] == digest
    async with koru.open(path, sync="always", clock=clock) as db:
        assert await db.digest() == digest


async def test_a_peer_takes_joined_ttl_batches_with_their_expiry(tmp_path: Path) -> None:
    """A peer syncing from a node whose puts of two ttls (and a renewal and a cleared
    ttl of one key) joined a round converges to the same state, reads the same
    expiries, and hides the expired values at the same time."""
    from test_peers import DIFFICULTY, _link, _settled

    owner = koru.Identity.mine(DIFFICULTY)
    async with (
        koru.open(tmp_path / "a", sync="always", difficulty=DIFFICULTY) as a,
        koru.open(":memory:", sync="os", difficulty=DIFFICULTY) as b,
    ):
        await a.enroll(owner)
        await b.enroll(owner)
        w = a._writer
        js = [w.join("ns", f"k{i}", i, (30 + i % 2) * 10**9) for i in range(10)]
        js += [w.join("ns", "k0", "renewed", 600 * 10**9), w.join("ns", "k1", "kept", None)]
        await a._committer.sync_now()
        assert all(j.error is None for j in js)
        async with trio.open_nursery() as nursery:
            _link(a, b, nursery)
            await _settled(a, b)
            for i in range(10):
                ha, hb = await a.history("ns", f"k{i}"), await b.history("ns", f"k{i}")
                assert [(v.write_id, v.expires) for v in ha] == [
                    (v.write_id, v.expires) for v in hb
                ]
            assert dict(a._kv.expiring.items()) == dict(b._kv.expiring.items())
            assert await b.get("ns", "k0") == "renewed" and await b.get("ns", "k1") == "kept"
            assert ("ns", "k1") not in b._kv.expiring
            nursery.cancel_scope.cancel()


async def test_checkpoints_amid_joined_ttl_rounds_equal_a_full_replay(tmp_path: Path) -> None:
    """Checkpoints every few events amid rounds of joined puts of several ttls (some
    renewing or clearing a key's ttl in the same round) and runs of the expiry
    process: a reopen from the checkpoints has the state and expiry index of a full
    replay."""
    clock = StepClock()
    path = tmp_path / "db"
    async with koru.open(path, sync="always", clock=clock, checkpoint_every=5) as db:
        w = db._writer
        ttls = [None, 5 * 10**9, 20 * 10**9, 200 * 10**9]
        for r in range(40):
            js = [
                w.join("ns", f"k{(r * 3 + i) % 11}", [r, i], ttls[(r + i * i) % 4])
                for i in range(9)
            ]
            await db._committer.sync_now()
            assert all(j.error is None for j in js)
            clock.now += 3 * 10**9
            if r % 4 == 3:
                await steps(db)["expiry"]()
        digest, expiring = await db.digest(), dict(db._kv.expiring.items())
    assert _replayed(path) == (digest, expiring)
    async with koru.open(path, sync="always", clock=clock) as db:
        assert await db.digest() == digest
        assert dict(db._kv.expiring.items()) == expiring


async def test_a_key_subscriber_sees_its_keys_joined_ttl_puts_in_order(tmp_path: Path) -> None:
    """One round puts key k with 30 s, other keys of other namespaces, k with 600 s
    and k without ttl, then the expiry process tombstones a 1 s key: a subscriber of
    k alone sees k's three puts in order, each with its own expiry and the previous
    as ``old``; a subscriber of the other namespace sees the expiry's delete."""
    clock = StepClock()
    async with koru.open(tmp_path / "db", sync="always", clock=clock) as db:
        w = db._writer
        async with (
            db.subscribe("ns", "k") as mine,
            db.subscribe("other", kinds=("delete",)) as deletes,
        ):
            js = [
                w.join("ns", "k", 1, 30 * 10**9),
                w.join("other", "a", 1, 30 * 10**9),
                w.join("other", "gone", 1, 10**9),
                w.join("ns", "k", 2, 600 * 10**9),
                w.join("other", "b", 1, 600 * 10**9),
                w.join("ns", "k", 3, None),
            ]
            await db._committer.sync_now()
            versions = [j.version for j in js]
            got = []
            async for change in mine:
                got.append(change)
                if len(got) == 3:
                    break
            assert [c.value for c in got] == [1, 2, 3]
            assert [c.new for c in got] == [versions[0], versions[3], versions[5]]
            assert [c.new.expires for c in got][2] is None
            assert got[1].old == versions[0] and got[2].old == versions[3]
            clock.now += 5 * 10**9
            await steps(db)["expiry"]()
            change = await deletes.__anext__()
            assert (change.key, change.kind, change.old) == ("gone", "delete", versions[2])


class _FailingWrite(OsDisk):
    """pwrite fails once armed."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
        if self.armed:
            self.armed = False
            raise OSError(28, "simulated ENOSPC")
        return super().pwrite(fd, data, offset)


async def test_a_failed_write_of_a_rounds_first_ttl_batch_fails_its_later_batches(
    tmp_path: Path,
) -> None:
    """The write of a round's first batch (one ttl) fails once: the round's later
    batches (another ttl, none) are not acknowledged either, and a reopen holds none
    of them and equals a full replay."""
    disk = _FailingWrite()
    path = tmp_path / "db"
    async with koru.open(path, sync="always", disk=disk) as db:
        await db.put("ns", "before", 1)
        outcomes: dict[int, object] = {}
        ttls = [60.0, 60.0, 120.0, 120.0, None, None]

        async def put(i: int) -> None:
            try:
                outcomes[i] = await db.put("ns", f"k{i}", i, ttl=ttls[i])
            except koru.KoruError as exc:
                outcomes[i] = exc

        disk.armed = True
        async with trio.open_nursery() as nursery:
            for i in range(len(ttls)):
                nursery.start_soon(put, i)
        assert all(isinstance(o, koru.KoruError) for o in outcomes.values()), outcomes
    async with koru.open(path, sync="always") as db:
        assert await db.get("ns", "before") == 1
        for i in range(len(ttls)):
            assert not await db.contains("ns", f"k{i}")
        digest = await db.digest()
    assert _replayed(path)[0] == digest


async def test_subscribers_from_a_position_replay_joined_ttl_batches(tmp_path: Path) -> None:
    """Subscribers from position 0 (of one key, of one namespace, of everything) read
    a round's ttl batches back from the log: each put once, with its version."""
    async with koru.open(tmp_path / "db", sync="always", clock=StepClock()) as db:
        w = db._writer
        js = [
            w.join("ns", "k", 1, 30 * 10**9),
            w.join("o", "a", 1, 30 * 10**9),
            w.join("o", "b", 2, 30 * 10**9),
            w.join("ns", "k", 2, 600 * 10**9),
            w.join("o", "c", 1, 600 * 10**9),
            w.join("ns", "k", 3, None),
        ]
        await db._committer.sync_now()
        versions = [j.version for j in js]
        assert all(v is not None for v in versions)
        for namespace, key in (("ns", "k"), ("o", None), (None, None)):
            want = {v for v in versions if v is not None and namespace in (None, v.namespace)}
            got = []
            async with db.subscribe(namespace, key, from_position=0) as changes:
                async for change in changes:
                    got.append(change.new)
                    if len(got) == len(want):
                        break
            assert set(got) == want and len(got) == len(want)
