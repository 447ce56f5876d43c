"""Attacks nobody had tried (h-untried): an export killed outright mid-stream,
tampered ttl columns of a checkpoint, read-only opens racing checkpoint replacement,
and maximum-size deletes through the wire while a subscriber is attached."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import koru

NS = "ns"
KDELTA = str(Path(sys.executable).parent / "kdelta")


@pytest.mark.parametrize("fmt", ["jsonl", "cbor"])
def test_an_export_to_stdout_killed_outright_is_refused_as_cut_short(
    tmp_path: Path, fmt: str
) -> None:
    """Attack: ``kdelta export`` to standard output is killed with SIGKILL mid-stream
    (it can write no cut-short mark). Python's buffered stdout writes whole items, so
    the reader holds a stream that ends at an item boundary: a valid-looking export of
    part of the database. Must hold: the importer refuses it as cut short (exit 3,
    nothing written), for the real killed stream and for every item boundary."""
    db = tmp_path / "db"

    async def made() -> None:
        async with koru.open(db) as opened:
            for i in range(300):
                await opened.put(NS, f"k{i}", {"i": i, "pad": "x" * 1000})

    trio.run(made)
    # The whole export: every prefix that ends at an item boundary must be refused.
    whole = subprocess.run(
        [KDELTA, "--db", str(db), "export", "--format", fmt],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    # A real SIGKILL: the exporter blocks on a full pipe (the export is larger than
    # the pipe and stdout's buffer), is killed, and the reader drains what was written.
    proc = subprocess.Popen(
        [KDELTA, "--db", str(db), "export", "--format", fmt], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    first = proc.stdout.read(4096)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    partial = first + proc.stdout.read()
    proc.stdout.close()
    proc.wait(timeout=30)
    assert 0 < len(partial) < len(whole)
    cuts = [partial]
    if fmt == "jsonl":
        ends = [i + 1 for i, b in enumerate(whole) if b == 0x0A][1:-1]
    else:
        import io

        import cbor2

        stream = io.BytesIO(whole)
        ends = []
        while stream.tell() < len(whole):
            cbor2.load(stream)
            ends.append(stream.tell())
        ends = ends[1:-1]
    cuts += [whole[:e] for e in (ends[0], ends[len(ends) // 2], ends[-1])]
    for n, cut in enumerate(cuts):
        copy = tmp_path / f"copy{n}"
        imported = subprocess.run(
            [KDELTA, "--db", str(copy), "import", "-"],
            input=cut,
            capture_output=True,
            timeout=60,
        )
        assert imported.returncode == 3, (n, len(cut), imported)
        assert b"cut short" in imported.stderr and b"Traceback" not in imported.stderr
        assert not (copy / "meta").exists()
    # The whole stream still imports.
    copy = tmp_path / "whole"
    done = subprocess.run(
        [KDELTA, "--db", str(copy), "import", "-"], input=whole, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done


async def test_unproven_events_waiting_for_a_seal_are_held_as_bytes_not_decoded() -> None:
    """Attack: a peer offers events of an origin that has not sealed them, each a batch
    of tiny deletes (tombstones) at the size limit, from several connections at once.
    They wait in the proven ingest's room, bounded in bytes (``MAX_WAITING_BYTES``,
    256 MiB; 64 MiB a sender). Decoded, such an event takes about 15 times its bytes
    (about 40 while decoding): held decoded, the room's 256 MiB were some 4 GB. Must
    hold: what waits costs about its bytes (held as bytes, decoded again when
    released, as the plain ingest's held events are)."""
    import gc
    import tracemalloc

    from koru.events import BatchEvent, Write, encode_event

    origin = bytes(range(16))
    writes = tuple(Write("n", f"k{i}", None, None) for i in range(20_000))
    async with koru.open(":memory:") as db:
        now = db._writer.now()
        data = encode_event(BatchEvent(origin, "storage", 2, bytes(32), now, writes))
        del writes
        gc.collect()
        room = db._proven
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            room.offer(data, now, b"peer")
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert room.waiting == 1
        assert held < 2 * len(data) + 64 * 1024, (held, len(data))


def _tampered_open(base: Path, at: Path, change: Any) -> tuple[list[Any], dict[str, str]]:
    """Copy the database at ``base`` to ``at``, change its checkpoint's ``expiring_at``
    columns with ``change`` (the checksum made right again), open it: what it lists as
    expiring, and the projections it rebuilt."""
    import shutil

    import blake3
    import cbor2

    from koru._loader import CHECKPOINT_FILE

    shutil.copytree(base, at)
    raw = (at / CHECKPOINT_FILE).read_bytes()
    body = cbor2.loads(raw[40:])
    change(body["sections"]["kv"][1]["expiring_at"])
    data = cbor2.dumps(body)
    (at / CHECKPOINT_FILE).write_bytes(raw[:8] + blake3.blake3(data).digest() + data)

    async def opened() -> tuple[list[Any], dict[str, str]]:
        async with koru.open(at) as db:
            stats = await db.stats()
            return sorted(await db.expiring(within=10**6)), dict(stats.projections_rebuilt)

    return trio.run(opened)


def _duplicate(columns: dict[str, list[Any]]) -> None:
    columns["keys"].append(columns["keys"][0])
    columns["times"].append(columns["times"][0] + 10**12)


async def ttl_keys_checkpointed(base: Path) -> list[Any]:
    """A database at ``base`` of six keys with a ttl and one without, checkpointed:
    its keys with a ttl, as ``expiring`` lists them (what a tampered copy must serve
    or rebuild; also ``test_review_attack``'s)."""
    async with koru.open(base) as db:
        for i in range(6):
            await db.put(NS, f"k{i}", i, ttl=3600 + i)
        await db.put(NS, "plain", 1)
        await db.checkpoint()
        return sorted(await db.expiring(within=10**6))


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda c: c["times"].pop(), id="lengths-differ"),
        pytest.param(lambda c: (c["keys"].reverse(), c["times"].reverse()), id="unsorted"),
        pytest.param(lambda c: c["times"].__setitem__(0, -5), id="negative-time"),
        pytest.param(lambda c: c["times"].__setitem__(0, 1 << 70), id="huge-time"),
        pytest.param(lambda c: c["times"].__setitem__(0, 1 << 64), id="time-past-64-bits"),
        pytest.param(_duplicate, id="duplicate-key"),
    ],
)
def test_a_checkpoint_with_tampered_ttl_columns_is_refused_or_served_right(
    tmp_path: Path, tamper: Any
) -> None:
    """Attack: a checkpoint's ``expiring_at`` columns changed (its checksum made right
    again): lengths that differ, rows reordered, a negative time, a time past the 8
    bytes a record holds, a key listed twice with another time. Must hold: the open
    rebuilds the key/value state from the log (the section is refused) or serves the
    same expiry times as before; never a key expired at -5 ns (read as gone) or one
    whose time moved. (A record's expiry is 8 unsigned bytes, and a key is listed once:
    any other value can only be damage or a crafted file.)"""
    base = tmp_path / "db"
    truth = trio.run(ttl_keys_checkpointed, base)
    got, rebuilt = _tampered_open(base, tmp_path / "copy", tamper)
    assert got == truth, (got, rebuilt)


