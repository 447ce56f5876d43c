"""The auth bench: signature checks against pynacl's own ``VerifyKey.verify``, a
capability chain at the maximum depth, an authorized ``get`` against a plain one, and
the proof-of-work mining rate against a bare blake3 loop, each pair in the same run.
``run.py`` turns the figures into rows (``--only auth_verify,auth_chain,auth_get,auth_mine``).
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import blake3
import nacl.signing

import koru
from koru._identity import mine_nonce
from koru.events import IDENTITY, READ, Grant, GrantEvent, verify
from koru.projections import MAX_DEPTH, AuthState, Evaluator

perf = time.perf_counter

#: Targets from the Auth issue.
VERIFY_TARGET = 0.8  # koru's signature checks / pynacl's VerifyKey.verify, at least
GET_TARGET = 1.3  # authorized get time / plain get time, at most


def _rate(batch: Callable[[int], None], seconds: float, chunk: int = 64) -> float:
    ops, began = 0, perf()
    while True:
        batch(chunk)
        ops += chunk
        elapsed = perf() - began
        if elapsed >= seconds:
            return ops / elapsed


def interleaved(
    rounds: int, seconds: float, *batches: Callable[[int], None], chunk: int = 64
) -> list[float]:
    """Median ops/s of each batch function, measured round by round in turn."""
    rates: list[list[float]] = [[] for _ in batches]
    for _ in range(rounds):
        for i, batch in enumerate(batches):
            rates[i].append(_rate(batch, seconds, chunk))
    return [statistics.median(r) for r in rates]


def identity(seed: int, difficulty: int = 0) -> koru.Identity:
    return koru.Identity.mine(difficulty, rng=random.Random(seed))


# -- signatures ------------------------------------------------------------------------


def verify_rates(rounds: int, seconds: float) -> tuple[float, float, float]:
    """(koru.events.verify, a whole grant's check, nacl VerifyKey.verify) per second,
    all on signatures of the same signer; the grant's message is about as long."""
    signer = identity(1)
    grant = Grant.create(signer, identity(2).public_key, namespace="users", key="u*")
    message = grant.message()
    signature = grant.signature
    key = signer.public_key
    nacl_key = nacl.signing.VerifyKey(key)
    assert verify(key, message, signature) and grant.verified()

    def ours(n: int) -> None:
        for _ in range(n):
            verify(key, message, signature)

    def whole(n: int) -> None:
        for _ in range(n):
            grant.verified()

    def theirs(n: int) -> None:
        for _ in range(n):
            nacl_key.verify(message, signature)

    k, g, r = interleaved(rounds, seconds, ours, whole, theirs, chunk=16)
    return k, g, r


# -- a chain at the maximum depth ------------------------------------------------------


def chain_state(depth: int) -> tuple[AuthState, bytes, bytes, list[Grant]]:
    """An auth state holding a chain of ``depth`` grants from a root, each narrowing
    its parent a little; returns (state, root key, last grantee, the grants)."""
    root = identity(1000)
    people = [identity(1001 + i) for i in range(depth)]
    grants = [Grant.create(root, people[0].public_key, namespace="users", key="*")]
    for i in range(1, depth):
        grants.append(
            Grant.create(
                people[i - 1],
                people[i].public_key,
                namespace="users",
                key="u" * min(i, 4) + "*",
                parent=grants[-1].id,
            )
        )
    state = AuthState()
    for n, g in enumerate(grants, 1):
        header = (b"o" * 16, IDENTITY, n, None if n == 1 else b"p" * 32, 1)
        state.apply(GrantEvent(*header, g), bytes(32), 0)
    return state, root.public_key, people[-1].public_key, grants


def chain_times(rounds: int, seconds: float) -> tuple[float, float, float]:
    """Seconds per check at ``MAX_DEPTH``: (a fresh evaluation, a cached one, checking
    every signature of the chain instead, what a verifier without a projection does)."""
    state, root, last, grants = chain_state(MAX_DEPTH)
    at = 1_767_225_600 * 10**9

    def fresh(n: int) -> None:
        for _ in range(n):
            assert (
                Evaluator(state, [root])
                .effective(last, at, live=True)
                .allows(READ, "users", "uuuu1")
            )

    evaluator = Evaluator(state, [root])
    cached = evaluator.effective(last, at, live=True)

    def warm(n: int) -> None:
        for _ in range(n):
            cached.allows(READ, "users", "uuuu1")

    def signatures(n: int) -> None:
        for _ in range(n):
            for g in grants:
                g.verified()

    f, c, s = interleaved(rounds, seconds, fresh, warm, signatures, chunk=8)
    return 1 / f, 1 / c, 1 / s


# -- authorized get --------------------------------------------------------------------


async def get_rates(
    path: Path,
    keys: int,
    rounds: int,
    seconds: float,
    value: Callable[[int], object],
    rate: Callable[[Callable[[int], Awaitable[None]], float], Awaitable[float]],
) -> tuple[float, float, float]:
    """(authorized gets/s through a session, through an identity handle, plain gets/s)
    on the same database, same keys, same order, measured round by round in turn. The
    identity holds a grant on ``users``/``u*``."""
    reader = identity(7, 4)
    order = [f"u{i}" for i in range(keys)]
    random.Random(42).shuffle(order)
    async with koru.open(path, sync="never", difficulty=4, processes=False) as db:
        for i in range(keys):
            await db.put("users", f"u{i}", value(i))
        await db.register(reader)
        await db.grant(reader, namespace="users", key="u*", actions="read")
        session = await db.open_session(reader.respond(await db.challenge()))
        positions = [0, 0, 0]

        def batch(
            get: Callable[[str, str], Awaitable[object]], which: int
        ) -> Callable[[int], Awaitable[None]]:
            async def run(m: int) -> None:
                p = positions[which]
                for j in range(p, p + m):
                    await get("users", order[j % keys])
                positions[which] = p + m

            return run

        runs = (
            batch(db.as_identity(session).get, 0),
            batch(db.as_identity(reader).get, 1),
            batch(db.get, 2),
        )
        # Each way once over every key first: the first pass of a key reads it cold
        # (its value decoded, its template and recent-map entry made: about 10 µs
        # against 3), and only the first way measured would pay it (1.24-1.60x for
        # the session row in runs of the same code).
        for run in runs:
            await run(keys)
        rates: list[list[float]] = [[], [], []]
        for _ in range(rounds):
            for i, run in enumerate(runs):
                rates[i].append(await rate(run, seconds))
    s, a, p = (statistics.median(r) for r in rates)
    return s, a, p


# -- proof of work ---------------------------------------------------------------------


def mining_rates(rounds: int, seconds: float) -> tuple[float, float]:
    """(hashes/s of ``Identity.mine``'s nonce search, hashes/s of a bare loop of
    ``blake3(key || nonce).digest()``): the search is the loop plus one comparison."""
    keys = [os.urandom(32) for _ in range(64)]
    counter, hashed = [0], [0]

    def mining(n: int) -> None:
        # Difficulty 10: about a thousand hashes per search, each one counted.
        for _ in range(n):
            counter[0] += 1
            nonce = mine_nonce(keys[counter[0] % len(keys)], 10)
            hashed[0] += int.from_bytes(nonce, "big") + 1

    def bare(n: int) -> None:
        key, hasher = keys[0], blake3.blake3
        for i in range(n * 1024):
            hasher(key + i.to_bytes(8, "big")).digest()

    m_runs, b_runs = [], []
    for _ in range(rounds):
        hashed[0] = 0
        began = perf()
        while perf() - began < seconds:
            mining(1)
        m_runs.append(hashed[0] / (perf() - began))
        b_runs.append(_rate(bare, seconds, chunk=1) * 1024)
    return statistics.median(m_runs), statistics.median(b_runs)


def default_mining_seconds(samples: int) -> float:
    """Mean seconds of ``Identity.mine()`` at the default difficulty, over ``samples``
    fresh keys (the time is random: geometric in the number of hashes)."""
    began = perf()
    for _ in range(samples):
        koru.Identity.mine()
    return (perf() - began) / samples
