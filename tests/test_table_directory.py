"""Tables' directories (format 4): each entry's hash and offset, so a lookup is one
binary search and one short read. The directory only ever saves work: shared hashes,
damage and lies in it give the same answers as a walk of the blocks, or an error."""

from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koru.events import CorruptCheckpointError, Table, _table, encode_table, table_name

names = st.text(min_size=1, max_size=5, alphabet="abcé\U0001f600")
models = st.dictionaries(st.tuples(names, names), st.binary(max_size=600), max_size=80)
_HEAD = struct.Struct("<8sIIQQQ32s")
_PREFIX = struct.Struct("<8sIIQQQ")


@contextmanager
def _written_as(fmt: int) -> Iterator[None]:
    saved = _table._FORMAT
    _table._FORMAT = fmt
    try:
        yield
    finally:
        _table._FORMAT = saved


@contextmanager
def _few_hashes(buckets: int) -> Iterator[None]:
    """Directory hashes of only ``buckets`` values: most keys share one."""
    saved = _table._dir_hash
    _table._dir_hash = lambda pattern: zlib.crc32(pattern) % buckets
    try:
        yield
    finally:
        _table._dir_hash = saved


def _pieces(model: dict[tuple[str, str], bytes]) -> list[bytes]:
    return encode_table((ns, k, v) for (ns, k), v in model.items())


def _rehashed(pieces: list[bytes], index: bytes, **fields: int) -> bytes:
    """The table with ``index`` in place of its own, and its header's hash made to
    match (what a writer that lies would do)."""
    magic, fmt, block, count, at, _, _ = _HEAD.unpack(pieces[0])
    values = {"fmt": fmt, "block": block, "count": count, "at": at, **fields}
    head = (magic, values["fmt"], values["block"], values["count"], values["at"], len(index))
    digest = blake3.blake3(_PREFIX.pack(*head) + index).digest()
    return b"".join([_HEAD.pack(*head, digest), *pieces[1:-1], index])


@settings(max_examples=150, deadline=None)
@given(
    model=models,
    probes=st.lists(st.tuples(names, names), max_size=10),
    buckets=st.sampled_from([1, 3, 2**32]),
)
def test_a_directory_answers_like_a_dict_even_when_keys_share_hashes(
    model: dict[tuple[str, str], bytes], probes: list[tuple[str, str]], buckets: int
) -> None:
    with _few_hashes(buckets):
        table = Table(b"".join(_pieces(model)), "t")
        for ns, key in [*model, *probes]:
            assert table.get(ns, key) == model.get((ns, key))
    with _written_as(3):  # the same answers from a table of the format before
        old = Table(b"".join(_pieces(model)), "old")
    assert all(old.get(ns, k) == model.get((ns, k)) for ns, k in [*model, *probes])


@pytest.mark.parametrize("fmt", [4, 5])
def test_a_lookup_reads_one_entry_and_nothing_for_an_absent_key(fmt: int) -> None:
    """Format 4 reads the entry alone; format 5 the entry's block, in one read too (its
    digest is checked, not only the entry's crc32)."""
    model = {("users", f"u{i}"): bytes([i % 251]) * (i % 700) for i in range(3000)}
    with _written_as(fmt):
        pieces = _pieces(model)
    data = b"".join(pieces)
    reads: list[tuple[int, int]] = []

    def read(at: int, length: int) -> bytes:
        reads.append((at, length))
        return data[at : at + length]

    table = Table(data, table_name(pieces), read)
    table.verify()
    assert table.get("users", "u1") == model["users", "u1"]  # the index loaded, then one read
    reads.clear()
    for (ns, key), value in model.items():
        before = len(reads)
        assert table.get(ns, key) == value
        # One read of the entry, a second one only for a value longer than the guess
        # (format 4); one read of its block (format 5).
        assert len(reads) - before == (1 if fmt == 5 or len(value) <= _table._GUESS else 2)
    reads.clear()
    assert all(table.get("users", f"x{i}") is None for i in range(5000))
    assert len(reads) < 10  # a crc32 shared with a present key: a block walk each


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), max_size=300))
def test_the_python_directory_equals_the_numpy_directory(rows: list[tuple[int, int]]) -> None:
    crcs = array("I", [h for h, _ in rows])
    offsets = array("Q", [o for _, o in rows])
    small = _table._build_directory(crcs, offsets, 2**32 - 1)
    saved = _table._SMALL_FILTER
    _table._SMALL_FILTER = -1  # through numpy
    try:
        assert _table._build_directory(crcs, offsets, 2**32 - 1) == small
        wide = _table._build_directory(crcs, offsets, 2**32)
    finally:
        _table._SMALL_FILTER = saved
    assert wide == _table._build_directory(crcs, offsets, 2**32)
    assert small[0] == 4 and wide[0] == 8 and len(wide) == 1 + 12 * len(rows)