async def test_a_remote_subscribers_queue_is_bounded_in_bytes_through_the_wire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: a client subscribed over the wire stops reading while large changes are
    written (here values of 256 KiB; up to 16 MiB each, or a batch of tombstones at
    the event size limit). A local subscriber's queue holds at most
    ``MAX_QUEUED_BYTES``; the remote one's held its ``buffer`` of changes (10,000 by
    default) whatever their size, read off the socket as fast as the server sent
    them, so the byte bound never reached the client (10,000 values of 16 MiB: 160
    GB). Must hold: what the client holds unread stays within ``MAX_QUEUED_BYTES``
    (plus one change), and the subscriber is then cut off (LaggedError), as a local
    one is."""
    import koru._subscriptions as subscriptions

    bound = 1 << 20
    monkeypatch.setattr(subscriptions, "MAX_QUEUED_BYTES", bound)
    async with koru.open(":memory:", difficulty=4) as db, trio.open_nursery() as nursery:
        port = await nursery.start(db.serve, "127.0.0.1", 0)
        who = koru.Identity.mine(4)
        await db.register(who.public)
        await db.grant(who.public, actions="read")
        async with (
            koru.connect(f"127.0.0.1:{port}", who) as remote,
            remote.subscribe(NS) as sub,
        ):
            value = "x" * (256 << 10)
            for i in range(16):  # 4 MiB in all; the server's own queue lets it through
                await db.put(NS, f"k{i}", value)
                await trio.sleep(0.05)  # the server sends it, the client reads it
            await trio.sleep(0.5)
            held = [0]
            receive = sub._receive
            if receive is not None:
                held[0] = sum(len(p or b"") for _, p in receive._state.data)
            assert held[0] <= bound + (300 << 10), held[0]
            with trio.fail_after(10), pytest.raises(koru.LaggedError):
                async for _ in sub:
                    pass
        nursery.cancel_scope.cancel()


def _delete_batch(origin: bytes, seq: int, writes: int, hlc: int) -> bytes:
    """A batch of ``writes`` tombstones of ``origin``'s feed (about 10 bytes each)."""
    from koru.events import BatchEvent, Write, encode_event

    items = tuple(Write(NS, f"d{i}", None, None) for i in range(writes))
    return encode_event(BatchEvent(origin, "storage", seq, None, hlc, items))


