"""Identities: an Ed25519 key pair (pynacl) with a proof of work, and key files.

An identity is self-sovereign: whoever holds the secret key *is* the identity, and no
database issues it. Creating one costs a proof of work (a nonce such that
``blake3(public key || nonce)`` starts with ``difficulty`` zero bits), so that minting
identities by the thousand costs real time, while checking one costs one hash.

The secret key never leaves this object except into a key file: it is not in the
``repr``, in any error message or log line, and an identity refuses to be pickled. A
key file is created with mode 0600 and never overwritten; loading refuses a file that
others may read or write, that is not a regular file (a symbolic link is not
followed) or that belongs to another user.

Why the OS's randomness by default: a secret key drawn from a seeded Mersenne Twister
could be recomputed by anyone who learns the seed or enough of the generator's other
outputs (node ids, jitter). A caller that wants reproducible identities (tests,
simulations) passes its own ``random.Random``.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from typing import TYPE_CHECKING, Any, NoReturn

import blake3
import cbor2

from koru.events import (
    NODE_ID_SIZE,
    NONCE_SIZE,
    InvalidArgumentError,
    KeyFileError,
    PublicIdentity,
    node_id_of,
    short_key,
    work_of,
)

if TYPE_CHECKING:
    from ._sessions import Challenge, Response

__all__ = ["DEFAULT_DIFFICULTY", "MAX_DIFFICULTY", "Identity"]

#: Proof-of-work bits of a new identity by default: about a second of mining on one
#: core here (2**20 blake3 hashes at roughly a million a second in this loop; see
#: ``bench/run.py --only auth_mine``).
DEFAULT_DIFFICULTY = 20
#: The most a caller may ask for (each bit doubles the expected time).
MAX_DIFFICULTY = 40

_SEED_SIZE = 32
_MAGIC = b"KORUIDK1"
_FORMAT = 1
_MAX_FILE = 64 * 1024


def _keypair(seed: bytes) -> tuple[bytes, bytes]:
    """(public key, libsodium's 64-byte secret key) of a 32-byte seed."""
    import nacl.bindings

    public, secret = nacl.bindings.crypto_sign_seed_keypair(seed)
    return public, secret


def mine_nonce(public_key: bytes, difficulty: int) -> bytes:
    """The first nonce (a big-endian counter from 0) whose proof of work for
    ``public_key`` reaches ``difficulty`` bits."""
    if difficulty <= 0:
        return bytes(NONCE_SIZE)
    # digest < 2**(256 - d) exactly when the digest has d leading zero bits; comparing
    # bytes keeps the loop free of big-int work.
    threshold = (1 << (256 - difficulty)).to_bytes(32, "big")
    hasher = blake3.blake3
    n = 0
    while True:
        nonce = n.to_bytes(NONCE_SIZE, "big")
        if hasher(public_key + nonce).digest() < threshold:
            return nonce
        n += 1


def check_difficulty(difficulty: Any) -> int:
    """``difficulty`` if it is an int from 0 to MAX_DIFFICULTY."""
    if type(difficulty) is not int or not 0 <= difficulty <= MAX_DIFFICULTY:
        raise InvalidArgumentError(
            f"difficulty must be an int from 0 to {MAX_DIFFICULTY} bits, not {difficulty!r}"
        )
    return difficulty


class Identity:
    """An Ed25519 key pair with its proof of work. Make one with :meth:`mine`, keep it
    with :meth:`save` and :meth:`load`; show others :attr:`public`."""

    __slots__ = ("_nonce", "_previous", "_public_key", "_secret")

    _secret: bytes
    _public_key: bytes
    _nonce: bytes
    _previous: bytes | None

    def __init__(
        self, seed: bytes, nonce: bytes, previous: bytes | None = None, public_key: bytes = b""
    ) -> None:
        # Internal: make an identity with mine() or load(); a caller holding a raw
        # secret has bypassed everything this class is for.
        self._secret = seed
        # The public key is derived on demand when not given (a key file holds it, so
        # loading one needs no cryptography until the first signature).
        self._public_key = public_key or _keypair(seed)[0]
        self._nonce = nonce
        self._previous = previous

    @classmethod
    def mine(
        cls, difficulty: int = DEFAULT_DIFFICULTY, *, rng: random.Random | None = None
    ) -> Identity:
        """A new identity whose proof of work has at least ``difficulty`` bits
        (``DEFAULT_DIFFICULTY`` takes about a second; each bit doubles it).

        Args:
            rng: draw the secret key from this generator instead of the operating
                system's randomness (for reproducible tests and simulations only).

        Raises:
            InvalidArgumentError: a difficulty that is not an int from 0 to
                ``MAX_DIFFICULTY``.
        """
        check_difficulty(difficulty)
        seed = os.urandom(_SEED_SIZE) if rng is None else rng.randbytes(_SEED_SIZE)
        public_key = _keypair(seed)[0]
        return cls(seed, mine_nonce(public_key, difficulty), public_key=public_key)

    def mined(self, difficulty: int) -> Identity:
        """This identity with a proof of work of at least ``difficulty`` bits (itself if
        it has that much already): a node's key is made without one, and mined when it
        first has to show it."""
        check_difficulty(difficulty)
        if self.work >= difficulty:
            return self
        nonce = mine_nonce(self._public_key, difficulty)
        return Identity(self._secret, nonce, self._previous, self._public_key)

    # -- what others see ---------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        """The Ed25519 public key (32 bytes)."""
        return self._public_key

    @property
    def nonce(self) -> bytes:
        """The proof-of-work nonce."""
        return self._nonce

    @property
    def public(self) -> PublicIdentity:
        """The public identity (key and nonce) to show and register."""
        return PublicIdentity(self._public_key, self._nonce)

    @property
    def work(self) -> int:
        """The proof of work in leading zero bits (one hash)."""
        return work_of(self._public_key, self._nonce)

    @property
    def id(self) -> str:
        """The public key in hex: how grants and messages name this identity."""
        return self._public_key.hex()

    @property
    def node_id(self) -> str:
        """The node id (hex) this key speaks for when it is a database's node key."""
        return node_id_of(self._public_key).hex()

    def __repr__(self) -> str:
        return f"Identity({short_key(self._public_key)}..., work={self.work} bits)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Identity):
            return NotImplemented
        return self.public == other.public

    def __hash__(self) -> int:
        return hash(self.public)

    def __reduce__(self) -> NoReturn:
        raise TypeError("an Identity holds a secret key and is never pickled: save() it")

    # -- using the secret ----------------------------------------------------------------

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature (64 bytes) of ``message``."""
        import nacl.bindings

        if not isinstance(message, bytes):
            raise InvalidArgumentError(f"sign takes bytes, not {type(message).__name__}")
        secret = self._secret + self._public_key  # libsodium's form: seed || public key
        signed: bytes = nacl.bindings.crypto_sign(message, secret)
        return signed[:64]

    def respond(self, challenge: Challenge, server: bytes | None = None) -> Response:
        """Answer a server's challenge (see :meth:`koru.Database.challenge`): a signed
        response that opens a session there, once, before the challenge expires.

        Args:
            server: the public key of the server meant (known beforehand); a challenge
                of any other server is refused (``WrongServerError``), so a relay that
                passes another server's challenge along gains nothing.
        """
        from ._sessions import respond

        return respond(self, challenge, server)

    # -- key files ---------------------------------------------------------------------

    def key_file_bytes(self) -> bytes:
        """The key file's bytes (secret: write them only where :meth:`save` would)."""
        body = cbor2.dumps([_FORMAT, self._secret, self._public_key, self._nonce, self._previous])
        return _MAGIC + blake3.blake3(body).digest() + body

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "the key file") -> Identity:
        """The identity a key file's bytes hold.

        Raises:
            KeyFileError: not a koru-delta key file (the message names ``where``, never
                the content).
        """
        problem = "not a koru-delta key file"
        try:
            if data[: len(_MAGIC)] == _MAGIC:
                digest, body = data[len(_MAGIC) : len(_MAGIC) + 32], data[len(_MAGIC) + 32 :]
                if blake3.blake3(body).digest() != digest:
                    problem = "damaged (checksum mismatch)"
                else:
                    fields = cbor2.loads(body)
                    identity = cls._from_fields(fields)
                    if identity is not None:
                        return identity
                    problem = "damaged (malformed fields)"
        except Exception:  # the message below names no content, whatever failed
            problem = "damaged (undecodable)"
        raise KeyFileError(f"{where} is {problem}")

    @classmethod
    def _from_fields(cls, fields: Any) -> Identity | None:
        if type(fields) is not list or len(fields) != 5 or fields[0] != _FORMAT:
            return None
        _, seed, public_key, nonce, previous = fields
        if not (
            type(seed) is bytes
            and len(seed) == _SEED_SIZE
            and type(public_key) is bytes
            and len(public_key) == 32
            and type(nonce) is bytes
            and len(nonce) == NONCE_SIZE
            and (previous is None or (type(previous) is bytes and len(previous) == NODE_ID_SIZE))
        ):
            return None
        return cls(seed, nonce, previous, public_key)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a new key file at ``path``: created with mode 0600, never replacing a
        file or following a symbolic link there, synced before returning.

        Raises:
            KeyFileError: something is at ``path`` already.
            OSError: the file could not be written.
        """
        where = os.fspath(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(where, flags, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{where} exists: a key file is never overwritten") from None
        try:
            os.fchmod(fd, 0o600)  # whatever the umask, exactly owner read and write
            data = self.key_file_bytes()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(where)
            raise
        os.close(fd)
        directory = os.open(os.path.dirname(os.path.abspath(where)), os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """The identity in the key file at ``path``.

        Raises:
            KeyFileError: the file is readable or writable by others, not a regular file
                (symbolic links are refused, not followed), owned by another user, or
                not a koru-delta key file.
            FileNotFoundError: no file at ``path``.
        """
        where = os.fspath(path)
        try:
            # Non-blocking: a named pipe would have the open wait for a writer (it is
            # refused below, as no regular file); a regular file reads as ever.
            fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise KeyFileError(f"{where} is a symbolic link, not a key file") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(f"{where} is not a regular file")
            if st.st_uid != os.geteuid():
                raise KeyFileError(f"{where} belongs to another user")
            if st.st_mode & 0o077:
                raise KeyFileError(
                    f"{where} may be read or written by others (mode "
                    f"{st.st_mode & 0o777:o}): a secret key must be private (chmod 600 it)"
                )
            if st.st_size > _MAX_FILE:
                raise KeyFileError(f"{where} is {st.st_size} bytes: not a key file")
            data = os.read(fd, _MAX_FILE + 1)
        finally:
            os.close(fd)
        return cls.from_bytes(data, where)
