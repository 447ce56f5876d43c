"""Public keys: signature checks, proof of work, and node ids derived from keys.

Everything here is public-key work (no secret ever passes through this module), pure
and synchronous, on pynacl (libsodium) and blake3:

- :func:`verify` checks an Ed25519 signature strictly. libsodium refuses the
  non-canonical forms (an ``S`` not reduced below the group order, small-order public
  keys and ``R`` points), so one message has one valid signature per key and a
  statement's id cannot be changed by re-encoding its signature.
- :func:`work_of` is an identity's proof of work: the leading zero bits of
  ``blake3(public key || nonce)``. The key is in the hash, so a nonce mined for one
  key proves nothing for another; checking costs one hash.
- :func:`node_id_of` maps a node's public key to its 16-byte node id, so whoever
  holds a node id's key can prove it with one hash and one signature check.
"""

from __future__ import annotations

from collections.abc import Callable

import blake3

from ._event import NODE_ID_SIZE

__all__ = [
    "NONCE_SIZE",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "is_public_key",
    "node_id_of",
    "short_key",
    "verify",
    "work_of",
]

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
#: Bytes of a proof-of-work nonce (a big-endian counter).
NONCE_SIZE = 8

_NODE_CONTEXT = "koru-delta 2026-12 node id from Ed25519 public key"

# pynacl is imported on the first signature check, not with this module: its import
# costs ~15 ms, which a one-shot command that checks no signature should not pay.
_checker: Callable[[bytes, bytes, bytes], bool] | None = None


def _load_checker() -> Callable[[bytes, bytes, bytes], bool]:
    global _checker
    import nacl.bindings
    import nacl.exceptions

    sign_open = nacl.bindings.crypto_sign_open
    refused = (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError)

    def check(public_key: bytes, message: bytes, signature: bytes) -> bool:
        try:
            sign_open(signature + message, public_key)
        except refused:
            return False
        return True

    _checker = check
    return check


def is_public_key(item: object) -> bool:
    """True for 32 bytes (whether they are a usable point is the signature check's
    business: libsodium refuses small-order and non-canonical keys there)."""
    return type(item) is bytes and len(item) == PUBLIC_KEY_SIZE


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True if ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    if (
        type(signature) is not bytes
        or len(signature) != SIGNATURE_SIZE
        or type(public_key) is not bytes
        or len(public_key) != PUBLIC_KEY_SIZE
    ):
        return False
    return (_checker or _load_checker())(public_key, message, signature)


def work_of(public_key: bytes, nonce: bytes) -> int:
    """The proof of work of ``nonce`` for ``public_key``: leading zero bits of
    ``blake3(public key || nonce)`` (0 to 256)."""
    digest = int.from_bytes(blake3.blake3(public_key + nonce).digest(), "big")
    return 256 - digest.bit_length()


def node_id_of(public_key: bytes) -> bytes:
    """The node id a node key speaks for: 16 bytes of blake3 in key-derivation mode."""
    return blake3.blake3(public_key, derive_key_context=_NODE_CONTEXT).digest(NODE_ID_SIZE)


def short_key(public_key: bytes) -> str:
    """A public key for messages: its first 8 bytes in hex (as git shortens commits)."""
    return public_key[:8].hex() if type(public_key) is bytes else repr(public_key)
