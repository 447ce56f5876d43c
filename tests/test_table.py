"""Tables: immutable sorted files read in place; equal to a dict model for any items,
and damage anywhere is reported, never answered around."""

from __future__ import annotations

import mmap
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koru.events import CorruptCheckpointError, Table, encode_table, table_name

names = st.text(
    min_size=1,
    max_size=6,
    alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)),
)
items = st.dictionaries(st.tuples(names, names), st.binary(max_size=40), max_size=60)


def build(model: dict[tuple[str, str], bytes]) -> Table:
    pieces = encode_table((ns, k, v) for (ns, k), v in model.items())
    return Table(b"".join(pieces), table_name(pieces))


@settings(max_examples=200)
@given(model=items, probes=st.lists(st.tuples(names, names), max_size=10))
def test_a_table_answers_like_a_dict(
    model: dict[tuple[str, str], bytes], probes: list[tuple[str, str]]
) -> None:
    table = build(model)
    assert len(table) == len(model)
    for ns, key in [*model, *probes]:
        assert table.get(ns, key) == model.get((ns, key))
    by_ns = sorted({ns for ns, _ in model}, key=str.encode)
    assert list(table.namespaces()) == by_ns
    for ns in by_ns:
        expected = sorted(
            ((k, v) for (n, k), v in model.items() if n == ns), key=lambda kv: kv[0].encode()
        )
        assert list(table.items(ns)) == expected
    assert list(table.entries()) == sorted(
        ((ns, k, v) for (ns, k), v in model.items()), key=lambda e: (e[0].encode(), e[1].encode())
    )


def test_the_same_items_give_the_same_bytes_and_name() -> None:
    a = encode_table([("b", "x", b"1"), ("a", "y", b"2")])
    b = encode_table([("a", "y", b"2"), ("b", "x", b"1")])
    assert a == b and table_name(a) == table_name(b) and len(table_name(a)) == 32


def test_a_memory_mapped_table(tmp_path: Path) -> None:
    path = tmp_path / "t.tab"
    path.write_bytes(b"".join(encode_table([("ns", f"k{i}", bytes([i])) for i in range(200)])))
    with path.open("rb") as f:
        table = Table(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), "t")
    assert table.get("ns", "k77") == bytes([77]) and table.get("ns", "k777") is None
    table.release()


def test_damage_is_reported_wherever_it_is() -> None:
    model = {("ns", f"k{i:03}"): bytes(20) for i in range(50)}
    data = b"".join(encode_table((ns, k, v) for (ns, k), v in model.items()))
    for at in range(0, len(data), 7):
        damaged = bytearray(data)
        damaged[at] ^= 0x10
        try:
            table = Table(bytes(damaged), "t")
            answers = {key: table.get(*key) for key in model}
            list(table.entries())
        except CorruptCheckpointError:
            continue
        # Damage that is not reported must not have changed any answer.
        assert answers == model, at
    with pytest.raises(CorruptCheckpointError, match="cut short"):
        Table(data[:40], "t")
    with pytest.raises(CorruptCheckpointError, match="not a koru table"):
        Table(b"X" * 100, "t")


def _encode_format(items: list[tuple[str, str, bytes]], fmt: int) -> list[bytes]:
    """A table's pieces as format ``fmt`` wrote them (3: a Bloom filter, no directory;
    4: a directory, no block digests)."""
    from koru.events import _table

    saved = _table._FORMAT
    _table._FORMAT = fmt
    try:
        return encode_table(items)
    finally:
        _table._FORMAT = saved


def _encode_format_3(items: list[tuple[str, str, bytes]]) -> list[bytes]:
    return _encode_format(items, 3)


