"""``kdelta identity``, ``grant`` and ``revoke`` as subprocesses on real databases:
key files (private, never overwritten, refused when exposed or linked), grants and
revocations signed by the node key or a key file, exit codes (0 ok, 1 not found, 2
usage or refused input, 3 data or integrity) and one-line errors."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import koru

KDELTA = str(Path(sys.executable).parent / "kdelta")
D = "4"  # proof-of-work bits in these tests


class Ran:
    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.code = done.returncode
        self.out = done.stdout
        self.err = done.stderr

    def json(self) -> Any:
        return json.loads(self.out)


def kdelta(db: Path | None, *args: str) -> Ran:
    env = {k: v for k, v in os.environ.items() if k != "KORU_HOME"}
    env["NO_COLOR"] = "1"
    cmd = [KDELTA, *(["--db", str(db)] if db is not None else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/", timeout=60)
    ran = Ran(done)
    assert "Traceback" not in ran.err, ran.err
    return ran


def failed(ran: Ran, code: int, *words: str) -> None:
    assert ran.code == code, (ran.code, ran.out, ran.err)
    assert ran.err.startswith("kdelta: ") and ran.err.count("\n") == 1, ran.err
    for word in words:
        assert word in ran.err, ran.err


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "db"
    ran = kdelta(path, "set", "users/alice", '{"age": 30}')
    assert ran.code == 0, ran.err
    return path


def create(tmp_path: Path, name: str, *more: str, db: Path | None = None) -> dict[str, Any]:
    ran = kdelta(
        db, "--json", "identity", "create", "-o", str(tmp_path / name), "--difficulty", D, *more
    )
    assert ran.code == 0, ran.err
    doc: dict[str, Any] = ran.json()
    return doc


async def check(path: Path, who: str, action: str, namespace: str, key: str) -> bool:
    async with koru.open(path, difficulty=int(D), processes=False) as database:
        return await database.check(who, action, namespace, key)


def test_identity_create_writes_a_private_key_file_and_shows_only_public_parts(
    tmp_path: Path,
) -> None:
    doc = create(tmp_path, "alice.key")
    key_file = tmp_path / "alice.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    identity = koru.Identity.load(key_file)
    assert doc["identity"] == str(identity.public) and doc["work"] >= int(D)
    assert doc["public_key"] == identity.public_key.hex()
    shown = kdelta(None, "identity", "show", str(key_file))
    assert shown.code == 0 and str(identity.public) in shown.out
    secret = identity._secret.hex()
    assert secret not in shown.out + shown.err and secret not in json.dumps(doc)
    human = kdelta(None, "identity", "create", "-o", str(tmp_path / "bob.key"), "--difficulty", D)
    assert human.code == 0 and human.out.startswith("identity ") and "keep it private" in human.out


def test_identity_create_refuses_to_overwrite_and_needs_a_file(tmp_path: Path) -> None:
    create(tmp_path, "alice.key")
    before = (tmp_path / "alice.key").read_bytes()
    failed(
        kdelta(None, "identity", "create", "-o", str(tmp_path / "alice.key"), "--difficulty", D),
        3,
        "never overwritten",
    )
    assert (tmp_path / "alice.key").read_bytes() == before
    failed(kdelta(None, "identity", "create"), 2, "-o FILE")
    failed(
        kdelta(None, "identity", "create", "-o", str(tmp_path / "x.key"), "--difficulty", "99"), 2
    )


def test_an_exposed_linked_or_missing_key_file_is_refused(tmp_path: Path) -> None:
    create(tmp_path, "alice.key")
    key_file = tmp_path / "alice.key"
    key_file.chmod(0o644)
    failed(kdelta(None, "identity", "show", str(key_file)), 3, "chmod 600")
    key_file.chmod(0o600)
    link = tmp_path / "link.key"
    link.symlink_to(key_file)
    failed(kdelta(None, "identity", "show", str(link)), 3, "symbolic link")
    failed(kdelta(None, "identity", "show", str(tmp_path / "none.key")), 1, "no key file")


async def test_grant_and_revoke_with_the_node_key(tmp_path: Path, db: Path) -> None:
    alice = create(tmp_path, "alice.key")
    ran = kdelta(
        db,
        "--json",
        "grant",
        "--to",
        alice["identity"],
        "--ns",
        "users",
        "--key",
        "a*",
        "--actions",
        "read,write",
        "--expires",
        "in 1h",
        "--difficulty",
        D,
    )
    assert ran.code == 0, ran.err
    grant = ran.json()
    assert grant["namespace"] == "users" and grant["actions"] == ["read", "write"]
    assert grant["expires"] is not None
    assert await check(db, alice["public_key"], "write", "users", "alice")
    assert not await check(db, alice["public_key"], "write", "users", "bob")
    shown = kdelta(db, "--json", "identity", "show", str(tmp_path / "alice.key"), "--difficulty", D)
    assert shown.json()["registered"] and shown.json()["grants"][0]["in_effect"]
    human = kdelta(db, "revoke", grant["id"])
    assert human.code == 0 and "revoked" in human.out
    assert not await check(db, alice["public_key"], "read", "users", "alice")
    shown = kdelta(db, "--json", "identity", "show", str(tmp_path / "alice.key"), "--difficulty", D)
    assert not shown.json()["grants"][0]["in_effect"]
    failed(kdelta(db, "revoke", "ab" * 32), 1, "no grant")
    failed(kdelta(db, "revoke", "nothex"), 2, "64 hex")


async def test_delegation_from_a_key_file_and_its_refusals(tmp_path: Path, db: Path) -> None:
    alice = create(tmp_path, "alice.key", "--register", db=db)
    bob = create(tmp_path, "bob.key", "--register", db=db)
    alice_key, bob_key = str(tmp_path / "alice.key"), str(tmp_path / "bob.key")
    parent = kdelta(
        db,
        "--json",
        "grant",
        "--to",
        alice["public_key"],
        "--ns",
        "users",
        "--actions",
        "read",
        "--difficulty",
        D,
    ).json()
    # Alice has no root authority: without a parent her grant is refused.
    failed(
        kdelta(db, "grant", "--to", bob["public_key"], "--as", alice_key, "--difficulty", D),
        2,
        "not a root",
    )
    # Escalation beyond the parent (write; another key space).
    for extra in (["--ns", "users", "--actions", "write"], ["--ns", "orders"]):
        failed(
            kdelta(
                db,
                "grant",
                "--to",
                bob["public_key"],
                "--as",
                alice_key,
                "--parent",
                parent["id"],
                "--difficulty",
                D,
                *extra,
            ),
            2,
            "escalates",
        )
    child = kdelta(
        db,
        "--json",
        "grant",
        "--to",
        bob["public_key"],
        "--as",
        alice_key,
        "--ns",
        "users",
        "--key",
        "b*",
        "--parent",
        parent["id"],
        "--difficulty",
        D,
    )
    assert child.code == 0, child.err
    assert await check(db, bob["public_key"], "read", "users", "bob")
    # Bob may not revoke his parent's grant; alice may revoke the one she gave.
    failed(kdelta(db, "revoke", parent["id"], "--as", bob_key), 2, "revoker")
    assert kdelta(db, "revoke", child.json()["id"], "--as", alice_key).code == 0
    assert not await check(db, bob["public_key"], "read", "users", "bob")


def test_too_little_proof_of_work_is_refused(tmp_path: Path, db: Path) -> None:
    weak = koru.Identity.mine(0, rng=random.Random(1))  # a key with no work at all
    assert weak.work < int(D)
    weak.save(tmp_path / "weak.key")
    text = str(weak.public)
    failed(kdelta(db, "grant", "--to", text, "--difficulty", D), 2, "proof of work")
    failed(kdelta(db, "identity", "register", text, "--difficulty", D), 2, "proof of work")
    failed(
        kdelta(db, "grant", "--to", str(tmp_path / "weak.key"), "--difficulty", D),
        2,
        "proof of work",
    )


def test_register_and_show_the_node_identity(tmp_path: Path, db: Path) -> None:
    alice = create(tmp_path, "alice.key")
    ran = kdelta(db, "--json", "identity", "register", alice["identity"], "--difficulty", D)
    assert ran.code == 0 and ran.json()["registered"]
    node = kdelta(db, "--json", "identity", "show")
    assert node.code == 0
    assert node.json()["node_id"] == trio.run(_node_id, db)
    failed(kdelta(db, "identity", "register", "zz"), 2, "public identity")
    failed(kdelta(tmp_path / "nowhere", "identity", "show"), 1, "no key file named")
    failed(kdelta(db, "grant", "--to", "nobody"), 2)


async def _node_id(path: Path) -> str:
    async with koru.open(path, readonly=True) as database:
        return database.node_id
