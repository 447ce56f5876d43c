"""The ``kdelta`` command line run by a careless or hostile user and environment:
standard streams closed or full, a database held open by another process, an empty
``--db``, and ``simulate`` arguments no run can use. What must hold: a clear one-line
message and a documented exit code, never a traceback, and output that is correct or
absent (never an error message where the data should be)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import trio
from test_cli import KDELTA, failed, kdelta

import koru


def _db(tmp_path: Path) -> Path:
    path = tmp_path / "db"

    async def write() -> None:
        async with koru.open(path) as db:
            await db.put("users", "alice", {"name": "Alice"})

    trio.run(write)
    return path


def _raw(*args: str, redirect: str) -> subprocess.CompletedProcess[bytes]:
    """``kdelta ARGS`` through a shell, with ``redirect`` applied to its streams."""
    env = {k: v for k, v in os.environ.items() if k != "KORU_HOME"}
    words = " ".join(f"'{a}'" for a in args)
    return subprocess.run(
        f"{KDELTA} {words} {redirect}",
        shell=True,
        capture_output=True,
        env=env,
        cwd="/",
        timeout=60,
    )


def test_a_closed_standard_output_is_not_a_traceback(tmp_path: Path) -> None:
    """``kdelta get users/alice >&-``: with standard output closed, Python's
    ``sys.stdout`` is None and every command died with an AttributeError traceback
    (exit 1, "not found"). The output goes nowhere, as into a closed pipe: exit 0, and
    nothing on stderr."""
    db = _db(tmp_path)
    for args in (
        ("get", "users/alice"),
        ("--json", "get", "users/alice"),
        ("events",),
        ("log", "users/alice"),
        ("status",),
        ("set", "users/bob", "1"),
    ):
        done = _raw("--db", str(db), *args, redirect=">&-")
        assert b"Traceback" not in done.stderr, (args, done.stderr)
        assert done.returncode == 0 and done.stderr == b"", (args, done)
    assert kdelta(db, "get", "users/bob").out.strip() == "1"
    failed(kdelta(db, "get", "users/nobody"), 1, "no value")


def test_with_standard_error_closed_an_error_never_reads_as_the_output(tmp_path: Path) -> None:
    """``v=$(kdelta get users/nobody 2>&-)``: with standard error closed, the one-line
    error was printed on standard output instead (``print(file=None)`` writes to
    stdout), so a script read ``kdelta: no value ...`` as the value. The output must
    be empty; the exit code still says what happened."""
    db = _db(tmp_path)
    for args, code in (
        (("get", "users/nobody"), 1),
        (("--json", "get", "users/nobody"), 1),
        (("get", "no-slash"), 2),
        (("set", "users/x", "{not json"), 2),
    ):
        done = _raw("--db", str(db), *args, redirect="2>&-")
        assert done.returncode == code, (args, done)
        assert done.stdout == b"", (args, done.stdout)
    done = _raw("--db", str(db), "get", "users/alice", redirect="2>&-")
    assert done.returncode == 0 and b"Alice" in done.stdout


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_that_cannot_be_written_is_one_line_exit_3(tmp_path: Path) -> None:
    """``kdelta ... > /dev/full`` (a full disk, a device error under the output): each
    command died with an OSError traceback and exit 1 ("not found"). One line naming
    why, and exit 3."""
    db = _db(tmp_path)
    for args in (
        ("get", "users/alice"),
        ("--json", "get", "users/alice"),
        ("keys", "users"),
        ("--json", "events"),
        ("events",),
        ("status",),
        ("export", "-o", "-"),
        ("export", "-o", "/dev/full"),
        ("simulate", "--seed", "3", "--nodes", "2", "--duration", "1s"),
    ):
        done = _raw("--db", str(db), *args, redirect="> /dev/full")
        err = done.stderr.decode()
        assert "Traceback" not in err and "Exception ignored" not in err, (args, err)
        assert done.returncode == 3, (args, done.returncode, err)
        assert err.startswith("kdelta: ") and err.count("\n") == 1, (args, err)
        assert "No space left" in err, (args, err)


async def test_a_locked_database_tells_a_cli_user_what_to_do(tmp_path: Path) -> None:
    """A write while another process holds the database open for writing: the message
    told a command line user to "open it with readonly=True", a Python argument no
    command takes. It must say what the user can do: the read commands still work."""
    path = tmp_path / "db"
    async with koru.open(path) as db:
        await db.put("users", "alice", 1)
        for args in (("set", "users/alice", "2"), ("delete", "users/alice")):
            ran = await trio.to_thread.run_sync(lambda a=args: kdelta(path, *a))
            failed(ran, 3, "open for writing in another process", "read")
            assert "readonly=True" not in ran.err, ran.err
        assert await db.get("users", "alice") == 1


def test_an_empty_db_is_a_usage_error_not_the_default_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kdelta --db "$DB" set ...`` with ``$DB`` unset or empty: an empty ``--db``
    was taken as no ``--db`` at all, and the command read and wrote the default
    database (``~/.local/share/koru-delta/default``) without a word. It names no
    directory: exit 2, and nothing is created."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "KORU_HOME"}
    env["HOME"] = str(home)
    env.pop("XDG_DATA_HOME", None)
    for args in (("set", "a/b", "1"), ("get", "a/b"), ("events",)):
        done = subprocess.run(
            [KDELTA, "--db", "", *args], capture_output=True, text=True, env=env, cwd="/"
        )
        assert "Traceback" not in done.stderr
        assert done.returncode == 2, (args, done)
        assert done.stderr.startswith("kdelta: ") and "--db" in done.stderr, done.stderr
        done = subprocess.run(
            [KDELTA, *args[:1], "--db", "", *args[1:]],
            capture_output=True,
            text=True,
            env=env,
            cwd="/",
        )
        assert done.returncode == 2, (args, done)
    assert not (home / ".local").exists()


def test_simulate_refuses_arguments_no_run_can_use(tmp_path: Path) -> None:
    """``kdelta simulate`` with 0 nodes exited 1 ("not found") with a message not
    prefixed ``kdelta:``; ``--rate nan`` passed the check (nan <= 0 is false) and the
    run printed a trio traceback in its report; ``--rate inf`` and an infinite
    ``--duration`` (400 nines) never ended. Each is a usage error: exit 2, and argparse's
    message naming the argument."""
    nines = "9" * 400
    for args in (
        ("--nodes", "0"),
        ("--seeds", "0"),
        ("--clients", "-1"),
        ("--rate", "0"),
        ("--rate", "nan"),
        ("--rate", "inf"),
        ("--rate", "-inf"),
        ("--duration", nines),
        ("--duration", nines + "h"),
    ):
        ran = kdelta(tmp_path, "simulate", "--nodes", "2", "--duration", "1s", *args)
        assert ran.code == 2, (args, ran.code, ran.out[-2000:], ran.err)
        assert "Traceback" not in ran.out, args
        assert "kdelta simulate: error: argument " + args[0] in ran.err, (args, ran.err)


def test_start_on_a_port_in_use_or_a_bad_address_is_one_line(tmp_path: Path) -> None:
    """``kdelta start`` on a port another process listens on, on a host that does not
    resolve, or joining a peer address with no port: each was a trio ExceptionGroup
    traceback and exit 1 ("not found"); one with no port dialled port 80 for ever
    without a word. The error is one line and exit 2, and the
    database is closed cleanly (a read works after)."""
    key = tmp_path / "owner.key"
    assert kdelta(None, "identity", "create", "-o", str(key), "--difficulty", "4").code == 0
    db = tmp_path / "db"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        owner = ("start", "--owner", str(key), "--difficulty", "4")
        for args in (
            ("--port", port),
            ("--host", "no-such-host.invalid", "--port", "0"),
            ("--port", "0", "--join", "127.0.0.1:notaport"),
            ("--port", "0", "--join", "nonsense"),  # no port: 80 was dialled for ever
            ("--port", "0", "--join", "127.0.0.1"),
            ("--port", "0", "--join", "127.0.0.1:0"),  # port 0: no peer listens there
        ):
            ran = kdelta(db, *owner, *args)
            failed(ran, 2, "kdelta: ")
    assert kdelta(db, "status").code == 0
    from koru._cli._peers import _peer_address

    for written in ("[::1]:7878", "wss://example.com", "ws://h:1", "node.example:443"):
        assert _peer_address(written) == written  # a port, or a url's own scheme


_SIM = ("--seed", "1", "--nodes", "2", "--duration", "1s")


def test_simulate_at_a_low_rate_neither_fails_falsely_nor_runs_on() -> None:
    """``kdelta simulate --rate 0.001`` (a client's call every ~2000 virtual seconds)
    with no faults: the run waited for each remote client to wake from its sleep
    after the workload stopped, which took longer than the 900 s convergence window,
    so it reported "no convergence within 900s of healing" and lost writes (exit 1)
    when nothing was wrong; at --rate 1e-6 it ran on for hours. A client asleep when
    the workload stops wakes then."""
    done = subprocess.run(
        [KDELTA, "simulate", *_SIM, "--faults", "none", "--workload", "remote", "--rate", "0.001"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert done.returncode == 0 and "VIOLATION" not in done.stdout, done.stdout
    done = subprocess.run(
        [KDELTA, "simulate", *_SIM, "--rate", "1e-6"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert done.returncode == 0 and "VIOLATION" not in done.stdout, done.stdout


def test_a_database_of_a_newer_format_is_not_called_damaged(tmp_path: Path) -> None:
    """A database whose meta file a newer koru-delta wrote (a whole, checksummed meta
    of a later format): every command said "is damaged: the database's node id cannot
    be read", so its user would think it corrupt and restore or delete it. It must
    say a newer version wrote it (exit 3), and leave it as it is."""
    import blake3
    import cbor2

    db = _db(tmp_path)
    magic = b"KORUMET2"
    raw = (db / "meta").read_bytes()
    meta = cbor2.loads(raw[len(magic) + 32 :])
    meta["format"] += 1
    body = cbor2.dumps(meta)
    newer = magic + blake3.blake3(body).digest() + body
    (db / "meta").write_bytes(newer)
    for args in (("get", "users/alice"), ("set", "users/alice", "2"), ("events",)):
        ran = kdelta(db, *args)
        failed(ran, 3, "newer", "format")
        assert "damaged" not in ran.err, ran.err
    assert (db / "meta").read_bytes() == newer


def test_a_value_with_a_key_twice_is_refused_not_cut_to_the_last(tmp_path: Path) -> None:
    """``kdelta set users/a '{"x": 1, "x": 2}'`` stored ``{"x": 2}`` without a word, a
    value the user never wrote (JSON readers differ on which one wins). What must
    hold: a usage error naming the key, exit 2, nothing written; nested objects too;
    a value whose keys differ is stored as written."""
    db = tmp_path / "db"
    assert kdelta(db, "set", "users/a", '{"x": 1}').code == 0
    for text in ('{"x": 1, "x": 2}', '{"y": [{"k": 1, "k": 1}]}'):
        failed(kdelta(db, "set", "users/a", text), 2, "kdelta: ")
    got = kdelta(db, "get", "users/a")
    assert got.code == 0 and json.loads(got.out) == {"x": 1}, got.out
    assert kdelta(db, "set", "users/a", '{"x": 1, "y": {"x": 2}}').code == 0


def test_json_with_a_key_twice_is_refused_wherever_the_command_line_reads_it(
    tmp_path: Path,
) -> None:
    """Values given as JSON refused a key given twice, but the rest of the command
    line's JSON kept the last one without a word: a filter of ``--where-json`` (or a
    JSON value inside ``--where``), an embedding's ``--metadata`` and vector, and the
    lines of a JSON-lines export (its header and each event's line: two "event"
    entries imported the second). What must hold: each is refused with one clear line
    naming the key (a usage error, exit 2; a bad export, exit 3), never a traceback,
    and nothing is written."""
    db = tmp_path / "db"
    assert kdelta(db, "set", "users/a", '{"x": 1}').code == 0
    twice = '{"x": 1, "x": 2}'
    for args in (
        ("query", "users", "--where-json", f'["eq", "x", {twice}]'),
        ("query", "users", "--where-json", '{"op": "eq", "op": "ne"}'),
        ("query", "users", "--where", f"x = {twice}"),
        ("embed", "users/v", "[1.0, 2.0]", "--metadata", twice),
        ("embed", "users/v", f"[{twice}]"),
    ):
        failed(kdelta(db, *args), 2, "'x'" if "x" in args[-1] else "'op'", "twice")
    export = tmp_path / "e.jsonl"
    ran = kdelta(db, "export", "-o", str(export), "--format", "jsonl")
    assert ran.code == 0, ran.err
    head, line = export.read_text().splitlines()[:2]
    other = kdelta(tmp_path / "other", "set", "users/b", "2")
    assert other.code == 0
    theirs = tmp_path / "o.jsonl"
    assert kdelta(tmp_path / "other", "export", "-o", str(theirs), "--format", "jsonl").code == 0
    event = json.loads(theirs.read_text().splitlines()[1])["event"]
    copy = tmp_path / "copy"
    doubled = line[:-1] + f', "event": "{event}"}}'
    export.write_text(head + "\n" + doubled + "\n")
    failed(kdelta(copy, "import", str(export)), 3, "line 2", "'event'", "twice")
    export.write_text(head[:-1] + ', "koru-delta-export": 1}\n' + line + "\n")
    failed(kdelta(copy, "import", str(export)), 3, "line 1", "'koru-delta-export'", "twice")
    assert kdelta(copy, "get", "users/b").code != 0  # nothing imported


def test_an_import_whose_interrupts_are_ignored_leaves_them_ignored() -> None:
    """A shell starts a background job with SIGINT ignored, so that Ctrl-C meant for
    the foreground does not stop it; the import's guard installed its own handler over
    that, and an interrupt then stopped the import (h-cli). What must hold: with
    SIGINT ignored, the guard leaves it ignored; with the default handler, Ctrl-C inside
    still raises KeyboardInterrupt and the handler is put back after."""
    import signal

    from koru._cli._transfer import _interrupts_kept

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _interrupts_kept():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)  # ignored: nothing raised
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with pytest.raises(KeyboardInterrupt), _interrupts_kept():
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
