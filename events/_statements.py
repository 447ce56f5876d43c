"""Signed statements of the auth layer: identities, capability grants, revocations.

Each statement is a named tuple whose last field is an Ed25519 signature over its
*message*: the canonical CBOR array of a domain string (which names the kind of
statement and its format version, so a signature made for one kind can never be
replayed as another) and every other field. A grant's id is blake3 of its message,
so it names exactly what the granter signed.

- :class:`PublicIdentity`: a public key and its proof-of-work nonce (no signature:
  registering someone's public identity is harmless, and checking it costs one hash).
- :class:`Grant`: ``granter`` gives ``grantee`` the ``actions`` (a mask of
  :data:`READ`, :data:`WRITE`, :data:`ADMIN`) on the keys whose namespace matches the
  ``namespace`` glob and whose key matches the ``key`` glob, from ``not_before`` until
  ``expires`` (ns since the epoch; None: no end), delegated from the ``parent`` grant
  (its id; None for a grant made by a root).
- :class:`Revocation`: ``revoker`` revokes the grant ``grant`` (its id) as of ``at``.

Statements are made with :meth:`Grant.create` and :meth:`Revocation.create`, which
check every field and sign through a :class:`Signer` (an identity holding a secret
key: the key never enters this layer).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple, Protocol

import blake3
import cbor2

from ._errors import CodecError, InvalidDataError
from ._fields import ID_SIZE, UINT64_MAX
from ._glob import check_glob
from ._keys import NONCE_SIZE, SIGNATURE_SIZE, is_public_key, verify, work_of

__all__ = [
    "ACTIONS",
    "ADMIN",
    "READ",
    "WRITE",
    "Grant",
    "PublicIdentity",
    "Revocation",
    "Signer",
    "action_names",
    "actions_of",
]

READ = 1
WRITE = 2
#: Admin covers read and write, and the revocation of grants within its reach.
ADMIN = 4
#: Action names and their bits, in the order they are listed.
ACTIONS: dict[str, int] = {"read": READ, "write": WRITE, "admin": ADMIN}
_ALL = READ | WRITE | ADMIN

_GRANT = "koru-delta/grant/1"
_REVOKE = "koru-delta/revoke/1"


class Signer(Protocol):
    """Who signs a statement: an identity with its secret key (``koru.Identity``)."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message``."""
        ...


