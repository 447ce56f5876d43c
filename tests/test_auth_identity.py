"""Identities (``koru.Identity``): Ed25519 keys with a proof of work, key files that
only their owner may read, and a secret key that never shows (repr, errors, logs,
pickles); Ed25519 edge cases libsodium refuses; node ids derived from node keys."""

from __future__ import annotations

import logging
import os
import pickle
import random
import stat
from pathlib import Path

import pytest

import koru
from koru._identity import MAX_DIFFICULTY, mine_nonce
from koru.events import (
    NODE_ID_SIZE,
    PublicIdentity,
    node_id_of,
    verify,
    work_of,
)

# The order of the Ed25519 group: S must be below it.
L = 2**252 + 27742317777372353535851937790883648493


def alice(difficulty: int = 10, seed: int = 1) -> koru.Identity:
    return koru.Identity.mine(difficulty, rng=random.Random(seed))


def secret_of(identity: koru.Identity) -> bytes:
    return identity._secret


# -- proof of work ---------------------------------------------------------------------------


@pytest.mark.parametrize("difficulty", [0, 1, 8, 12])
def test_mining_reaches_the_difficulty_and_verifying_is_one_hash(difficulty: int) -> None:
    identity = alice(difficulty)
    assert identity.work >= difficulty
    assert identity.public.work == work_of(identity.public_key, identity.nonce) >= difficulty
    # The first nonce that works: every smaller counter falls short.
    first = int.from_bytes(identity.nonce, "big")
    for n in range(max(0, first - 50), first):
        assert work_of(identity.public_key, n.to_bytes(8, "big")) < difficulty


def test_a_borrowed_proof_of_work_proves_nothing_for_another_key() -> None:
    """The key is inside the hash: alice's nonce on bob's key is a random hash."""
    a, b = alice(12, seed=1), alice(0, seed=2)
    assert a.work >= 12
    assert work_of(b.public_key, a.nonce) < 12
    assert PublicIdentity(b.public_key, a.nonce).work < 12


def test_mining_is_reproducible_only_with_a_generator() -> None:
    assert alice(4, seed=5).public == alice(4, seed=5).public
    assert koru.Identity.mine(0).public_key != koru.Identity.mine(0).public_key


def test_mined_adds_work_to_the_same_key() -> None:
    weak = alice(0)
    strong = weak.mined(10)
    assert strong.public_key == weak.public_key and strong.work >= 10
    assert strong.mined(5) is strong


@pytest.mark.parametrize("bad", [-1, MAX_DIFFICULTY + 1, 1.5, True, "20"])
def test_a_bad_difficulty_is_refused(bad: object) -> None:
    with pytest.raises(koru.InvalidArgumentError, match="difficulty"):
        koru.Identity.mine(bad, rng=random.Random(1))  # type: ignore[arg-type]


def test_mine_nonce_matches_the_definition() -> None:
    key = bytes(range(32))
    for d in (0, 3, 9):
        assert work_of(key, mine_nonce(key, d)) >= d


def test_the_public_text_form_round_trips() -> None:
    public = alice().public
    assert PublicIdentity.parse(str(public)) == public
    for bad in ("", "zz", public.public_key.hex(), f"{public.public_key.hex()}.00"):
        with pytest.raises(koru.InvalidDataError, match="public identity"):
            PublicIdentity.parse(bad)


# -- signatures and their edge cases -----------------------------------------------------------