def test_a_directory_whose_offsets_lie_gives_the_same_answers() -> None:
    """Offsets rewritten (with the header's hash made to match): each lookup finds
    another key's entry, or none, where it looks, and the block walk answers."""
    model = {("ns", f"k{i:03}"): b"v%d" % i for i in range(200)}
    pieces = _pieces(model)
    index = pieces[-1]
    n = len(model)
    offsets = array("I", index[1 + 4 * n : 1 + 8 * n])
    for lie in (
        array("I", reversed(offsets)),
        array("I", [offsets[0]] * n),
        array("I", [0] * n),
        array("I", [len(b"".join(pieces)) + 5] * n),
        array("I", [o + 1 for o in offsets]),
    ):
        lying = index[:1] + index[1 : 1 + 4 * n] + lie.tobytes() + index[1 + 8 * n :]
        table = Table(_rehashed(pieces, lying), "t")
        assert {key: table.get(*key) for key in model} == model
        assert table.get("ns", "k999") is None


def test_a_directory_that_lies_is_refused_by_the_scrub() -> None:
    """A directory that leaves a key out says it is absent (as a lying Bloom filter
    did): the scrub, which hashes the whole table against its name, refuses it."""
    model = {("ns", f"k{i:03}"): b"v" for i in range(50)}
    pieces = _pieces(model)
    index = bytearray(pieces[-1])
    index[1:5] = (int.from_bytes(index[1:5], "little") ^ 1).to_bytes(4, "little")
    table = Table(_rehashed(pieces, bytes(index)), table_name(pieces))
    with pytest.raises(CorruptCheckpointError, match="name"):
        table.verify_content()


@pytest.mark.parametrize(
    "field", [("fmt", 3), ("fmt", 2), ("block", 4), ("block", 16), ("count", 199), ("count", 201)]
)
def test_a_header_that_lies_is_refused(field: tuple[str, int]) -> None:
    """Format 4 hashes the header's fields with the index: any field changed alone is
    a damaged index; changed with a matching hash, the index does not match."""
    model = {("ns", f"k{i:03}"): b"v%d" % i for i in range(200)}
    pieces = _pieces(model)
    name, value = field
    magic, fmt, block, count, at, length, digest = _HEAD.unpack(pieces[0])
    fields = {"fmt": fmt, "block": block, "count": count} | {name: value}
    lying = _HEAD.pack(magic, fields["fmt"], fields["block"], fields["count"], at, length, digest)
    with pytest.raises(CorruptCheckpointError):
        Table(b"".join([lying, *pieces[1:]]), "t").get("ns", "k001")
    if name != "fmt":
        rehashed = _rehashed(pieces, pieces[-1], **{name: value})
        with pytest.raises(CorruptCheckpointError):
            Table(rehashed, "t").get("ns", "k001")


def test_a_cut_or_malformed_directory_is_refused() -> None:
    pieces = _pieces({("ns", f"k{i}"): b"v" for i in range(40)})
    index = pieces[-1]
    for lying in (b"", b"\x05" + index[1:], b"\x08" + index[1:], index[:100]):
        with pytest.raises(CorruptCheckpointError, match=r"directory|index"):
            Table(_rehashed(pieces, lying), "t").get("ns", "k1")