def actions_of(names: str | Iterable[str]) -> int:
    """The mask of action names (``"read,write"`` or ``["read", "write"]``).

    Raises:
        InvalidDataError: an unknown name, or none at all.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    mask = 0
    for name in names:
        bit = ACTIONS.get(name) if type(name) is str else None
        if bit is None:
            raise InvalidDataError(f"actions are {', '.join(ACTIONS)}; not {name!r}")
        mask |= bit
    if not mask:
        raise InvalidDataError("a grant needs at least one action")
    return mask


def action_names(mask: int) -> tuple[str, ...]:
    """The names of the actions in ``mask``."""
    return tuple(name for name, bit in ACTIONS.items() if mask & bit)


def _sized(item: Any, size: int, what: str) -> bytes:
    if type(item) is not bytes or len(item) != size:
        raise CodecError(f"{what} must be {size} bytes")
    return item


def _key(item: Any, what: str) -> bytes:
    if not is_public_key(item):
        raise CodecError(f"{what} must be a 32-byte public key")
    return item  # type: ignore[no-any-return]


def _time(item: Any, what: str) -> int:
    if type(item) is not int or not 0 <= item <= UINT64_MAX:
        raise CodecError(f"{what} must be a 64-bit unsigned integer of ns")
    return item


def _glob(item: Any, what: str) -> str:
    try:
        return check_glob(item, what)
    except InvalidDataError as exc:
        raise CodecError(str(exc)) from None


class PublicIdentity(NamedTuple):
    """A public identity: an Ed25519 public key and its proof-of-work nonce. What an
    identity shows others; its text form (``str()``) is ``<key hex>.<nonce hex>``."""

    public_key: bytes
    nonce: bytes

    @property
    def work(self) -> int:
        """The proof of work, in leading zero bits (one hash)."""
        return work_of(self.public_key, self.nonce)

    def __str__(self) -> str:
        return f"{self.public_key.hex()}.{self.nonce.hex()}"

    @classmethod
    def parse(cls, text: str) -> PublicIdentity:
        """From the text form ``<key hex>.<nonce hex>``.

        Raises:
            InvalidDataError: not that form.
        """
        key, _, nonce = text.strip().partition(".") if type(text) is str else ("", "", "")
        try:
            return cls.decode([bytes.fromhex(key), bytes.fromhex(nonce)])
        except (ValueError, CodecError):
            raise InvalidDataError(
                f"a public identity is <64 hex digits>.<{2 * NONCE_SIZE} hex digits>, not {text!r}"
            ) from None

    @classmethod
    def decode(cls, body: Any) -> PublicIdentity:
        """From an event body ``[public key, nonce]`` (CodecError if malformed)."""
        if type(body) is not list or len(body) != 2:
            raise CodecError("identity body must be [public key, nonce]")
        return cls(_key(body[0], "public key"), _sized(body[1], NONCE_SIZE, "nonce"))


class Grant(NamedTuple):
    """A signed capability (see the module doc). ``id`` names it."""

    granter: bytes
    grantee: bytes
    namespace: str
    key: str
    actions: int
    not_before: int
    expires: int | None
    parent: bytes | None
    signature: bytes

    def message(self) -> bytes:
        """The bytes the granter signed."""
        return cbor2.dumps([_GRANT, *self[:-1]])

    @property
    def id(self) -> bytes:
        """blake3 of :meth:`message`: the grant's id, which delegations name."""
        return blake3.blake3(self.message()).digest()

    def verified(self) -> bool:
        """True if the granter signed exactly this grant."""
        return verify(self.granter, self.message(), self.signature)

    @classmethod
    def create(
        cls,
        granter: Signer,
        grantee: bytes,
        *,
        namespace: str = "*",
        key: str = "*",
        actions: str | Iterable[str] | int = "read",
        not_before: int = 0,
        expires: int | None = None,
        parent: bytes | None = None,
    ) -> Grant:
        """A grant from ``granter`` (signed with its key) to the public key ``grantee``.

        Raises:
            InvalidDataError: a malformed field (a glob, an action, times out of order).
        """
        mask = actions if type(actions) is int else actions_of(actions)  # type: ignore[arg-type]
        fields = [
            granter.public_key,
            grantee,
            namespace,
            key,
            mask,
            not_before,
            expires,
            parent,
            bytes(SIGNATURE_SIZE),
        ]
        try:
            unsigned = cls.decode(fields, check_signature=False)
        except CodecError as exc:
            raise InvalidDataError(f"not a valid grant: {exc}") from None
        return unsigned._replace(signature=granter.sign(unsigned.message()))

    @classmethod
    def decode(cls, body: Any, *, check_signature: bool = True) -> Grant:
        """From an event body (the fields in order), every field checked, and the
        signature verified (CodecError if anything is wrong)."""
        if type(body) is not list or len(body) != 9:
            raise CodecError(
                "grant body must be [granter, grantee, namespace, key, actions, "
                "not_before, expires, parent, signature]"
            )
        granter, grantee, namespace, key, actions, not_before, expires, parent, sig = body
        if type(actions) is not int or not 0 < actions <= _ALL:
            raise CodecError(f"actions must be a mask from 1 to {_ALL}")
        not_before = _time(not_before, "not_before")
        if expires is not None and _time(expires, "expires") <= not_before:
            raise CodecError("a grant must expire after it starts")
        if parent is not None:
            _sized(parent, ID_SIZE, "parent")
        grant = cls(
            _key(granter, "granter"),
            _key(grantee, "grantee"),
            _glob(namespace, "namespace glob"),
            _glob(key, "key glob"),
            actions,
            not_before,
            expires,
            parent,
            _sized(sig, SIGNATURE_SIZE, "signature"),
        )
        if check_signature and not grant.verified():
            raise CodecError("the grant's signature does not verify with its granter's key")
        return grant


class Revocation(NamedTuple):
    """A signed revocation of the grant with id ``grant`` by ``revoker``, as of ``at``."""

    grant: bytes
    revoker: bytes
    at: int
    signature: bytes

    def message(self) -> bytes:
        """The bytes the revoker signed."""
        return cbor2.dumps([_REVOKE, *self[:-1]])

    def verified(self) -> bool:
        """True if the revoker signed exactly this revocation."""
        return verify(self.revoker, self.message(), self.signature)

    @classmethod
    def create(cls, revoker: Signer, grant: bytes, at: int) -> Revocation:
        """A revocation of the grant with id ``grant`` by ``revoker``, as of ``at``."""
        try:
            unsigned = cls.decode(
                [grant, revoker.public_key, at, bytes(SIGNATURE_SIZE)], check_signature=False
            )
        except CodecError as exc:
            raise InvalidDataError(f"not a valid revocation: {exc}") from None
        return unsigned._replace(signature=revoker.sign(unsigned.message()))

    @classmethod
    def decode(cls, body: Any, *, check_signature: bool = True) -> Revocation:
        """From an event body ``[grant id, revoker, at, signature]``, checked and
        verified (CodecError if anything is wrong)."""
        if type(body) is not list or len(body) != 4:
            raise CodecError("revocation body must be [grant id, revoker, at, signature]")
        revocation = cls(
            _sized(body[0], ID_SIZE, "grant id"),
            _key(body[1], "revoker"),
            _time(body[2], "at"),
            _sized(body[3], SIGNATURE_SIZE, "signature"),
        )
        if check_signature and not revocation.verified():
            raise CodecError("the revocation's signature does not verify with its revoker's key")
        return revocation
