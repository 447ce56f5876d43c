"""Sessions (``koru._sessions``): challenge-response on the database clock. Every way a
response can be wrong is refused with its own typed error, and in a cheap-first order;
sessions expire; session keys agree on both sides and never show."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import trio
import trio.testing

import koru
from koru import _sessions
from koru._sessions import CHALLENGE_TTL, client_keys

DIFFICULTY = 6


def person(seed: int, difficulty: int = DIFFICULTY) -> koru.Identity:
    return koru.Identity.mine(difficulty, rng=random.Random(seed))


def opened(path: object = ":memory:", **kw: object) -> object:
    options: dict[str, object] = {"clock": koru.TrioClock(), "difficulty": DIFFICULTY}
    options.update(kw)
    return koru.open(path, **options)  # type: ignore[arg-type]


async def test_a_session_opens_and_both_sides_hold_the_same_keys(
    autojump_clock: trio.testing.MockClock,
) -> None:
    alice = person(1)
    async with opened() as db:
        challenge = await db.challenge()
        assert challenge.server == db.identity.public_key and len(challenge.nonce) == 32
        assert challenge.expires == koru.TrioClock().now_ns() + int(CHALLENGE_TTL * 1e9)
        session = await db.open_session(alice.respond(challenge), ttl=60)
        assert session.identity == alice.public_key
        mine = client_keys(alice, challenge)
        assert mine.send == session.keys.receive and mine.receive == session.keys.send
        assert mine.send != mine.receive
        # Another session of the same pair has other keys.
        again = await db.open_session(alice.respond(await db.challenge()))
        assert again.keys.send != session.keys.send and again.id != session.id
        # Keys never show.
        for shown in (repr(session), repr(session.keys), str(session)):
            assert session.keys.send.hex() not in shown and "secret" in repr(session.keys)


async def test_a_replayed_response_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    alice = person(1)
    async with opened() as db:
        response = alice.respond(await db.challenge())
        await db.open_session(response)
        with pytest.raises(koru.ChallengeReplayedError):
            await db.open_session(response)


async def test_a_challenge_this_server_never_issued_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    alice = person(1)
    async with opened() as db:
        real = await db.challenge()
        forged = real._replace(nonce=bytes(32))
        with pytest.raises(koru.ChallengeReplayedError):
            await db.open_session(alice.respond(forged))


async def test_an_expired_challenge_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    alice = person(1)
    async with opened() as db:
        on_time = await db.challenge()
        late = await db.challenge()
        await trio.sleep(CHALLENGE_TTL)  # exactly at the expiry: still in time
        await db.open_session(alice.respond(on_time))
        await trio.sleep(1)
        with pytest.raises(koru.ChallengeExpiredError):
            await db.open_session(alice.respond(late))
        # And it is used up: no second try either.
        with pytest.raises(koru.ChallengeReplayedError):
            await db.open_session(alice.respond(late))


async def test_a_response_for_another_server_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    alice = person(1)
    async with opened(seed=1) as one, opened(seed=2) as other:
        response = alice.respond(await one.challenge())
        with pytest.raises(koru.WrongServerError):
            await other.open_session(response)
        # Relabelled for the other server: its challenge is unknown there, and the
        # signature covers the server's key anyway.
        relabelled = response._replace(server=other.identity.public_key)
        with pytest.raises(koru.ChallengeReplayedError):
            await other.open_session(relabelled)
        await one.open_session(response)  # still good where it belongs


async def test_forged_responses_are_refused(autojump_clock: trio.testing.MockClock) -> None:
    alice, mallory = person(1), person(2)
    async with opened() as db:
        # A flipped bit anywhere in the signature.
        for bit in (0, 100, 511):
            response = alice.respond(await db.challenge())
            sig = bytearray(response.signature)
            sig[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(koru.SignatureError):
                await db.open_session(response._replace(signature=bytes(sig)))
        # Mallory's signature under alice's identity (wrong key).
        challenge = await db.challenge()
        stolen = mallory.respond(challenge)._replace(identity=alice.public)
        with pytest.raises(koru.SignatureError):
            await db.open_session(stolen)
        # Alice's signature over another challenge.
        first, second = await db.challenge(), await db.challenge()
        swapped = alice.respond(first)._replace(challenge=second.nonce)
        with pytest.raises(koru.SignatureError):
            await db.open_session(swapped)


async def test_too_little_proof_of_work_is_refused_before_the_signature(
    autojump_clock: trio.testing.MockClock,
) -> None:
    weak = koru.Identity.mine(0, rng=random.Random(3))
    assert weak.work < DIFFICULTY
    async with opened() as db:
        with pytest.raises(koru.ProofOfWorkError):
            await db.open_session(weak.respond(await db.challenge()))
        # A garbage signature: the cheap proof-of-work check refuses it first.
        response = weak.respond(await db.challenge())
        with pytest.raises(koru.ProofOfWorkError):
            await db.open_session(response._replace(signature=bytes(64)))
        # A borrowed nonce does not help.
        strong = person(4)
        response = weak.respond(await db.challenge())
        borrowed = response._replace(identity=koru.PublicIdentity(weak.public_key, strong.nonce))
        with pytest.raises(koru.ProofOfWorkError):
            await db.open_session(borrowed)
        # A "nonce" of a megabyte is refused before it is hashed.
        response = strong.respond(await db.challenge())
        huge = response._replace(identity=koru.PublicIdentity(strong.public_key, bytes(2**20)))
        with pytest.raises(koru.ProofOfWorkError, match="8 bytes"):
            await db.open_session(huge)


async def test_an_expired_session_is_refused_everywhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    alice = person(1)
    async with opened(difficulty=DIFFICULTY) as db:
        await db.register(alice)
        await db.grant(alice, actions="read,write")
        session = await db.open_session(alice.respond(await db.challenge()), ttl=60)
        handle = db.as_identity(session)
        await handle.put("users", "a", 1)
        assert await db.check(session, "read", "users", "a")
        await trio.sleep(59)
        assert await handle.get("users", "a") == 1
        await trio.sleep(1)
        with pytest.raises(koru.SessionExpiredError):
            await handle.get("users", "a")
        with pytest.raises(koru.SessionExpiredError):
            await db.check(session, "read", "users", "a")
        with pytest.raises(koru.SessionExpiredError):
            db.as_identity(session)


async def test_a_session_from_elsewhere_or_ended_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    alice = person(1)
    async with opened(seed=1) as db, opened(seed=2) as other:
        session = await db.open_session(alice.respond(await db.challenge()))
        with pytest.raises(koru.SessionError):
            await other.check(session, "read", "n", "k")
        forged = koru.Session(session.id, session.identity, session.expires, session.keys)
        with pytest.raises(koru.SessionError):
            await db.check(forged, "read", "n", "k")
        handle = db.as_identity(session)
        await db.end_session(session)
        with pytest.raises(koru.SessionError):
            await handle.get("n", "k")


async def test_a_session_ended_after_the_table_was_purged_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The table of open sessions is purged of expired ones as it grows; a handle made
    # before must still see the session end (it once kept looking in the table the
    # purge replaced, where the session stayed open for ever).
    alice = person(1)
    async with opened() as db:
        await db.put("n", "k", 1)
        await db.register(alice)
        await db.grant(alice, namespace="n", key="k", actions="read")
        session = await db.open_session(alice.respond(await db.challenge()))
        handle = db.as_identity(session)
        assert await handle.get("n", "k") == 1
        db._sessions._purge_at = 2  # the next session opened purges
        await db.open_session(alice.respond(await db.challenge()))
        assert await handle.get("n", "k") == 1
        await db.end_session(session)
        with pytest.raises(koru.SessionError):
            await handle.get("n", "k")
        with pytest.raises(koru.SessionError):
            await handle.contains("n", "k")


@pytest.mark.parametrize("ttl", [0, -1, 31 * 86400, "60", None])
async def test_a_bad_ttl_is_refused(ttl: object, autojump_clock: trio.testing.MockClock) -> None:
    alice = person(1)
    async with opened() as db:
        with pytest.raises(koru.InvalidArgumentError, match="ttl"):
            await db.open_session(alice.respond(await db.challenge()), ttl=ttl)  # type: ignore[arg-type]


async def test_outstanding_challenges_are_bounded(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setattr(_sessions, "MAX_PENDING_CHALLENGES", 3)
    alice = person(1)
    async with opened() as db:
        oldest = await db.challenge()
        newer = [await db.challenge() for _ in range(3)]
        assert db._sessions.pending == 3
        with pytest.raises(koru.ChallengeReplayedError):
            await db.open_session(alice.respond(oldest))
        await db.open_session(alice.respond(newer[-1]))
        # Expired challenges are forgotten on the next one.
        await trio.sleep(CHALLENGE_TTL + 1)
        await db.challenge()
        assert db._sessions.pending == 1


async def test_challenges_are_unpredictable_unless_seeded() -> None:
    async with opened(seed=5) as one:
        first = (await one.challenge()).nonce
    async with opened(seed=5) as two:
        assert (await two.challenge()).nonce == first  # a replayable simulation
    async with opened() as three, opened() as four:
        assert (await three.challenge()).nonce != (await four.challenge()).nonce


async def test_a_read_only_database_serves_no_sessions(tmp_path: Path) -> None:
    async with koru.open(tmp_path / "db") as db:
        await db.put("n", "k", 1)
    async with koru.open(tmp_path / "db", readonly=True) as db:
        assert db.identity is None
        with pytest.raises(koru.AuthError, match="read-only"):
            await db.challenge()


async def test_a_client_that_names_its_server_refuses_a_relayed_challenge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A relay (evil) passes the real server's challenge to a client that meant to
    reach the relay: the client, naming the key it expects, refuses to sign it."""
    alice = person(1)
    async with opened(seed=1) as real, opened(seed=2) as evil:
        challenge = await real.challenge()
        with pytest.raises(koru.WrongServerError, match="relay"):
            alice.respond(challenge, server=evil.identity.public_key)
        session = await real.open_session(alice.respond(challenge, real.identity.public_key))
        with pytest.raises(TypeError, match="never pickled"):
            pickle.dumps(session)
        with pytest.raises(TypeError, match="never pickled"):
            pickle.dumps(session.keys)