async def test_a_database_with_tables_of_format_3_reads_and_compacts(tmp_path: Path) -> None:
    """Tables an older version wrote are read beside new ones, and merged into new."""
    import koru

    model: dict[str, dict[str, int]] = {}
    with _written_as(3):
        async with koru.open(tmp_path / "db", processes=False) as db:
            for i in range(300):
                model[f"k{i}"] = {"v": i}
                await db.put("users", f"k{i}", model[f"k{i}"])
    formats = {p.read_bytes()[8:12] for p in (tmp_path / "db" / "tables").glob("*.tab")}
    assert formats == {(3).to_bytes(4, "little")}
    async with koru.open(tmp_path / "db", processes=False) as db:
        for i in range(0, 600, 2):
            model[f"k{i}"] = {"v": -i}
            await db.put("users", f"k{i}", model[f"k{i}"])
    formats = {p.read_bytes()[8:12] for p in (tmp_path / "db" / "tables").glob("*.tab")}
    assert (5).to_bytes(4, "little") in formats
    async with koru.open(tmp_path / "db", processes=False, readonly=True) as db:
        for key, value in model.items():
            assert await db.get("users", key) == value
        with pytest.raises(koru.KeyNotFoundError):
            await db.get("users", "k601")


def _forge(data: bytearray, ns: bytes, key: bytes, value: bytes) -> None:
    """Rewrite the entry of (ns, key) in place with ``value`` (of the same length) and a
    fresh crc32: damage no checksum of the entry can tell."""
    pattern = _table._pattern(ns, key)
    at = data.index(pattern) - 4
    where = at + 4 + len(pattern)
    length = int.from_bytes(data[where : where + 4], "little")
    assert len(value) == length
    data[where + 4 : where + 4 + length] = value
    data[at : at + 4] = zlib.crc32(bytes(data[at + 4 : where + 4 + length])).to_bytes(4, "little")


def test_an_entry_rewritten_in_place_with_a_fresh_crc32_is_refused_by_its_block_digest() -> None:
    """Format 4 served it (its crc32 passes, and a value is proven against the content
    ids the entry itself holds), and a merge's walk copied it into a new table with a
    fresh name; format 5 checks each block read against a digest in the verified index."""
    model = {("users", f"u{i:03}"): b"value-%03d" % i for i in range(100)}
    pieces = _pieces(model)
    data = bytearray(b"".join(pieces))
    table = Table(data, table_name(pieces), lambda at, n: bytes(data[at : at + n]))
    table.verify()
    assert table.get("users", "u041") == b"value-041"  # the index is loaded (verified)
    _forge(data, b"users", b"u042", b"forged-42")
    with pytest.raises(CorruptCheckpointError, match="not what its index says"):
        table.get("users", "u042")
    with pytest.raises(CorruptCheckpointError, match="not what its index says"):
        list(table.entries())  # what a merge or a scan reads
    assert table.get("users", "u099") == b"value-099"  # other blocks still answer


def test_an_index_rewritten_between_the_open_check_and_the_first_lookup_is_refused() -> None:
    """The open hashes a table's index; its first lookup read it again, unchecked. A
    whole forged table (a key's value changed, every crc32, block digest and the index
    made to match) written over the file in between was believed."""
    model = {("users", f"u{i:03}"): b"value-%03d" % i for i in range(100)}
    pieces = _pieces(model)
    data = bytearray(b"".join(pieces))
    table = Table(data, table_name(pieces), lambda at, n: bytes(data[at : at + n]))
    table.verify()  # the open's check
    forged = _pieces(model | {("users", "u042"): b"forged-42"})
    data[:] = b"".join(forged)  # the same size: every offset alike
    with pytest.raises(CorruptCheckpointError, match="its index is damaged"):
        table.get("users", "u042")