def _as_format_2(pieces: list[bytes]) -> bytes:
    """The same table as the format before filters wrote it: the index without the
    filter, the header naming format 2 and hashing that index."""
    import struct

    import blake3

    head = struct.Struct("<8sIIQQQ32s")
    magic, _, block, count, index_at, _, _ = head.unpack(pieces[0])
    bits, _ = struct.unpack_from("<IB", pieces[-1])
    index = pieces[-1][5 + bits // 8 :]
    header = head.pack(magic, 2, block, count, index_at, len(index), blake3.blake3(index).digest())
    return b"".join([header, *pieces[1:-1], index])


def test_tables_of_format_2_are_read_without_a_filter() -> None:
    model = {("ns", f"k{i:04}"): bytes([i % 256]) for i in range(300)}
    pieces = _encode_format_3([(ns, k, v) for (ns, k), v in model.items()])
    old = Table(_as_format_2(pieces), "old")
    assert all(old.get(*key) == value for key, value in model.items())
    assert old.get("ns", "k9999") is None and old.get("other", "k0001") is None
    assert list(old.entries()) == [(ns, k, v) for (ns, k), v in sorted(model.items())]


@pytest.mark.parametrize("block", [1, 3, 16])
def test_tables_of_any_block_size_are_read(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header says a table's block size: tables written with 16 entries per block
    (before blocks of 8) and any other size are read alike, damage still reported."""
    from koru.events import _table

    monkeypatch.setattr(_table, "BLOCK", block)
    model = {("ns", f"k{i:04}"): bytes([i % 256]) * (i % 5) for i in range(101)}
    pieces = encode_table((ns, k, v) for (ns, k), v in model.items())
    monkeypatch.undo()
    table = Table(b"".join(pieces), table_name(pieces))
    assert all(table.get(*key) == value for key, value in model.items())
    assert table.get("ns", "k9999") is None and table.get("ns", "k0050x") is None
    assert list(table.entries()) == [(ns, k, v) for (ns, k), v in sorted(model.items())]
    data = b"".join(pieces)
    for declared in (0, block + 1, 1 << 20):
        lying = bytearray(data)
        lying[12:16] = declared.to_bytes(4, "little")  # the header's entries per block
        try:
            table = Table(bytes(lying), "t")
            answers = {key: table.get(*key) for key in model}
        except CorruptCheckpointError:
            continue
        assert answers == model, declared


@pytest.mark.parametrize("fmt", [3, 4, 5])
def test_the_filter_answers_most_absent_keys_without_reading_a_block(fmt: int) -> None:
    """Format 3's Bloom filter and the directory of formats 4 and 5 all answer most
    absent keys from memory."""
    model = {("users", f"u{i}"): b"v" for i in range(5000)}
    items = [(ns, k, v) for (ns, k), v in model.items()]
    pieces = encode_table(items) if fmt == 5 else _encode_format(items, fmt)
    assert int.from_bytes(pieces[0][8:12], "little") == fmt
    reads: list[int] = []
    data = b"".join(pieces)

    def read(at: int, length: int) -> bytes:
        reads.append(at)
        return data[at : at + length]

    table = Table(data, table_name(pieces), read)
    assert table.get("users", "u42") == b"v"  # loads the index, then reads one block
    before = len(reads)
    absent = [f"x{i}" for i in range(10_000)]
    assert all(table.get("users", key) is None for key in absent)
    # About 10 bits and 7 probes per key: under 1% false positives (a block read each).
    assert len(reads) - before < 200
    assert all(table.get(*key) == b"v" for key in model)  # and no false negative


def test_a_malformed_filter_is_reported() -> None:
    import struct

    import blake3

    pieces = _encode_format_3([("ns", f"k{i}", b"v") for i in range(40)])
    head = struct.Struct("<8sIIQQQ32s")
    fields = list(head.unpack(pieces[0]))
    for index in (
        struct.pack("<IB", 7, 7) + pieces[-1][5:],  # bits not whole bytes
        struct.pack("<IB", 400, 3) + pieces[-1][5:],  # other probes
        struct.pack("<IB", 1 << 30, 7) + pieces[-1][5:],  # longer than the index
        pieces[-1][:3],  # cut inside its head
    ):
        fields[5], fields[6] = len(index), blake3.blake3(index).digest()
        data = b"".join([head.pack(*fields), *pieces[1:-1], index])
        with pytest.raises(CorruptCheckpointError, match=r"filter|index"):
            Table(data, "t").get("ns", "k1")


@given(st.lists(st.integers(0, 2**64 - 1), max_size=300))
def test_the_python_filter_equals_the_numpy_filter(hashes: list[int]) -> None:
    """Small tables build their filter in Python (no numpy import), large ones with
    numpy: both give the same bytes, so a table reads alike whichever wrote it."""
    from koru.events import _table

    packed = array("Q", hashes)
    bits, small = _table._build_filter(packed)
    assert bits == -(-max(64, len(hashes) * _table._FILTER_BITS_PER_KEY) // 8) * 8
    saved = _table._SMALL_FILTER
    _table._SMALL_FILTER = -1  # every filter through numpy
    try:
        assert _table._build_filter(packed) == (bits, small)
    finally:
        _table._SMALL_FILTER = saved


async def test_a_refused_table_closes_its_descriptor_once(tmp_path: Path) -> None:
    """A table file the reader refuses is closed by its opener, and only by it: a
    second close when the refused table is collected would close whatever file got
    that descriptor number meanwhile."""
    import gc
    import os

    import koru

    async with koru.open(tmp_path / "db", processes=False) as db:
        await db.put("n", "k", 1)
        await db.checkpoint()
        name = "0" * 32
        (tmp_path / "db" / "tables" / f"{name}.tab").write_bytes(b"not a table" * 20)
        with pytest.raises(CorruptCheckpointError):
            db._store.open_table(name)
        other = tmp_path / "other"
        other.write_bytes(b"x")
        fd = os.open(other, os.O_RDONLY)  # likely the number the refused table had
        try:
            gc.collect()
            os.fstat(fd)  # still open
            assert os.read(fd, 1) == b"x"
        finally:
            os.close(fd)
