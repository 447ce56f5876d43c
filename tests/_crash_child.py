"""Child process for the crash and lock tests (run as a script, never imported by pytest).

Usage: ``python _crash_child.py '<json config>'``, or with no argument: the config is
then read as one line from stdin (so the parent can start the interpreter ahead of
time and hand over the config when it wants the run to begin). Its ``mode`` is:

* ``"write"``: open the database and write forever (puts, batches, deletes), printing
  one JSON line per operation to stdout, flushed, so the parent can kill the process
  at any moment and know what was acknowledged::

      {"op": "ready", "digest": ..., "pid": ...}                  after the open
      {"op": "begin", "id": n, "writes": [[ns, key, value], ...]}  before write n
      {"op": "ack", "id": n, "writes": [[ns, key, value, write_id], ...]}  once durable

  ``value`` is None for a deletion. Nothing is acknowledged before its ``ack`` line.
* ``"hold"``: open the database for writing, put one value, print ``ready`` and sleep
  (the lock tests kill it).
* ``"try"``: try to open the database for writing; print ``{"op": "locked"}`` if another
  writer holds it, else put one value and print ``{"op": "opened", ...}``.
"""

from __future__ import annotations

import json
import os
import random
import sys
from typing import Any

import trio

import koru

NAMESPACES = ("users", "orders", "config")
KEYS = tuple(f"k{i}" for i in range(8))
#: Value padding sizes: mostly small records, a few larger than a 4 KiB read.
PADS = (0, 0, 0, 8, 64, 300, 5000)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def write_forever(cfg: dict[str, Any]) -> None:
    rng = random.Random(cfg["seed"])
    rnd = cfg["round"]
    async with koru.open(
        cfg["path"],
        sync=cfg["sync"],
        segment_size=cfg["segment_size"],
        checkpoint_every=cfg["checkpoint_every"],
    ) as db:
        live = {ns: set(await db.keys(ns)) for ns in NAMESPACES}
        emit({"op": "ready", "digest": (await db.digest()), "pid": os.getpid()})
        n = 0
        while True:
            n += 1

            def value(ns: str, key: str, n: int = n) -> dict[str, Any]:
                return {"t": f"{rnd}.{n}", "ns": ns, "key": key, "pad": "x" * rng.choice(PADS)}

            roll = rng.random()
            deletable = [(ns, k) for ns in NAMESPACES for k in sorted(live[ns])]
            if roll < 0.2 and deletable:
                ns, key = rng.choice(deletable)
                emit({"op": "begin", "id": n, "writes": [[ns, key, None]]})
                v = await db.delete(ns, key)
                live[ns].discard(key)
                emit({"op": "ack", "id": n, "writes": [[ns, key, None, v.write_id]]})
            elif roll < 0.45:
                pairs = rng.sample([(ns, k) for ns in NAMESPACES for k in KEYS], rng.randint(2, 4))
                items = [(ns, k, value(ns, k)) for ns, k in pairs]
                emit({"op": "begin", "id": n, "writes": [list(item) for item in items]})
                versions = await db.put_batch(items)
                for ns, k, _ in items:
                    live[ns].add(k)
                acked = [[*item, v.write_id] for item, v in zip(items, versions, strict=True)]
                emit({"op": "ack", "id": n, "writes": acked})
            else:
                ns, key = rng.choice(NAMESPACES), rng.choice(KEYS)
                val = value(ns, key)
                emit({"op": "begin", "id": n, "writes": [[ns, key, val]]})
                v = await db.put(ns, key, val)
                live[ns].add(key)
                emit({"op": "ack", "id": n, "writes": [[ns, key, val, v.write_id]]})


async def hold(cfg: dict[str, Any]) -> None:
    async with koru.open(cfg["path"], sync="always") as db:
        version = await db.put("held", "key", {"pid": os.getpid()})
        emit({"op": "ready", "pid": os.getpid(), "write_id": version.write_id})
        await trio.sleep_forever()


async def attempt(cfg: dict[str, Any]) -> None:
    try:
        async with koru.open(cfg["path"], sync="always") as db:
            version = await db.put("held", "second", {"pid": os.getpid()})
            emit({"op": "opened", "write_id": version.write_id})
    except koru.DatabaseLockedError:
        emit({"op": "locked"})


def main() -> None:
    cfg = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.readline())
    if cfg["mode"] == "write":
        trio.run(write_forever, cfg)
    elif cfg["mode"] == "hold":
        trio.run(hold, cfg)
    elif cfg["mode"] == "try":
        trio.run(attempt, cfg)
    else:
        raise SystemExit(f"unknown mode {cfg['mode']!r}")


if __name__ == "__main__":
    main()
