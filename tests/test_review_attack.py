"""Attacks on the fixes of h-built and h-untried (h-rev): what held is cited in the
report; each test here is a defect found in them, fixed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from test_untried_attack import ttl_keys_checkpointed

import koru

NS = "ns"


def _pair(joined: str) -> tuple[str, str]:
    """A key of the ``expiring_at`` columns (``chr(len(ns)) + ns + key``) split."""
    n = ord(joined[0])
    return joined[1 : 1 + n], joined[1 + n :]


def _as_rows(tamper: Any) -> Any:
    """A change of a checkpoint's kv section: its ``expiring_at`` columns rewritten in
    the form checkpoints had before the columns (``expiring``: [namespace, key, ns]
    rows), then ``tamper`` applied to the rows."""

    def change(section: dict[str, Any]) -> None:
        columns = section.pop("expiring_at")
        rows = [[*_pair(k), t] for k, t in zip(columns["keys"], columns["times"], strict=True)]
        tamper(rows)
        section["expiring"] = rows

    return change


def _tampered_kv_open(base: Path, at: Path, change: Any) -> list[Any]:
    """Copy the database at ``base`` to ``at``, change its checkpoint's kv section
    with ``change`` (the checksum made right again), open it: what it lists as
    expiring."""
    import shutil

    import blake3
    import cbor2

    from koru._loader import CHECKPOINT_FILE

    shutil.copytree(base, at)
    raw = (at / CHECKPOINT_FILE).read_bytes()
    body = cbor2.loads(raw[40:])
    change(body["sections"]["kv"][1])
    data = cbor2.dumps(body)
    (at / CHECKPOINT_FILE).write_bytes(raw[:8] + blake3.blake3(data).digest() + data)

    async def opened() -> list[Any]:
        async with koru.open(at) as db:
            return sorted(await db.expiring(within=10**6))

    return trio.run(opened)


def _duplicate_row(rows: list[list[Any]]) -> None:
    rows.append([rows[0][0], rows[0][1], rows[0][2] + 10**12])


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda r: None, id="untouched"),
        pytest.param(lambda r: r[0].__setitem__(2, -5), id="negative-time"),
        pytest.param(lambda r: r[0].__setitem__(2, 1 << 64), id="time-past-64-bits"),
        pytest.param(_duplicate_row, id="duplicate-key"),
        pytest.param(lambda r: r[0].__setitem__(0, ""), id="empty-namespace"),
    ],
)
def test_ttl_rows_of_the_older_checkpoint_form_are_checked_as_the_columns_are(
    tmp_path: Path, tamper: Any
) -> None:
    """Attack: around the checks 8cd2ef1 gave the ``expiring_at`` columns, a crafted
    checkpoint lists its keys with a ttl in the form checkpoints had before the columns
    (``expiring`` rows, still read): a negative time, a time past 8 bytes, a key listed
    twice with another time, an empty namespace. Must hold, as for the columns: the
    section is refused (rebuilt from the log) and the same expiry times are served;
    never a key expired since -5 ns nor one whose time moved."""
    base = tmp_path / "db"
    truth = trio.run(ttl_keys_checkpointed, base)
    assert _tampered_kv_open(base, tmp_path / "copy", _as_rows(tamper)) == truth


def test_json_nested_too_deeply_for_an_embedding_or_a_search_is_a_usage_error(
    tmp_path: Path,
) -> None:
    """Attack: the JSON the command line reads for an embedding (its vector and
    ``--metadata``) and a search (``--vector``), where e6c39f9 refuses a key given
    twice in one line, nested 100,000 deep. Must hold there as for values and
    filters: one line saying so (a usage error, exit 2), never a RecursionError
    traceback (exit 1)."""
    from test_cli import failed, kdelta

    db = tmp_path / "db"
    assert kdelta(db, "set", "users/a", '{"x": 1}').code == 0
    deep = "[" * 100_000
    for args in (
        ("embed", "users/v", deep),
        ("embed", "users/v", "[1.0, 2.0]", "--metadata", deep),
        ("search", "users", "--vector", deep),
    ):
        failed(kdelta(db, *args), 2, "deep")


def _export_items(db: Path, tmp_path: Path, fmt: str) -> list[Any]:
    """The items of an export of ``db`` in ``fmt`` (jsonl lines as dicts, or CBOR)."""
    import io
    import json

    import cbor2
    from test_cli import kdelta

    out = tmp_path / f"x.{fmt}"
    assert kdelta(db, "export", "-o", str(out), "--format", fmt).code == 0
    if fmt == "jsonl":
        return [json.loads(line) for line in out.read_text().splitlines()]
    raw = out.read_bytes()
    stream, items = io.BytesIO(raw), []
    while stream.tell() < len(raw):
        items.append(cbor2.load(stream))
    return items


def _write_items(path: Path, fmt: str, items: list[Any]) -> None:
    import json

    import cbor2

    if fmt == "jsonl":
        path.write_text("".join(json.dumps(i) + "\n" for i in items))
    else:
        path.write_bytes(b"".join(cbor2.dumps(i) for i in items))


@pytest.mark.parametrize("fmt", ["jsonl", "cbor"])
def test_an_end_mark_holding_more_than_its_count_is_refused(tmp_path: Path, fmt: str) -> None:
    """Attack: the end mark cf15de5 added (``{"koru-delta-export-end": N}``) crafted
    with more entries: another key, or the last event's own entry folded into it (so
    that the count still matches the events before it). It was taken as the end, its
    other entries dropped without a word (the folded event never imported, exit 0).
    Must hold: an end mark holds its count and nothing else; any other is refused as
    no export item (exit 3), nothing imported."""
    from test_cli import failed, kdelta

    db = tmp_path / "db"
    assert kdelta(db, "set", "users/a", "1").code == 0
    assert kdelta(db, "set", "users/b", "2").code == 0
    items = _export_items(db, tmp_path, fmt)
    head, events, end = items[0], items[1:-1], items[-1]
    assert end == {"koru-delta-export-end": len(events)}
    last = events[-1]["event"] if fmt == "jsonl" else events[-1]
    crafted = tmp_path / f"c.{fmt}"
    for mark, before in (
        ({**end, "note": 1}, events),
        ({"koru-delta-export-end": len(events) - 1, "event": last}, events[:-1]),
    ):
        _write_items(crafted, fmt, [head, *before, mark])
        copy = tmp_path / "copy"
        failed(kdelta(copy, "import", str(crafted)), 3, "end mark")
        assert kdelta(copy, "get", "users/a").code != 0  # nothing imported


async def test_a_served_expiring_listing_past_the_bound_is_refused_before_it_is_built() -> None:
    """Attack: a client that may read everything asks ``expiring(within=huge)`` of a
    database with many keys with a ttl, under a small answer bound. a8f312b builds the
    listing under the bound, but the expiring keys were first all gathered (a list of
    every entry due, each key split into a new pair): some 250 bytes an entry
    (1,000,000 keys with a ttl, about 250 MB, for every such request) before the first
    was counted. Must hold: the refusal (typed) comes after about the bound's worth
    of entries, whatever their number; a local call lists them all, in order."""
    import tracemalloc

    from koru._reads import ANSWER_BYTES

    n = 20_000
    async with koru.open(":memory:") as db:
        for start in range(0, n, 2000):
            batch = [(NS, f"key-number-{i:08d}", 1) for i in range(start, start + 2000)]
            await db.put_batch(batch, ttl=3600)
        listed = await db.expiring(10**6)
        assert [e.key for e in listed] == sorted(e.key for e in listed)
        assert len(listed) == n and listed == sorted(listed, key=lambda e: e.expires)
        bounded = ANSWER_BYTES.set(2000)
        tracemalloc.start()
        try:
            with pytest.raises(koru.InvalidArgumentError, match="expiring"):
                await db.expiring(10**6)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            ANSWER_BYTES.reset(bounded)
        assert peak < 20 * n, peak  # (gathered whole: about 250 bytes an entry)


def test_the_streamed_at_most_finds_what_at_most_does_across_layers() -> None:
    """What must hold of the streamed read the fix above uses: the same entries as
    ``at_most``, in the same order, with keys overwritten and deleted in layers above
    (snapshots taken in between)."""
    import random

    from koru.projections._layered import PairKeyed

    rng = random.Random(7)
    m: PairKeyed[int] = PairKeyed()
    kept = []
    for step in range(3000):
        key = ("n" * rng.randint(1, 3), f"k{rng.randrange(200)}")
        if rng.random() < 0.2:
            m.pop(key, None)
        else:
            m[key] = rng.randrange(1000)
        if step % 500 == 499:
            kept.append(m.snapshot())  # (its layer frozen below the new top)
        for bound in (-1, 300, 999):
            if step % 250 == 0:
                assert list(m.iter_at_most(bound)) == m.at_most(bound)
    assert list(m.iter_at_most(500)) == m.at_most(500)


def test_least_bytes_never_counts_more_than_the_wire_encoding() -> None:
    """What held (kept as a guard): the lower bounds 3d1de63 weighs selected rows and
    groups by (``least_bytes``, ``Equals.least_bytes``) are at most what the served
    answer's encoder writes, for every value type the database stores (as given, and
    as read back): an over-count would refuse an honest answer that fits."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from koru._queries import ROW_FIELDS
    from koru._reads import least_bytes
    from koru._remote_codec import pack
    from koru.events._values import decode_value, encode_value
    from koru.projections import Row
    from koru.projections._accumulators import Equals
    from koru.projections._rows import select_fields

    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**64 - 1),
        st.floats(allow_nan=False),
        st.text(),
        st.binary(),
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=20,
    )

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(values, st.text(min_size=1, max_size=10))
    def check(value: Any, key: str) -> None:
        stored = decode_value(encode_value(value))
        for v in (value, stored):
            assert len(pack(v)) >= least_bytes(v, 1 << 40)
            selected = select_fields({"a": v, "b": [v]}, ("a",))
            row = len(pack(Row(key, selected)))
            assert row >= len(key) + ROW_FIELDS + least_bytes(selected, 1 << 40)
        group = Equals()
        group.add(stored)
        assert len(pack(group.value())) >= group.least_bytes()

    check()
