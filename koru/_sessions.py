"""Sessions: challenge-response between a client identity and a database.

1. The server issues a :class:`Challenge`: 32 random bytes, its own public key (the
   challenge is bound to the server's identity) and an expiry five minutes ahead on the
   database clock.
2. The client answers with :meth:`koru.Identity.respond`: a :class:`Response` holding
   its public identity and its signature over the server's key, the challenge and its
   own key, under a domain string of its own. A client should name the server it
   means to reach (``respond(challenge, server=key)``, the key known beforehand): a
   relay that passes another server's challenge along would otherwise get the
   client's signature for that server.
3. The server opens a :class:`Session` if, in this order (cheapest first): the
   response is for this server (:class:`~koru.WrongServerError`), names a challenge it
   issued and has not used (:class:`~koru.ChallengeReplayedError`; the challenge is
   used up by this attempt, whatever its outcome), in time
   (:class:`~koru.ChallengeExpiredError`), from an identity with enough proof of work
   (:class:`~koru.ProofOfWorkError`, one hash) and with a valid signature
   (:class:`~koru.SignatureError`).

Session keys: both sides compute the same X25519 secret from their own secret key and
the other's public key (Ed25519 keys converted to Curve25519 by libsodium), and derive
two keys from it with blake3's key-derivation mode, bound to both public keys and the
challenge: one per direction, fresh for every session. No key crosses the wire. (They
are not forward secret: whoever later steals a secret key and recorded a session's
challenge can derive its keys; a transport such as TLS gives forward secrecy.)

Randomness: challenges and session ids come from the operating system, so that nobody
can predict them; a database opened with a ``seed`` draws them from its seeded
generator instead, so a simulation replays exactly (and a seeded database is a test
database, never a server).
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import blake3
import cbor2

from koru.events import (
    NONCE_SIZE,
    InvalidArgumentError,
    ProofOfWorkError,
    PublicIdentity,
    SessionError,
    SessionExpiredError,
    SignatureError,
    WrongServerError,
    is_public_key,
    short_key,
    verify,
)
from koru.events import (
    ChallengeExpiredError as _Expired,
)
from koru.events import (
    ChallengeReplayedError as _Replayed,
)

if TYPE_CHECKING:
    from ._identity import Identity

__all__ = [
    "CHALLENGE_TTL",
    "DEFAULT_SESSION_TTL",
    "MAX_PENDING_CHALLENGES",
    "MAX_SESSION_TTL",
    "Challenge",
    "Entropy",
    "Response",
    "Session",
    "SessionKeys",
    "Sessions",
    "respond",
]

#: Seconds a challenge may be answered in.
CHALLENGE_TTL = 300.0
#: Seconds a session lasts unless asked otherwise, and at most.
DEFAULT_SESSION_TTL = 3600.0
MAX_SESSION_TTL = 30 * 86400.0
#: Challenges outstanding at once; past it the oldest is forgotten (its response will
#: be refused as unknown), so that asking for challenges cannot exhaust memory.
MAX_PENDING_CHALLENGES = 10_000
CHALLENGE_SIZE = 32

_DOMAIN = "koru-delta/session/1"
_KEYS = "koru-delta 2026-12 session keys"


class Entropy:
    """Unpredictable bytes: the operating system's, or a seeded generator's when the
    database was opened with a seed (see the module doc)."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random | None) -> None:
        self._rng = rng

    @property
    def seeded(self) -> bool:
        return self._rng is not None

    def token(self, size: int) -> bytes:
        return os.urandom(size) if self._rng is None else self._rng.randbytes(size)


class Challenge(NamedTuple):
    """What a server sends first: answer it with :meth:`koru.Identity.respond`."""

    server: bytes
    nonce: bytes
    expires: int


class Response(NamedTuple):
    """A client's signed answer to a challenge."""

    identity: PublicIdentity
    server: bytes
    challenge: bytes
    signature: bytes

    def message(self) -> bytes:
        """The bytes the client signed."""
        return _message(self.server, self.challenge, self.identity.public_key)