async def test_tombstone_batches_sent_over_the_wire_keep_the_servers_memory_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack: through the real wire, a client with write access sends batches of tiny
    deletes (decoded, some 13-15 times their bytes) of origins that never sealed them,
    while another client is subscribed and stops reading; the owner takes in such
    batches too (they reach the subscriber). Must hold: what waits for a seal costs
    about its bytes on the server (not its decoded size), and the server's queue for
    the subscriber stays within ``MAX_QUEUED_BYTES`` (plus one event), the subscriber
    then cut off."""
    import gc
    import tracemalloc

    import koru._subscriptions as subscriptions

    bound = 1 << 20
    monkeypatch.setattr(subscriptions, "MAX_QUEUED_BYTES", bound)
    async with koru.open(":memory:", difficulty=4) as db, trio.open_nursery() as nursery:
        port = await nursery.start(db.serve, "127.0.0.1", 0)
        reader, writer = koru.Identity.mine(4), koru.Identity.mine(4)
        for who, actions in ((reader, "read"), (writer, "write")):
            await db.register(who.public)
            await db.grant(who.public, actions=actions)
        now = db._writer.now()
        unsealed = [_delete_batch(bytes([7, i]) * 8, 1, 30_000, now) for i in range(3)]
        async with (
            koru.connect(f"127.0.0.1:{port}", reader) as watching,
            watching.subscribe(NS) as sub,
            koru.connect(f"127.0.0.1:{port}", writer) as remote,
        ):
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                await remote.ingest(unsealed)
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert db._proven.waiting == 3
            assert held < 2 * sum(map(len, unsealed)) + (1 << 20), held
            # The owner's own take in: accepted, and queued for the subscriber.
            for i in range(4):
                done = await db.ingest([_delete_batch(bytes([9, i]) * 8, 1, 30_000, now)])
                assert done.accepted == 1
                for server_side in db._hub.subscriptions:
                    assert server_side._queued <= bound + 30_000 * 300
            with trio.fail_after(20), pytest.raises(koru.LaggedError):
                async for _ in sub:
                    pass
        nursery.cancel_scope.cancel()
