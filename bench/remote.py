"""The remote-client bench: what a call to a database served by another node costs.

A server (``db.serve`` on 127.0.0.1) and a client (``koru.connect``) in one process,
over a real websocket. Reported: ``get`` and ``put`` one call at a time (latency) and
with 64 calls in flight (throughput), against two references measured in the same
run: the same call on the local database (what the network and the protocol add), and
a bare trio-websocket round trip of the same bytes to an echo server (what the
transport alone costs: the floor).

    python bench/remote.py            # 2 s per row
    python bench/remote.py --quick    # 0.3 s per row
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from trio_websocket import open_websocket_url, serve_websocket

import koru

DIFFICULTY = 4
VALUE = {"name": "user1", "age": 31, "active": True}


async def _rate(call: Callable[[int], Awaitable[Any]], seconds: float, parallel: int) -> float:
    """Calls per second of ``call(i)`` with ``parallel`` callers for ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(start: int) -> None:
        nonlocal done
        i = start
        while time.perf_counter() < deadline:
            await call(i)
            i += parallel
            done += 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for w in range(parallel):
            nursery.start_soon(worker, w)
    return done / (time.perf_counter() - started)


async def _echo(request: Any) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except Exception:  # the client left
        return


async def main(seconds: float) -> int:
    owner = koru.Identity.mine(DIFFICULTY)
    rows: list[tuple[str, float, float, str]] = []
    async with (
        koru.open(":memory:", difficulty=DIFFICULTY, sync="never") as db,
        trio.open_nursery() as nursery,
    ):
        await db.register(owner.public)
        await db.grant(owner.public, actions="admin")
        for i in range(1000):
            await db.put("bench", f"k{i}", VALUE)
        port = await nursery.start(db.serve)
        echo = await nursery.start(
            lambda task_status: serve_websocket(
                _echo, "127.0.0.1", 0, ssl_context=None, task_status=task_status
            )
        )
        async with (
            koru.connect(f"127.0.0.1:{port}", owner) as remote,
            open_websocket_url(f"ws://127.0.0.1:{echo.port}") as ws,
        ):
            # The bytes a get sends: the same size for the bare round trip.
            payload = b"x" * 60
            lock = trio.Lock()

            async def bare(i: int) -> None:
                async with lock:  # one message in flight per exchange, as a call
                    await ws.send_message(payload)
                    await ws.get_message()

            for label, parallel in (("1 at a time", 1), ("64 in flight", 64)):
                remote_get = await _rate(
                    lambda i: remote.get("bench", f"k{i % 1000}"), seconds, parallel
                )
                local_get = await _rate(
                    lambda i: db.get("bench", f"k{i % 1000}"), seconds, parallel
                )
                rows.append((f"get, {label}: remote vs local", remote_get, local_get, "calls/s"))
                bare_rate = await _rate(bare, seconds, 1)
                rows.append(
                    (f"get, {label}: remote vs bare ws echo", remote_get, bare_rate, "calls/s")
                )
                remote_put = await _rate(
                    lambda i: remote.put("w", f"k{i}", VALUE), seconds, parallel
                )
                local_put = await _rate(lambda i: db.put("w", f"k{i}", VALUE), seconds, parallel)
                rows.append((f"put, {label}: remote vs local", remote_put, local_put, "calls/s"))
        nursery.cancel_scope.cancel()
    print(f"{'workload':46} {'koru':>10} {'reference':>10} {'ratio':>7}  unit")
    for name, ours, ref, unit in rows:
        print(f"{name:46} {ours:10.0f} {ref:10.0f} {ours / ref:7.3f}  {unit}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="0.3 s per row")
    args = parser.parse_args()
    sys.exit(trio.run(main, 0.3 if args.quick else 2.0))