class SessionKeys:
    """Two 32-byte keys, one per direction, as seen from one side (never printed)."""

    __slots__ = ("receive", "send")

    def __init__(self, send: bytes, receive: bytes) -> None:
        self.send = send
        self.receive = receive

    def __repr__(self) -> str:
        return "SessionKeys(<secret>)"

    def __reduce__(self) -> tuple[type, tuple[()]]:
        raise TypeError("session keys are secret and never pickled")


class Session:
    """An authenticated session on a database: who, until when, and its keys. Made
    only by the database (:meth:`koru.Database.open_session`); a session it did not
    make, or one past its expiry, is refused."""

    __slots__ = ("expires", "id", "identity", "keys")

    def __init__(self, sid: bytes, identity: bytes, expires: int, keys: SessionKeys) -> None:
        self.id = sid
        #: The client's public key.
        self.identity = identity
        #: When it ends (ns since the epoch, database clock).
        self.expires = expires
        #: The server's keys (send: server to client).
        self.keys = keys

    def __repr__(self) -> str:
        return f"Session({self.id.hex()[:12]}, identity={short_key(self.identity)}...)"

    def __reduce__(self) -> tuple[type, tuple[()]]:
        raise TypeError("a session holds secret keys and is never pickled")


def _message(server: bytes, challenge: bytes, client: bytes) -> bytes:
    return cbor2.dumps([_DOMAIN, server, challenge, client])


def _shared(secret_seed: bytes, own_public: bytes, other_public: bytes) -> bytes | None:
    """The X25519 secret of an Ed25519 key pair and another Ed25519 public key (None
    if the other key is not a usable point)."""
    import nacl.bindings as sodium
    import nacl.exceptions

    try:
        mine = sodium.crypto_sign_ed25519_sk_to_curve25519(secret_seed + own_public)
        theirs = sodium.crypto_sign_ed25519_pk_to_curve25519(other_public)
        shared: bytes = sodium.crypto_scalarmult(mine, theirs)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return None
    return shared


def _keys(shared: bytes, server: bytes, client: bytes, challenge: bytes) -> tuple[bytes, bytes]:
    """(client to server, server to client)."""
    material = blake3.blake3(shared + server + client + challenge, derive_key_context=_KEYS).digest(
        64
    )
    return material[:32], material[32:]


def respond(identity: Identity, challenge: Challenge, server: bytes | None = None) -> Response:
    """The client's response (see :meth:`koru.Identity.respond`)."""
    if not isinstance(challenge, Challenge):
        raise InvalidArgumentError(f"respond takes a Challenge, not {challenge!r}")
    if server is not None and challenge.server != server:
        raise WrongServerError(
            f"the challenge comes from {short_key(challenge.server)}..., not the server "
            f"expected ({short_key(server)}...): a relay may be in between"
        )
    message = _message(challenge.server, challenge.nonce, identity.public_key)
    return Response(identity.public, challenge.server, challenge.nonce, identity.sign(message))


def client_keys(identity: Identity, challenge: Challenge) -> SessionKeys:
    """The client's session keys for a challenge it answered (send: client to server)."""
    shared = _shared(identity._secret, identity.public_key, challenge.server)
    if shared is None:
        raise WrongServerError("the challenge's server key is not a usable public key")
    up, down = _keys(shared, challenge.server, identity.public_key, challenge.nonce)
    return SessionKeys(up, down)