def test_signatures_verify_and_every_flipped_bit_fails() -> None:
    """Any flipped bit in the signature, the message or the key makes it fail."""
    identity = alice()
    message = b"koru-delta test message"
    signature = identity.sign(message)
    key = identity.public_key
    assert verify(key, message, signature)
    for i in range(len(signature) * 8):
        flipped = bytearray(signature)
        flipped[i // 8] ^= 1 << (i % 8)
        assert not verify(key, message, bytes(flipped)), f"signature bit {i}"
    for i in range(len(message) * 8):
        flipped = bytearray(message)
        flipped[i // 8] ^= 1 << (i % 8)
        assert not verify(key, bytes(flipped), signature), f"message bit {i}"
    for i in range(len(key) * 8):
        flipped = bytearray(key)
        flipped[i // 8] ^= 1 << (i % 8)
        assert not verify(bytes(flipped), message, signature), f"key bit {i}"


def test_a_signature_by_another_key_fails() -> None:
    a, b = alice(seed=1), alice(seed=2)
    assert not verify(b.public_key, b"m", a.sign(b"m"))


def test_non_canonical_signatures_are_refused() -> None:
    """Wycheproof's malleability case: S + L is the same scalar mod L, but libsodium
    requires S < L, so one message has one signature per key."""
    identity = alice()
    signature = identity.sign(b"m")
    s = int.from_bytes(signature[32:], "little")
    assert s < L
    malleated = signature[:32] + (s + L).to_bytes(32, "little")
    assert not verify(identity.public_key, b"m", malleated)
    # S with its top bits set (>= 2**253) is refused outright.
    assert not verify(identity.public_key, b"m", signature[:32] + b"\xff" * 32)


# Small-order points (Wycheproof's "special values" of Ed25519), as public keys or R.
SMALL_ORDER = [
    bytes.fromhex("0100000000000000000000000000000000000000000000000000000000000000"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000000"),
    bytes.fromhex("0000000000000000000000000000000000000000000000000000000000000080"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
]


@pytest.mark.parametrize("point", SMALL_ORDER)
def test_small_order_keys_and_points_are_refused(point: bytes) -> None:
    """A small-order public key makes a "signature" that verifies for many messages;
    a small-order R as well. libsodium refuses both."""
    identity = alice()
    signature = identity.sign(b"m")
    assert not verify(point, b"m", signature)
    assert not verify(point, b"m", point + bytes(32))  # the trivial forgery
    assert not verify(identity.public_key, b"m", point + signature[32:])


def test_non_canonical_key_encodings_are_refused() -> None:
    """A y coordinate at or above the field prime is not a canonical encoding."""
    over_prime = (2**255 - 19 + 1).to_bytes(32, "little")
    identity = alice()
    assert not verify(over_prime, b"m", identity.sign(b"m"))


@pytest.mark.parametrize(
    ("key", "signature"),
    [(b"short", bytes(64)), (bytes(32), b"short"), ("text", bytes(64)), (bytes(32), None)],
)
def test_malformed_inputs_do_not_verify(key: object, signature: object) -> None:
    assert not verify(key, b"m", signature)  # type: ignore[arg-type]


def test_node_ids_are_derived_from_keys() -> None:
    a, b = alice(seed=1), alice(seed=2)
    assert len(node_id_of(a.public_key)) == NODE_ID_SIZE
    assert node_id_of(a.public_key) != node_id_of(b.public_key)
    assert a.node_id == node_id_of(a.public_key).hex()


# -- key files ----------------------------------------------------------------------------------


def test_a_key_file_is_private_and_round_trips(tmp_path: Path) -> None:
    identity = alice()
    path = tmp_path / "alice.key"
    old = os.umask(0)  # even a permissive umask gives 0600
    try:
        identity.save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = koru.Identity.load(path)
    assert loaded == identity and secret_of(loaded) == secret_of(identity)
    assert loaded.sign(b"m") == identity.sign(b"m")


def test_a_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "alice.key"
    alice(seed=1).save(path)
    with pytest.raises(koru.KeyFileError, match="never overwritten"):
        alice(seed=2).save(path)
    assert koru.Identity.load(path) == alice(seed=1)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o666])
def test_a_key_file_others_may_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "alice.key"
    alice().save(path)
    path.chmod(mode)
    with pytest.raises(koru.KeyFileError, match="chmod 600"):
        koru.Identity.load(path)


def test_a_symlink_to_a_key_file_is_refused_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    alice().save(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(koru.KeyFileError, match="symbolic link"):
        koru.Identity.load(link)
    # Nor does save write through a symlink planted where the key will go.
    target = tmp_path / "elsewhere"
    planted = tmp_path / "planted.key"
    planted.symlink_to(target)
    with pytest.raises((koru.KeyFileError, OSError)):
        alice(seed=3).save(planted)
    assert not target.exists()


def test_a_directory_or_garbage_is_not_a_key_file(tmp_path: Path) -> None:
    directory = tmp_path / "dir.key"
    directory.mkdir(mode=0o700)
    with pytest.raises((koru.KeyFileError, OSError)):
        koru.Identity.load(directory)
    garbage = tmp_path / "garbage.key"
    fd = os.open(garbage, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"KORUIDK1" + bytes(40))
    os.close(fd)
    with pytest.raises(koru.KeyFileError, match="damaged"):
        koru.Identity.load(garbage)


def test_a_damaged_key_file_names_no_secret(tmp_path: Path) -> None:
    identity = alice()
    data = bytearray(identity.key_file_bytes())
    data[-1] ^= 0xFF
    path = tmp_path / "bad.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, bytes(data))
    os.close(fd)
    with pytest.raises(koru.KeyFileError) as caught:
        koru.Identity.load(path)
    secret = secret_of(identity)
    text = str(caught.value) + repr(caught.value)
    assert secret.hex() not in text and repr(secret) not in text


def test_the_secret_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    identity = alice()
    secret = secret_of(identity)
    shown = [repr(identity), str(identity), repr(identity.public), str(identity.public)]
    for text in shown:
        assert secret.hex() not in text and repr(secret)[2:-1] not in text
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(identity)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("koru").info("identity %s", identity)
    assert secret.hex() not in caplog.text
    with pytest.raises(TypeError):
        koru.Identity()  # type: ignore[call-arg]
