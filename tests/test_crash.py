"""Crash test: SIGKILL a writing process at random moments, again and again.

A child process (``_crash_child.py``) writes puts, batches and deletes to one database
directory and prints a line per acknowledged write. The parent kills it with SIGKILL
after a random delay, sometimes damages the log tail the way a crash or power loss
would (a torn record, a zero-filled tail, a new segment whose header never landed),
then reopens the directory in-process and checks:

* every acknowledged write is there: each key's history is exactly its acknowledged
  write ids, in order, plus possibly the one write that was in flight (a batch lands
  all or nothing), and every current value is the last one written;
* the hash chains verify: a full replay through a read-only FileStore raises nothing
  and gives the same digest and chain root as the checkpoint-based open;
* a writable open cuts every torn tail back to the last whole record.

The same directory is reused for every round, alternating ``sync="always"`` and
``sync="os"`` (both survive a killed process). Set ``KORU_CRASH_SEED`` to replay a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import koru
from conftest import digest_of, full_replay
from koru.events import FileStore, agent_index
from koru.events._frame import SEGMENT_HEADER_SIZE, encode_record, encode_segment_header

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("_crash_child.py")
KILLS = 56
#: Of the kills, this share lands at a random moment from the child's start (possibly
#: during its recovery), the rest 10-200 ms into its write loop.
EARLY_KILLS = 0.15
SEGMENT_SIZE = 32 * 1024
CHECKPOINT_EVERY = 25
AGENT = "storage"

Key = tuple[str, str]


@attrs.define
class Model:
    """What the parent knows was acknowledged, per key: (write id, value or None)."""

    versions: dict[Key, list[tuple[str, Any]]] = attrs.Factory(dict)
    #: Events (log records) known to be in the log.
    events: int = 0
    #: Digest of the database when the parent last closed it.
    digest: str | None = None

    def live(self, ns: str) -> list[str]:
        return sorted(
            k for (n, k), vs in self.versions.items() if n == ns and vs[-1][1] is not None
        )

    def namespaces(self) -> set[str]:
        return {ns for ns, _ in self.versions}


@attrs.define
class Round:
    """What one child run printed."""

    ready: dict[str, Any] | None
    acked: list[list[list[Any]]]
    in_flight: list[list[Any]] | None
    returncode: int | None
    stderr: str


def segments(path: Path) -> list[Path]:
    return sorted((path / "logs" / AGENT).glob("*.seg"))


def parse_output(raw: bytes) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    # A line cut short by the kill is not a line: the parent never saw it.
    lines = [json.loads(line) for line in raw.split(b"\n")[:-1]]
    ready = None
    if lines and lines[0]["op"] == "ready":
        ready = lines.pop(0)
    assert all(line["op"] in ("begin", "ack") for line in lines), lines[:3]
    return ready, lines


def split_ops(lines: list[dict[str, Any]]) -> tuple[list[list[list[Any]]], list[list[Any]] | None]:
    """Acknowledged writes in order, and the write begun but never acknowledged."""
    acked: list[list[list[Any]]] = []
    begun: dict[str, Any] | None = None
    for line in lines:
        if line["op"] == "begin":
            assert begun is None, f"write {line['id']} began before {begun} was acknowledged"
            begun = line
        else:
            assert begun is not None and begun["id"] == line["id"], (begun, line)
            assert [w[:3] for w in line["writes"]] == begun["writes"]
            acked.append(line["writes"])
            begun = None
    return acked, None if begun is None else begun["writes"]


async def spawn_child(workdir: Path, index: int) -> tuple[trio.Process, Path]:
    """Start a child interpreter that waits for its config on stdin.

    Starting Python and importing koru takes ~0.3 s: the next child starts while the
    parent verifies the last round, and begins its run when handed its config.
    """
    err_path = workdir / f"stderr-{index}.txt"
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err_fd,
            cwd=workdir,
        )
    finally:
        os.close(err_fd)
    return proc, err_path


async def run_child(
    proc: trio.Process, err_path: Path, cfg: dict[str, Any], rng: random.Random
) -> Round:
    """Hand the child its config, let it write, SIGKILL it; returns what it printed."""
    assert proc.stdin is not None and proc.stdout is not None
    out = bytearray()
    ready_or_exit = trio.Event()

    async def pump() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.receive_some(1 << 16):
            out.extend(chunk)
            if not ready_or_exit.is_set() and b'"op":"ready"' in out:
                ready_or_exit.set()
        ready_or_exit.set()

    # The first child always gets to create the database.
    early = cfg["round"] > 0 and rng.random() < EARLY_KILLS
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        await proc.stdin.send_all(json.dumps(cfg).encode() + b"\n")
        if early:
            await trio.sleep(rng.uniform(0.0, 0.1))
        else:
            with trio.fail_after(30):
                await ready_or_exit.wait()
            await trio.sleep(rng.uniform(0.01, 0.2))
        returncode = proc.poll()
        if returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    await proc.stdin.aclose()
    stderr = await trio.Path(err_path).read_text()
    assert returncode is None, f"child exited by itself ({returncode}):\n{stderr}"
    assert proc.returncode == -signal.SIGKILL, stderr
    ready, lines = parse_output(bytes(out))
    acked, in_flight = split_ops(lines)
    return Round(ready, acked, in_flight, proc.returncode, stderr)


def log_end(path: Path, last: Path) -> bool:
    """Cut the last segment back to the end of its last whole record; False if the last
    segment holds no record (a segment created just before the kill, header unwritten)."""
    _, cursor = full_replay(path)
    if last.name != f"{cursor.segment:08d}.seg":
        return False
    os.truncate(last, cursor.offset)
    return True


def damage_tail(path: Path, rng: random.Random, model: Model) -> str:
    """Maybe damage the log the way a crash or power loss can; returns what was done.

    Only bytes that were never acknowledged are touched: the unacknowledged in-flight
    record, or new bytes after the log's end.
    """
    segs = segments(path)
    if not segs or segs[-1].stat().st_size < SEGMENT_HEADER_SIZE:
        return "none"
    last = segs[-1]
    kind = rng.choice(["none", "none", "tear", "fragment", "zeros", "segment"])
    if kind == "tear":
        _, cursor = full_replay(path)
        in_flight_landed = cursor.count == model.events + 1
        if not in_flight_landed or last.name != f"{cursor.segment:08d}.seg":
            return "none"
        # The in-flight record was never acknowledged: cut it short, as a crash
        # in the middle of its write would have.
        cut = rng.randint(cursor.last + 1, cursor.offset - 1)
        os.truncate(last, cut)
    elif kind == "fragment":
        # A write cut short at the log's end (the store allocates ahead, so the end of
        # the log is the end of its last record, not the end of the file).
        if not log_end(path, last):
            # Writes go to the log's end, never past space allocated to a new segment.
            return "none"
        rec = encode_record(rng.randbytes(32), rng.randbytes(rng.randint(1, 400)))
        with last.open("ab") as f:
            f.write(rec[: rng.randint(1, len(rec) - 1)])
    elif kind == "zeros":
        with last.open("ab") as f:
            f.write(bytes(rng.randint(1, 5000)))
    elif kind == "segment":
        # A new segment is only started after the full one was sealed (cut to its
        # records and synced); then the crash cut the new one's header short.
        if not log_end(path, last):
            return "none"  # a new segment exists only after its predecessor was sealed
        nxt = last.with_name(f"{int(last.stem) + 1:08d}.seg")
        header = encode_segment_header(agent_index(AGENT), model.events, rng.randbytes(32))
        nxt.write_bytes(header[: rng.randint(0, SEGMENT_HEADER_SIZE - 1)])
    return kind


def check_previous_links(kv: Any, key: Key) -> None:
    previous = None
    for rec in kv.history(*key):
        assert rec.previous == previous, f"{key}: version {rec.write_id.hex()} breaks the chain"
        previous = rec.write_id


def record_acks(model: Model, rnd: Round) -> Counter[Key]:
    """Fold the acknowledged writes into the model; returns versions added per key."""
    added: Counter[Key] = Counter()
    for writes in rnd.acked:
        for ns, key, value, wid in writes:
            model.versions.setdefault((ns, key), []).append((wid, value))
            added[(ns, key)] += 1
        model.events += 1
    return added


async def verify(
    path: Path, model: Model, rnd: Round, added: Counter[Key], damage: str, tally: Counter[str]
) -> None:
    """Check the database against the model after a kill; fold in the in-flight write
    if it landed."""
    # 1. A full replay from genesis verifies every checksum and chain link.
    kv, cursor = full_replay(path)
    in_flight = rnd.in_flight or []
    landed = cursor.count == model.events + 1
    assert cursor.count == model.events or (landed and in_flight), (
        f"log holds {cursor.count} events; {model.events} acknowledged, "
        f"in flight: {bool(in_flight)}"
    )
    if damage == "tear":
        assert not landed
    flight_keys = {(ns, key): value for ns, key, value in in_flight}
    for key in model.versions.keys() | flight_keys.keys():
        ids = [r.write_id.hex() for r in kv.history(*key)]
        expected = [wid for wid, _ in model.versions.get(key, [])]
        if key in flight_keys and landed:
            # A batch lands all or nothing: every key of the in-flight write has it.
            assert ids[:-1] == expected, f"{key}: acknowledged history lost or reordered"
            model.versions.setdefault(key, []).append((ids[-1], flight_keys[key]))
            added[key] += 1
        else:
            assert ids == expected, f"{key}: history {ids} != acknowledged {expected}"
        check_previous_links(kv, key)
    if landed:
        model.events += 1
        tally["in-flight landed"] += 1
    elif in_flight:
        tally["in-flight lost"] += 1

    # 2. The checkpoint-based writable open agrees with the full replay, and recovery
    # leaves no torn tail behind.
    async with koru.open(path, sync="always", segment_size=SEGMENT_SIZE) as db:
        assert (await db.digest()) == digest_of(kv)
        assert (await db.roots())[AGENT] == cursor.root.hex()
        stats = await db.stats()
        assert stats.events == model.events
        assert stats.versions == sum(len(v) for v in model.versions.values())
        if stats.checkpoint_events and stats.replayed_events:
            tally["checkpoint + tail"] += 1
        elif stats.checkpoint_events:
            tally["checkpoint only"] += 1
        else:
            tally["full replay"] += 1

        segs = segments(path)
        assert all(s.stat().st_size >= SEGMENT_HEADER_SIZE for s in segs), "torn segment kept"
        if segs:
            # Resume a read-only replay at the end found before the open: it reads (and
            # verifies) whatever now follows; there must be nothing.
            store = FileStore(path, readonly=True)
            try:
                assert list(store.replay(AGENT, cursor)) == []
                after = store.cursor(AGENT)
            finally:
                store.close()
            assert (after.count, after.root) == (cursor.count, cursor.root)
            assert segs[-1].name == f"{after.segment:08d}.seg"
            assert segs[-1].stat().st_size == after.offset, f"torn tail not cut ({damage})"

        for ns in model.namespaces():
            assert await db.keys(ns) == model.live(ns)
        for key, versions in model.versions.items():
            if added[key]:
                recent = await db.history(*key, latest=added[key])
                got = [(v.write_id, None if v.deleted else v.value) for v in recent]
                assert got == versions[-added[key] :], f"{key}: values differ"
            wid, value = versions[-1]
            if value is None:
                with pytest.raises(koru.KeyNotFoundError):
                    await db.get(*key)
            else:
                current = await db.get_versioned(*key)
                assert (current.write_id, current.value) == (wid, value)
        model.digest = await db.digest()


async def test_crash_recovery_under_repeated_sigkill(tmp_path: Path) -> None:
    seed = int(os.environ.get("KORU_CRASH_SEED", random.randrange(2**32)))
    print(f"crash test seed: {seed} (rerun with KORU_CRASH_SEED={seed})")
    rng = random.Random(seed)
    path = tmp_path / "db"
    model = Model()
    tally: Counter[str] = Counter()
    spare = await spawn_child(tmp_path, 0)
    try:
        for i in range(KILLS):
            proc, err_path = spare
            cfg = {
                "mode": "write",
                "path": str(path),
                "sync": ("always", "os")[i % 2],
                "seed": rng.randrange(2**32),
                "round": i,
                "segment_size": SEGMENT_SIZE,
                "checkpoint_every": CHECKPOINT_EVERY,
            }
            rnd = await run_child(proc, err_path, cfg, rng)
            tally["kills"] += 1
            spare = await spawn_child(tmp_path, i + 1)
            if rnd.ready is not None and model.digest is not None:
                # The child saw exactly the state the parent left.
                assert rnd.ready["digest"] == model.digest
            tally["acknowledged writes"] += len(rnd.acked)
            added = record_acks(model, rnd)
            damage = damage_tail(path, rng, model)
            tally[f"damage: {damage}"] += 1
            await verify(path, model, rnd, added, damage, tally)
    except BaseException as exc:
        exc.add_note(f"crash test seed: {seed} (rerun with KORU_CRASH_SEED={seed})")
        raise
    finally:
        spare[0].kill()
        await spare[0].wait()
        if spare[0].stdin is not None:
            await spare[0].stdin.aclose()
    print(dict(tally))
    assert tally["kills"] >= 50
    # The run exercised what it claims to: many writes, stale checkpoints plus a log
    # tail, and several rounds with damaged tails.
    assert tally["acknowledged writes"] >= 10 * KILLS
    assert tally["checkpoint + tail"] >= KILLS // 4
    assert sum(n for k, n in tally.items() if k.startswith("damage: ") and k != "damage: none") >= 5
    assert len(segments(path)) >= 2