class Sessions:
    """The server side: outstanding challenges and open sessions (in memory; a
    restarted database has neither, and clients authenticate again)."""

    def __init__(
        self,
        server: Callable[[], Identity],
        now: Callable[[], int],
        entropy: Entropy,
        difficulty: int,
    ) -> None:
        self._server = server
        self._clock = now
        #: The latest clock reading, what challenges and sessions are judged by: it
        #: never goes back, so one that ended stays ended when the clock is set back
        #: (and, unlike the read time, no peer's timestamp moves it).
        self._latest = 0
        self._entropy = entropy
        self.difficulty = difficulty
        self._pending: OrderedDict[bytes, int] = OrderedDict()
        self._open: dict[bytes, Session] = {}
        self._purge_at = 1024
        #: Totals since the open (for stats and tests).
        self.opened = 0
        self.refused = 0

    def _now(self) -> int:
        """The latest clock reading (see ``_latest``)."""
        now = self._clock()
        if now > self._latest:
            self._latest = now
        return self._latest

    def challenge(self) -> Challenge:
        """A fresh challenge, bound to this database's node identity."""
        now = self._now()
        self._forget_expired(now)
        while len(self._pending) >= MAX_PENDING_CHALLENGES:
            self._pending.popitem(last=False)
        nonce = self._entropy.token(CHALLENGE_SIZE)
        expires = now + int(CHALLENGE_TTL * 1e9)
        self._pending[nonce] = expires
        return Challenge(self._server().public_key, nonce, expires)

    def _forget_expired(self, now: int) -> None:
        while self._pending:
            nonce, expires = next(iter(self._pending.items()))
            if expires >= now:
                return
            del self._pending[nonce]

    def open(self, response: Response, ttl: float) -> Session:
        """A session for a valid response (see the module doc for the checks)."""
        try:
            return self._open_checked(response, ttl)
        except Exception:
            self.refused += 1
            raise

    def _open_checked(self, response: Response, ttl: float) -> Session:
        if type(ttl) not in (int, float) or not 0 < ttl <= MAX_SESSION_TTL:
            raise InvalidArgumentError(
                f"ttl must be a positive number of seconds up to 30 days, not {ttl!r}"
            )
        if not isinstance(response, Response) or not isinstance(response.identity, PublicIdentity):
            raise InvalidArgumentError(f"open_session takes a Response, not {response!r}")
        server = self._server()
        if response.server != server.public_key:
            raise WrongServerError(
                f"the response was made for server {short_key(response.server)}..., "
                f"not this one ({short_key(server.public_key)}...)"
            )
        expires = (
            self._pending.pop(response.challenge, None)
            if (type(response.challenge) is bytes)
            else None
        )
        if expires is None:
            raise _Replayed("the response names a challenge this server did not issue or used")
        now = self._now()
        if now > expires:
            raise _Expired(
                f"the challenge expired {(now - expires) / 1e9:.0f} s before the response"
            )
        client, nonce = response.identity
        if not is_public_key(client):
            raise SignatureError("the response's public key is not 32 bytes")
        if type(nonce) is not bytes or len(nonce) != NONCE_SIZE:
            # Before hashing it: a megabyte "nonce" would make the one cheap check dear.
            raise ProofOfWorkError(f"a proof-of-work nonce is {NONCE_SIZE} bytes")
        # The proof of work first: one hash, before the signature check it protects.
        work = response.identity.work
        if work < self.difficulty:
            raise ProofOfWorkError(
                f"identity {short_key(client)}... has {work} bits of proof of work, "
                f"{self.difficulty} required"
            )
        if not verify(client, response.message(), response.signature):
            raise SignatureError(
                f"the response's signature does not verify with {short_key(client)}..."
            )
        shared = _shared(server._secret, server.public_key, client)
        if shared is None:
            raise SignatureError(f"{short_key(client)}... is not a usable public key")
        up, down = _keys(shared, server.public_key, client, response.challenge)
        session = Session(
            self._entropy.token(16), client, now + int(ttl * 1e9), SessionKeys(down, up)
        )
        self._open[session.id] = session
        self.opened += 1
        if len(self._open) >= self._purge_at:
            # Expired sessions are kept (so they are refused as expired) until the
            # table grows: then they go, in one pass per doubling.
            # In place: authorized handles hold this table (a new one would leave them
            # looking in the old, where a session ended later stays open).
            for sid in [k for k, s in self._open.items() if s.expires <= now]:
                del self._open[sid]
            self._purge_at = max(1024, 2 * len(self._open))
        return session

    def current(self, session: Session) -> Session:
        """``session`` if this database opened it and it has not expired.

        Raises:
            SessionExpiredError: past its time to live.
            SessionError: not a session of this database, or ended.
        """
        if not isinstance(session, Session):
            raise SessionError(f"not a session: {session!r}")
        if self._now() >= session.expires:
            raise SessionExpiredError("the session has expired: authenticate again")
        if self._open.get(session.id) is not session:
            raise SessionError("not a session of this database (or it was ended)")
        return session

    def end(self, session: Session) -> None:
        """Forget ``session`` (idempotent)."""
        if isinstance(session, Session) and self._open.get(session.id) is session:
            del self._open[session.id]

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        return len(self._open)
